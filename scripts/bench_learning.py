"""Learning benchmark: PPO with default flags on MuJoCo tasks, several seeds, 1M steps each.

    python scripts/bench_learning.py                                  # Walker, Hopper, HalfCheetah x 3 seeds
    python scripts/bench_learning.py --env Walker --seeds 0 --steps 200000 --cpu 2
    python scripts/bench_learning.py --summarize data/bench           # only read finished runs again

Each run is ``python -m spinppo.run ppo --env ENV --seed S --cpu N`` with ``--epochs`` set so that it
takes ``--steps`` environment steps; flags after ``--`` go to every run. The score of a run is the mean
episode return over its last 100k steps (the mean of AverageEpRet over the epochs that end there);
the summary line gives the median over seeds against the goal.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

GOALS = {"Walker2d-v5": 3500, "Hopper-v5": 2500, "HalfCheetah-v5": 3000}


def read_progress(run_dir: str) -> list[dict[str, float]]:
    """progress.txt as a list of rows of floats."""
    with open(os.path.join(run_dir, "progress.txt")) as f:
        lines = f.read().splitlines()
    if not lines:  # a run that is only starting
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, map(float, line.split("\t")), strict=True)) for line in lines[1:] if line]


def score(rows: list[dict[str, float]], window: int) -> float:
    """Mean of AverageEpRet over the epochs in the last ``window`` environment steps."""
    last = rows[-1]["TotalEnvInteracts"]
    tail = [
        r["AverageEpRet"]
        for r in rows
        if r["TotalEnvInteracts"] > last - window and r["AverageEpRet"] == r["AverageEpRet"]
    ]
    return sum(tail) / len(tail)


def summarize(data_dir: str, window: int) -> list[str]:
    """One line per environment: each seed's score, the median, the goal, steps per second."""
    by_env: dict[str, list[tuple[int, float, float, float]]] = {}
    for config_path in sorted(glob.glob(os.path.join(data_dir, "*", "*", "config.json"))):
        run_dir = os.path.dirname(config_path)
        with open(config_path) as f:
            config = json.load(f)
        rows = read_progress(run_dir)
        if not rows:
            continue
        env = config["env_fn"]["env"]
        sps = rows[-1]["TotalEnvInteracts"] / rows[-1]["Time"]
        by_env.setdefault(env, []).append(
            (config["seed"], score(rows, window), rows[-1]["TotalEnvInteracts"], sps)
        )
    lines = []
    for env, runs in sorted(by_env.items()):
        med = statistics.median(s for _, s, _, _ in runs)
        goal = GOALS.get(env)
        seeds = ", ".join(f"s{seed}={s:.0f}" for seed, s, _, _ in sorted(runs))
        steps = min(n for _, _, n, _ in runs)
        sps = statistics.mean(v for *_, v in runs)
        verdict = (
            f" goal {goal}: {'MET' if med >= goal else 'NOT met'} (ratio {med / goal:.2f})" if goal else ""
        )
        lines.append(
            f"learning {env}: median {med:.0f} over {len(runs)} seeds ({seeds}) at {steps:.0f} steps, "
            f"{sps:.0f} steps/s end to end;{verdict}"
        )
    return lines


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", nargs="+", default=["Walker", "Hopper", "HalfCheetah"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--steps_per_epoch", type=int, default=4096, help="must match the ppo default")
    parser.add_argument("--cpu", type=int, default=2)
    parser.add_argument("--window", type=int, default=100_000)
    parser.add_argument("--data_dir", default=os.path.join("data", "bench"))
    parser.add_argument("--summarize", metavar="DIR", help="only summarise the runs below DIR")
    args = parser.parse_args(argv)
    if args.summarize:
        print("\n".join(summarize(args.summarize, args.window)))
        return
    epochs = args.steps // args.steps_per_epoch
    for env in args.env:
        for seed in args.seeds:
            cmd = [
                sys.executable,
                "-m",
                "spinppo.run",
                "ppo",
                "--env",
                env,
                "--seed",
                str(seed),
                "--epochs",
                str(epochs),
                "--steps_per_epoch",
                str(args.steps_per_epoch),
                "--cpu",
                str(args.cpu),
                "--data_dir",
                args.data_dir,
                "--exp_name",
                f"bench-{env.lower()}",
                "--overwrite",
                *extra,
            ]
            print("$", " ".join(cmd[1:]), flush=True)
            t0 = time.time()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            print(f"  done in {time.time() - t0:.0f} s", flush=True)
    print("\n".join(summarize(args.data_dir, args.window)))


if __name__ == "__main__":
    main()
