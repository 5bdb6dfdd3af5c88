"""More ranks than cores: end-to-end PPO speed at ``mpirun -np 8`` against ``-np 2``, waits busy or yielding.

    python scripts/bench_oversubscribed.py                  # Walker, -np 2 and 8, 3 alternating repeats
    python scripts/bench_oversubscribed.py --ranks 2 3 --epochs 4 --repeat 1

For every repeat, rank count and wait mode in turn, ``mpirun -np R python -m spinppo.run ppo --env ENV``
with default flags (TensorBoard and checkpoints included) on a fresh run directory; steps per second and
the MPI share come from progress.txt, epochs after the first. Wait modes:
- ``busy``: MPICH's and Open MPI's defaults (busy-polling), set explicitly;
- ``yield``: the settings that make them yield a waiting rank's core (``YIELDING_WAITS``: what mpi4py's
  own CI uses for oversubscribed MPICH runs, and Open MPI's yield_when_idle).
The summary gives medians over repeats, -np 8 / -np 2 per mode, and whether the same rank count gave the
same progress.txt rows (Time columns aside) in every mode and repeat.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from spinppo.utils.mpi_tools import available_cores  # noqa: E402

# MPICH: sched_yield after every failed poll, and 1 us sleeps in ch4's progress loop after each poll that
# finds nothing; Open MPI: yield when idle.
YIELDING_WAITS = {
    "MPIR_CVAR_POLLS_BEFORE_YIELD": "1",
    "MPIR_CVAR_CH4_PROGRESS_THROTTLE": "1",
    "MPIR_CVAR_CH4_PROGRESS_THROTTLE_NO_PROGRESS_COUNT": "1",
    "OMPI_MCA_mpi_yield_when_idle": "1",
}
BUSY_WAITS = {  # the libraries' own defaults (mpivars; Open MPI's mpi_yield_when_idle)
    "MPIR_CVAR_POLLS_BEFORE_YIELD": "1000",
    "MPIR_CVAR_CH4_PROGRESS_THROTTLE": "0",
    "MPIR_CVAR_CH4_PROGRESS_THROTTLE_NO_PROGRESS_COUNT": "4096",
    "OMPI_MCA_mpi_yield_when_idle": "0",
}
TIMING = {"Time", "StepsPerSec", "EnvTime", "InferenceTime", "UpdateTime", "MPITime"}


def run_once(env_name: str, ranks: int, mode: str, epochs: int, data_dir: str) -> tuple[float, float, list]:
    """(median steps/s, median MPI share, rows without timing) of one run."""
    env = {k: v for k, v in os.environ.items() if k not in YIELDING_WAITS}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if mode == "busy":
        env.update(BUSY_WAITS)
    elif mode == "yield":
        env.update(YIELDING_WAITS)
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    args = [mpirun, "-np", str(ranks), sys.executable, "-m", "spinppo.run", "ppo", "--env", env_name]
    args += ["--epochs", str(epochs), "--data_dir", data_dir, "--exp_name", "x"]
    subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(data_dir, "x", "x_s0", "progress.txt")) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    later = rows[1:]
    speed = statistics.median(float(r["StepsPerSec"]) for r in later)
    mpi = statistics.median(float(r["MPITime"]) * float(r["StepsPerSec"]) / 4096 for r in later)
    return speed, mpi, [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Walker")
    parser.add_argument("--ranks", nargs="+", type=int, default=[2, 8])
    parser.add_argument("--modes", nargs="+", default=["busy", "yield"])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{available_cores()} cores available; ranks {args.ranks}; modes {args.modes}", flush=True)
    results: dict[tuple[int, str], list[tuple[float, float]]] = {}
    rows: dict[int, list] = {}
    same: dict[int, bool] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeat):
            for ranks in args.ranks:
                for mode in args.modes:
                    out = os.path.join(tmp, f"r{rep}-np{ranks}-{mode}")
                    speed, mpi, got = run_once(args.env, ranks, mode, args.epochs, out)
                    results.setdefault((ranks, mode), []).append((speed, mpi))
                    same[ranks] = same.get(ranks, True) and rows.setdefault(ranks, got) == got
                    print(
                        f"repeat {rep} np={ranks} {mode:5s}: {speed:7.0f} steps/s, MPI {100 * mpi:4.1f}%",
                        flush=True,
                    )
    medians = {k: statistics.median(s for s, _ in v) for k, v in results.items()}
    for (ranks, mode), values in sorted(results.items()):
        mpi = statistics.median(m for _, m in values)
        print(
            f"median np={ranks} {mode}: {medians[(ranks, mode)]:.0f} steps/s, MPI {100 * mpi:.1f}% of epochs"
        )
    low, high = min(args.ranks), max(args.ranks)
    for mode in args.modes:
        ratio = medians[(high, mode)] / medians[(low, mode)]
        print(f"np={high} / np={low} with {mode} waits: {ratio:.2f} (goal >= 0.85)")
    for ranks, ok in same.items():
        print(
            f"np={ranks}: same progress.txt rows (Time columns aside) in every run: {'yes' if ok else 'NO'}"
        )


if __name__ == "__main__":
    main()
