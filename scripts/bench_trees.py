"""Same speed? One fixed-seed PPO run from each of two source trees, alternated, and the per-epoch times
of their progress.txt compared (medians and minima over every epoch but the first).

    python scripts/bench_trees.py --before /path/to/old/checkout --after . --pairs 10
    python scripts/bench_trees.py --before ../base --after . --pairs 6 -- --cpu 2

Each tree's code runs with ``PYTHONPATH`` set to it (``python -m spinppo.run ppo --env Walker --epochs 6
--seed 0`` plus whatever follows ``--``). On a shared or virtual machine whole runs vary by 10-30% from
minute to minute; the per-epoch medians over many alternated runs are what this compares, split into the
columns the run logs (EnvTime, InferenceTime, UpdateTime, MPITime), so that a change in the code's own
parts is not hidden by the environment's share.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile

COLUMNS = ("EnvTime", "InferenceTime", "UpdateTime", "MPITime")


def one_run(tree: str, data_dir: str, extra: list[str]) -> dict[str, list[float]]:
    """Run PPO from ``tree`` into ``data_dir``; return each column's per-epoch values (epochs 2 on) and
    ``epoch``, the wall-clock seconds between successive rows."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "spinppo.run", "ppo", "--env", "Walker", "--epochs", "6", "--seed", "0"]
    cmd += ["--data_dir", data_dir, "--exp_name", "t", *extra]
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(data_dir, "t", "t_s0", "progress.txt")) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    epochs = [float(b["Time"]) - float(a["Time"]) for a, b in zip(rows, rows[1:])]
    out: dict[str, list[float]] = {"epoch": epochs}
    for col in COLUMNS:
        out[col] = [float(r[col]) for r in rows[1:] if col in r]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the old source tree (a checkout or worktree)")
    parser.add_argument("--after", default=".", help="the new source tree")
    parser.add_argument("--pairs", type=int, default=10, help="alternated before/after runs")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    times: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            for name, tree in (("before", args.before), ("after", args.after)):
                for col, values in one_run(tree, os.path.join(tmp, f"{name}{i}"), extra).items():
                    times[name].setdefault(col, []).extend(values)
    print(f"per-epoch seconds over {args.pairs} alternated runs each (epochs 2-6), before -> after:")
    for col in ("epoch", *COLUMNS):
        b, a = times["before"].get(col), times["after"].get(col)
        if not b or not a:
            continue
        mb, ma = statistics.median(b), statistics.median(a)
        print(
            f"  {col:14s} median {mb:.4f} -> {ma:.4f} ({(ma / mb - 1) * 100:+.1f}%), "
            f"min {min(b):.4f} -> {min(a):.4f} ({(min(a) / min(b) - 1) * 100:+.1f}%)"
        )


if __name__ == "__main__":
    main()
