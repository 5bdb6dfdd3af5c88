"""One JSON line per rank (all printed by rank 0): who it is, where it runs, and collectives' results.

    mpiexec ... python tests/multihost/probe.py [--marker FILE] [--allreduce_floats N --reps R]

Each rank first sizes its thread pools as a training run does (``setup_pytorch_for_mpi``: its share of
its host's cores) and reports them. ``--marker`` names a file whose text the rank reports (a per-host
file shows which filesystem it sees);
``--allreduce_floats`` times R Allreduces of N float32 (a gradient's size) after one warm-up call.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time

import numpy as np
from mpi4py import MPI

from spinppo.utils.mpi_pytorch import setup_pytorch_for_mpi, thread_report
from spinppo.utils.mpi_tools import local_rank, local_size, mpi_sum, num_procs, proc_id


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--marker")
    p.add_argument("--allreduce_floats", type=int, default=0)
    p.add_argument("--reps", type=int, default=200)
    args = p.parse_args()
    threads = setup_pytorch_for_mpi()
    comm = MPI.COMM_WORLD
    big = np.full(1 << 20, float(proc_id() + 1))  # 8 MiB per rank: enough to see on the veth counters
    total = np.empty_like(big)
    comm.Allreduce(big, total, op=MPI.SUM)
    seen = None
    if args.marker and os.path.exists(args.marker):
        with open(args.marker) as f:
            seen = f.read().strip()
    allreduce_us = None
    if args.allreduce_floats:
        send = np.ones(args.allreduce_floats, dtype=np.float32)
        recv = np.empty_like(send)
        comm.Allreduce(send, recv, op=MPI.SUM)
        comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(args.reps):
            comm.Allreduce(send, recv, op=MPI.SUM)
        allreduce_us = (time.perf_counter() - t0) / args.reps * 1e6
    report = {
        "rank": proc_id(),
        "size": num_procs(),
        "processor": MPI.Get_processor_name(),
        "hostname": socket.gethostname(),
        "netns": os.readlink("/proc/self/ns/net"),
        "local_rank": local_rank(),
        "local_size": local_size(),
        "sum": mpi_sum(proc_id() + 1),
        "big_ok": bool(np.all(total == num_procs() * (num_procs() + 1) / 2)),
        "marker": seen,
        "allreduce_us": allreduce_us,
        "threads": threads,
        "pools": thread_report(),
    }
    # Rank 0 prints every rank's line: hydra forwards the ranks' output in chunks that may interleave.
    reports = comm.gather(report, root=0)
    if proc_id() == 0:
        print("\n".join("PROBE " + json.dumps(r) for r in reports), flush=True)


if __name__ == "__main__":
    main()
