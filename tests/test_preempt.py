"""DD-PPO's preemption (``--preempt FRACTION`` for PPO and A2C): once that fraction of the ranks has
collected its share of an epoch, the others stop (after at least a quarter of theirs) and the update uses
what was collected. The straggler is ``tests.slow_env:SlowCartPole-v0``: CartPole whose every step sleeps
``delay`` seconds on one rank only.
"""

from __future__ import annotations

import statistics
import subprocess
import sys

import numpy as np
import pytest
import torch

from spinppo.core.buffer import Batch, GAEBuffer
from spinppo.core.minibatches import MinibatchTable
from tests.conftest import MPIRUN, mpirun_commands, run

PY = [sys.executable, "-m", "spinppo.run"]
SLOW = ["--env", "tests.slow_env:SlowCartPole-v0", "--env_kwargs", "slow_rank=1", "delay=0.003"]


def table(run_dir) -> dict[str, list[float]]:
    lines = (run_dir / "progress.txt").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [[float(x) for x in line.split("\t")] for line in lines[1:]]
    return {name: [r[i] for r in rows] for i, name in enumerate(header)}


def mpi(n: int, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return run([MPIRUN, "-np", str(n), *PY, *args], timeout=timeout)


def test_preemption_cuts_the_stragglers_rollout_and_the_epoch_time(tmp_path):
    """Three ranks, rank 1 about 10x slower a step. Without preemption every epoch waits for it; with
    --preempt 0.6 (two of three ranks done) it stops early: epochs take well under 0.6 of the time
    (measured on 2 busy cores: 1.5-1.7 s against 4.1-4.3 s, 0.37). Preempted is the share of the epoch's
    steps not collected (at most 0.25 here: the straggler keeps at least a quarter of its 1024), and
    TotalEnvInteracts counts the steps really collected."""
    common = [*SLOW, "--epochs", "4", "--steps_per_epoch", "3072", "--minibatch_size", "384"]
    common += ["--data_dir", str(tmp_path)]
    mpirun_commands(
        3, [["ppo", *common, "--exp_name", "wait"], ["ppo", *common, "--preempt", "0.6", "--exp_name", "cut"]]
    )
    wait, cut = table(tmp_path / "wait" / "wait_s0"), table(tmp_path / "cut" / "cut_s0")
    epoch_time = {k: statistics.median(np.diff(t["Time"])) for k, t in (("wait", wait), ("cut", cut))}
    assert epoch_time["cut"] < 0.6 * epoch_time["wait"], epoch_time
    assert "Preempted" not in wait and wait["TotalEnvInteracts"] == [3072, 6144, 9216, 12288]
    assert all(0.05 < p <= 0.25 for p in cut["Preempted"]), cut["Preempted"]
    collected = np.diff([0.0, *cut["TotalEnvInteracts"]])
    np.testing.assert_allclose(collected, 3072 * (1 - np.array(cut["Preempted"])), atol=1e-6)


def test_ppo_and_a2c_with_preemption_still_learn_cartpole(tmp_path):
    """Two ranks, one slow, --preempt 0.5: PPO (15 epochs of 2048 steps) and A2C (8 epochs of 4000) still
    learn CartPole (a random policy averages about 22). Measured once each: PPO's last five epochs 183-198,
    A2C's epochs 3-7 146-189 (the cut points depend on timing, so runs differ)."""
    slow = [*SLOW[:-1], "delay=0.001", "--preempt", "0.5", "--data_dir", str(tmp_path)]
    ppo = ["--epochs", "15", "--steps_per_epoch", "2048", "--minibatch_size", "256"]
    mpirun_commands(
        2, [["ppo", *slow, *ppo, "--exp_name", "ppo"], ["a2c", *slow, "--epochs", "8", "--exp_name", "a2c"]]
    )
    for name, threshold in (("ppo", 120), ("a2c", 80)):
        returns = table(tmp_path / name / f"{name}_s0")["AverageEpRet"]
        assert statistics.mean(returns[-5:]) >= threshold, (name, returns)


def test_a_resumed_preempted_run_keeps_counting_the_steps_it_collected(tmp_path):
    """TotalEnvInteracts of a preempted run lives in its checkpoints: after --resume it goes on from the
    saved count (not from epochs x steps_per_epoch)."""
    args = [
        *SLOW,
        "--steps_per_epoch",
        "2048",
        "--preempt",
        "0.5",
        "--data_dir",
        str(tmp_path),
        "--exp_name",
        "r",
    ]
    mpi(2, ["ppo", *args, "--epochs", "2"])
    run_dir = tmp_path / "r" / "r_s0"
    mpi(2, ["ppo", "--resume", str(run_dir), "--epochs", "4"])
    t = table(run_dir)
    assert t["Epoch"] == [0, 1, 2, 3]
    collected = np.diff([0.0, *t["TotalEnvInteracts"]])
    np.testing.assert_allclose(collected, 2048 * (1 - np.array(t["Preempted"])), atol=1e-6)
    assert t["TotalEnvInteracts"][-1] < 4 * 2048


def test_preemption_with_memory_and_tiny_minibatches_and_a_fraction_that_never_preempts(tmp_path):
    """A recurrent PPO whose minibatches are one sequence each: a preempted rank holds fewer sequences than
    the update's minibatch count, and still takes as many gradient steps as the others (rows taken again;
    an empty minibatch crashed it). And --preempt 0.6 with 2 ranks waits for both: a one-line warning, and
    nothing is preempted."""
    memory = [
        "--memory_size",
        "16",
        "--sequence_length",
        "8",
        "--minibatch_size",
        "16",
        "--update_epochs",
        "1",
    ]
    common = [*SLOW, "--steps_per_epoch", "2048", "--epochs", "2", "--data_dir", str(tmp_path)]
    lstm = ["ppo", *common, *memory, "--preempt", "0.5", "--exp_name", "lstm"]
    proc, _ = mpirun_commands(2, [lstm, ["ppo", *common, "--preempt", "0.6", "--exp_name", "all"]])
    cut = table(tmp_path / "lstm" / "lstm_s0")
    assert all(p > 0 for p in cut["Preempted"]), cut["Preempted"]
    warnings = [line for line in proc.stderr.splitlines() if "--preempt" in line]  # (the job's: both runs)
    assert warnings == [
        "spinppo: warning: --preempt 0.6 with 2 ranks waits for all of them and never preempts; give at "
        "most 0.5"
    ]
    assert table(tmp_path / "all" / "all_s0")["Preempted"] == [0.0, 0.0]


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2"])
def test_a_bad_preempt_is_a_one_line_error(tmp_path, cli, value):
    proc = cli("ppo", "--env", "CartPole", "--preempt", value, "--data_dir", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"spinppo: error: --preempt must be a fraction of the ranks in (0, 1], such as 0.6 (DD-PPO's), or "
        f"None (off), not {float(value)}"
    ]


def test_a_rollout_cut_short_is_finished_like_a_shorter_one():
    """GAE over the 5 steps a preempted 8-step buffer holds equals GAE in a 5-step buffer with the same
    data, bootstrapped with V(next observation) where it stopped; the batch has those 5 steps."""
    rng = np.random.default_rng(0)
    data = [
        (rng.normal(size=(2, 3)), rng.normal(size=2), rng.normal(size=2), rng.random(2) < 0.2)
        for _ in range(5)
    ]
    batches = []
    for steps in (8, 5):
        buf = GAEBuffer(3, (), 2, steps, discrete=True)
        for obs, rew, val, done in data:
            buf.store(obs, np.zeros(2), rew, val, np.zeros(2), done, np.zeros(2, bool))
        buf.finish(np.array([0.5, -0.5]))
        batches.append(buf.get(normalize_adv=False))
    for key in ("obs", "act", "ret", "adv", "logp_old", "v_old"):
        torch.testing.assert_close(getattr(batches[0], key), getattr(batches[1], key))
    assert batches[0].adv.shape == (10,)


def test_minibatches_of_a_short_batch_are_as_many_as_a_full_ones():
    """Every rank must take as many gradient steps: a short batch splits into the same count of minibatches
    (nearly equal ones), every row used once; a full batch keeps the usual minibatches."""

    def numbered(n: int) -> MinibatchTable:  # every field of row i holds i
        x = torch.arange(float(n))
        return MinibatchTable(Batch(obs=x[:, None], act=x, adv=x, ret=x, logp_old=x, v_old=x))

    short = numbered(10)
    sizes = [len(mb.adv) for mb in short.shuffled(8, count=4)]
    assert sizes == [2, 3, 2, 3]
    rows = torch.cat([mb.adv for mb in short.shuffled(8, count=4)])
    assert sorted(rows.tolist()) == list(range(10))
    tiny = numbered(3)  # fewer rows than minibatches: one row each, in turn
    chunks = [mb.adv.tolist() for mb in tiny.shuffled(8, count=5)]
    assert [len(c) for c in chunks] == [1] * 5 and sorted(sum(chunks[:3], [])) == [0.0, 1.0, 2.0]
    full = numbered(34)
    assert [len(mb.adv) for mb in full.shuffled(8, count=4)] == [8, 8, 8, 8]
    assert [len(mb.adv) for mb in full.shuffled(8)] == [8, 8, 8, 8]
