"""A3C (``python -m spinppo.run a3c``): asynchronous gradients to the shared parameters on rank 0, under a
real mpirun. The straggler is ``tests.slow_env:SlowCartPole-v0`` (every step sleeps, longer on one rank)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

from tests.conftest import MPIRUN, REPO, mpirun_commands, run
from tests.test_failures import rank_pid, start, wait_rows

PY = [sys.executable, "-m", "spinppo.run"]


def table(run_dir) -> dict[str, list[float]]:
    lines = (run_dir / "progress.txt").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [[float(x) for x in line.split("\t")] for line in lines[1:]]
    return {name: [r[i] for r in rows] for i, name in enumerate(header)}


def mpi(n: int, args: list[str], timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    return run([MPIRUN, "-np", str(n), *PY, *args], timeout=timeout, check=check)


def digests(out: str) -> list[str]:
    return next(line.split()[1:] for line in out.splitlines() if line.startswith("DIGESTS"))


@pytest.mark.parametrize("ranks", [2, 3])
def test_a3c_learns_cartpole_and_ends_with_one_copy_of_the_parameters(tmp_path, ranks):
    """Deterministic evaluation reaches 475 (then --stop_at_return ends the run) within 40 epochs of 3840
    steps (a random policy's evaluation: about 10). Measured (idle machine, two runs each): 2 ranks stopped
    after epoch 1 both times, 3 ranks after epochs 18 and 10."""
    kwargs = dict(epochs=40, eval_freq=1, eval_episodes=5, stop_at_return=475.0, seed=1)
    out = run(
        [MPIRUN, "-np", str(ranks), sys.executable, str(REPO / "tests" / "train_check.py"), "a3c"]
        + ["CartPole-v1", str(tmp_path), json.dumps(kwargs)],
        timeout=400,
    ).stdout
    t = table(tmp_path)
    assert t["EvalEpRet"][-1] >= 475 and len(t["Epoch"]) < 40, t["EvalEpRet"]
    assert "stopped with a checkpoint" in out
    assert len(set(digests(out))) == 1, "the ranks left with different parameters"
    applied = out.split("Gradients applied, by rank: ")[1].split("\n")[0].split()
    assert [int(a.split("=")[0]) for a in applied] == list(range(ranks))
    assert all(int(a.split("=")[1]) > 10 for a in applied), applied  # every rank contributed
    assert (tmp_path / "pyt_save" / "model_best.pt").exists()


@pytest.mark.parametrize("ranks", [2, 3])
def test_a3c_learns_pendulum(tmp_path, ranks):
    """A continuous action space: Pendulum, from about -1200 (random) to a deterministic evaluation of -300
    or better within 160 epochs of 4096 steps. Measured: 2 ranks -1180 (training return) for 15 epochs, -240
    at 29; 3 ranks stopped after 34-48 epochs in 13 runs, and one run of CI's (2026-12-07) was still at -491
    after 80: the ranks' gradients reach the parameter rank in the order the scheduler gives, so runs
    differ, and the limit leaves room for a slow one (a run that stops costs the same)."""
    flags = ["--gamma", "0.95", "--lam", "0.95", "--n_steps", "16", "--log_std_init", "-1", "--act", "relu"]
    flags += ["--norm_reward", "True", "--norm_adv", "True", "--lr", "0.001", "--steps_per_epoch", "4096"]
    flags += ["--eval_freq", "2", "--eval_episodes", "5", "--stop_at_return", "-300", "--epochs", "160"]
    mpi(ranks, ["a3c", "--env", "Pendulum-v1", *flags, "--data_dir", str(tmp_path), "--exp_name", "p"])
    t = table(tmp_path / "p" / "p_s0")
    assert t["EvalEpRet"][-1] >= -300 and len(t["Epoch"]) < 160, t["EvalEpRet"]


def step_rates(record) -> dict[int, float]:
    """Steps per second of each rank's environments, from the lines SlowCartPole wrote at close."""
    by_rank: dict[int, list[dict]] = {}
    for line in record.read_text().splitlines():
        entry = json.loads(line)
        by_rank.setdefault(entry["rank"], []).append(entry)
    return {
        rank: sum(e["steps"] for e in envs) / (max(e["last"] for e in envs) - min(e["first"] for e in envs))
        for rank, envs in by_rank.items()
    }


def test_no_rank_waits_for_a_slow_one(tmp_path):
    """Three ranks whose every step sleeps (2 ms; rank 1's 6 ms, three times as long). Under A2C every
    rollout ends together, so ranks 0 and 2 step at the slow rank's pace; under A3C at their own: at least
    1.8 times faster (measured on 2 busy cores: 265 and 300 steps/s against 118, 2.2-2.5 times)."""
    commands = []
    for algo in ("a2c", "a3c"):
        env = ["--env", "tests.slow_env:SlowCartPole-v0", "--env_kwargs", "slow_rank=1", "delay=0.006"]
        env += ["base_delay=0.002", f"record={tmp_path / f'{algo}.jsonl'}"]
        commands.append(
            [algo, *env, "--epochs", "2", "--steps_per_epoch", "1800", "--num_envs", "2"]
            + ["--n_steps", "5", "--data_dir", str(tmp_path), "--exp_name", algo]
        )
    mpirun_commands(3, commands)  # one job, one after the other
    rates = {algo: step_rates(tmp_path / f"{algo}.jsonl") for algo in ("a2c", "a3c")}
    for fast in (0, 2):
        assert rates["a3c"][fast] >= 1.8 * rates["a2c"][fast], rates
    t = table(tmp_path / "a3c" / "a3c_s0")
    assert t["TotalEnvInteracts"][-1] >= 3600 and len(t["Epoch"]) == 2


def test_gradients_older_than_max_staleness_are_dropped_and_counted(tmp_path):
    """--max_staleness 0: only a gradient computed on the newest parameters counts; with three ranks
    sending at once most are not. A bound no gradient of this short run can pass (1000 versions) drops
    none. (The default, 4 x ranks, drops a few when a rank of three on two cores waits for a core.)"""
    common = ["--env", "CartPole", "--epochs", "2", "--steps_per_epoch", "2400", "--data_dir", str(tmp_path)]
    strict = ["a3c", *common, "--max_staleness", "0", "--exp_name", "strict"]
    mpirun_commands(3, [strict, ["a3c", *common, "--max_staleness", "1000", "--exp_name", "lenient"]])
    strict, lenient = table(tmp_path / "strict" / "strict_s0"), table(tmp_path / "lenient" / "lenient_s0")
    assert sum(strict["Dropped"]) > 5, strict
    assert all(s == 0 or math.isnan(s) for s in strict["Staleness"]), strict  # (NaN: none applied)
    assert sum(lenient["Dropped"]) == 0 and max(lenient["Staleness"]) > 0, lenient
    assert lenient["TotalEnvInteracts"] == [2400, 4800]


def test_resume_continues_from_the_saved_parameters_and_counts(tmp_path):
    job = ["a3c", "--env", "CartPole", "--steps_per_epoch", "2000", "--save_freq", "1", "--exp_name", "r"]
    job += ["--max_staleness", "12"]  # (an int | None flag read back from config.json)
    mpi(2, [*job, "--epochs", "3", "--data_dir", str(tmp_path)])
    run_dir = tmp_path / "r" / "r_s0"
    saved = torch.load(run_dir / "checkpoints" / "ckpt-000002.pt", weights_only=True)
    assert saved["run_state"]["total_steps"] == table(run_dir)["TotalEnvInteracts"][-1]
    model = torch.load(run_dir / "pyt_save" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(model[k], saved["model"][k]) for k in model)
    out = mpi(2, ["a3c", "--resume", str(run_dir), "--epochs", "5"]).stdout
    assert "Resumed from the checkpoint of epoch 2" in out
    t = table(run_dir)
    assert t["Epoch"] == [0, 1, 2, 3, 4]
    steps = t["TotalEnvInteracts"]
    assert steps == sorted(steps) and steps[3] > steps[2] >= 6000
    ckpt = torch.load(run_dir / "checkpoints" / "ckpt-000004.pt", weights_only=True)
    assert ckpt["run_state"]["version"] > saved["run_state"]["version"]


def test_sigterm_to_one_rank_stops_all_with_a_checkpoint_and_a_killed_rank_ends_the_job(tmp_path):
    job = [
        *PY,
        "a3c",
        "--env",
        "CartPole",
        "--epochs",
        "500",
        "--steps_per_epoch",
        "2000",
        "--save_freq",
        "50",
    ]
    run_dir = tmp_path / "t" / "t_s0"
    proc = start([MPIRUN, "-np", "3", *job, "--exp_name", "t", "--data_dir", str(tmp_path)])
    wait_rows(run_dir / "progress.txt", 2, proc)
    os.kill(rank_pid(tmp_path, 2, "a3c"), signal.SIGTERM)  # a worker only: rank 0 hears of it by message
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in out and "--resume" in out
    last_epoch = int(table(run_dir)["Epoch"][-1])
    assert (run_dir / "checkpoints" / f"ckpt-{last_epoch:06d}.pt").exists() and last_epoch < 499

    proc = start([MPIRUN, "-np", "2", *job, "--exp_name", "k", "--data_dir", str(tmp_path)])
    wait_rows(tmp_path / "k" / "k_s0" / "progress.txt", 1, proc)
    os.kill(rank_pid(tmp_path, 1, "a3c"), signal.SIGKILL)
    proc.communicate(timeout=30)  # never a hang: rank 0 waits for nobody, mpirun ends the job
    assert proc.returncode != 0


@pytest.mark.parametrize(
    ("ranks", "flags", "message"),
    [
        (1, [], "a3c needs at least 2 MPI ranks"),
        (2, ["--max_staleness", "-1"], "--max_staleness must be 0 or more"),
        (2, ["--n_steps", "0"], "--n_steps must be positive"),
    ],
)
def test_bad_a3c_input_is_a_one_line_error(tmp_path, cli, ranks, flags, message):
    args = ["a3c", "--env", "CartPole", *flags, "--data_dir", str(tmp_path)]
    if ranks == 1:  # one rank: this process (mpirun -np 1 starts the same lone rank)
        proc = cli(*args)
    else:
        proc = run([MPIRUN, "-np", str(ranks), *PY, *args], check=False, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not list(tmp_path.iterdir())  # no run directory made


def test_a_curriculum_is_refused_before_anything_is_built():
    from types import SimpleNamespace

    from spinppo.algos.a3c import check_flags
    from spinppo.utils.errors import UserError

    lessons = [{"name": "easy", "value": 1.0}, {"name": "hard", "value": 2.0}]
    env_fn = SimpleNamespace(environment_parameters={"wall": {"curriculum": lessons}})
    with pytest.raises(UserError, match="a curriculum .* needs a synchronous algorithm"):
        check_flags({"env_fn": env_fn})
