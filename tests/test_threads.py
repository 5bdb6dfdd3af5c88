"""Every rank limits its thread pools (numpy's BLAS, OpenMP, torch) to its share of its host's cores,
whatever launched it: a user's own ``mpirun`` as well as ``--cpu N``.

The processes here start from an environment without OMP_NUM_THREADS and the BLAS variables, as a
user's shell is (conftest's ``run`` sets OMP_NUM_THREADS=1 for every other test, which hid the problem).
"""

from __future__ import annotations

import json
import re
import sys

import pytest

from spinppo.utils.mpi_tools import available_cores
from tests.conftest import MPIRUN, NO_THREAD_VARIABLES, mpirun, run

CORES = available_cores()
PROBE = "tests/thread_probe.py"


def probe_reports(out: str) -> list[dict]:
    return sorted(
        (json.loads(m) for m in re.findall(r"^THREADS (\{.*\})$", out, flags=re.M)), key=lambda r: r["rank"]
    )


def share(ranks: int) -> int:
    return max(1, CORES // ranks)


def assert_pools(report: dict, threads: int) -> None:
    after = report["after"]
    assert report["threads"] == threads, report
    assert after["blas"] == threads and after["torch"] == threads and after["torch_interop"] == threads, (
        report
    )
    assert after.get("openmp", threads) == threads, report  # torch's libgomp, where threadpoolctl finds it


@pytest.mark.parametrize("launch", ["mpirun", "cpu"])
def test_every_rank_limits_its_pools_to_its_share_of_the_cores(launch):
    """Two ranks started by a user's mpirun (not through --cpu), and by mpi_fork (--cpu 2): each rank's
    BLAS, OpenMP and torch pools end at its share of the cores (1 on a 2-core machine)."""
    if launch == "mpirun":
        out = mpirun(2, [PROBE], **NO_THREAD_VARIABLES).stdout
    else:
        out = run([sys.executable, PROBE, "--fork", "2"], **NO_THREAD_VARIABLES).stdout
    reports = probe_reports(out)
    assert [r["rank"] for r in reports] == [0, 1], out
    for report in reports:
        assert_pools(report, share(2))
    if launch == "mpirun" and CORES >= 2:
        # What the fix is for: numpy had sized its BLAS pool to the whole machine in every rank.
        assert all(r["before"]["blas"] > share(2) for r in reports), reports


def test_a_users_omp_num_threads_caps_the_share():
    """One rank's share is every core; OMP_NUM_THREADS=1 (the user's) caps it at 1, under mpirun too; a cap
    above the share does not raise it."""
    if CORES < 2:
        pytest.skip("needs two cores for the share to exceed the cap")
    alone = probe_reports(run([sys.executable, PROBE], **NO_THREAD_VARIABLES).stdout)
    assert_pools(alone[0], CORES)
    capped = probe_reports(
        run([sys.executable, PROBE], **{**NO_THREAD_VARIABLES, "OMP_NUM_THREADS": "1"}).stdout
    )
    assert_pools(capped[0], 1)
    high = probe_reports(
        run([sys.executable, PROBE], **{**NO_THREAD_VARIABLES, "OMP_NUM_THREADS": "999"}).stdout
    )
    assert_pools(high[0], CORES)
    out = mpirun(2, [PROBE], **{**NO_THREAD_VARIABLES, "OMP_NUM_THREADS": "1"}).stdout
    for report in probe_reports(out):
        assert_pools(report, 1)


def test_the_rollout_policy_is_as_fast_under_mpirun_as_under_cpu():
    """The numpy rollout policy of a 256-wide network (Walker2d's config), timed on both ranks at once
    between stand-ins for environment steps: under a user's mpirun -np 2 and under --cpu 2 it takes about
    what it takes with one BLAS thread a rank set by hand (OPENBLAS_NUM_THREADS=1 before numpy starts, the
    known-good launch). Measured on the 2-core machine: 130-300 µs a call on all three (ratios 0.8-1.8
    beside other work); without the ranks' own limit, 0.7-16 ms under mpirun (5x to 100x), numpy's
    spinning BLAS threads taking the other rank's core. Best of two alternated launches each, bound 3x."""
    launches = {
        "by hand": lambda: mpirun(2, [PROBE, "--calls", "2000"], OPENBLAS_NUM_THREADS="1").stdout,
        "mpirun": lambda: mpirun(2, [PROBE, "--calls", "2000"], **NO_THREAD_VARIABLES).stdout,
        "cpu": lambda: (
            run([sys.executable, PROBE, "--fork", "2", "--calls", "2000"], **NO_THREAD_VARIABLES).stdout
        ),
    }
    best = dict.fromkeys(launches, float("inf"))
    for _ in range(2):
        for name, launch in launches.items():
            best[name] = min(best[name], max(r["call_s"] for r in probe_reports(launch())))
    assert best["mpirun"] < 3 * best["by hand"] and best["cpu"] < 3 * best["by hand"], best


@pytest.mark.parametrize("algo", ["ppo", "a3c"])
def test_a_run_says_once_how_many_threads_each_rank_uses(algo, tmp_path):
    args = [MPIRUN, "-np", "2", sys.executable, "-m", "spinppo.run", algo, "--env", "CartPole-v1"]
    args += ["--epochs", "1", "--steps_per_epoch", "800", "--data_dir", str(tmp_path)]
    out = run(args, **NO_THREAD_VARIABLES).stdout
    assert out.count("Threads per rank: ") == 1, out
    assert f"Threads per rank: {share(2)} for numpy's BLAS, OpenMP and torch" in out, out


def test_one_rank_runs_a_network_without_images_on_one_thread(tmp_path):
    """One rank's share is every core; a network without images takes one thread (its products are too
    small to share out, and its threads would wait for each other whenever another process needs a
    core), an image network keeps the share for its convolutions."""
    if CORES < 2:
        pytest.skip("needs two cores for the share to exceed one")
    base = [sys.executable, "-m", "spinppo.run", "ppo", "--epochs", "1", "--data_dir", str(tmp_path)]
    vector = [*base, "--env", "CartPole-v1", "--steps_per_epoch", "256", "--minibatch_size", "64"]
    vector = run([*vector, "--exp_name", "v"], **NO_THREAD_VARIABLES).stdout
    assert "Threads per rank: 1 for numpy's BLAS, OpenMP and torch" in vector, vector
    image = [*base, "--env", "tests.test_export_images:Pixels-v0", "--encoder", "simple", "--num_envs", "2"]
    image += ["--steps_per_epoch", "48", "--minibatch_size", "24", "--exp_name", "i"]
    out = run(image, **NO_THREAD_VARIABLES).stdout
    assert f"Threads per rank: {share(1)} for numpy's BLAS, OpenMP and torch" in out, out
