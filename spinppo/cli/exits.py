"""Ending a process of an MPI job: bad input, a stopped or diverged run, a crash, without ever hanging.

With several ranks an error seen by one rank only must not leave the others waiting forever in a
collective; an error every rank sees (bad input) must be printed once, not once per rank.
"""

from __future__ import annotations

import sys
import time
import traceback

from mpi4py import MPI

from spinppo.utils.mpi_tools import num_procs, proc_id

_error_comm: MPI.Comm | None = (
    None  # a duplicate of COMM_WORLD: error agreement never meets a pending collective
)


def prepare() -> None:
    """Call once at start-up, on every rank (it is a collective when there are several ranks)."""
    global _error_comm
    if num_procs() > 1 and _error_comm is None:
        _error_comm = MPI.COMM_WORLD.Dup()


def exit_with(message: str, code: int) -> int:
    """End this rank with ``message`` on stderr and exit ``code``, without ever hanging the job.

    With several ranks, the failing ranks meet in a non-blocking barrier: if every rank failed the same
    way (bad input is seen by all), rank 0 prints once and all exit cleanly; if some rank is still at
    work, it would wait forever for this one, so this rank prints with its number and aborts the job.
    """
    if num_procs() == 1 or _error_comm is None:
        print(message, file=sys.stderr, flush=True)
        return code
    request = _error_comm.Ibarrier()
    deadline = time.monotonic() + 3.0
    while not request.Test():
        if time.monotonic() > deadline:
            print(f"{message} (rank {proc_id()})", file=sys.stderr, flush=True)
            MPI.COMM_WORLD.Abort(code)
        time.sleep(0.01)
    if proc_id() == 0:
        print(message, file=sys.stderr, flush=True)
    return code


def report_crash() -> None:
    """An unexpected error: name the rank, print the traceback, end every rank (no hang in collectives)."""
    rank = proc_id()
    sys.stderr.write(f"spinppo: rank {rank} failed:\n{traceback.format_exc()}")
    sys.stderr.flush()
    if num_procs() > 1:
        # The launcher forwards a rank's output through a pipe; an abort at once can end the job before
        # it has read the traceback (seen on a loaded machine: the job ended with an empty stderr).
        time.sleep(0.5)
        MPI.COMM_WORLD.Abort(1)


def exit_quietly(code: int) -> int:
    """End this rank with ``code`` and no message; with several ranks, end the whole job (the others
    would wait for this one in their next collective)."""
    if num_procs() > 1:
        MPI.COMM_WORLD.Abort(code)
    return code
