"""Stragglers benchmark (issue 19): wall-clock time to a fixed training return for A2C, A3C, PPO and PPO
with preemption, 2 ranks, without and with an artificially slow rank; the MPI and waiting share of each.

    python scripts/bench_stragglers.py --data_dir /tmp/bench_stragglers            # every run, then the table
    python scripts/bench_stragglers.py --data_dir /tmp/bench_stragglers --summarize
    python scripts/bench_stragglers.py --envs CartPole --variants a3c ppo --data_dir /tmp/bs

Each run is ``python -m spinppo.run ALGO --env ENV --cpu 2 --seed 0 ...`` (cwd: the repository), watched
through its progress.txt: at the first epoch whose AverageEpRet reaches the target the run is stopped
(SIGTERM) and the epoch's ``Time`` is the time to the target; a run that ends without reaching it reports
its last row. The slow condition runs ``--env scripts.straggler:Straggler-v0 --env_kwargs env=ENV
delay=D``: every environment step on rank 1 first sleeps D seconds, with D twice the time a step took
(per environment, per rank) in the same variant's run without the straggler, so that rank 1 runs about
three times slower. With 2 ranks DD-PPO's --preempt 0.6 would wait for both ranks (ceil(0.6 x 2) = 2):
the preemption variant uses 0.5, the fraction that lets one rank preempt the other.

The MPI share is the sum of the MPITime column up to that epoch over its Time (for the synchronous
algorithms it includes waiting at collectives for the slower rank; for A3C it is rank 0's time in MPI
calls); for A3C the wait share is the WaitTime column (the mean seconds a rank waited for rank 0's answer)
summed over the same epochs, over Time. Results go to DATA/results.json (one entry per run, rerunning a
run replaces its entry).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The target training return per environment, and the most epochs a run may take to reach it. Walker2d's
# target is what A2C reaches within 1M steps (docs/benchmarks.md, MuJoCo suite), so that every
# algorithm can meet it.
ENVS = {
    "CartPole": {"id": "CartPole-v1", "target": 450.0, "steps": 300_000},
    "Walker2d": {"id": "Walker2d-v5", "target": 400.0, "steps": 1_000_000},
}
VARIANTS = {
    "a2c": ["a2c"],
    "a3c": ["a3c"],
    "ppo": ["ppo"],
    "ppo-preempt": ["ppo", "--preempt", "0.5"],
}
STEPS_PER_EPOCH = 4000  # a multiple of 2 ranks x 8 environments x 5 steps (A2C, A3C) and of PPO's


def read_rows(path: str) -> list[dict[str, float]]:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    if len(lines) < 2:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, map(float, line.split("\t")))) for line in lines[1:] if line.count("\t") >= 1]


def run_one(args: argparse.Namespace, env: str, variant: str, delay: float) -> dict:
    """Train until the target return or the step budget; return the figures of that epoch."""
    spec = ENVS[env]
    name = f"{variant}-{env.lower()}-{'slow' if delay else 'even'}"
    algo, *flags = VARIANTS[variant]
    env_flags = ["--env", spec["id"]]
    if delay:
        env_flags = ["--env", "scripts.straggler:Straggler-v0", "--env_kwargs", f"env={spec['id']}"]
        env_flags += [f"delay={delay:.6f}"]
    epochs = spec["steps"] // STEPS_PER_EPOCH
    cmd = [sys.executable, "-m", "spinppo.run", algo, *env_flags, *flags, "--cpu", "2", "--seed", "0"]
    cmd += ["--epochs", str(epochs), "--steps_per_epoch", str(STEPS_PER_EPOCH), "--save_freq", "1000"]
    cmd += ["--tensorboard", "False", "--data_dir", args.data_dir, "--exp_name", name, "--overwrite"]
    progress = os.path.join(args.data_dir, name, f"{name}_s0", "progress.txt")
    # The previous run's table would be read as this one's before --overwrite replaces it.
    shutil.rmtree(os.path.join(args.data_dir, name), ignore_errors=True)
    log = open(os.path.join(args.data_dir, f"{name}.log"), "w")
    print(f"{time.strftime('%H:%M:%S')} {name}: {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    reached = None
    while proc.poll() is None:
        time.sleep(0.5)
        rows = read_rows(progress)
        hit = next((i for i, r in enumerate(rows) if r["AverageEpRet"] >= spec["target"]), None)
        if hit is not None:
            reached = hit
            os.killpg(proc.pid, signal.SIGTERM)  # stops at the epoch's end; the figures are the hit's
            break
    proc.wait()
    log.close()
    rows = read_rows(progress)
    if reached is None:
        hit = next((i for i, r in enumerate(rows) if r["AverageEpRet"] >= spec["target"]), None)
        reached = hit
    upto = rows[: (reached if reached is not None else len(rows) - 1) + 1]
    last = upto[-1]
    per_rank_step = statistics.median(2.0 / r["StepsPerSec"] for r in upto)  # seconds per step per rank
    result = {
        "env": env,
        "variant": variant,
        "slow": bool(delay),
        "delay": delay,
        "target": spec["target"],
        "reached": reached is not None,
        "time": last["Time"],
        "steps": last["TotalEnvInteracts"],
        "return": last["AverageEpRet"],
        "mpi_share": sum(r["MPITime"] for r in upto) / last["Time"],
        "wait_share": sum(r.get("WaitTime", 0.0) for r in upto) / last["Time"],
        "steps_per_sec": last["TotalEnvInteracts"] / last["Time"],
        "rank_step_seconds": per_rank_step,
    }
    print(f"  {json.dumps(result)}", flush=True)
    return result


def load_results(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def save_result(path: str, result: dict) -> None:
    results = [
        r
        for r in load_results(path)
        if (r["env"], r["variant"], r["slow"]) != (result["env"], result["variant"], result["slow"])
    ]
    results.append(result)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)


def summarize(path: str) -> str:
    """The results as a markdown table."""
    lines = [
        "| env (target) | variant | rank 1 | time to target (s) | steps | steps/s | MPI share | wait share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {v: i for i, v in enumerate(VARIANTS)}
    for r in sorted(load_results(path), key=lambda r: (r["env"], order[r["variant"]], r["slow"])):
        when = f"{r['time']:.0f}" if r["reached"] else f"not reached ({r['return']:.0f} at {r['time']:.0f})"
        slow = f"slow ({r['delay'] * 1e3:.2f} ms/step)" if r["slow"] else "even"
        wait = f"{r['wait_share']:.1%}" if r["variant"] == "a3c" else ""
        lines.append(
            f"| {r['env']} ({r['target']:g}) | {r['variant']} | {slow} | {when} | {r['steps']:.0f} | "
            f"{r['steps_per_sec']:.0f} | {r['mpi_share']:.1%} | {wait} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="/tmp/bench_stragglers")
    parser.add_argument("--envs", nargs="+", default=list(ENVS), choices=list(ENVS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--summarize", action="store_true", help="only print the table of the results so far")
    args = parser.parse_args()
    os.makedirs(args.data_dir, exist_ok=True)
    results = os.path.join(args.data_dir, "results.json")
    if not args.summarize:
        for env in args.envs:
            for variant in args.variants:
                even = run_one(args, env, variant, 0.0)
                save_result(results, even)
                # Rank 1 about three times slower than this variant's own pace without it.
                slow = run_one(args, env, variant, 2.0 * even["rank_step_seconds"])
                save_result(results, slow)
    print(summarize(results))


if __name__ == "__main__":
    main()
