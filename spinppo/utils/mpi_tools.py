"""Tiny MPI helpers in the manner of Spinning Up's ``spinup.utils.mpi_tools``.

Every function works unchanged in a plain ``python`` process (a world of one rank).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from mpi4py import MPI

# Environment variables set by the MPI launchers we know of; their presence means we already run under one.
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "SLURM_STEP_ID")


def available_cores() -> int:
    """Cores this process may run on (respects taskset and cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# Environment variables that size the thread pools of BLAS and OpenMP libraries a rank or its child
# processes (environment workers, Unity players) may load after setup_pytorch_for_mpi.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")

_rank_threads: int | None = None  # set by limit_thread_pools


def rank_thread_share() -> int:
    """This rank's share of the cores it may run on: the cores of its affinity mask divided among the
    ranks on its host, at least one, capped by a user's ``OMP_NUM_THREADS``."""
    threads = max(1, available_cores() // local_size())
    user = os.environ.get("OMP_NUM_THREADS", "").strip()
    if user.isdigit() and int(user) > 0:
        threads = min(threads, int(user))
    return threads


def limit_thread_pools(threads: int) -> None:
    """Limit numpy's BLAS and every OpenMP runtime loaded in this process to ``threads`` (threadpoolctl,
    in force for the rest of the process), and set ``THREAD_VARIABLES`` so that child processes and
    libraries loaded later start with that many. ``rank_threads()`` returns it afterwards."""
    global _rank_threads
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)  # stays in force: only its restore call would undo it
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, str(threads)))
    _rank_threads = threads


def rank_threads() -> int | None:
    """The thread count ``limit_thread_pools`` gave this process, or None if it was never called."""
    return _rank_threads


class TimedComm:
    """``MPI.COMM_WORLD`` with a stopwatch: the time spent inside every call adds up in ``seconds``.

    spinppo's collectives go through ``COMM`` so that an epoch can report its time in MPI (which includes
    waiting for slower ranks).
    """

    def __init__(self, comm: MPI.Comm) -> None:
        self._comm = comm
        self.seconds = 0.0

    def __getattr__(self, name: str):
        attr = getattr(self._comm, name)
        if not callable(attr):
            return attr

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        return timed


COMM = TimedComm(MPI.COMM_WORLD)


def mpi_time() -> float:
    """Seconds this rank has spent inside spinppo's MPI calls so far."""
    return COMM.seconds


def _find_mpirun() -> str:
    """The mpirun beside the running Python (the ``mpich`` wheel puts one in the venv), else PATH's."""
    for name in ("mpirun", "mpiexec"):
        candidate = Path(sys.executable).parent / name
        if candidate.exists():
            return str(candidate)
    for name in ("mpirun", "mpiexec"):
        found = shutil.which(name)
        if found:
            return found
    from spinppo.utils.errors import UserError

    raise UserError("no mpirun found: install MPI with 'pip install mpich' (or your cluster's MPI)")


