"""Where a multi-rank PPO epoch waits: each rank's rollout time and its MPI time by call site.

    python scripts/bench_rank_balance.py                       # Walker, 2 ranks, 12 epochs, 3 runs
    python scripts/bench_rank_balance.py --env Hopper --ranks 4 --runs 1

Trains ppo with default flags under ``mpirun -np RANKS`` (skipping the first 2 epochs) and, on every rank,
times each rollout and each MPI call, grouped by where spinppo made it:
- ``rollout end``: the first collective after the rollout (advantage normalisation); a rank whose rollout
  finished early waits here for the slowest one;
- ``gradients``: the gradient Allreduce after every minibatch (communication plus waiting for the rank
  whose step took longest);
- ``other``: statistics, the stop-signal check, checkpoints.
Summary line per run: every rank's rollout time per epoch, the rollout imbalance (slowest / fastest - 1)
and every rank's MPI share of the epoch. ``MPITime`` in progress.txt (and bench_throughput's MPI figure)
is rank 0's.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

SKIP = 2  # epochs left out: start-up and the first updates


def profile_run(env_name: str, epochs: int, out_dir: str) -> None:
    """Run under mpirun: train, time rollouts and MPI calls by call site, print one line from rank 0."""
    from mpi4py import MPI

    from spinppo.algos import onpolicy
    from spinppo.algos.ppo import ppo
    from spinppo.envs.registry import EnvFactory
    from spinppo.utils.mpi_tools import TimedComm, proc_id

    mpi_seconds: dict[str, float] = defaultdict(float)
    rollout_seconds = [0.0]
    epoch = [0]

    def site(frame) -> str:
        names = {frame.f_code.co_name, frame.f_back.f_code.co_name if frame.f_back else ""}
        if "get" in names:  # GAEBuffer.get -> mpi_statistics_scalar: advantage normalisation
            return "rollout end"
        if "mpi_avg_grads" in names:
            return "gradients"
        return "other"

    def timed_getattr(self, name: str):
        attr = getattr(self._comm, name)
        if not callable(attr):
            return attr

        def timed(*args, **kwargs):
            where = site(sys._getframe(1))
            t0 = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                self.seconds += dt
                if epoch[0] > SKIP:
                    mpi_seconds[where] += dt

        return timed

    TimedComm.__getattr__ = timed_getattr
    collect = onpolicy.RolloutWorker.collect

    def timed_collect(self, buf, logger) -> None:
        epoch[0] += 1
        t0 = time.perf_counter()
        collect(self, buf, logger)
        if epoch[0] > SKIP:
            rollout_seconds[0] += time.perf_counter() - t0

    onpolicy.RolloutWorker.collect = timed_collect
    ppo(EnvFactory(env_name), epochs=epochs, logger_kwargs=dict(output_dir=out_dir, exp_name="balance"))

    n = epochs - SKIP
    mine = (rollout_seconds[0] / n, {k: v / n for k, v in mpi_seconds.items()})
    ranks = MPI.COMM_WORLD.gather(mine, root=0)  # the raw communicator: not counted
    if proc_id() != 0:
        return
    with open(os.path.join(out_dir, "progress.txt")) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[SKIP:]
    epoch_s = sum(float(r["Time"]) - float(p["Time"]) for p, r in zip(rows, rows[1:])) / (len(rows) - 1)
    rollouts = [r for r, _ in ranks]
    parts = []
    for i, (_, mpi) in enumerate(ranks):
        total = sum(mpi.values())
        split = ", ".join(
            f"{k} {100 * mpi.get(k, 0.0) / epoch_s:.1f}" for k in ("rollout end", "gradients", "other")
        )
        parts.append(f"rank {i} {100 * total / epoch_s:.1f}% ({split})")
    print(
        f"rank balance {env_name} ranks={len(ranks)}: epoch {1000 * epoch_s:.0f} ms; rollout ms/epoch "
        + " | ".join(f"{1000 * r:.0f}" for r in rollouts)
        + f" (slowest/fastest - 1 = {100 * (max(rollouts) / min(rollouts) - 1):.1f}%); "
        + "MPI share of the epoch: "
        + "; ".join(parts),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Walker")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument(
        "--epochs", type=int, default=12, help=f"epochs per run, the first {SKIP} not counted"
    )
    parser.add_argument("--runs", type=int, default=3, help="separate training runs, one after another")
    parser.add_argument("--profile", nargs=2, help=argparse.SUPPRESS)  # internal: ENV OUT_DIR under mpirun
    args = parser.parse_args()
    if args.profile:
        profile_run(args.profile[0], args.epochs, args.profile[1])
        return
    if args.epochs < SKIP + 2:
        parser.error(f"--epochs must be at least {SKIP + 2}")
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    if not os.path.exists(mpirun):
        mpirun = "mpirun"
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [mpirun, "-np", str(args.ranks), sys.executable, os.path.abspath(__file__)]
            cmd += ["--epochs", str(args.epochs), "--profile", args.env, os.path.join(tmp, "run")]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as --cpu N (mpi_fork) sets it
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            lines = [line for line in out.stdout.splitlines() if line.startswith("rank balance")]
            if out.returncode or not lines:
                sys.exit(f"the training run failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
            print(lines[-1], flush=True)


if __name__ == "__main__":
    main()
