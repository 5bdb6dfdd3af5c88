"""TRPO's (and NPG's) cost per update against PPO's at the same batch (issue 31): seconds, Fisher-vector
products and collectives per update, from short runs' progress.txt.

    python scripts/bench_trpo_cost.py --env Hopper --epochs 6 --cpu 2 --data_dir /tmp/trpo_cost

Each algorithm runs ``--epochs`` epochs of ``--steps`` steps (over all ranks) with its defaults otherwise;
the figures are means over the epochs after the first (its update includes one-time costs). UpdateTime
is the update's seconds on rank 0 (the rollout excluded; the ranks wait for each other inside it). TRPO's
collectives are its ``Collectives`` column; PPO's are counted from its settings: one gradient Allreduce a
minibatch (update_epochs x steps / minibatch_size) and one for the last pass's KL.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rows(run_dir: str) -> list[dict[str, float]]:
    with open(os.path.join(run_dir, "progress.txt")) as f:
        lines = f.read().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, map(float, line.split("\t")), strict=True)) for line in lines[1:]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--env", default="Hopper")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--steps", type=int, default=4096, help="steps per epoch over all ranks (the batch)")
    p.add_argument("--cpu", type=int, default=2)
    p.add_argument("--data_dir", default="/tmp/trpo_cost")
    p.add_argument("--algos", nargs="+", default=["ppo", "trpo", "npg"])
    args = p.parse_args(argv)
    print(f"{args.env}, {args.steps} steps an update, {args.cpu} ranks, {args.epochs} epochs each")
    print("| algo | seconds / update | Fisher-vector products | collectives / update | BacktrackIters |")
    print("|---|---:|---:|---:|---:|")
    for algo in args.algos:
        cmd = [sys.executable, "-m", "spinppo.run", algo, "--env", args.env, "--epochs", str(args.epochs)]
        cmd += ["--steps_per_epoch", str(args.steps), "--cpu", str(args.cpu), "--data_dir", args.data_dir]
        cmd += ["--exp_name", algo, "--overwrite"]
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        table = rows(os.path.join(args.data_dir, algo, f"{algo}_s0"))[1:]
        seconds = statistics.fmean(r["UpdateTime"] for r in table)
        if algo == "ppo":  # the defaults: 10 passes of minibatches of 512, and one KL average
            products, collectives, backtracks = 0, f"{10 * args.steps // 512 + 1}", "-"
        else:
            products = 10 + 1  # cg_iters + the one for x^T H x
            counts = [r["Collectives"] for r in table]
            collectives = f"{statistics.fmean(counts):.1f} ({min(counts):.0f}-{max(counts):.0f})"
            backtracks = f"{statistics.fmean(r['BacktrackIters'] for r in table):.2f}"
        print(f"| {algo.upper()} | {seconds:.3f} | {products} | {collectives} | {backtracks} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
