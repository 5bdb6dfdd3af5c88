"""Multi-host MPI runs, on one machine: each "host" is a network namespace (tests/multihost/netns.py).

Two hosts h1 (10.213.7.1) and h2 (10.213.7.2), each with its own network namespace, UTS hostname and mount
namespace, joined by a bridge; MPICH's hydra starts its proxies on them through ``netns_rsh`` (its rsh
launcher) and MPI moves data between them over TCP on the veths. Each host also gets a private filesystem
at one shared path: ``DATA`` (and the ranks' working directory ``RUN``) are bind-mounted from
``hosts/<name>/`` on each host, as on machines without a shared filesystem. A rank therefore writes into
its own host's directory, and the directories show afterwards which host wrote what.

Skipped where namespaces cannot be made (not root, no iproute2, no permission).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import NO_THREAD_VARIABLES, REPO, run
from tests.multihost.hashing import state_hash
from tests.multihost.netns import NetnsCluster, NetnsUnavailable, unavailable_reason

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"multi-host tests need namespaces: {REASON}")

HOSTS = ("h1", "h2")
PROBE = str(REPO / "tests" / "multihost" / "probe.py")  # absolute: the ranks run in RUN
DRIVER = str(REPO / "tests" / "multihost" / "train_driver.py")


class Layout:
    """Paths of the fake cluster's filesystems, as seen from the machine's own (root) mount namespace."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"  # the data dir every rank is given: a mount point, empty out here
        self.run = root / "run"  # the ranks' working directory: a mount point as well
        self.opt = root / "opt"  # software installed on each host (a Unity build), a mount point too
        for path in (self.data, self.run, self.opt):
            path.mkdir()
        for name in HOSTS:
            for path in (self.host_data(name), self.host_run(name), self.host_opt(name)):
                path.mkdir(parents=True)
            (self.host_data(name) / ".host").write_text(name)

    def host_data(self, name: str) -> Path:
        return self.root / "hosts" / name / "data"

    def host_run(self, name: str) -> Path:
        return self.root / "hosts" / name / "run"

    def host_opt(self, name: str) -> Path:
        return self.root / "hosts" / name / "opt"

    def binds(self) -> dict[str, list[tuple[str, str]]]:
        return {
            name: [
                (str(self.host_data(name)), str(self.data)),
                (str(self.host_run(name)), str(self.run)),
                (str(self.host_opt(name)), str(self.opt)),
            ]
            for name in HOSTS
        }


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Layout:
    return Layout(tmp_path_factory.mktemp("multihost"))


@pytest.fixture(scope="module")
def cluster(layout):
    c = NetnsCluster(len(HOSTS), layout.root, binds=layout.binds())
    try:
        c.up()
    except NetnsUnavailable as e:
        pytest.skip(str(e))
    try:
        yield c
    finally:
        c.down()  # kills whatever is left in the namespaces, deletes them and with them the veths


def mpi_run(
    cluster: NetnsCluster, layout: Layout, hosts: list[str], n: int, args: list[str], timeout=90, **env
):
    cmd = cluster.mpiexec(hosts, n, [sys.executable, *args], mpiexec_args=["-wdir", str(layout.run)])
    return run(cmd, timeout=timeout, **cluster.env(**env))


def json_lines(tag: str, out: str) -> list[dict]:
    rows = [json.loads(m) for m in re.findall(rf"^{tag} (\{{.*\}})$", out, flags=re.M)]
    return sorted(rows, key=lambda r: r["rank"])


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def assert_only_first_host_wrote(layout: Layout) -> None:
    assert files_under(layout.host_data("h2")) == [".host"], "a rank on h2 wrote into its data dir"
    assert files_under(layout.host_run("h2")) == [], "a rank on h2 wrote into its working directory"
    # The bind mounts stayed inside the hosts' mount namespaces: the mount points are untouched out here.
    assert files_under(layout.data) == [] and files_under(layout.run) == []


@pytest.mark.parametrize("netmod", ["ucx", "ofi"])
def test_namespaces_are_separate_hosts(cluster, layout, netmod):
    before = cluster.link_bytes("h2")
    out = mpi_run(
        cluster,
        layout,
        ["h1", "h2"],
        2,
        [PROBE, "--marker", str(layout.data / ".host")],
        MPIR_CVAR_CH4_NETMOD=netmod,
    )
    moved = cluster.link_bytes("h2") - before
    ranks = json_lines("PROBE", out.stdout)
    assert [r["rank"] for r in ranks] == [0, 1], out.stdout
    assert [r["hostname"] for r in ranks] == ["h1", "h2"]
    assert [r["processor"] for r in ranks] == ["h1", "h2"]  # what MPI.Get_processor_name() says
    assert ranks[0]["netns"] != ranks[1]["netns"]
    assert [(r["local_rank"], r["local_size"]) for r in ranks] == [(0, 1), (0, 1)]
    assert all(r["sum"] == 3.0 and r["big_ok"] for r in ranks)
    # Each rank sees its own host's filesystem at the shared path.
    assert [r["marker"] for r in ranks] == ["h1", "h2"]
    # The 8 MiB Allreduce crossed the veth (shared memory or CMA between the namespaces would not show).
    assert moved > 2 * 8 * 2**20, f"only {moved} bytes on h2's link"


