"""Time per epoch and time inside MPI calls: one host with two ranks against two hosts with one rank each.

    sudo .venv/bin/python scripts/bench_multihost.py [--epochs 6] [--steps_per_epoch 4000] [--netmod ucx]

The "hosts" are network namespaces on this machine (tests/multihost/netns.py): each has its own address,
hostname and share of the cores, and ranks on different hosts talk over TCP on a veth pair through a bridge,
so the comparison isolates what leaving shared memory for TCP costs on the same cores:

* ``1x2``: one host that owns all the cores, two ranks on it (MPICH's shared memory between them);
* ``2x1``: two hosts that own half the cores each, one rank on each (TCP over the veths).

For each, PPO trains on ``--env`` with tests/multihost/train_driver.py, which times every Comm collective
that spinppo calls, split by a timed Barrier before each into waiting (for the slower rank) and moving the
data (the Barriers add one small round trip per call); a probe also times Allreduces of the network's
gradient size. s/epoch is the median of the epochs after the first (warm-up), "best" the fastest of them
(the one least disturbed by other work); with ``--repeat`` the layouts alternate and medians over runs
are shown. Prints one line per layout, then a one-line summary with the
load average before and after (other work on the machine skews the figures). Needs root (namespaces).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import child_env  # noqa: E402
from tests.multihost.netns import NetnsCluster, unavailable_reason  # noqa: E402

DRIVER = str(REPO / "tests" / "multihost" / "train_driver.py")
PROBE = str(REPO / "tests" / "multihost" / "probe.py")
LAYOUTS = {"1x2": (1, ["h1:2"]), "2x1": (2, ["h1", "h2"])}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--steps_per_epoch", type=int, default=4000)
    p.add_argument("--num_envs", type=int, default=4)
    p.add_argument("--hid", type=int, nargs="+", default=[64, 64])
    p.add_argument("--minibatch_size", type=int, default=64, help="small, so that MPI has work to show")
    p.add_argument("--netmod", choices=["ucx", "ofi"], default="ucx", help="MPICH ch4 netmod between hosts")
    p.add_argument("--layouts", nargs="+", choices=sorted(LAYOUTS), default=["1x2", "2x1"])
    p.add_argument("--repeat", type=int, default=1, help="runs per layout, alternated; medians are shown")
    p.add_argument("--timeout", type=float, default=590)
    return p.parse_args()


def tagged(tag: str, out: str) -> list[dict]:
    return [json.loads(m) for m in re.findall(rf"^{tag} (\{{.*\}})$", out, flags=re.M)]


def run(cmd: list[str], env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def bench_layout(name: str, args: argparse.Namespace, work: Path) -> dict:
    n_hosts, hosts = LAYOUTS[name]
    data = work / name
    with NetnsCluster(n_hosts, work) as cluster:
        env = child_env(**cluster.env(MPIR_CVAR_CH4_NETMOD=args.netmod))
        train = [DRIVER, "--data_dir", str(data), "--env", args.env, "--epochs", str(args.epochs)]
        train += ["--steps_per_epoch", str(args.steps_per_epoch), "--num_envs", str(args.num_envs)]
        train += ["--hid", *map(str, args.hid), "--minibatch_size", str(args.minibatch_size)]
        train += ["--time_mpi", "--split_wait"]
        out = run(cluster.mpiexec(hosts, 2, [sys.executable, *train]), env, args.timeout)
        result = tagged("RESULT", out)[0]
        ranks = tagged("RANK", out)
        n_params = _n_params(result["output_dir"])
        probe = [PROBE, "--allreduce_floats", str(n_params), "--reps", "500"]
        probed = tagged("PROBE", run(cluster.mpiexec(hosts, 2, [sys.executable, *probe]), env, 120))
    # Epoch 1 pays for warming up (allocations, first connections); the rest are the steady state.
    steady = result["epoch_seconds"][1:] or result["epoch_seconds"]
    return {
        "layout": name,
        "hosts": sorted({r["hostname"] for r in ranks}),
        "local_size": [r["local_size"] for r in ranks],
        "epoch_s": statistics.median(steady),
        "best_epoch_s": min(steady),
        "epoch_s_all": result["epoch_seconds"],
        "train_s": result["train_seconds"],
        "mpi_s_per_epoch": [
            (s + w) / args.epochs for s, w in zip(result["mpi_seconds"], result["mpi_wait_seconds"])
        ],
        "wait_s_per_epoch": [w / args.epochs for w in result["mpi_wait_seconds"]],
        "move_s_per_epoch": [s / args.epochs for s in result["mpi_seconds"]],
        "mpi_calls_per_epoch": result["mpi_calls"][0] / args.epochs,
        # spinppo's MPITime column (rank 0): a cross-check of the driver's stopwatch (that adds Barriers).
        "logged_mpi_s": statistics.median(result["logged_mpi_seconds"][1:] or [float("nan")]),
        "mpi_share": max(s + w for s, w in zip(result["mpi_seconds"], result["mpi_wait_seconds"]))
        / result["train_seconds"],
        "allreduce_us": max(r["allreduce_us"] for r in probed),
        "allreduce_floats": n_params,
        "same_params": len({r["hash"] for r in ranks}) == 1,
    }


def merge(runs: list[dict]) -> dict:
    """Medians over repeated runs of one layout (the first run's per-epoch list is kept for show)."""
    out = dict(runs[0])
    for key in ("epoch_s", "train_s", "mpi_share", "allreduce_us", "logged_mpi_s"):
        out[key] = statistics.median(r[key] for r in runs)
    for key in ("mpi_s_per_epoch", "wait_s_per_epoch", "move_s_per_epoch"):
        out[key] = [statistics.median(r[key][i] for r in runs) for i in range(2)]
    out["epoch_s_runs"] = [r["epoch_s"] for r in runs]
    out["best_epoch_s"] = min(r["best_epoch_s"] for r in runs)
    out["same_params"] = all(r["same_params"] for r in runs)
    return out


def _n_params(output_dir: str) -> int:
    import torch

    payload = torch.load(Path(output_dir) / "pyt_save" / "model.pt", map_location="cpu", weights_only=True)
    return sum(t.numel() for k, t in payload["state_dict"].items() if "rms" not in k)


def main() -> None:
    args = parse()
    reason = unavailable_reason()
    if reason:
        sys.exit(f"bench_multihost: {reason}")
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench_multihost_"))
    try:
        runs = {name: [] for name in args.layouts}
        for i in range(args.repeat):  # alternate the layouts, so that a busy spell hits both
            for name in args.layouts:
                runs[name].append(bench_layout(name, args, work / str(i)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = [merge(rs) for rs in runs.values()]
    for r in results:
        print(
            f"{r['layout']}: hosts {','.join(r['hosts'])} local_size {r['local_size']}: "
            f"{r['epoch_s']:.2f} s/epoch, best {r['best_epoch_s']:.2f} "
            f"(runs {', '.join(f'{s:.2f}' for s in r['epoch_s_runs'])}; "
            f"epochs of run 1 {', '.join(f'{s:.2f}' for s in r['epoch_s_all'])}), "
            f"MPI {', '.join(f'{s:.2f}' for s in r['mpi_s_per_epoch'])} s/epoch per rank "
            f"(waiting {', '.join(f'{s:.2f}' for s in r['wait_s_per_epoch'])}, "
            f"moving {', '.join(f'{s:.3f}' for s in r['move_s_per_epoch'])}; "
            f"{r['mpi_calls_per_epoch']:.0f} calls, {100 * r['mpi_share']:.0f}% of training; "
            f"MPITime column {r['logged_mpi_s']:.2f}), "
            f"Allreduce of {r['allreduce_floats']} floats {r['allreduce_us']:.0f} us, "
            f"identical params: {r['same_params']}"
        )
    summary = "; ".join(
        f"{r['layout']} {r['epoch_s']:.2f} s/epoch (best {r['best_epoch_s']:.2f}), "
        f"MPI {max(r['mpi_s_per_epoch']):.2f} s/epoch "
        f"(moving data {max(r['move_s_per_epoch']):.3f}), Allreduce {r['allreduce_us']:.0f} us"
        for r in results
    )
    print(
        f"bench_multihost: {args.env} {args.steps_per_epoch} steps/epoch x {args.epochs}, "
        f"minibatch {args.minibatch_size}, "
        f"netmod {args.netmod}, {args.repeat} run(s) each, load {load_before:.1f}->{os.getloadavg()[0]:.1f}: "
        f"{summary}",
        flush=True,
    )


if __name__ == "__main__":
    main()
