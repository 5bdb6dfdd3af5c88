"""Checkpoints, resume and failure handling, with real processes, real signals and real mpirun."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import MPIRUN, REPO, child_env, rows_without_timing, run

PY = [sys.executable, "-m", "spinppo.run"]
FAST = ["--steps_per_epoch", "1024", "--minibatch_size", "256", "--update_epochs", "4", "--save_freq", "1"]


def start(args, **kw):
    """Start a job in its own process group (so the test can signal or kill all of it)."""
    return subprocess.Popen(
        args,
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kw,
    )


def wait_rows(path, n, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n + 1:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {n} rows")


def rank_pid(tmp_path, rank, algo="ppo"):
    """The PID of MPI rank ``rank`` of the ``algo`` job whose command line mentions ``tmp_path``."""
    pids = subprocess.run(["pgrep", "-f", f"spinppo.run {algo}.*{tmp_path}"], capture_output=True, text=True)
    for p in map(int, pids.stdout.split()):
        try:
            with open(f"/proc/{p}/environ", "rb") as f:
                if f"PMI_RANK={rank}\x00".encode() in f.read():
                    return p
        except FileNotFoundError:
            continue
    raise AssertionError(f"rank {rank} not found")


def test_sigkill_then_resume_reproduces_the_uninterrupted_run(tmp_path):
    job = [
        *PY,
        "ppo",
        "--env",
        "CartPole",
        "--epochs",
        "6",
        *FAST,
        "--keep_checkpoints",
        "2",
        "--exp_name",
        "r",
    ]
    run([MPIRUN, "-np", "2", *job, "--data_dir", str(tmp_path / "whole")], timeout=300)
    whole = tmp_path / "whole" / "r" / "r_s0"

    broken = tmp_path / "broken" / "r" / "r_s0"
    proc = start([MPIRUN, "-np", "2", *job, "--data_dir", str(tmp_path / "broken")])
    wait_rows(broken / "progress.txt", 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # mpirun and both ranks, with no chance to clean up
    proc.wait()
    assert len(rows_without_timing(broken)) < 7
    # What a kill in the middle of an atomic write leaves (the kill above may or may not have made one):
    (broken / "checkpoints" / ".ckpt-000002.pt.x1y2z3.tmp").write_bytes(b"half a checkpoint")
    (broken / ".progress.txt.x1y2z3.tmp").write_text("half a table")
    out = run([*PY, "ppo", "--resume", str(broken)], timeout=300).stdout  # rank count read from the run
    assert "Resumed from the checkpoint of epoch" in out
    assert rows_without_timing(broken) == rows_without_timing(
        whole
    )  # no row lost, none duplicated, same numbers
    kept = sorted(os.listdir(broken / "checkpoints"))
    assert kept == ["ckpt-000004.pt", "ckpt-000005.pt"]  # --keep_checkpoints 2, no leftover .tmp
    assert not list(broken.glob("**/.*.tmp"))
    ckpt = torch.load(broken / "checkpoints" / kept[-1], weights_only=True)
    assert ckpt["epoch"] == 5 and ckpt["num_procs"] == 2


@pytest.mark.parametrize("target", ["rank1", "mpirun"])
def test_sigterm_stops_every_rank_at_an_epoch_end_with_a_checkpoint(tmp_path, target):
    job = [*PY, "ppo", "--env", "CartPole", "--epochs", "200", *FAST, "--save_freq", "50", "--exp_name", "t"]
    run_dir = tmp_path / "t" / "t_s0"
    proc = start([MPIRUN, "-np", "2", *job, "--data_dir", str(tmp_path)])
    wait_rows(run_dir / "progress.txt", 2, proc)
    if target == "rank1":
        os.kill(rank_pid(tmp_path, 1), signal.SIGTERM)  # one rank only: the others must stop with it
    else:
        os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err  # stopped, not finished: 143, as a shell says
    assert "stopped by SIGTERM" in out and "--resume" in out
    rows = rows_without_timing(run_dir)
    last_epoch = int(rows[-1][0])
    ckpt = torch.load(run_dir / "checkpoints" / f"ckpt-{last_epoch:06d}.pt", weights_only=True)
    assert ckpt["epoch"] == last_epoch < 199


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cpu_flag_passes_a_signal_to_the_ranks_and_waits_for_them(tmp_path, signum):
    # The signal goes to the top process only (kill PID, a scheduler): it must reach the ranks once,
    # and the command must end only when they have saved their checkpoint, leaving no rank behind.
    job = [*PY, "ppo", "--env", "CartPole", "--epochs", "200", *FAST, "--save_freq", "50", "--cpu", "2"]
    run_dir = tmp_path / "c" / "c_s0"
    proc = start([*job, "--exp_name", "c", "--data_dir", str(tmp_path)])
    wait_rows(run_dir / "progress.txt", 2, proc)
    os.kill(proc.pid, signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert f"stopped by {signal.Signals(signum).name}" in out and "--resume" in out
    last_epoch = int(rows_without_timing(run_dir)[-1][0])
    assert (run_dir / "checkpoints" / f"ckpt-{last_epoch:06d}.pt").exists() and last_epoch < 199
    left = subprocess.run(["pgrep", "-f", f"spinppo.run ppo.*{tmp_path}"], capture_output=True, text=True)
    assert not left.stdout.split(), "ranks were left running"


def test_a_second_run_into_a_busy_run_directory_is_refused(tmp_path, cli):
    job = [*PY, "ppo", "--env", "CartPole", "--epochs", "200", *FAST, "--exp_name", "b"]
    job += ["--data_dir", str(tmp_path)]
    run_dir = tmp_path / "b" / "b_s0"
    first = start(job)
    wait_rows(run_dir / "progress.txt", 2, first)
    # --overwrite while the first run still writes there: refused, and the first run's files stay.
    second = cli(*job[len(PY) :], "--overwrite")
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert lines[0].startswith("spinppo: error: another run (pid ") and f"pid {first.pid}@" in lines[0]
    assert (run_dir / "checkpoints").is_dir() and first.poll() is None
    rows = len(rows_without_timing(run_dir))
    wait_rows(run_dir / "progress.txt", rows + 1, first)  # still training
    os.killpg(first.pid, signal.SIGKILL)  # the lock goes with the process, however it ends
    first.wait()
    assert cli(*job[len(PY) :], "--overwrite", "--epochs", "1").returncode == 0
    assert len(rows_without_timing(run_dir)) == 2  # the header and the new run's one epoch


def test_a_rank_that_raises_ends_the_job_quickly_naming_rank_and_error(tmp_path):
    t0 = time.time()
    proc = run(
        [
            MPIRUN,
            "-np",
            "2",
            *PY,
            "ppo",
            "--env",
            "tests.failing_env:Crash-v0",
            "--epochs",
            "5",
            *FAST,
            "--data_dir",
            str(tmp_path),
        ],
        check=False,
        timeout=90,
    )
    assert proc.returncode != 0
    assert time.time() - t0 < 60
    assert "rank 1 failed" in proc.stderr and "simulated failure inside the environment" in proc.stderr


def test_a_rank_that_dies_ends_the_job(tmp_path):
    job = [*PY, "ppo", "--env", "CartPole", "--epochs", "500", *FAST, "--exp_name", "d"]
    proc = start([MPIRUN, "-np", "2", *job, "--data_dir", str(tmp_path)])
    wait_rows(tmp_path / "d" / "d_s0" / "progress.txt", 1, proc)
    victim = rank_pid(tmp_path, 1)
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=30)  # never a hang inside a collective
    assert proc.returncode != 0
    assert f"1={victim}@" in out  # the run's rank map names the PID the launcher reports
    assert str(victim) in out + err


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, cli):
    args = ["ppo", "--env", "tests.failing_env:NanReward-v0", "--epochs", "5", "--num_envs", "1", *FAST]
    proc = cli(*args, "--data_dir", str(tmp_path), "--exp_name", "n")
    assert proc.returncode == 1
    assert "non-finite" in proc.stderr and "last good checkpoint" in proc.stderr
    run_dir = tmp_path / "n" / "n_s0"
    ckpts = sorted(os.listdir(run_dir / "checkpoints"))
    assert ckpts == ["ckpt-000000.pt"]  # 1024 finite steps, then NaN rewards in epoch 1
    state = torch.load(run_dir / "checkpoints" / ckpts[0], weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in state.values())
    # NaN within the first epoch: no checkpoint to point to, and the message does not claim one.
    first = ["ppo", "--env", "tests.failing_env:NanReward-v0", "--epochs", "2", "--num_envs", "1"]
    first += [*FAST, "--steps_per_epoch", "2048", "--data_dir", str(tmp_path), "--exp_name", "n0"]
    proc = cli(*first)
    assert proc.returncode == 1 and "in epoch 0" in proc.stderr, proc.stderr
    assert "no checkpoint had been saved yet" in proc.stderr and "last good" not in proc.stderr


def test_bad_input_each_one_line_and_exit_2(tmp_path, cli):
    ok = ["ppo", "--env", "CartPole", "--epochs", "2", *FAST, "--data_dir", str(tmp_path), "--exp_name", "ok"]
    assert cli(*ok).returncode == 0
    good = tmp_path / "ok" / "ok_s0"
    damaged = tmp_path / "damaged"
    subprocess.run(["cp", "-r", str(good), str(damaged)], check=True)
    ckpt = damaged / "checkpoints" / "ckpt-000001.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:300])
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    cases = [
        (["sac", "--env", "CartPole"], "unknown command 'sac'"),
        (["ppo", "--env", "NoSuchEnv-v9"], "unknown environment 'NoSuchEnv-v9'"),
        (["ppo", "--env", "CartPole", "--gamma", "0.9.9"], "--gamma takes a number"),
        (["ppo", "--env", "CartPole", "--seed", "1.5"], "--seed takes an integer"),
        (["ppo", "--env", "CartPole", "--steps_per_epoch", "1022"], "must be a positive multiple of 8"),
        (["ppo", "--env", "CartPole", "--num_envs", "0"], "--num_envs must be positive"),
        (["ppo", "--env", "CartPole", "--minibatch_size", "-64"], "--minibatch_size must be positive"),
        (["ppo", "--env", "CartPole", "--lr", "-0.001"], "--lr must be positive"),
        (["ppo", "--env", "CartPole", "--clip_ratio", "0"], "--clip_ratio must be positive"),
        (["ppo", "--resume", str(tmp_path)], "is not a spinppo run"),
        (["ppo", "--resume", str(good), "--lr", "0.1"], "--lr 0.1 contradicts the run's saved lr"),
        (["ppo", "--resume", str(good), "--env", "Hopper"], "contradicts the run's saved env"),
        (["vpg", "--resume", str(good)], "is a ppo run"),
        (["ppo", "--resume", str(damaged)], "is damaged"),
        (["ppo", "--env", "CartPole", "--data_dir", str(blocker / "sub")], "cannot write the run directory"),
    ]
    for args, message in cases:
        proc = cli(*args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("spinppo: error: ") and message in lines[0], (
            args,
            lines,
        )

    # The disk fills up while a checkpoint is written: a clear error, and the previous checkpoint intact.
    # (A copy of the run: this process trained it, and holds its directory's lock until it ends.)
    good = tmp_path / "full"
    subprocess.run(["cp", "-r", str(tmp_path / "ok" / "ok_s0"), str(good)], check=True)
    before = (good / "checkpoints" / "ckpt-000001.pt").read_bytes()
    proc = run(
        [sys.executable, "tests/fsize_limited.py", "60000", "ppo", "--resume", str(good), "--epochs", "4"],
        check=False,
        timeout=120,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "could not save the checkpoint" in lines[0], (
        proc.stderr
    )
    assert (good / "checkpoints" / "ckpt-000001.pt").read_bytes() == before
    assert torch.load(good / "checkpoints" / "ckpt-000001.pt", weights_only=True)["epoch"] == 1
    assert not [p for p in os.listdir(good / "checkpoints") if p.endswith(".tmp")]
    config = json.loads((good / "config.json").read_text())
    assert config["num_procs"] == 1 and config["algo"] == "ppo"
