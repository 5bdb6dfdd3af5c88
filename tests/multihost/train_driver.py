"""Train PPO under MPI and report, per rank, where it ran and a hash of the network it ended with.

    mpiexec ... python tests/multihost/train_driver.py --data_dir DIR [--epochs 3] [--time_mpi]

After training rank 0 prints one ``RANK {json}`` line per rank: rank, hostname, local_size, the host marker it
finds in DIR (``DIR/.host``, if there), what it sees in DIR, and the sha256 of its actor-critic's state.
Rank 0 then prints ``RESULT {json}``: the epoch times from progress.txt and, with ``--time_mpi``, the time
each rank spent inside MPI calls (every Comm method the training calls, waiting for other ranks included;
``--split_wait`` times that wait apart, with a Barrier before each call).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from pathlib import Path

from hashing import state_hash  # beside this script, which is sys.path[0]
from mpi4py import MPI

# Comm methods that spinppo's MPI helpers and normalisation call; each is timed under --time_mpi.
TIMED = (
    "Allreduce",
    "allreduce",
    "Bcast",
    "bcast",
    "Barrier",
    "allgather",
    "Allgather",
    "Reduce",
    "Gather",
    "gather",
    "Scatter",
    "scatter",
)


class TimedIntracomm(MPI.Intracomm):
    """COMM_WORLD with a stopwatch around the collectives (the same communicator handle).

    With ``split_wait`` every timed call is preceded by a Barrier, timed apart as ``wait_seconds``: the time
    a rank waits for the slowest one. What is left in ``seconds`` is then mostly moving the data.
    """

    seconds = 0.0
    wait_seconds = 0.0
    calls = 0
    split_wait = False


def _timed(name: str):
    method = getattr(MPI.Intracomm, name)

    def wrapper(self, *args, **kwargs):
        if TimedIntracomm.split_wait:
            t0 = time.perf_counter()
            MPI.Intracomm.Barrier(self)
            TimedIntracomm.wait_seconds += time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            TimedIntracomm.seconds += time.perf_counter() - t0
            TimedIntracomm.calls += 1

    wrapper.__name__ = name
    return wrapper


for _name in TIMED:
    setattr(TimedIntracomm, _name, _timed(_name))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--exp_name", default="mh")
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps_per_epoch", type=int, default=2000)
    p.add_argument("--num_envs", type=int, default=4)
    p.add_argument("--hid", type=int, nargs="+", default=[64, 64])
    p.add_argument("--minibatch_size", type=int, default=None, help="default: ppo's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time_mpi", action="store_true", help="time every MPI collective (see TIMED)")
    p.add_argument("--split_wait", action="store_true", help="with --time_mpi: a timed Barrier before each")
    return p.parse_args()


def main() -> None:
    args = parse()
    world = MPI.COMM_WORLD
    if args.time_mpi:
        # spinppo wraps MPI.COMM_WORLD when spinppo.utils.mpi_tools is imported (its COMM) and calls that:
        # replaced before spinppo is imported, below, this one object sees every collective of training.
        MPI.COMM_WORLD = TimedIntracomm(world)
        TimedIntracomm.split_wait = args.split_wait

    import gymnasium as gym

    from spinppo.algos.ppo import ppo
    from spinppo.utils.logx import setup_logger_kwargs
    from spinppo.utils.mpi_tools import local_size

    marker = os.path.join(args.data_dir, ".host")
    seen_host = Path(marker).read_text().strip() if os.path.exists(marker) else None
    logger_kwargs = setup_logger_kwargs(args.exp_name, args.seed, data_dir=args.data_dir)
    extra = {} if args.minibatch_size is None else {"minibatch_size": args.minibatch_size}
    t0 = time.perf_counter()
    ac = ppo(
        lambda: gym.make(args.env),
        ac_kwargs=dict(hidden_sizes=args.hid),
        seed=args.seed,
        steps_per_epoch=args.steps_per_epoch,
        epochs=args.epochs,
        num_envs=args.num_envs,
        logger_kwargs=logger_kwargs,
        **extra,
    )
    train_seconds = time.perf_counter() - t0
    MPI.COMM_WORLD = world  # the reports below use `world` itself: they are not training's MPI time
    import torch

    report = {
        "rank": world.Get_rank(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "size": world.Get_size(),
        "hostname": socket.gethostname(),
        "processor": MPI.Get_processor_name(),
        "local_size": local_size(),
        "host_marker": seen_host,
        "data_dir_listing": sorted(os.listdir(args.data_dir)),
        "hash": state_hash(ac.state_dict()),
        "train_seconds": train_seconds,
        "mpi_seconds": TimedIntracomm.seconds,
        "mpi_wait_seconds": TimedIntracomm.wait_seconds,
        "mpi_calls": TimedIntracomm.calls,
    }
    # Rank 0 prints every rank's line: hydra forwards the ranks' output in chunks that may interleave.
    reports = world.gather(report, root=0)
    if world.Get_rank() == 0:
        print("\n".join("RANK " + json.dumps(r) for r in reports), flush=True)
        progress = Path(logger_kwargs["output_dir"]) / "progress.txt"
        lines = progress.read_text().splitlines()
        header = lines[0].split("\t")
        times = [float(row.split("\t")[header.index("Time")]) for row in lines[1:]]
        # spinppo's own figure, rank 0's time in MPI per epoch, where this version logs it.
        logged = (
            [float(row.split("\t")[header.index("MPITime")]) for row in lines[1:]]
            if "MPITime" in header
            else []
        )
        epoch_seconds = [b - a for a, b in zip([0.0, *times], times)]
        result = {
            "output_dir": logger_kwargs["output_dir"],
            "epoch_seconds": epoch_seconds,
            "logged_mpi_seconds": logged,
            "train_seconds": train_seconds,
            "mpi_seconds": [r["mpi_seconds"] for r in reports],
            "mpi_wait_seconds": [r["mpi_wait_seconds"] for r in reports],
            "mpi_calls": [r["mpi_calls"] for r in reports],
            "hosts": [r["hostname"] for r in reports],
        }
        print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
