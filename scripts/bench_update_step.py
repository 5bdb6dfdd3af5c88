"""Where one PPO gradient step's time goes, on Walker2d's sizes (17 observations, 6 actions).

    python scripts/bench_update_step.py --minibatch 256 --steps 1000

Times each part of ``ppo``'s minibatch step (gather, forward, loss, zero, backward, clip, Adam,
statistics) for the default actor-critic, one thread, no MPI, and prints microseconds per step.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

from spinppo.core.networks import MLPActorCritic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minibatch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--hid", type=int, nargs="+", default=[64, 64])
    args = parser.parse_args()
    torch.set_num_threads(1)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (17,), np.float32)
    ac = MLPActorCritic(obs_space, gym.spaces.Box(-1, 1, (6,), np.float32), hidden_sizes=args.hid)
    optimizer = torch.optim.Adam(ac.parameters(), lr=1e-3, eps=1e-5, fused=True)
    n = 2048
    data = {k: torch.randn(n, d) for k, d in (("obs", 17), ("act", 6))}
    data.update({k: torch.randn(n) for k in ("adv", "ret", "logp")})
    times: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        t = time.perf_counter()
        times[name] = times.get(name, 0.0) + t - t0
        return t

    for it in range(args.steps + 100):
        if it == 100:
            times.clear()  # warm-up done
        t = time.perf_counter()
        idx = torch.randperm(n)[: args.minibatch]
        obs, act, adv, ret, logp_old = (data[k][idx] for k in ("obs", "act", "adv", "ret", "logp"))
        t = lap("gather", t)
        logp, entropy, v = ac.evaluate(obs, act)
        t = lap("forward", t)
        log_ratio = logp - logp_old
        ratio = log_ratio.exp()
        loss_pi = -torch.min(ratio * adv, torch.clamp(ratio, 0.8, 1.2) * adv).mean()
        loss = loss_pi + 0.5 * 0.5 * ((v - ret) ** 2).mean()
        t = lap("loss", t)
        optimizer.zero_grad(set_to_none=False)
        t = lap("zero_grad", t)
        loss.backward()
        t = lap("backward", t)
        torch.nn.utils.clip_grad_norm_(ac.parameters(), 0.5)
        t = lap("clip", t)
        optimizer.step()
        t = lap("adam", t)
        with torch.no_grad():
            torch.stack([loss_pi, loss, entropy.mean(), ((ratio - 1) - log_ratio).mean()])
        lap("statistics", t)
    total = sum(times.values()) / args.steps * 1e6
    parts = ", ".join(f"{k} {v / args.steps * 1e6:.0f}" for k, v in times.items())
    print(f"update step minibatch={args.minibatch} hid={args.hid}: {total:.0f} us per step ({parts} us)")


if __name__ == "__main__":
    main()