def test_shared_memory_split_follows_hosts(cluster, layout):
    # Hydra's order: two ranks on h1, then one on h2. No thread variables, as in a user's shell.
    out = mpi_run(cluster, layout, ["h1:2", "h2:1"], 3, [PROBE], **NO_THREAD_VARIABLES)
    ranks = json_lines("PROBE", out.stdout)
    assert [r["hostname"] for r in ranks] == ["h1", "h1", "h2"], out.stdout
    assert [(r["local_rank"], r["local_size"]) for r in ranks] == [(0, 2), (1, 2), (0, 1)]
    assert all(r["sum"] == 6.0 and r["big_ok"] for r in ranks)
    # Each rank's pools hold its share of its own host's cores (the cluster gives each host its own).
    cores = {h.name: len(h.cpus or os.sched_getaffinity(0)) for h in cluster.hosts}
    shares = [max(1, cores["h1"] // 2), max(1, cores["h1"] // 2), cores["h2"]]
    assert [r["threads"] for r in ranks] == shares, ranks
    assert [(r["pools"]["blas"], r["pools"]["torch"]) for r in ranks] == [(n, n) for n in shares], ranks


def test_ppo_trains_across_hosts_in_lockstep(cluster, layout):
    import torch

    before = cluster.link_bytes("h2")
    epochs = 3
    out = mpi_run(
        cluster,
        layout,
        ["h1", "h2"],
        2,
        [DRIVER, "--data_dir", str(layout.data), "--exp_name", "mh", "--epochs", str(epochs)],
        timeout=120,
    )
    moved = cluster.link_bytes("h2") - before
    ranks = json_lines("RANK", out.stdout)
    assert [r["rank"] for r in ranks] == [0, 1], out.stdout + out.stderr
    assert [r["hostname"] for r in ranks] == ["h1", "h2"]
    assert [r["local_size"] for r in ranks] == [1, 1]
    assert [r["host_marker"] for r in ranks] == ["h1", "h2"]
    # Gradients averaged over TCP kept the two networks bitwise identical...
    assert ranks[0]["hash"] == ranks[1]["hash"]
    # ... and identical to the checkpoint, which only h1 holds.
    run_dir = layout.host_data("h1") / "mh" / "mh_s0"
    payload = torch.load(run_dir / "pyt_save" / "model.pt", map_location="cpu", weights_only=True)
    assert state_hash(payload["state_dict"]) == ranks[0]["hash"]
    rows = (run_dir / "progress.txt").read_text().splitlines()
    assert len(rows) == 1 + epochs
    header = rows[0].split("\t")
    assert rows[-1].split("\t")[header.index("TotalEnvInteracts")] == str(epochs * 2000)
    assert {"progress.txt", "config.json", "pyt_save"} <= set(p.name for p in run_dir.iterdir())
    # Rank 1 saw an empty data dir on its host the whole time, and left it so.
    assert ranks[1]["data_dir_listing"] == [".host"]
    assert_only_first_host_wrote(layout)
    n_params = sum(payload["state_dict"][k].numel() for k in payload["state_dict"] if "rms" not in k)
    assert moved > 100 * 4 * n_params, f"only {moved} bytes on h2's link for {n_params} parameters"


def test_hosts_with_different_cpu_kernels_stay_in_lockstep(cluster, layout):
    # Hosts of different CPU generations run different torch kernels (ATEN_CPU_CAPABILITY picks them here):
    # same inputs, other rounding. Averaged gradients alone do not keep such hosts' parameters identical.
    common = [DRIVER, "--data_dir", str(layout.data), "--exp_name", "hetero", "--epochs", "3"]
    group = ["-env", "ATEN_CPU_CAPABILITY", "avx2", sys.executable, *common]
    group += [":", "-np", "1", "-env", "ATEN_CPU_CAPABILITY", "default", sys.executable, *common]
    cmd = cluster.mpiexec(["h1", "h2"], 1, group, mpiexec_args=["-wdir", str(layout.run)])
    out = run(cmd, timeout=120, **cluster.env())
    ranks = json_lines("RANK", out.stdout)
    assert [r["hostname"] for r in ranks] == ["h1", "h2"], out.stdout + out.stderr
    if ranks[0]["cpu_capability"] == ranks[1]["cpu_capability"]:
        pytest.skip(f"this CPU runs torch's {ranks[0]['cpu_capability']} kernels only")
    assert_only_first_host_wrote(layout)
    assert ranks[0]["hash"] == ranks[1]["hash"], "the hosts' networks drifted apart"


def test_command_line_across_hosts(cluster, layout):
    args = ["-m", "spinppo.run", "ppo", "--env", "CartPole-v1", "--steps_per_epoch", "2000", "--epochs", "2"]
    args += ["--data_dir", str(layout.data), "--exp_name", "cli"]
    out = mpi_run(cluster, layout, ["h1", "h2"], 2, args, timeout=120)
    written = files_under(layout.host_data("h1") / "cli")
    assert any(f.endswith("progress.txt") for f in written), out.stdout + out.stderr
    progress = next((layout.host_data("h1") / "cli").rglob("progress.txt"))
    assert len(progress.read_text().splitlines()) == 1 + 2
    assert_only_first_host_wrote(layout)


def test_an_error_on_one_host_ends_the_job_with_its_message(cluster, layout):
    from tests.unity_standin.build import write_build

    # The Unity build was installed on the first host only: the rank on h2 cannot find it. Rank 0, busy in
    # a collective, would wait for it forever: the job must end anyway, saying what went wrong and where.
    write_build(layout.host_opt("h1"), task="cartpole", agents=2)
    args = ["-m", "spinppo.run", "ppo", "--env", f"unity:{layout.opt / 'StandIn.x86_64'}", "--epochs", "1"]
    args += ["--steps_per_epoch", "800", "--minibatch_size", "64"]
    args += ["--data_dir", str(layout.data), "--exp_name", "missing"]
    cmd = cluster.mpiexec(["h1", "h2"], 2, [sys.executable, *args], mpiexec_args=["-wdir", str(layout.run)])
    out = run(cmd, timeout=60, check=False, **cluster.env(MPIEXEC_TIMEOUT="20"))
    text = out.stdout + out.stderr
    assert "APPLICATION TIMED OUT" not in text, "the job hung until MPIEXEC_TIMEOUT"
    assert out.returncode != 0
    assert "StandIn.x86_64 not found" in text and "(rank 1)" in text, text


def test_resume_across_hosts_without_a_shared_disk(cluster, layout):
    common = ["-m", "spinppo.run", "ppo", "--steps_per_epoch", "800", "--minibatch_size", "64"]
    mpi_run(
        cluster,
        layout,
        ["h1", "h2"],
        2,
        [*common, "--env", "CartPole-v1", "--epochs", "2"]
        + ["--data_dir", str(layout.data), "--exp_name", "resumed"],
        timeout=120,
    )
    run_dir = layout.data / "resumed" / "resumed_s0"  # as the ranks see it: only h1 holds the run
    cmd = cluster.mpiexec(
        ["h1", "h2"],
        2,
        [sys.executable, "-m", "spinppo.run", "ppo", "--resume", str(run_dir), "--epochs", "3"],
        mpiexec_args=["-wdir", str(layout.run)],
    )
    out = run(cmd, timeout=120, check=False, **cluster.env(MPIEXEC_TIMEOUT="60"))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    progress = layout.host_data("h1") / "resumed" / "resumed_s0" / "progress.txt"
    assert [row.split("\t")[0] for row in progress.read_text().splitlines()[1:]] == ["0", "1", "2"]
    assert_only_first_host_wrote(layout)


def test_a3c_across_hosts(cluster, layout):
    # Gradients and parameters travel by point-to-point messages over TCP, with no collective between
    # the start and the end: rank 1 (on h2) must still get its gradients applied, and rank 0 alone writes.
    args = ["-m", "spinppo.run", "a3c", "--env", "CartPole-v1", "--steps_per_epoch", "2000", "--epochs", "3"]
    args += ["--data_dir", str(layout.data), "--exp_name", "async"]
    out = mpi_run(cluster, layout, ["h1", "h2"], 2, args, timeout=120)
    progress = layout.host_data("h1") / "async" / "async_s0" / "progress.txt"
    assert len(progress.read_text().splitlines()) == 1 + 3, out.stdout + out.stderr
    applied = dict(a.split("=") for a in out.stdout.split("Gradients applied, by rank: ")[1].split()[:2])
    assert int(applied["0"]) > 0 and int(applied["1"]) > 0, applied
    assert_only_first_host_wrote(layout)
