"""The MPI toolkit under a real mpirun."""

import re
import sys

import pytest

from tests.conftest import MPIRUN, mpirun, run


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
    """The same checks with one rank: this process (a lone MPI rank, as a plain ``python`` is)."""
    from spinppo.utils.mpi_tools import num_procs
    from tests import mpi_checks

    assert num_procs() == 1
    for name in ["avg_grads", "flat_params", "mixed_dtypes", "sync_params", "statistics"]:
        getattr(mpi_checks, f"check_{name}")()  # each asserts what it checks


def test_mpi_fork_from_plain_python_runs_n_ranks():
    out = run([sys.executable, "tests/fork_probe.py", "3"]).stdout
    lines = sorted(re.findall(r"rank (\d) of (\d) threads=(\d+)", out))
    assert lines == [("0", "3", "1"), ("1", "3", "1"), ("2", "3", "1")], out


def test_more_ranks_than_cores_get_one_warning_and_the_run_goes_on(tmp_path):
    """Pinned to 2 cores, 3 ranks are told they are oversubscribed and 2 ranks are not; a training run says
    it once, on stderr, and trains on, with mpirun or with --cpu."""
    pin = ["taskset", "-c", "0,1"]
    probe = ["tests/oversubscription_probe.py"]
    out = run([*pin, MPIRUN, "-np", "3", sys.executable, *probe]).stdout
    assert out.count("warning=3 ranks share 2 cores on ") == 3, out
    assert "use --cpu auto (a rank per core) or mpirun -np 2" in out
    out = run([*pin, MPIRUN, "-np", "2", sys.executable, *probe]).stdout
    assert out.count("warning=None") == 2, out
    # Ranks bound one to a core each see one core apiece, yet are not crowded.
    out = run([*pin, MPIRUN, "-np", "2", "-bind-to", "core", sys.executable, *probe]).stdout
    assert out.count("warning=None") == 2, out
    args = [sys.executable, "-m", "spinppo.run", "a2c", "--env", "CartPole", "--epochs", "1"]
    args += ["--steps_per_epoch", "240", "--data_dir", str(tmp_path)]
    proc = run(["taskset", "-c", "0", *args, "--cpu", "2"])
    assert proc.stderr.count("spinppo: warning: 2 ranks share 1 core on ") == 1, proc.stderr
    assert "AverageEpRet" in proc.stdout
    proc = run([*pin, *args, "--cpu", "2", "--exp_name", "fits"])
    assert "warning" not in proc.stderr, proc.stderr
