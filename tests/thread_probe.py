"""Started by tests/test_threads.py, under a real mpirun or from plain python (``--fork N``: mpi_fork, the
path behind ``--cpu N``). Rank 0 prints one ``THREADS {json}`` line per rank.

Like a user's script it imports numpy and torch before anything of spinppo's runs, so numpy's OpenBLAS
has sized its pool from the environment by then. Each rank reports its pools as threadpoolctl and torch
see them before and after ``setup_pytorch_for_mpi``, and with ``--calls N`` the median time of one call
of the numpy rollout policy of a 256-wide network (Walker2d's shipped config: 17 observations, 6
actions, 8 environments a rank), timed on all ranks at once, each call after 300 µs of busy work that
stands for the environments' step.

    mpirun -np 2 python tests/thread_probe.py --calls 2000
    python tests/thread_probe.py --fork 2 --calls 2000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np  # first, as a user's script would
import torch  # noqa: F401 (loaded before setup_pytorch_for_mpi, as in a user's script)

from spinppo.utils.mpi_pytorch import setup_pytorch_for_mpi, thread_report
from spinppo.utils.mpi_tools import COMM, allgather, mpi_fork, proc_id


def simulate_environment_step(seconds: float = 300e-6) -> None:
    """Keep the core busy in this thread for ``seconds``, as 8 MuJoCo steps do between policy calls
    (where another rank's spinning BLAS threads take the core away from it)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def rollout_call_seconds(calls: int) -> float:
    """Median seconds of one RolloutPolicy.step call (blocks of 100 calls) on a 256-wide network."""
    import gymnasium as gym

    from spinppo.core.networks import MLPActorCritic

    obs_space = gym.spaces.Box(-np.inf, np.inf, (17,), np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
    policy = MLPActorCritic(obs_space, act_space, hidden_sizes=(256, 256)).rollout_policy()
    assert policy.in_numpy
    obs = np.random.default_rng(proc_id()).standard_normal((8, 17)).astype(np.float32)
    for _ in range(100):
        policy.step(obs)
    COMM.Barrier()  # every rank times at once: the ranks' threads compete as in a run
    blocks = []
    for _ in range(max(1, calls // 100)):
        seconds = 0.0
        for _ in range(100):
            simulate_environment_step()
            t0 = time.perf_counter()
            policy.step(obs)
            seconds += time.perf_counter() - t0
        blocks.append(seconds / 100)
    return statistics.median(blocks)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fork", type=int, default=0)
    parser.add_argument("--calls", type=int, default=0)
    args = parser.parse_args()
    if args.fork:
        mpi_fork(args.fork)
    before = thread_report()
    threads = setup_pytorch_for_mpi()
    after = thread_report()
    seconds = rollout_call_seconds(args.calls) if args.calls else None
    report = {"rank": proc_id(), "threads": threads, "before": before, "after": after, "call_s": seconds}
    reports = allgather(report)
    if proc_id() == 0:
        print("\n".join("THREADS " + json.dumps(r) for r in reports), flush=True)


if __name__ == "__main__":
    main()
