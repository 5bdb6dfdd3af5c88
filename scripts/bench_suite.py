"""MuJoCo suite benchmark (issue 20): PPO on eight gymnasium MuJoCo v5 tasks, A2C and VPG on three, 1M steps,
5 fresh seeds each, one run at a time at 2 ranks; resumable: the same command continues where it stopped.

    python scripts/bench_suite.py --dry-run                       # the plan: what is done, continued, started
    nohup nice -n 19 python scripts/bench_suite.py --data_dir /work/bench_suite > /work/bench_suite.log 2>&1 &
    python scripts/bench_suite.py --data_dir /work/bench_suite --summarize     # table + docs/img/suite.png
    python scripts/bench_suite.py --envs Walker2d Hopper --algos ppo --seeds 100 101
    python scripts/bench_suite.py --algos trpo npg --data_dir /work/bench_suite     # issue 31: TRPO, NPG

The order is fixed: PPO first, then A2C, then VPG; within an algorithm one seed of every environment before
the next seed, so that a partial suite covers every environment. Each run is

    python -m spinppo.run ppo --config configs/mujoco/<Env>.yaml --seed S --cpu 2 --save_freq 5 \\
        --eval_freq 10 --eval_episodes 10 --eval_deterministic false --data_dir DATA --exp_name ppo-<env>
    python -m spinppo.run a2c --env <Env> --epochs 250 --seed S ...     (A2C, VPG, TRPO, NPG: the same flags)

(an algorithm other than PPO takes configs/mujoco/<algo>/<Env>.yaml when there is one). Every run evaluates
its policy every 10 epochs, 10 episodes with sampled actions as Tianshou's test collector plays them, so
that the table can give Tianshou's metric: the peak of the seed-averaged evaluation curve (issues 31, 32).
TRPO and NPG (issue 31) run only when asked (``--algos trpo npg``), on the three environments A2C and VPG
run, with Spinning Up's defaults. A settings trial runs the same suite with flags over the config files
under a name of its own (issue 32):

    python scripts/bench_suite.py --envs HalfCheetah --algos ppo --seeds 100 101 102 --tag mb64 \\
        --extra '--steps_per_epoch 2048 --epochs 488 --minibatch_size 64' --data_dir /work/search

in ``DATA/<algo>-<env>/<algo>-<env>_s<S>``, its output in ``DATA/logs/``. A run whose progress.txt reaches
its last epoch is done and skipped; one with a checkpoint (``checkpoints/ckpt-*.pt``) is continued with
``python -m spinppo.run ALGO --resume RUN_DIR``; any other starts afresh (``--overwrite`` for a directory
left by a run killed before its first checkpoint). After a run, and for a finished run that lacks it, the
final policy (``pyt_save/model.pt``) is evaluated: 10 episodes, deterministic actions, first reset seeded
with ``EVAL_SEED``; the returns go to ``final_eval.json`` in the run directory.

Stop it with ``kill -TERM -- -PGID`` (or ``kill PID``): the signal is passed on to the run in progress once,
which stops at the end of its epoch with a checkpoint; the script then exits, and the next invocation
resumes that run. (A SIGKILL leaves the run's mpirun behind, in its own process group, to finish alone.)

The score of a run, as in scripts/bench_learning.py, is its training return over the last 100k steps: the
mean of AverageEpRet over the epochs with TotalEnvInteracts > 900k, each epoch weighted by the episodes that
ended in it (its steps / its EpLen; epochs in which none ended count 0). ``--summarize`` reports, per
environment and algorithm, the median and mean over finished seeds of this score and of the final
deterministic evaluation return, next to the reference figures in ``REFERENCES`` (sources in
docs/benchmarks.md, "MuJoCo suite (issue 20)").
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENVS = [
    "Hopper",
    "Walker2d",
    "HalfCheetah",
    "Ant",
    "Humanoid",
    "Swimmer",
    "Reacher",
    "InvertedDoublePendulum",
]
ALGOS = ["ppo", "a2c", "vpg"]  # the default suite
EXTRA_ALGOS = ["trpo", "npg"]  # issue 31: only with --algos
SMALL_ENVS = ["Hopper", "Walker2d", "HalfCheetah"]  # A2C, VPG, TRPO and NPG run only these
SEEDS = [100, 101, 102, 103, 104]  # seeds 0-14 chose the defaults
# Epochs per algorithm for ~1M steps: PPO's 4096 steps per epoch (999,424 steps, as docs/benchmarks.md's
# earlier runs), A2C's and VPG's 4000 (1,000,000).
EPOCHS = {"ppo": 244, "a2c": 250, "vpg": 250, "trpo": 250, "npg": 250}
STEPS_PER_EPOCH = {"ppo": 4096, "a2c": 4000, "vpg": 4000, "trpo": 4000, "npg": 4000}
# Evaluation during training, for Tianshou's metric: about every 40k steps (every 10 epochs of 4000 or 4096
# steps; Tianshou tests every 30,720), 10 episodes with sampled actions as Tianshou's test collector plays
# them (its figures predate its deterministic_eval option). The training rows are the same with and without.
EVAL_EVERY_STEPS = 40_000
EVAL_SAMPLED = True
CPU = 2
SAVE_FREQ = 5
TAIL_FROM = 900_000  # the training return is over the epochs with more interactions than this
EVAL_EPISODES = 10
EVAL_SEED = 10_000
EVAL_FILE = "final_eval.json"

# Published figures (mean and standard deviation: over seeds for CleanRL, over evaluation episodes of one
# agent for the zoo), by algorithm and environment; sources, env versions and step counts in
# docs/benchmarks.md, "MuJoCo suite (issue 20)".
#   cleanrl: vwxyzjn/cleanrl docs/benchmark/ppo_continuous_action.md (tag pr-424; MuJoCo v4, gymnasium 0.28.1,
#            1M steps, 3 seeds); "8M": docs/rl-algorithms/rpo.md, ppo_continuous_action_8M (v4, 8M steps),
#            CleanRL's only PPO figures for Ant, Swimmer, Reacher and InvertedDoublePendulum.
#   zoo:     DLR-RM/rl-baselines3-zoo benchmark.md (gym v3 environments, 1M steps, one agent, tuned
#            hyperparameters, deterministic evaluation); no PPO row for Humanoid, Reacher or
#            InvertedDoublePendulum, no VPG at all.
Reference = tuple[float, float, str]
REFERENCES: dict[tuple[str, str], dict[str, Reference]] = {
    ("ppo", "Hopper"): {"cleanrl": (2382.86, 271.74, "v4, 1M"), "zoo": (2410.435, 10.026, "v3, 1M")},
    ("ppo", "Walker2d"): {"cleanrl": (2287.95, 571.78, "v4, 1M"), "zoo": (3478.798, 821.708, "v3, 1M")},
    ("ppo", "HalfCheetah"): {"cleanrl": (1442.64, 46.03, "v4, 1M"), "zoo": (5819.099, 663.530, "v3, 1M")},
    ("ppo", "Ant"): {"cleanrl": (1824.17, 905.78, "v4, 8M"), "zoo": (1327.158, 451.577, "v3, 1M")},
    ("ppo", "Humanoid"): {"cleanrl": (716.11, 49.08, "v4, 1M")},
    ("ppo", "Swimmer"): {"cleanrl": (124.88, 22.24, "v4, 8M"), "zoo": (281.561, 9.671, "v3, 1M")},
    ("ppo", "Reacher"): {"cleanrl": (-4.65, 0.96, "v4, 8M")},
    ("ppo", "InvertedDoublePendulum"): {"cleanrl": (5626.22, 289.23, "v4, 8M")},
    ("a2c", "Hopper"): {"zoo": (733.454, 376.574, "v3, 1M")},
    ("a2c", "Walker2d"): {"zoo": (581.835, 127.597, "v3, 1M")},
    ("a2c", "HalfCheetah"): {"zoo": (3041.174, 157.265, "v3, 1M")},
}
# TRPO's and NPG's published figures (issue 31), each with its metric; the standard deviation is over seeds
# (None where the figure is read off a graph). Sources: thu-ml/tianshou examples/mujoco/README.md, "TRPO"
# and "NPG" (gym v3 environments, 1M steps, 10 seeds; the peak over training of the seed-mean of 10 test
# episodes with sampled actions); OpenAI Baselines' trpo_mpi 1M benchmark (openai/baselines
# benchmarks_mujoco1M.htm, results at baselines ea68f3b: "Reward (avg. 6 seeds)", the training return at
# 1M); Spinning Up's TRPO curves (spinningup.openai.com bench.html, TensorFlow: the epoch's training
# return), read at 1M steps off the graph ("~") by Tianshou's TRPO table; older environment versions.
OTHER_REFERENCES: dict[tuple[str, str], list[tuple[str, float, float | None, str]]] = {
    ("trpo", "HalfCheetah"): [
        ("Baselines trpo_mpi", 1289.7, None, "train return, 6 seeds, 1M"),
        ("Spinning Up", 850, None, "~, train return, 1M"),
        ("Tianshou", 4471.2, 804.9, "peak of the seed-mean sampled eval, v3, 1M"),
    ],
    ("trpo", "Hopper"): [
        ("Baselines trpo_mpi", 1912.9, None, "train return, 6 seeds, 1M"),
        ("Spinning Up", 1200, None, "~, train return, 1M"),
        ("Tianshou", 2046.0, 1037.9, "peak of the seed-mean sampled eval, v3, 1M"),
    ],
    ("trpo", "Walker2d"): [
        ("Baselines trpo_mpi", 2342.63, None, "train return, 6 seeds, 1M"),
        ("Spinning Up", 600, None, "~, train return, 1M"),
        ("Tianshou", 3826.7, 782.7, "peak of the seed-mean sampled eval, v3, 1M"),
    ],
    ("npg", "HalfCheetah"): [("Tianshou", 3485.2, 716.6, "peak of the seed-mean sampled eval, v3, 1M")],
    ("npg", "Hopper"): [("Tianshou", 1915.2, 550.5, "peak of the seed-mean sampled eval, v3, 1M")],
    ("npg", "Walker2d"): [("Tianshou", 2503.2, 963.3, "peak of the seed-mean sampled eval, v3, 1M")],
}

# Issue 32's goals: the best published on-policy figure at 1M steps per task, by each reference's metric
# (sources, commits and settings in docs/benchmarks.md, "The best on-policy figures at 1M (issue 32)").
#   "peak":  Tianshou (thu-ml/tianshou examples/mujoco/README.md; gym v3, Reacher and IDP v2; 10 seeds): the
#            maximum over training of the mean over seeds of 10 test episodes with sampled actions;
#   "final": SB3 zoo (benchmark.md at 22e3ff24; v3; one agent): the final policy's deterministic return,
#            against our mean over seeds of final_eval.json;
#   "train": CleanRL (1M, v4): the training return, against our mean over seeds of the last 100k steps.
Goal = tuple[str, str, float]  # (metric, who, figure)
GOALS: dict[tuple[str, str], list[Goal]] = {
    ("ppo", "Hopper"): [("peak", "Tianshou PPO", 2609.3), ("final", "zoo TRPO", 3618.386)],
    ("ppo", "Walker2d"): [("peak", "Tianshou TRPO", 3826.7), ("final", "zoo TRPO", 4933.148)],
    ("ppo", "HalfCheetah"): [("peak", "Tianshou PPO", 5783.9), ("final", "zoo PPO", 5819.099)],
    ("ppo", "Ant"): [("peak", "Tianshou A2C", 3485.4), ("final", "zoo TRPO", 4982.301)],
    ("ppo", "Humanoid"): [("peak", "Tianshou A2C", 1726.0), ("train", "CleanRL PPO", 716.11)],
    ("ppo", "Swimmer"): [("peak", "Tianshou PPO", 66.7), ("final", "zoo TRPO", 365.663)],
    ("ppo", "Reacher"): [("peak", "Tianshou PPO", -4.1)],
    ("ppo", "InvertedDoublePendulum"): [("peak", "Tianshou A2C", 9257.7)],
    ("a2c", "Hopper"): [("final", "zoo A2C", 733.454), ("peak", "Tianshou A2C", 1253.2)],
    ("a2c", "Walker2d"): [("final", "zoo A2C", 581.835), ("peak", "Tianshou A2C", 1091.6)],
    ("a2c", "HalfCheetah"): [("final", "zoo A2C", 3041.174), ("peak", "Tianshou A2C", 1829.9)],
}


@dataclass
class Run:
    algo: str
    env: str
    seed: int
    data_dir: str
    epochs: int
    tag: str = ""  # a settings trial's name: the runs go to <algo>-<env>-<tag>
    extra: tuple[str, ...] = ()  # its flags, over the config file's

    @property
    def name(self) -> str:
        return f"{self.algo}-{self.env.lower()}" + (f"-{self.tag}" if self.tag else "")

    @property
    def dir(self) -> str:
        return os.path.join(self.data_dir, self.name, f"{self.name}_s{self.seed}")

    @property
    def config(self) -> str | None:
        """The config file the run uses (relative to the repository): configs/mujoco/<Env>.yaml for PPO,
        configs/mujoco/<algo>/<Env>.yaml for another algorithm that has one; None: its defaults."""
        path = (
            f"configs/mujoco/{self.env}.yaml"
            if self.algo == "ppo"
            else f"configs/mujoco/{self.algo}/{self.env}.yaml"
        )
        return path if self.algo == "ppo" or os.path.exists(os.path.join(ROOT, path)) else None

    def log(self) -> str:
        return os.path.join(self.data_dir, "logs", f"{self.name}_s{self.seed}.log")

    def steps_per_epoch(self) -> int:
        """The run's steps per epoch: --extra's, else its config file's, else the suite's default."""
        if "--steps_per_epoch" in self.extra:
            return int(self.extra[self.extra.index("--steps_per_epoch") + 1])
        if self.config:
            import yaml

            with open(os.path.join(ROOT, self.config)) as f:
                return int(yaml.safe_load(f).get("steps_per_epoch", STEPS_PER_EPOCH[self.algo]))
        return STEPS_PER_EPOCH[self.algo]


def plan(
    data_dir: str,
    algos: list[str],
    envs: list[str],
    seeds: list[int],
    epochs: int | None = None,
    tag: str = "",
    extra: tuple[str, ...] = (),
) -> list[Run]:
    """Every run of the suite in the order they are made: by algorithm, then seed, then environment.
    ``epochs`` replaces every run's EPOCHS (short trial suites); ``tag`` and ``extra`` make a settings
    trial (its own run names, flags over the config files)."""
    return [
        Run(algo, env, seed, data_dir, epochs or EPOCHS[algo], tag, extra)
        for algo in algos
        for seed in seeds
        for env in envs
        if algo == "ppo" or env in SMALL_ENVS
    ]


def read_progress(run_dir: str) -> list[dict[str, float]]:
    """progress.txt as a list of rows of floats (empty when there is none yet)."""
    path = os.path.join(run_dir, "progress.txt")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().splitlines()
    if not lines:
        return []
    header = lines[0].split("\t")
    rows = []
    for line in lines[1:]:
        cells = line.split("\t")
        if len(cells) == len(header):  # a row cut short by a kill is not a row
            rows.append({k: float(v) if v not in ("", "nan") else math.nan for k, v in zip(header, cells)})
    return rows


def checkpoints(run_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(run_dir, "checkpoints", "ckpt-*.pt")))


def is_finished(run: Run) -> bool:
    """Whether the run's progress.txt reaches its last epoch (config.json's, when --extra changed it)."""
    rows = read_progress(run.dir)
    epochs = run.epochs
    config = os.path.join(run.dir, "config.json")
    if os.path.exists(config):
        with open(config) as f:
            epochs = json.load(f).get("epochs", epochs)
    return bool(rows) and rows[-1]["Epoch"] >= epochs - 1


def state(run: Run) -> str:
    """done, resume (a checkpoint to continue from), restart (a directory without one) or new."""
    if is_finished(run):
        return "done"
    if checkpoints(run.dir):
        return "resume"
    if os.path.isdir(run.dir) and os.listdir(run.dir):
        return "restart"
    return "new"


def command(run: Run, how: str) -> list[str]:
    """The spinppo command line that starts (``new``/``restart``) or continues (``resume``) a run."""
    base = [sys.executable, "-m", "spinppo.run", run.algo]
    if how == "resume":
        return base + ["--resume", run.dir]
    cmd = base + (["--config", run.config] if run.config else ["--env", run.env])
    if run.epochs != EPOCHS[run.algo] or not run.config:
        cmd += ["--epochs", str(run.epochs)]
    cmd += ["--seed", str(run.seed), "--cpu", str(CPU), "--save_freq", str(SAVE_FREQ)]
    eval_freq = max(1, round(EVAL_EVERY_STEPS / run.steps_per_epoch()))
    cmd += ["--eval_freq", str(eval_freq), "--eval_episodes", str(EVAL_EPISODES)]
    if EVAL_SAMPLED:
        cmd += ["--eval_deterministic", "false"]
    cmd += ["--data_dir", run.data_dir, "--exp_name", run.name]
    return with_extra(cmd, run.extra) + (["--overwrite"] if how == "restart" else [])


def with_extra(cmd: list[str], extra: list[str]) -> list[str]:
    """``cmd`` with the flags of ``extra`` added, each replacing the same flag (and its values) in ``cmd``."""

    def flags(args: list[str]) -> list[tuple[str, list[str]]]:
        out: list[tuple[str, list[str]]] = []
        for a in args:
            if a.startswith("--"):
                out.append((a, []))
            elif out:
                out[-1][1].append(a)
            else:
                raise SystemExit(f"bench_suite: --extra must start with a flag, got {a!r}")
        return out

    head = cmd[:4]  # python -m spinppo.run ALGO
    given = dict(flags(extra))
    kept = [(f, v) for f, v in flags(cmd[4:]) if f not in given]
    return head + [x for f, v in kept + list(given.items()) for x in (f, *v)]


class Stopper:
    """SIGTERM and SIGINT: pass the signal once to the run in progress (in its own process group, so that
    a signal to this script's group reaches it once, from here) and start no further run."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.child: subprocess.Popen[bytes] | None = None
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        first = self.signum is None
        self.signum = signum
        if first and self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)


