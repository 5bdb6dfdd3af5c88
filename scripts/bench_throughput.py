"""Throughput benchmark: raw environment stepping against end-to-end PPO, at 1 and 2 ranks.

    python scripts/bench_throughput.py                      # Walker, 1 and 2 ranks, 8 epochs each
    python scripts/bench_throughput.py --env Hopper --epochs 4 --ranks 2
    python scripts/bench_throughput.py --repeat 3           # medians of 3 alternating repetitions
    python scripts/bench_throughput.py --launches --config configs/mujoco/Walker2d.yaml --repeat 3

With ``--launches`` it compares the two ways of starting R ranks instead (R: the first of ``--ranks``
above 1): the user's own ``mpirun -np R python -m spinppo.run ppo --config FILE`` and ``python -m
spinppo.run ppo --config FILE --cpu R``, alternated, from an environment without OMP_NUM_THREADS and the
BLAS variables (a user's plain shell): steps per second after the first epoch and InferenceTime per
epoch, and the mpirun launch's steps/s as a share of --cpu's (goal >= 0.95).

For each rank count R, in one script run:
- raw: R ranks step the environment with random actions through the same vectorised environments as
  training (``--num_envs`` per rank, PPO's default), no policy, no learning;
- end to end: ``python -m spinppo.run ppo --env ENV --cpu R`` with default flags (rollout, update,
  logging with TensorBoard, checkpoints), measured from progress.txt after the first epoch;
- where an epoch's time goes: environment, policy inference, update, and time inside MPI calls.
Summary lines give end-to-end / raw, the 2-rank / 1-rank scaling (overall, and of the environment's and
the update's seconds per epoch), and MPI time / epoch time.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import os
import statistics
import subprocess
import sys
import tempfile
import time


def raw_stepping(env_name: str, steps_per_rank: int, num_envs: int) -> None:
    """Run under mpirun: every rank steps its envs with random actions; rank 0 prints total steps/s."""
    import numpy as np

    from spinppo.envs.registry import EnvFactory, make_vector_env
    from spinppo.utils.mpi_tools import COMM, num_procs, proc_id

    env = make_vector_env(EnvFactory(env_name), num_envs)
    env.reset(seed=proc_id())
    rng = np.random.default_rng(proc_id())
    low, high = env.single_action_space.low, env.single_action_space.high
    n = steps_per_rank // num_envs
    COMM.Barrier()
    t0 = time.perf_counter()
    for _ in range(n):
        env.step(rng.uniform(low, high, size=(num_envs, *low.shape)).astype(np.float32))
    elapsed = COMM.allreduce(time.perf_counter() - t0, op=__import__("mpi4py").MPI.MAX)
    if proc_id() == 0:
        print(f"RAW {n * num_envs * num_procs() / elapsed:.1f}", flush=True)


def read_rows(run_dir: str) -> list[dict[str, float]]:
    with open(os.path.join(run_dir, "progress.txt")) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f, delimiter="\t")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Walker")
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--raw_steps", type=int, default=20000, help="raw steps per rank")
    parser.add_argument("--repeat", type=int, default=1, help="repetitions (rank counts alternate)")
    parser.add_argument("--launches", action="store_true", help="mpirun -np R against --cpu R")
    parser.add_argument("--config", help="with --launches: the config file both launches train")
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args()
    if args.launches:
        compare_launches(args.config, max(args.ranks), args.epochs, args.repeat, extra)
        return
    from spinppo.algos.ppo import ppo

    num_envs = inspect.signature(ppo).parameters["num_envs"].default
    if args.raw:
        raw_stepping(args.env, args.raw_steps, num_envs)
        return
    results: dict[int, list[dict[str, float]]] = {r: [] for r in args.ranks}
    # Rank counts alternate within each repetition, so that drift in the machine's speed (a shared VM)
    # hits all of them alike; the summary takes the median over repetitions.
    for _ in range(args.repeat):
        for ranks in args.ranks:
            results[ranks].append(measure(args.env, ranks, args.epochs, args.raw_steps, extra))
    median = {r: {k: statistics.median(m[k] for m in ms) for k in ms[0]} for r, ms in results.items()}
    for ranks, m in median.items():
        print(
            f"throughput {args.env} ranks={ranks}: raw {m['raw']:.0f} steps/s, end-to-end {m['e2e']:.0f} "
            f"steps/s, ratio {m['ratio']:.2f} (goal >= 0.50); epoch {m['epoch']:.2f} s = env "
            f"{m['EnvTime']:.0%}, inference+bookkeeping {m['InferenceTime']:.0%}, update "
            f"{m['UpdateTime']:.0%}; MPI {m['MPITime']:.1%} of the epoch (goal <= 5%)"
            + (f" [median of {args.repeat}]" if args.repeat > 1 else ""),
            flush=True,
        )
    if 1 in results and 2 in results:
        e2e = statistics.median(b["e2e"] / a["e2e"] for a, b in zip(results[1], results[2], strict=True))
        raw = statistics.median(b["raw"] / a["raw"] for a, b in zip(results[1], results[2], strict=True))
        # Per part: how much faster each part of an epoch got (its seconds at 1 rank / at 2 ranks).
        parts = {
            name: statistics.median(
                a["epoch"] * a[key] / (b["epoch"] * b[key])
                for a, b in zip(results[1], results[2], strict=True)
            )
            for name, key in (("environment", "EnvTime"), ("update", "UpdateTime"))
        }
        print(
            f"scaling {args.env}: 2 ranks / 1 rank = {e2e:.2f}x at a fixed global batch (goal >= 1.8x); "
            f"raw stepping alone scales {raw:.2f}x on this machine; per part: "
            + ", ".join(f"{name} {x:.2f}x" for name, x in parts.items())
        )


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def compare_launches(config: str | None, ranks: int, epochs: int, repeat: int, extra: list[str]) -> None:
    """``mpirun -np ranks`` against ``--cpu ranks`` on one config, alternated ``repeat`` times."""
    if not config:
        sys.exit("--launches needs --config FILE")
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES and not k.startswith("PMI_")}
    train = [sys.executable, "-m", "spinppo.run", "ppo", "--config", config, "--epochs", str(epochs)]
    launches = {"mpirun": [mpirun, "-np", str(ranks), *train], "--cpu": [*train, "--cpu", str(ranks)]}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in launches}
    for _ in range(repeat):
        for name, cmd in launches.items():
            with tempfile.TemporaryDirectory() as tmp:
                out = subprocess.run(
                    [*cmd, "--data_dir", tmp, "--exp_name", "launch", *extra],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=True,
                ).stdout
                threads = (
                    out.split("Threads per rank: ")[1].split()[0] if "Threads per rank: " in out else "?"
                )
                rows = read_rows(os.path.join(tmp, "launch", "launch_s0"))
            later = rows[1:]  # the first epoch pays for start-up
            steps = later[-1]["TotalEnvInteracts"] - rows[0]["TotalEnvInteracts"]
            seconds = later[-1]["Time"] - rows[0]["Time"]
            inference = statistics.mean(r["InferenceTime"] for r in later)
            results[name].append((steps / seconds, inference))
            print(
                f"  {name:7s} {steps / seconds:7.0f} steps/s, InferenceTime {inference:.3f} s/epoch, "
                f"threads per rank {threads}",
                flush=True,
            )
    median = {name: [statistics.median(x) for x in zip(*rs, strict=True)] for name, rs in results.items()}
    for name, (speed, inference) in median.items():
        print(f"launch {name} -np/--cpu {ranks}: {speed:.0f} steps/s, InferenceTime {inference:.3f} s/epoch")
    share = statistics.median(m[0] / c[0] for m, c in zip(results["mpirun"], results["--cpu"], strict=True))
    print(f"mpirun / --cpu steps/s: {share:.2f} (goal >= 0.95) [median of {repeat} alternated pairs]")


def measure(env_name: str, ranks: int, epochs: int, raw_steps: int, extra: list[str]) -> dict[str, float]:
    """Raw and end-to-end steps/s at ``ranks`` ranks, and the shares of an end-to-end epoch.

    Raw stepping is measured right before and right after the end-to-end run and averaged, so that a
    change in the machine's speed during the measurement (a shared VM drifts by 20% within minutes) biases
    the ratio as little as possible.
    """
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    raw_cmd = [mpirun, "-np", str(ranks), sys.executable, __file__, "--raw", "--env", env_name]

    def raw() -> float:
        out = subprocess.run(
            [*raw_cmd, "--raw_steps", str(raw_steps)], capture_output=True, text=True, env=env, check=True
        ).stdout
        return float(out.split("RAW")[1].split()[0])

    raw_before = raw()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "spinppo.run", "ppo", "--env", env_name, "--cpu", str(ranks)]
            + ["--epochs", str(epochs), "--data_dir", tmp, "--exp_name", "tp"]
            + extra,
            stdout=subprocess.DEVNULL,
            env=env,
            check=True,
        )
        rows = read_rows(os.path.join(tmp, "tp", "tp_s0"))
    raw_steps_per_s = (raw_before + raw()) / 2
    later = rows[1:]  # the first epoch pays for start-up
    steps = later[-1]["TotalEnvInteracts"] - rows[0]["TotalEnvInteracts"]
    seconds = later[-1]["Time"] - rows[0]["Time"]
    epoch = seconds / len(later)
    shares = {
        k: sum(r[k] for r in later) / len(later) / epoch
        for k in ("EnvTime", "InferenceTime", "UpdateTime", "MPITime")
    }
    e2e = steps / seconds
    return {"raw": raw_steps_per_s, "e2e": e2e, "ratio": e2e / raw_steps_per_s, "epoch": epoch, **shares}


if __name__ == "__main__":
    main()
