"""Atari throughput: raw stepping with the full wrapper stack, against the bare emulator and end-to-end PPO.

    python scripts/bench_atari.py                       # Breakout, 1 and 2 ranks
    python scripts/bench_atari.py --env Pong --ranks 2 --e2e_epochs 3
    python scripts/bench_atari.py --env PongNoFrameskip-v4 --ranks 2 --frame_size 42 --e2e_epochs 4 \
        -- --config configs/rllib/pong-ppo.yaml           # the lecture notes' 42-pixel PPO

For each rank count R (each rank under mpirun, one BLAS thread):
- bare: ``gym.make("ALE/<Game>-v5")`` with ALE's own frame skip of 4 and nothing else: the emulator's
  speed in agent steps (4 frames each);
- raw: the environment as training steps it (``make_vector_env(EnvFactory(ENV), num_envs)``: sticky
  actions, no-op resets, frame skip 4 with max-pooling, 84x84 grayscale, 4 stacked frames, episodic life,
  clipped rewards, the game score), random actions, no policy; ``--frame_size 42`` for 42x42 frames;
- end to end (``--e2e_epochs N``, 0 to skip): ``python -m spinppo.run ppo --env ENV --cpu R`` with the
  flags after ``--`` (default flags otherwise), from progress.txt after the first epoch, with where an
  epoch's time goes (EnvTime, InferenceTime, UpdateTime, MPITime: rank 0's seconds per epoch).
Steps are agent steps (4 emulator frames), summed over ranks; "per rank" divides by R.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time


def stepping(env_name: str, steps_per_rank: int, num_envs: int, bare: bool, frame_size: int | None) -> None:
    """Run under mpirun: every rank steps with random actions; rank 0 prints the total steps/s."""
    import gymnasium as gym
    import numpy as np
    from mpi4py import MPI

    from spinppo.envs.registry import EnvFactory, make_vector_env
    from spinppo.utils.mpi_tools import COMM, num_procs, proc_id

    factory = EnvFactory(env_name, frame_size=frame_size)
    if bare:
        env = gym.vector.SyncVectorEnv(
            [lambda: gym.make(factory.choice.target, frameskip=4) for _ in range(num_envs)],
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        )
    else:
        env = make_vector_env(factory, num_envs, seed=proc_id())
    env.reset(seed=proc_id())
    rng = np.random.default_rng(proc_id())
    n = steps_per_rank // num_envs
    actions = rng.integers(env.single_action_space.n, size=(n, num_envs))
    COMM.Barrier()
    t0 = time.perf_counter()
    for a in actions:
        env.step(a)
    elapsed = COMM.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    if proc_id() == 0:
        print(f"RATE {n * num_envs * num_procs() / elapsed:.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Breakout")
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--num_envs", type=int, default=8, help="environments per rank")
    parser.add_argument("--steps", type=int, default=8000, help="agent steps per rank")
    parser.add_argument("--e2e_epochs", type=int, default=0, help="end-to-end PPO epochs (0: skip)")
    parser.add_argument("--frame_size", type=int, default=None, help="raw stepping's frames: 42 or 84")
    parser.add_argument("--child", choices=["raw", "bare"], help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args()
    if args.child:
        stepping(args.env, args.steps, args.num_envs, args.child == "bare", args.frame_size)
        return
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for ranks in args.ranks:
        rates = {}
        for child in ("bare", "raw"):
            out = subprocess.run(
                [mpirun, "-np", str(ranks), sys.executable, __file__, "--child", child]
                + ["--env", args.env, "--steps", str(args.steps), "--num_envs", str(args.num_envs)]
                + (["--frame_size", str(args.frame_size)] if args.frame_size else []),
                capture_output=True,
                text=True,
                env=env,
                check=True,
            ).stdout
            rates[child] = float(out.split("RATE")[1].split()[0])
        line = (
            f"{args.env} ranks={ranks} num_envs={args.num_envs}/rank: bare emulator {rates['bare']:.0f} "
            f"steps/s ({rates['bare'] / ranks:.0f}/rank), full training stack {rates['raw']:.0f} steps/s "
            f"({rates['raw'] / ranks:.0f}/rank, {rates['raw'] / rates['bare']:.0%} of bare)"
        )
        if args.e2e_epochs:
            e2e, parts = end_to_end(args.env, ranks, args.e2e_epochs, [a for a in extra if a != "--"], env)
            line += (
                f"; end-to-end PPO {e2e:.0f} steps/s ({e2e / rates['raw']:.0%} of raw); an epoch: "
                + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items())
            )
        print(line, flush=True)


def end_to_end(
    env_name: str, ranks: int, epochs: int, extra: list[str], env: dict[str, str]
) -> tuple[float, dict[str, float]]:
    """Steps/s of a PPO run after its first epoch (which pays for start-up), and the mean seconds per
    epoch of its parts (rank 0's)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "spinppo.run", "ppo", "--env", env_name, "--cpu", str(ranks)]
            + ["--epochs", str(epochs), "--data_dir", tmp, "--exp_name", "ab", "--tensorboard", "false"]
            + extra,
            stdout=subprocess.DEVNULL,
            env=env,
            check=True,
        )
        with open(os.path.join(tmp, "ab", "ab_s0", "progress.txt")) as f:
            rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f, delimiter="\t")]
    if len(rows) < 2:
        raise SystemExit("--e2e_epochs must be at least 2: the first epoch pays for start-up")
    later = rows[1:]
    parts = {
        k: sum(r[k] for r in later) / len(later)
        for k in ("EnvTime", "InferenceTime", "UpdateTime", "MPITime")
    }
    parts["epoch"] = (rows[-1]["Time"] - rows[0]["Time"]) / len(later)
    speed = (rows[-1]["TotalEnvInteracts"] - rows[0]["TotalEnvInteracts"]) / (
        rows[-1]["Time"] - rows[0]["Time"]
    )
    return speed, parts


if __name__ == "__main__":
    main()