def train(run: Run, how: str, stopper: Stopper) -> int:
    """Run one spinppo command to its end; its output is appended to the run's log. Returns its status."""
    cmd = command(run, how)
    os.makedirs(os.path.dirname(run.log()), exist_ok=True)
    with open(run.log(), "ab") as log:
        log.write(f"\n$ {' '.join(cmd[1:])}\n".encode())
        log.flush()
        stopper.child = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        while True:
            try:
                return stopper.child.wait()
            except KeyboardInterrupt:  # the handler above passed it on; keep waiting for the run to stop
                continue


def evaluate(run: Run) -> dict[str, Any]:
    """The final policy's deterministic return over EVAL_EPISODES episodes, written to final_eval.json."""
    import torch

    from spinppo.tools.test_policy import load_policy_and_env, run_policy

    torch.set_num_threads(1)
    rows = read_progress(run.dir)
    env, get_action = load_policy_and_env(run.dir, "last", deterministic=True)
    try:
        episodes = run_policy(env, get_action, num_episodes=EVAL_EPISODES, seed=EVAL_SEED, verbose=False)
    finally:
        env.close()
    rets = [e.ret for e in episodes]
    result = {
        "algo": run.algo,
        "env": run.env,
        "seed": run.seed,
        "checkpoint": "pyt_save/model.pt",
        "TotalEnvInteracts": rows[-1]["TotalEnvInteracts"],
        "episodes": len(episodes),
        "deterministic": True,
        "eval_seed": EVAL_SEED,
        "returns": rets,
        "lengths": [e.length for e in episodes],
        "mean": statistics.fmean(rets),
        "std": statistics.pstdev(rets),
    }
    path = os.path.join(run.dir, EVAL_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)
    return result


