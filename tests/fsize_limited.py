"""Run ``python -m spinppo.run ARGS`` with a file-size limit, as if the disk filled up while writing.

usage: fsize_limited.py MAX_BYTES ARGS...   (the limit is set after MPI starts, which needs big files)
"""

import resource
import sys

from mpi4py import MPI  # noqa: F401  (initialise MPI before the limit)

limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from spinppo.run import main  # noqa: E402

sys.exit(main(sys.argv[2:]))
