"""The MPI toolkit under a real mpirun."""

import re
import sys

import pytest

from tests.conftest import mpirun, run


@pytest.mark.parametrize("n", [2, 3])
def test_mpi_helpers_under_mpirun(n):
    checks = [
        "avg_grads",
        "flat_params",
        "mixed_dtypes",
        "buffer_follows_the_module",
        "sync_params",
        "statistics",
        "threads",
    ]
    out = mpirun(n, ["tests/mpi_checks.py", *checks]).stdout
    for name in checks:
        assert f"OK {name} np={n}" in out


def test_mpi_helpers_in_a_single_process():
    checks = ["avg_grads", "flat_params", "mixed_dtypes", "sync_params", "statistics"]
    out = run([sys.executable, "tests/mpi_checks.py", *checks]).stdout
    for name in checks:
        assert f"OK {name} np=1" in out


def test_mpi_fork_from_plain_python_runs_n_ranks():
    out = run([sys.executable, "tests/fork_probe.py", "3"]).stdout
    lines = sorted(re.findall(r"rank (\d) of (\d) threads=(\d+)", out))
    assert lines == [("0", "3", "1"), ("1", "3", "1"), ("2", "3", "1")], out
