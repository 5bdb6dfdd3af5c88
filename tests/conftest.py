"""Shared test helpers: run commands under a real mpirun from this virtualenv."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MPIRUN = str(Path(sys.executable).parent / "mpirun")


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


# Columns that measure time: they differ between otherwise identical runs.
TIMING = {"Time", "StepsPerSec", "EnvTime", "InferenceTime", "UpdateTime", "MPITime"}


def rows_without_timing(run_dir: Path) -> list[list[str]]:
    """progress.txt of a run as rows of cells (header first), without the timing columns."""
    lines = (run_dir / "progress.txt").read_text().splitlines()
    header = lines[0].split("\t")
    keep = [i for i, h in enumerate(header) if h not in TIMING]
    return [[line.split("\t")[i] for i in keep] for line in lines]
