"""Recurrent policies (issue 17): does PPO with memory learn the Cue task, and what does memory cost a step?

    python scripts/bench_memory.py                                   # everything: learning, then cost
    python scripts/bench_memory.py --parts learning --delays 3       # only the delay-3 learning runs
    python scripts/bench_memory.py --parts learning --delays 10 --epochs 40 \\
        --data_dir /tmp/bench_memory_d10_e40                         # delay 10 with more epochs
    python scripts/bench_memory.py --parts cost --repeat 3           # Walker2d and Cue, A B A B A B
    python scripts/bench_memory.py --summarize                       # only read the runs in --data_dir again
    python scripts/bench_memory.py --quick --data_dir /tmp/bench_memory_quick   # smoke run, a minute or two

Learning (``--parts learning``): for every delay, seed and memory size in turn (memory ``--memory_size``
then none, alternating), one run of

    python -m spinppo.run ppo --env tests.memory_env:Cue-v0 --env_kwargs delay=D --memory_size M
        --sequence_length L --epochs 15 --steps_per_epoch 1024 --num_envs 4 --minibatch_size 256 --hid 32
        --seed S --cpu 2

with M = 32 and M = 0, seeds 1-5, delays 3 (episodes of 4 steps, L = 8) and 10 (11 steps, L = 16); L must
divide each environment's rollout (1024 / 2 ranks / 4 environments = 128 steps). With M = 0 the
``--sequence_length`` flag is passed as well and unused. A policy without memory earns 0 on average, one
that remembers the cue 1. Per seed: the last epoch's AverageEpRet and the first epoch (counted from 0, as
progress.txt's Epoch) whose AverageEpRet reaches 0.9; then mean, min and max over seeds.

Cost (``--parts cost``): per environment, ``--repeat`` rounds of [memory, no memory] (A B A B ...) so that
background load hits both alike:

    python -m spinppo.run ppo --env Walker2d --memory_size 128 --sequence_length 64 --epochs 10 --seed 1
        --cpu 2                                                      # and --memory_size 0; all else default
    python -m spinppo.run ppo --env tests.memory_env:Cue-v0 --memory_size 32 --sequence_length 8 --epochs 15
        --steps_per_epoch 1024 --num_envs 4 --minibatch_size 256 --hid 32 --seed 1 --cpu 2   # and 0

From progress.txt (rank 0's timings), epochs after the first of every repeat pooled: the median
InferenceTime per environment step of a rank (InferenceTime / (steps_per_epoch / ranks)), UpdateTime per
epoch and per step of the batch (UpdateTime / steps_per_epoch), EnvTime and StepsPerSec; and the ratio
memory / no memory. Each run's own medians are printed too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CUE = "tests.memory_env:Cue-v0"
CUE_FLAGS = ["--steps_per_epoch", "1024", "--num_envs", "4", "--minibatch_size", "256", "--hid", "32"]
SEQUENCE_LENGTH = {3: 8, 10: 16}  # per delay: a power of two at least the episode (delay + 1 steps)


def read_progress(run_dir: str) -> list[dict[str, float]]:
    """progress.txt as a list of rows of floats."""
    with open(os.path.join(run_dir, "progress.txt")) as f:
        lines = f.read().splitlines()
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, map(float, line.split("\t")), strict=True)) for line in lines[1:] if line]


def run_dir(data_dir: str, exp_name: str, seed: int) -> str:
    return os.path.join(data_dir, exp_name, f"{exp_name}_s{seed}")


def launch(args: argparse.Namespace, exp_name: str, seed: int, flags: list[str]) -> None:
    """One ``spinppo.run ppo`` run as a subprocess; its output goes to ``<exp_name>_s<seed>.log``."""
    cmd = [sys.executable, "-m", "spinppo.run", "ppo", *flags, "--seed", str(seed), "--cpu", str(args.cpu)]
    cmd += ["--data_dir", args.data_dir, "--exp_name", exp_name, "--overwrite", "--save_freq", "1000"]
    print("$", " ".join(cmd[1:]), flush=True)
    os.makedirs(args.data_dir, exist_ok=True)
    t0 = time.time()
    with open(os.path.join(args.data_dir, f"{exp_name}_s{seed}.log"), "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    print(f"  done in {time.time() - t0:.0f} s", flush=True)


def cue_flags(args: argparse.Namespace, delay: int, memory: int) -> list[str]:
    length = args.sequence_length or SEQUENCE_LENGTH.get(delay, 16)
    rollout = 1024 // args.cpu // 4
    if rollout % length:
        raise SystemExit(f"--sequence_length {length} does not divide the rollout of {rollout} steps")
    flags = ["--env", CUE, "--env_kwargs", f"delay={delay}", "--memory_size", str(memory)]
    return flags + ["--sequence_length", str(length), "--epochs", str(args.epochs), *CUE_FLAGS]


def cost_configs(args: argparse.Namespace) -> list[tuple[str, int, list[str]]]:
    """(name, memory size, flags) for the cost runs: Walker2d with --walker_memory, Cue with --memory."""
    walker = ["--env", "Walker2d", "--sequence_length", "64", "--epochs", str(args.walker_epochs)]
    cue = ["--env", CUE, "--sequence_length", "8", "--epochs", str(args.epochs), *CUE_FLAGS]
    configs = []
    for name, memory, flags in (("walker2d", args.walker_memory, walker), ("cue", args.memory, cue)):
        for m in (memory, 0):
            configs.append((f"cost-{name}-m{m}", m, [*flags, "--memory_size", str(m)]))
    return configs


def learning(args: argparse.Namespace) -> None:
    for delay in args.delays:
        for seed in args.seeds:
            for memory in (args.memory, 0):
                launch(args, f"cue-d{delay}-m{memory}", seed, cue_flags(args, delay, memory))


def cost(args: argparse.Namespace) -> None:
    configs = cost_configs(args)
    for i in range(args.repeat):
        for name, _, flags in configs[:2]:  # Walker2d: memory, none
            launch(args, f"{name}-r{i}", 1, flags)
    for i in range(args.repeat):
        for name, _, flags in configs[2:]:  # Cue: memory, none
            launch(args, f"{name}-r{i}", 1, flags)


def summarize_learning(args: argparse.Namespace) -> list[str]:
    lines = []
    for delay in args.delays:
        lines.append(
            f"\nlearning Cue-v0 delay={delay} (episodes of {delay + 1} steps), {args.epochs} epochs of 1024:"
        )
        lines.append("| memory_size | seed | final AverageEpRet | first epoch >= 0.9 |")
        lines.append("|---|---|---:|---:|")
        summary = []
        for memory in (args.memory, 0):
            finals, firsts = [], []
            for seed in args.seeds:
                path = run_dir(args.data_dir, f"cue-d{delay}-m{memory}", seed)
                if not os.path.exists(os.path.join(path, "progress.txt")):
                    continue
                rows = read_progress(path)
                if not rows:
                    continue
                first = next((int(r["Epoch"]) for r in rows if r["AverageEpRet"] >= 0.9), None)
                finals.append(rows[-1]["AverageEpRet"])
                firsts.append(first)
                first_text = "-" if first is None else str(first)
                lines.append(f"| {memory} | {seed} | {rows[-1]['AverageEpRet']:.3f} | {first_text} |")
            if finals:
                reached = [f for f in firsts if f is not None]
                firsts_text = f"{len(reached)}/{len(firsts)} seeds reach 0.9" + (
                    f", at epoch mean {statistics.mean(reached):.1f} (min {min(reached)}, max {max(reached)})"
                    if reached
                    else ""
                )
                summary.append(
                    f"| {memory} | {len(finals)} | {statistics.mean(finals):.3f} | {min(finals):.3f} | "
                    f"{max(finals):.3f} | {firsts_text} |"
                )
        lines.append("\n| memory_size | seeds | final AverageEpRet mean | min | max | first epoch >= 0.9 |")
        lines.append("|---|---|---:|---:|---:|---|")
        lines += summary
    return lines


def summarize_cost(args: argparse.Namespace) -> list[str]:
    lines = ["\ncost per step, medians over epochs after the first (rank 0's timings):"]
    table = [
        "| env | memory_size | runs | inference us/step | update s/epoch | update us/step | env s/epoch "
        "| steps/s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    per_run = []
    medians: dict[str, dict[str, float]] = {}
    for name, memory, _ in cost_configs(args):
        env = "Walker2d" if "walker2d" in name else "Cue-v0"
        pooled: dict[str, list[float]] = {"inf": [], "upd": [], "upd_step": [], "env": [], "sps": []}
        runs = 0
        for i in range(args.repeat):
            path = run_dir(args.data_dir, f"{name}-r{i}", 1)
            if not os.path.exists(os.path.join(path, "progress.txt")):
                continue
            rows = read_progress(path)[1:]
            if not rows:
                continue
            runs += 1
            steps = 4096 if env == "Walker2d" else 1024
            this = {
                "inf": [r["InferenceTime"] / (steps / args.cpu) * 1e6 for r in rows],
                "upd": [r["UpdateTime"] for r in rows],
                "upd_step": [r["UpdateTime"] / steps * 1e6 for r in rows],
                "env": [r["EnvTime"] for r in rows],
                "sps": [r["StepsPerSec"] for r in rows],
            }
            for k, v in this.items():
                pooled[k] += v
            per_run.append(
                f"  {name}-r{i}: inference {statistics.median(this['inf']):.1f} us/step, update "
                f"{statistics.median(this['upd']):.3f} s/epoch, {statistics.median(this['sps']):.0f} steps/s"
            )
        if not runs:
            continue
        med = {k: statistics.median(v) for k, v in pooled.items()}
        medians[name] = med
        table.append(
            f"| {env} | {memory} | {runs} | {med['inf']:.1f} | {med['upd']:.3f} | {med['upd_step']:.1f} | "
            f"{med['env']:.3f} | {med['sps']:.0f} |"
        )
    for env_name, memory in (("walker2d", args.walker_memory), ("cue", args.memory)):
        a, b = medians.get(f"cost-{env_name}-m{memory}"), medians.get(f"cost-{env_name}-m0")
        if a and b:
            ratios = " | ".join(f"{a[k] / b[k]:.2f}x" for k in ("inf", "upd", "upd_step", "env", "sps"))
            table.append(f"| {env_name} ratio {memory}/0 | | | {ratios} |")
    return lines + table + ["per run:"] + per_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="/tmp/bench_memory")
    parser.add_argument("--parts", nargs="+", choices=["learning", "cost"], default=["learning", "cost"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--delays", nargs="+", type=int, default=[3, 10])
    parser.add_argument("--memory", type=int, default=32, help="--memory_size of the Cue runs")
    parser.add_argument("--walker_memory", type=int, default=128, help="--memory_size of the Walker2d runs")
    parser.add_argument("--sequence_length", type=int, help="Cue learning runs; default 8 (delay 3), 16 else")
    parser.add_argument("--epochs", type=int, default=15, help="Cue runs")
    parser.add_argument("--walker_epochs", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3, help="cost: rounds of [memory, none] per env")
    parser.add_argument("--cpu", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 2 epochs, 1 repeat")
    parser.add_argument("--summarize", action="store_true", help="only print the tables of --data_dir")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.walker_epochs, args.repeat = args.seeds[:1], 2, 2, 1
    t0 = time.time()
    if not args.summarize:
        if "learning" in args.parts:
            learning(args)
        if "cost" in args.parts:
            cost(args)
    lines = []
    if "learning" in args.parts:
        lines += summarize_learning(args)
    if "cost" in args.parts:
        lines += summarize_cost(args)
    print("\n".join(lines))
    if not args.summarize:
        print(f"\nwall time {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