def mpi_fork(n: int) -> None:
    """Re-run the current command under ``mpirun -np n`` and exit with its status.

    Call it at the top of a script (``--cpu N`` does). Does nothing when ``n <= 1`` or when the process
    already runs under MPI. The ranks size their thread pools themselves (``setup_pytorch_for_mpi``: a
    rank's share of its host's cores), as they do under a launcher the user starts, so the environment
    passes on as it is (a user's OMP_NUM_THREADS included).
    """
    if n <= 1 or os.environ.get("IN_MPI") or num_procs() > 1:
        return
    env = os.environ.copy()
    env.update(IN_MPI="1")
    mpirun = _find_mpirun()
    args = [mpirun, "-np", str(n)]
    version = subprocess.run([mpirun, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        args += ["--oversubscribe"]  # Open MPI refuses more ranks than cores unless told
        if os.geteuid() == 0:
            args += ["--allow-run-as-root"]
    # sys.orig_argv keeps "-m spinppo.run" and interpreter flags, unlike sys.argv.
    args += [sys.executable] + sys.orig_argv[1:]
    sys.stdout.flush()
    sys.stderr.flush()
    # mpirun runs in its own process group, so that a Ctrl-C in the terminal reaches only this process,
    # which passes it on exactly once: mpirun forwards it to the ranks, which stop at the epoch's end with
    # a checkpoint; a second Ctrl-C makes mpirun abort them. SIGTERM (a scheduler, kill) is passed on the
    # same way, and this process waits for the ranks' exit status instead of leaving them orphaned. No
    # stdin: a background process group reading the terminal would be stopped.
    own_group: dict[str, Any] = (
        {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    )
    proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, **own_group)

    def forward(signum: int, frame: Any) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    code = proc.wait()
    # mpirun killed by a signal (SIGPIPE when the reader of `| head` left): exit as a shell reports it.
    sys.exit(128 - code if code < 0 else code)


def under_mpi_launcher() -> bool:
    """True when a launcher (mpirun, srun) started this process."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


def proc_id() -> int:
    """Rank of the calling process."""
    return MPI.COMM_WORLD.Get_rank()


def num_procs() -> int:
    """Number of active MPI processes."""
    return MPI.COMM_WORLD.Get_size()


@cache
def _local_comm() -> MPI.Comm:
    # Ranks that share memory are ranks on one host.
    return MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED, key=proc_id())


def local_rank() -> int:
    """Rank of the calling process among the ranks on its own host."""
    return _local_comm().Get_rank()


def local_size() -> int:
    """Number of ranks on the calling process's host."""
    return _local_comm().Get_size()


def broadcast(x, root: int = 0):
    """Rank ``root``'s value on every rank.

    A numpy array is overwritten in place (and returned); any other picklable object is returned.
    """
    if isinstance(x, np.ndarray):
        COMM.Bcast(x, root=root)
        return x
    return COMM.bcast(x, root=root)


def allgather(x) -> list:
    """A list of every rank's (picklable) ``x``, in rank order."""
    return COMM.allgather(x)


def mpi_op(x, op):
    """Element-wise ``op`` over ranks of a scalar or array; returns the same shape (a float for scalars)."""
    x, scalar = ([x], True) if np.isscalar(x) else (x, False)
    x = np.asarray(x, dtype=np.float64)
    buff = np.zeros_like(x)
    COMM.Allreduce(x, buff, op=op)
    return float(buff[0]) if scalar else buff


def mpi_sum(x):
    """Sum of ``x`` over ranks."""
    return mpi_op(x, MPI.SUM)


def mpi_avg(x):
    """Average of ``x`` over ranks."""
    return mpi_sum(x) / num_procs()


def mpi_max(x):
    """Maximum of ``x`` over ranks."""
    return mpi_op(x, MPI.MAX)


def mpi_statistics_scalar(x, with_min_and_max: bool = False):
    """Mean and standard deviation of the values of ``x`` pooled over all ranks.

    ``x`` is a sequence of numbers; a rank may hold none. Returns ``(mean, std)``, or
    ``(mean, std, min, max)`` with ``with_min_and_max``. When no rank holds a value every figure is nan.
    Three small collectives: (sum, count), (min, max) and the sum of squared deviations.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    local_min = x.min() if x.size else np.inf
    local_max = x.max() if x.size else -np.inf
    # Sum and count in one Allreduce; min and max folded in as -max(-x) and max(x).
    packed = np.array([x.sum(), x.size, -local_min, local_max])
    out = np.zeros(4)
    COMM.Allreduce(packed[:2].copy(), out[:2], op=MPI.SUM)
    COMM.Allreduce(packed[2:].copy(), out[2:], op=MPI.MAX)
    global_sum, global_n = out[0], out[1]
    if global_n == 0:
        nan = float("nan")
        return (nan, nan, nan, nan) if with_min_and_max else (nan, nan)
    mean = global_sum / global_n
    global_sum_sq = mpi_sum(np.sum((x - mean) ** 2))
    std = float(np.sqrt(global_sum_sq / global_n))
    if with_min_and_max:
        return float(mean), std, float(-out[2]), float(out[3])
    return float(mean), std


class Preemption:
    """DD-PPO's preemption (Wijmans et al. 2020), over MPI messages: every rank collects its rollout until
    ``fraction`` of the ranks have collected their whole share; then the ranks still collecting stop early
    (``should_stop``), so that one slow rank does not hold up every other.

    One round per rollout: ``begin()``, then ``should_stop()`` between steps (it only probes for messages,
    never waits), then ``end(complete)`` when this rank stops. Each rank sends every other rank one
    message a round, when it stops (whether it completed its share); ``end`` waits for the messages it
    has not seen, so a round's messages are all consumed in that round (and rounds alternate tags on a
    communicator of their own, so nothing else is mistaken for them). The time ``end`` waits counts as
    MPI time.
    """

    def __init__(self, fraction: float) -> None:
        self.comm = MPI.COMM_WORLD.Dup()
        self.others = num_procs() - 1
        self.needed = math.ceil(fraction * num_procs() - 1e-9)  # ranks that must have completed
        self.round = 0

    def begin(self) -> None:
        """Start a round (a rollout)."""
        self.round += 1
        self.tag = self.round % 2
        self.heard, self.completed = 0, 0
        self.sent: list[MPI.Request] = []

    def should_stop(self) -> bool:
        """Whether enough other ranks have completed their share for this rank to stop now."""
        while self.comm.iprobe(source=MPI.ANY_SOURCE, tag=self.tag):
            self._receive()
        return self.completed >= self.needed

    def _receive(self) -> None:
        self.completed += bool(self.comm.recv(source=MPI.ANY_SOURCE, tag=self.tag))
        self.heard += 1

    def end(self, complete: bool) -> None:
        """This rank stopped (``complete``: with its whole share); tell the others, hear them all."""
        t0 = time.perf_counter()
        rank = proc_id()
        self.sent = [
            self.comm.isend(complete, dest=r, tag=self.tag) for r in range(self.others + 1) if r != rank
        ]
        while self.heard < self.others:
            self._receive()
        MPI.Request.waitall(self.sent)
        COMM.seconds += time.perf_counter() - t0


def oversubscription_warning() -> str | None:
    """One line for the user when some host runs more ranks than the cores they may use, else None.

    The cores of a host are all those its ranks may run on (ranks bound one to a core each, by
    ``mpirun -bind-to core`` or Slurm, are not crowded). A collective: every rank calls it. Measured in
    docs/benchmarks.md ("More ranks than cores").
    """
    import socket

    try:
        mine = frozenset(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        mine = frozenset(range(os.cpu_count() or 1))
    hosts: dict[str, tuple[int, frozenset]] = {}
    for host, cores in allgather((socket.gethostname(), mine)):
        ranks, seen = hosts.get(host, (0, frozenset()))
        hosts[host] = (ranks + 1, seen | cores)
    crowded = {host: (ranks, len(cores)) for host, (ranks, cores) in hosts.items() if ranks > len(cores)}
    if not crowded:
        return None
    host, (ranks, cores) = next(iter(crowded.items()))
    where = f"on {host}" + (f" and {len(crowded) - 1} other host(s)" if len(crowded) > 1 else "")
    return (
        f"{ranks} ranks share {cores} core{'s' if cores > 1 else ''} {where}: each rank waits its turn for a "
        f"core, so the run is slower than it need be; use --cpu auto (a rank per core) or mpirun -np {cores}"
    )
