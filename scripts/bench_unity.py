"""Steps per second through the ML-Agents protocol, and where the trainer's time goes.

Launches the stand-in player (tests/unity_standin) shaped like ML-Agents' Walker (10 agents, 243
observations, 39 continuous actions, a decision every 5 physics steps, episodes up to 5000 steps) through
``spinppo.envs.unity.make_unity_env`` and steps it with random actions: first plainly (steps per second,
CPU time of the trainer and of the player), then, with a second player, under cProfile in every thread
of the trainer process, grouping the time by module. Prints a one-line summary (and a table with
--table).

    .venv/bin/python scripts/bench_unity.py [--task walker|script] [--steps 600] [--agents 10] [--table]

``--task walker``: each agent is a MuJoCo Walker2d-v5 (its physics costs the player CPU time, as Unity's
would); ``--task script``: a body that costs nothing, so the figure is the protocol's own ceiling. The
player's pacing is set out of the way (time scale 1000) unless --time_scale says otherwise.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spinppo.envs.unity import make_unity_env  # noqa: E402
from tests.unity_standin.build import write_build  # noqa: E402

# Where a thread blocks, waiting for the player or another thread: not work done by this process. gRPC's
# server loop (_serve) blocks inside Cython, which cProfile counts as _serve's own time.
WAITS = ("'poll' of 'select.poll'", "'acquire' of '_thread", "'get' of '_queue", "time.sleep", "_blocking")
WAIT_FUNCS = ("_serve",)
GROUPS = ("protobuf", "grpc", "mlagents_envs", "pipe", "adapter", "numpy", "other")


def own_group(filename: str, func: str) -> str | None:
    """The module group of a function by its file; None for builtins, which take their callers' group."""
    if any(w in func for w in WAITS) or func in WAIT_FUNCS or ("cygrpc" in func and "poll" in func):
        return "waiting"
    path = filename.replace("\\", "/")
    if "google/protobuf" in path or path.endswith("_pb2.py"):
        return "protobuf"
    if "/grpc/" in path or "cygrpc" in func:
        return "grpc"
    if "mlagents_envs" in path:
        return "mlagents_envs"
    if "/multiprocessing/" in path:  # the stock communicator's Pipe between its threads (pickling)
        return "pipe"
    if "spinppo/envs/unity/" in path:
        return "adapter"
    if "/numpy/" in path or "numpy" in func:
        return "numpy"
    if filename == "~" or filename.startswith("<frozen"):
        return None
    return "other"


