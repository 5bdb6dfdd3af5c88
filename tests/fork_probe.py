"""Started with plain python by tests/test_mpi.py: forks itself into N ranks with mpi_fork."""

import os
import sys

from spinppo.utils.mpi_tools import mpi_fork, num_procs, proc_id

mpi_fork(int(sys.argv[1]))
print(f"rank {proc_id()} of {num_procs()} threads={os.environ.get('OMP_NUM_THREADS')}", flush=True)