def read_eval(run: Run) -> dict[str, Any] | None:
    """final_eval.json when it belongs to the run's final policy (same step count), else None."""
    path = os.path.join(run.dir, EVAL_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        result = json.load(f)
    rows = read_progress(run.dir)
    return result if rows and result.get("TotalEnvInteracts") == rows[-1]["TotalEnvInteracts"] else None


def train_score(rows: list[dict[str, float]]) -> float:
    """Mean AverageEpRet over the epochs with TotalEnvInteracts > TAIL_FROM, weighted by episodes ended."""
    total, weight, prev = 0.0, 0.0, 0.0
    for r in rows:
        steps, prev = r["TotalEnvInteracts"] - prev, r["TotalEnvInteracts"]
        if r["TotalEnvInteracts"] <= TAIL_FROM or not math.isfinite(r["AverageEpRet"]):
            continue
        w = steps / r["EpLen"] if r.get("EpLen", 0) > 0 else 1.0
        total += w * r["AverageEpRet"]
        weight += w
    return total / weight if weight else math.nan


def best_eval(rows: list[dict[str, float]]) -> float:
    """The best EvalEpRet over the run's evaluations during training (NaN without)."""
    evals = [r["EvalEpRet"] for r in rows if math.isfinite(r.get("EvalEpRet", math.nan))]
    return max(evals) if evals else math.nan


def best_of_mean_curve(runs_rows: list[list[dict[str, float]]]) -> float:
    """Tianshou's metric exactly: the maximum over evaluation points of the mean over seeds of EvalEpRet
    (the peak of the seed-averaged evaluation curve; its analysis.py), over the points every run has.
    Never above the mean of each seed's best (best_eval). NaN without evaluations."""
    curves = [
        {r["TotalEnvInteracts"]: r["EvalEpRet"] for r in rows if math.isfinite(r.get("EvalEpRet", math.nan))}
        for rows in runs_rows
    ]
    if not curves or not all(curves):
        return math.nan
    common = set.intersection(*(set(c) for c in curves))
    return max((statistics.fmean(c[x] for c in curves) for x in common), default=math.nan)


def _fmt(x: float | None, digits: int = 0) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _stat(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if math.isfinite(v)]
    return (statistics.median(values), statistics.fmean(values)) if values else (None, None)


def summarize(runs: list[Run]) -> list[str]:
    """The markdown table over finished runs, one row per environment and algorithm of ``runs``."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.env, r.algo), []).append(r)
    lines = [
        "| environment (v5) | algo | config | seeds done | train return, last 100k: median / mean "
        "| final det. eval: median / mean | CleanRL | SB3 zoo | best eval during training: median / mean "
        "| peak of the seed-mean eval curve | other published |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for env in ENVS:
        for algo in ALGOS + EXTRA_ALGOS:
            members = groups.get((env, algo))
            if not members:
                continue
            done = [r for r in members if is_finished(r)]
            scores = [train_score(read_progress(r.dir)) for r in done]
            evals = [e["mean"] for e in (read_eval(r) for r in done) if e is not None]
            b_med, b_mean = _stat([best_eval(read_progress(r.dir)) for r in done])
            peak = best_of_mean_curve([read_progress(r.dir) for r in done])
            t_med, t_mean = _stat(scores)
            e_med, e_mean = _stat(evals)
            ref = REFERENCES.get((algo, env), {})
            cols = [
                f"{ref[k][0]:.2f} ± {ref[k][1]:.2f} ({ref[k][2]})" if k in ref else "-"
                for k in ("cleanrl", "zoo")
            ]
            first = members[0]
            config = f"`{first.config}`" if first.config else f"defaults, `--epochs {first.epochs}`"
            if first.extra:
                config += f" + `{' '.join(first.extra)}`"
            elif first.tag:  # summarised without --extra: the trial's flags are in each run's config.json
                config = f"trial `{first.tag}` (its flags: each run's config.json)"
            seeds = ", ".join(str(r.seed) for r in done)
            lines.append(
                f"| {env} | {algo.upper()} | {config} | {len(done)}/{len(members)}"
                f"{f' ({seeds})' if done else ''} | {_fmt(t_med)} / {_fmt(t_mean)} "
                f"| {_fmt(e_med)} / {_fmt(e_mean)}{f' ({len(evals)})' if len(evals) != len(done) else ''} "
                f"| {cols[0]} | {cols[1]} | {_fmt(b_med)} / {_fmt(b_mean)} | {_fmt(peak)} "
                f"| {_other(algo, env)} |"
            )
    return lines


def goals_table(runs: list[Run]) -> list[str]:
    """Issue 32's goals against the finished runs of ``runs``, each by its reference's own metric."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        if is_finished(r):
            groups.setdefault((r.algo, r.env), []).append(r)
    lines = [
        "| environment (v5) | algo | seeds | metric | reference | ours | met |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for (algo, env), goals in GOALS.items():
        done = groups.get((algo, env))
        if not done:
            continue
        rows = [read_progress(r.dir) for r in done]
        finals = [e["mean"] for e in (read_eval(r) for r in done) if e is not None]
        ours = {
            "peak": best_of_mean_curve(rows),
            "final": statistics.fmean(finals) if len(finals) == len(done) else math.nan,
            "train": statistics.fmean(train_score(x) for x in rows),
        }
        what = {
            "peak": "peak of the seed-mean sampled eval",
            "final": "final det. eval, mean",
            "train": "train return, last 100k, mean",
        }
        for metric, who, figure in goals:
            mine = ours[metric]
            met = "-" if not math.isfinite(mine) else ("yes" if mine >= figure else "no")
            lines.append(
                f"| {env} | {algo.upper()} | {len(done)} ({', '.join(str(r.seed) for r in done)}) "
                f"| {what[metric]} | {who} {figure:g} | {_fmt(mine, 1)} | {met} |"
            )
    return lines


def _other(algo: str, env: str) -> str:
    """The OTHER_REFERENCES cell of a row: each source's figure, its spread and its metric."""
    return (
        "; ".join(
            f"{name} {value:g}{'' if std is None else f' ± {std:g}'} ({what})"
            for name, value, std, what in OTHER_REFERENCES.get((algo, env), [])
        )
        or "-"
    )


def plot_suite(runs: list[Run], out: str) -> str | None:
    """One panel per environment: AverageEpRet against TotalEnvInteracts, per algorithm the mean over seeds
    with a band of one standard deviation (spinppo.tools.plot's curves). Runs in progress are included."""
    from matplotlib.figure import Figure

    from spinppo.tools.plot import curves, load_runs, plot_curves

    envs = [e for e in ENVS if any(r.env == e and read_progress(r.dir) for r in runs)]
    if not envs:
        return None
    cols = 4 if len(envs) > 4 else len(envs)
    rows = math.ceil(len(envs) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), dpi=100, layout="constrained")
    for i, env in enumerate(envs):
        dirs = [r.dir for r in runs if r.env == env and read_progress(r.dir)]
        ax = fig.add_subplot(rows, cols, i + 1)
        # One curve per algorithm: runs copied in from a settings search keep their own exp_name.
        algo_of = {os.path.realpath(r.dir): r.algo.upper() for r in runs}
        loaded = load_runs(dirs)
        for run in loaded:
            run.condition = algo_of.get(os.path.realpath(run.path), run.condition)
        plot_curves(ax, curves(loaded, smooth=5), legend=True)
        ax.set_title(f"{env}-v5 ({len(dirs)} runs)")
        ax.set_ylabel("AverageEpRet")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--data_dir", default="/tmp/bench_suite", help="where the runs go")
    p.add_argument("--envs", nargs="+", default=ENVS, choices=ENVS, metavar="ENV", help=" ".join(ENVS))
    p.add_argument("--algos", nargs="+", default=ALGOS, choices=ALGOS + EXTRA_ALGOS)
    p.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    p.add_argument("--epochs", type=int, help="every run this many epochs instead (a short trial suite)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument(
        "--summarize", action="store_true", help="print the table of finished runs, write the plot"
    )
    p.add_argument(
        "--plot",
        help="with --summarize: the plot's file (default: docs/img/suite.png for the whole default suite, "
        "none for a trial or a subset, so that they never overwrite the suite's plot)",
    )
    p.add_argument("--no-eval", action="store_true", help="do not evaluate finished runs")
    p.add_argument("--tag", default="", help="a settings trial: its runs go to <algo>-<env>-<tag>")
    p.add_argument(
        "--extra",
        default="",
        help="a settings trial's flags over the config files, one string: --extra '--lr 3e-4 --ent_coef 0'",
    )
    args = p.parse_args(argv)
    whole_suite = not args.tag and args.envs == ENVS and args.algos == ALGOS and args.seeds == SEEDS
    if args.plot is None and whole_suite:
        args.plot = os.path.join(ROOT, "docs", "img", "suite.png")
    if args.extra and not args.tag:
        p.error("--extra needs --tag (a trial's runs must not mix with the suite's)")
    data_dir = os.path.abspath(args.data_dir)
    runs = plan(
        data_dir, args.algos, args.envs, args.seeds, args.epochs, args.tag, tuple(shlex.split(args.extra))
    )

    if args.summarize:
        print("\n".join(summarize(runs)))
        print("\nIssue 32's goals, each by its reference's metric:\n")
        print("\n".join(goals_table(runs)))
        todo = [r for r in runs if not is_finished(r)]
        if todo:
            print(f"\nnot finished ({len(todo)}): " + ", ".join(f"{r.name} s{r.seed}" for r in todo))
        if not args.plot:
            print("\nno plot written: a trial or a subset of the suite writes one only with --plot FILE")
            return 0
        written = plot_suite(runs, args.plot)
        print(f"\nplot: {written}" if written else "\nno run has a logged epoch yet: no plot")
        return 0

    if args.dry_run:
        for r in runs:
            how = state(r)
            evaluated = " (evaluated)" if how == "done" and read_eval(r) else ""
            shown = command(r, how)[1:] if how != "done" else ["skip", r.dir]
            print(f"{how:8s}{evaluated} {' '.join(shown)}")
        return 0

    stopper = Stopper()
    for r in runs:
        if stopper.signum is not None:
            break
        how = state(r)
        if how != "done":
            t0 = time.time()
            print(f"{time.strftime('%H:%M:%S')} {how} {r.name} s{r.seed}: log {r.log()}", flush=True)
            status = train(r, how, stopper)
            print(f"  exit {status} after {time.time() - t0:.0f} s", flush=True)
            if stopper.signum is not None:
                break
            if status != 0 or not is_finished(r):
                print(f"  {r.name} s{r.seed} did not finish: see {r.log()}; going on", flush=True)
                continue
        if not args.no_eval and read_eval(r) is None:
            result = evaluate(r)
            print(f"  {r.name} s{r.seed}: final deterministic eval {result['mean']:.1f}", flush=True)
    if stopper.signum is not None:
        print(f"stopped by signal {stopper.signum}: run the same command again to continue", flush=True)
        return 128 + stopper.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