def grouped_seconds(stats: pstats.Stats) -> dict[str, float]:
    """Every function's own time, by group; a builtin's (list.extend, len...) goes to its callers'."""
    table = stats.stats
    memo: dict[tuple, dict[str, float]] = {}

    def shares(key: tuple, depth: int = 0) -> dict[str, float]:
        if key in memo:
            return memo[key]
        group = own_group(key[0], key[2])
        if group is not None or depth > 8 or key not in table:
            result = {group or "other": 1.0}
        else:
            callers = table[key][4]
            total = sum(v[2] for v in callers.values())
            result = {}
            for caller, v in callers.items():
                weight = v[2] / total if total > 0 else 1.0 / len(callers)
                for g, w in shares(caller, depth + 1).items():
                    result[g] = result.get(g, 0.0) + weight * w
            result = result or {"other": 1.0}
        memo[key] = result
        return result

    out: dict[str, float] = {}
    for key, (_, _, tottime, _, _) in table.items():
        for g, w in shares(key).items():
            out[g] = out.get(g, 0.0) + tottime * w
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_steps(env, steps: int, rng: np.random.Generator) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        env.step(rng.uniform(-1, 1, (env.num_envs, env.single_action_space.shape[0])).astype(np.float32))
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["walker", "script"], default="walker")
    parser.add_argument("--steps", type=int, default=600, help="steps (a decision of every agent) per phase")
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--time_scale", type=float, default=1000.0)
    parser.add_argument("--base_port", type=int, default=15900)
    parser.add_argument("--table", action="store_true", help="also print the seconds per group")
    parser.add_argument(
        "--stock_communicator",
        action="store_true",
        help="use mlagents_envs' own UnityEnvironment (messages pickled through a Pipe between its threads)",
    )
    args = parser.parse_args()
    if args.stock_communicator:
        from mlagents_envs.environment import UnityEnvironment

        import spinppo.envs.unity.mlagents_patch as mlagents_patch

        mlagents_patch.patched_unity_environment = lambda listen="localhost": UnityEnvironment

    body_obs, body_act = (17, 6) if args.task == "walker" else (4, 1)
    with tempfile.TemporaryDirectory() as tmp:
        exe = write_build(
            tmp,
            task=args.task,
            agents=args.agents,
            decision_period=5,
            max_step=5000,
            obs_pad=243 - body_obs,
            act_pad=39 - body_act,
        )

        def launch(port: int):
            return make_unity_env(str(exe), seed=0, base_port=port, time_scale=args.time_scale, log_dir=tmp)

        rng = np.random.default_rng(0)
        env = launch(args.base_port)
        try:
            env.reset(seed=0)
            player = env._env._process.pid
            run_steps(env, 50, rng)  # warm-up
            cpu0, player0 = time.process_time(), cpu_seconds(player)
            wall = run_steps(env, args.steps, rng)
            cpu, player_cpu = time.process_time() - cpu0, cpu_seconds(player) - player0
        finally:
            env.close()
        num_envs, obs_dim, act_dim = env.num_envs, env.obs_dim, env.single_action_space.shape[0]

        # Profile every thread: gRPC's server threads start with the environment, so profile from launch.
        profiles: list[cProfile.Profile] = []
        lock = threading.Lock()

        def profile_new_thread(*_: object) -> None:
            sys.setprofile(None)
            p = cProfile.Profile()
            with lock:
                profiles.append(p)
            p.enable()

        main_profile = cProfile.Profile()
        profiles.append(main_profile)
        threading.setprofile(profile_new_thread)
        main_profile.enable()
        env = launch(args.base_port + 1)
        try:
            env.reset(seed=0)
            prof_wall = run_steps(env, args.steps, rng)
        finally:
            env.close()
            main_profile.disable()
            threading.setprofile(None)
    for p in profiles:
        p.disable()

    totals: dict[str, float] = {}
    for p in profiles:
        for g, v in grouped_seconds(pstats.Stats(p)).items():
            totals[g] = totals.get(g, 0.0) + v
    work = sum(v for k, v in totals.items() if k != "waiting")
    share = {g: totals.get(g, 0.0) / work for g in GROUPS}
    comm = share["protobuf"] + share["grpc"] + share["mlagents_envs"] + share["pipe"]
    comm_kind = "stock pipe" if args.stock_communicator else "queue"
    ms = 1e3 / args.steps
    rate = args.steps * num_envs / wall
    print(
        f"unity protocol bench ({args.task} bodies, {comm_kind} communicator): {num_envs} agents x "
        f"{obs_dim} obs x {act_dim} act, decision every 5 physics steps: {rate:.0f} agent-steps/s "
        f"({wall * ms:.2f} ms per step); CPU per step: trainer {cpu * ms:.2f} ms, player "
        f"{player_cpu * ms:.2f} ms; trainer work by module (cProfile, all threads): "
        + ", ".join(f"{g} {share[g]:.0%}" for g in GROUPS)
        + f" (communication in all: {comm:.0%})"
    )
    if args.table:
        print(f"profiled run: {prof_wall * ms:.2f} ms per step; seconds in {len(profiles)} threads:")
        for g, v in sorted(totals.items(), key=lambda kv: -kv[1]):
            print(f"  {g:14s} {v:8.3f}")


if __name__ == "__main__":
    main()
