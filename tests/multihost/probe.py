"""One JSON line per rank (all printed by rank 0): who it is, where it runs, and collectives' results."""

from __future__ import annotations

import json
import os
import socket
import sys

import numpy as np
from mpi4py import MPI

from spinppo.utils.mpi_tools import local_rank, local_size, mpi_sum, num_procs, proc_id


def main() -> None:
    marker = sys.argv[1] if len(sys.argv) > 1 else None
    comm = MPI.COMM_WORLD
    big = np.full(1 << 20, float(proc_id() + 1))  # 8 MiB per rank: enough to see on the veth counters
    total = np.empty_like(big)
    comm.Allreduce(big, total, op=MPI.SUM)
    seen = None
    if marker and os.path.exists(marker):
        with open(marker) as f:
            seen = f.read().strip()
    report = {
        "rank": proc_id(),
        "size": num_procs(),
        "processor": MPI.Get_processor_name(),
        "hostname": socket.gethostname(),
        "local_rank": local_rank(),
        "local_size": local_size(),
        "sum": mpi_sum(proc_id() + 1),
        "big_ok": bool(np.all(total == num_procs() * (num_procs() + 1) / 2)),
        "netns": os.readlink("/proc/self/ns/net"),
        "marker": seen,
    }
    # Rank 0 prints every rank's line: hydra forwards the ranks' output in chunks that may interleave.
    reports = comm.gather(report, root=0)
    if proc_id() == 0:
        print("\n".join("PROBE " + json.dumps(r) for r in reports), flush=True)


if __name__ == "__main__":
    main()
