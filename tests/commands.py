"""Run several ``python -m spinppo.run`` commands one after another in this process: under mpirun, in one
MPI job, so that a test comparing two runs pays the ranks' start-up (interpreters, torch) once.

usage: python -m tests.commands JSON   (a list of argument lists, each what follows ``python -m spinppo.run``)

Rank 0 prints ``=== COMMAND i ===`` before command i's output (``conftest.mpirun_commands`` splits the
output there). The exit code is the first non-zero one; the commands after it do not run.
"""

import json
import sys

from spinppo.run import main
from spinppo.utils.mpi_tools import proc_id

if __name__ == "__main__":
    for i, argv in enumerate(json.loads(sys.argv[1])):
        if proc_id() == 0:
            print(f"=== COMMAND {i} ===", flush=True)
        code = main(argv)
        if code:
            sys.exit(code)
