"""Same numbers before and after a refactor: fixed-seed runs whose progress.txt must not change.

Runs PPO, A2C and VPG on a vector task (CartPole), an image task (Pong's 84-pixel frames) and a task
with memory (CartPole with an LSTM), two of them under two ranks, and writes each run's progress.txt
without its timing columns. Run it on the commit before a change and on the commit after, then compare:

    python scripts/same_numbers.py --out /tmp/before        # on the old commit
    python scripts/same_numbers.py --out /tmp/after --compare /tmp/before

With --compare it prints, per run, whether every row is identical (Time columns aside) and exits 1 if
one is not.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PONG = ["--env", "PongNoFrameskip-v4", "--num_envs", "4", "--steps_per_epoch", "640", "--epochs", "3"]
CARTPOLE = ["--env", "CartPole-v1", "--steps_per_epoch", "1280", "--epochs", "4"]
RUNS: dict[str, list[str]] = {
    "ppo-cartpole": ["ppo", *CARTPOLE],
    "ppo-cartpole-np2": ["ppo", *CARTPOLE, "--cpu", "2"],
    "a2c-cartpole": ["a2c", *CARTPOLE],
    "vpg-cartpole": ["vpg", *CARTPOLE],
    "ppo-cartpole-lstm": ["ppo", *CARTPOLE, "--memory_size", "16", "--sequence_length", "8"],
    "a2c-cartpole-lstm": ["a2c", *CARTPOLE, "--memory_size", "16", "--sequence_length", "8"],
    "ppo-pendulum-np2": ["ppo", "--env", "Pendulum-v1", "--steps_per_epoch", "1024", "--epochs", "3"]
    + ["--cpu", "2"],
    "ppo-pong": ["ppo", *PONG],
    "a2c-pong": ["a2c", *PONG],
    "vpg-pong": ["vpg", *PONG],
}
TIMING = ("Time", "MPITime", "InferenceTime", "EnvTime", "UpdateTime", "EvalTime", "StepsPerSec")


def rows_without_timing(progress: Path) -> list[dict[str, str]]:
    """progress.txt's rows as dicts, without any column whose name says it is a time or a speed."""
    with progress.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [{k: v for k, v in row.items() if not any(t in k for t in TIMING)} for row in rows]


def run_all(out: Path, only: list[str] | None) -> None:
    """Trains every run in RUNS (or those named) and writes out/<name>.tsv."""
    out.mkdir(parents=True, exist_ok=True)
    for name, args in RUNS.items():
        if only and name not in only:
            continue
        with tempfile.TemporaryDirectory() as data:
            cmd = [sys.executable, "-m", "spinppo.run", *args, "--seed", "3", "--data_dir", data]
            cmd += ["--exp_name", name, "--tensorboard", "false"]
            env = dict(os.environ, OMP_NUM_THREADS="1")
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
            progress = next(Path(data).glob("*/*/progress.txt"))
            rows = rows_without_timing(progress)
            with (out / f"{name}.tsv").open("w") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
                writer.writeheader()
                writer.writerows(rows)
        print(f"{name}: {len(rows)} rows", flush=True)


def compare(out: Path, before: Path) -> bool:
    """True when every run in `out` has the same rows as in `before`; prints the first difference."""
    same = True
    for path in sorted(before.glob("*.tsv")):
        mine = out / path.name
        if not mine.exists():
            print(f"{path.stem}: missing")
            same = False
            continue
        a, b = rows_without_timing(path), rows_without_timing(mine)
        if a == b:
            print(f"{path.stem}: identical ({len(a)} rows, {len(a[0])} columns)")
            continue
        same = False
        for i, (ra, rb) in enumerate(zip(a, b, strict=False)):
            diff = {k: (ra.get(k), rb.get(k)) for k in set(ra) | set(rb) if ra.get(k) != rb.get(k)}
            if diff:
                print(f"{path.stem}: row {i} differs: {dict(list(diff.items())[:6])}")
                break
        else:
            print(f"{path.stem}: {len(a)} rows before, {len(b)} after")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where the runs' rows go")
    parser.add_argument("--compare", type=Path, help="a directory written before the change")
    parser.add_argument("--only", nargs="*", help="run only these")
    args = parser.parse_args()
    run_all(args.out, args.only)
    if args.compare is not None and not compare(args.out, args.compare):
        sys.exit(1)


if __name__ == "__main__":
    main()
