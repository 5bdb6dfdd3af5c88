"""Shared test helpers: run commands under a real mpirun from this virtualenv."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The virtualenv's (the mpich extra); else the PATH's (where scripts/gpu_check.sh puts the carried one).
MPIRUN = str(Path(sys.executable).parent / "mpirun")
if not Path(MPIRUN).exists():
    MPIRUN = shutil.which("mpirun") or MPIRUN


# The variables that size BLAS and OpenMP thread pools (as a user's shell might set them).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def child_env(**extra: str | None) -> dict[str, str]:
    """The environment for child processes: one BLAS thread, no launcher variables from outside.

    ``extra`` entries override it; a value of None removes the variable (``**NO_THREAD_VARIABLES``
    removes every thread count, as in a user's plain shell).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "IN_MPI"))}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", MUJOCO_GL="egl")
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


NO_THREAD_VARIABLES: dict[str, None] = dict.fromkeys(THREAD_VARIABLES)


def run(
    args: list[str], timeout: float = 300, check: bool = True, **env: str | None
) -> subprocess.CompletedProcess:
    """Run a command, capture its output, and fail with that output if it exits non-zero (with check)."""
    proc = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(**env),
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def mpirun(n: int, args: list[str], timeout: float = 300, check: bool = True, **env: str | None):
    """``mpirun -np n python ARGS...`` with the virtualenv's MPI."""
    return run([MPIRUN, "-np", str(n), sys.executable, *args], timeout=timeout, check=check, **env)


def mpirun_commands(
    n: int, commands: list[list[str]], timeout: float = 300, **env: str | None
) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Several ``python -m spinppo.run`` commands, one after another, in one ``mpirun -np n`` job
    (``python -m tests.commands``, so that the ``tests.*`` environments import): the ranks start once for
    the runs a test compares. Fails unless every command exits 0; returns the job and each command's
    stdout (rank 0's)."""
    proc = mpirun(n, ["-m", "tests.commands", json.dumps(commands)], timeout=timeout, **env)
    outputs = re.split(r"^=== COMMAND \d+ ===\n", proc.stdout, flags=re.M)[1:]
    assert len(outputs) == len(commands), proc.stdout
    return proc, outputs


def _spinppo_main(argv: list[str]) -> int:
    from spinppo.run import main

    try:
        return main(argv)
    except SystemExit as e:  # argparse's --help
        return e.code if isinstance(e.code, int) else int(e.code is not None)


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _refuse_to_fork(n: int) -> None:
    if n > 1:  # mpi_fork would start this whole pytest command again under mpirun
        raise AssertionError(f"--cpu {n} starts ranks: test it with run(), not cli()")


@pytest.fixture
def cli(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., subprocess.CompletedProcess]:
    """``cli(*ARGV)``: ``python -m spinppo.run ARGV`` called in this process, as a CompletedProcess (its
    return code, stdout and stderr) like ``run`` gives for a real one, without a new interpreter to start
    and torch to import (about 3 s each on the 2-core machine).

    stdout and stderr are captured at the file descriptors (as a child's pipes would be), and the warnings
    a fresh interpreter would print (Python's default filters: not the deprecation ones) go to stderr
    where they happen, so that "one line on stderr" means what it means for a real process. Use ``run``
    where the process itself is the point: signals, exit at interpreter shutdown, ``--cpu N`` (refused
    here), mpirun.
    """
    import torch
    from threadpoolctl import threadpool_limits

    import spinppo.cli.resume
    import spinppo.cli.train

    for module in (spinppo.cli.resume, spinppo.cli.train):
        monkeypatch.setattr(module, "mpi_fork", _refuse_to_fork)
    monkeypatch.chdir(REPO)  # where run() starts its processes
    # One thread a pool, as child_env gives a child (a training run reads OMP_NUM_THREADS; test_policy
    # and export do not): the numbers are a child's, and two spinning OpenMP threads on a busy 2-core
    # machine made a short run 4 times slower and a replay of Pong 40 times. (A run sets these variables
    # for its own children: monkeypatch puts them back afterwards.)
    for name in THREAD_VARIABLES:
        monkeypatch.setenv(name, "1")

    def call(*argv: str) -> subprocess.CompletedProcess:
        capfd.readouterr()  # what came before is not this command's output
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            for quiet in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", quiet)
            warnings.showwarning = _print_warning  # to stderr, in order, not to pytest's record
            with threadpool_limits(1):
                torch_threads = torch.get_num_threads()
                torch.set_num_threads(1)
                try:
                    code = _spinppo_main(list(argv))
                finally:
                    torch.set_num_threads(torch_threads)
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(["python", "-m", "spinppo.run", *argv], code, out, err)

    return call


# Columns that measure time: they differ between otherwise identical runs.
TIMING = {"Time", "StepsPerSec", "EnvTime", "InferenceTime", "UpdateTime", "MPITime"}


def rows_without_timing(run_dir: Path) -> list[list[str]]:
    """progress.txt of a run as rows of cells (header first), without the timing columns."""
    lines = (run_dir / "progress.txt").read_text().splitlines()
    header = lines[0].split("\t")
    keep = [i for i, h in enumerate(header) if h not in TIMING]
    return [[line.split("\t")[i] for i in keep] for line in lines]
