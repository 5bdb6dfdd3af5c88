"""Where one PPO gradient step's time goes, on Walker2d's sizes (17 observations, 6 actions).

    python scripts/bench_update_step.py --minibatch 256 --steps 1000
    python scripts/bench_update_step.py --per-tensor        # the step before flatten_parameters

Times each part of ``ppo``'s minibatch step (gather, forward, loss, zero, backward, clip, Adam,
statistics) for the default actor-critic, one thread, no MPI, and prints microseconds per step. By default
the step is ppo's: parameters in one flat tensor (``flatten_parameters``), the batch normalised once and
packed into one table. ``--per-tensor`` times the earlier step: one Adam/clip/zero operation per parameter
tensor, six gathers and observation normalisation in every minibatch.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

from spinppo.core.networks import MLPActorCritic
from spinppo.utils.mpi_pytorch import flatten_parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minibatch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--hid", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--per-tensor", action="store_true", help="time the step before flat parameters")
    args = parser.parse_args()
    torch.set_num_threads(1)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (17,), np.float32)
    ac = MLPActorCritic(obs_space, gym.spaces.Box(-1, 1, (6,), np.float32), hidden_sizes=args.hid)
    if args.per_tensor:
        params = list(ac.parameters())
        optimizer = torch.optim.Adam(params, lr=1e-3, eps=1e-5, fused=True)
    else:
        params = [flatten_parameters(ac)]
        optimizer = torch.optim.Adam(params, lr=1e-3, eps=1e-5, fused=True)
    n = 2048
    data = {k: torch.randn(n, d) for k, d in (("obs", 17), ("act", 6))}
    data.update({k: torch.randn(n) for k in ("adv", "ret", "logp", "val")})
    columns = [ac.normalize_obs(data["obs"]), data["act"]]
    columns += [data[k].unsqueeze(1) for k in ("adv", "ret", "logp", "val")]
    widths = [c.shape[1] for c in columns]
    table = torch.cat(columns, dim=1)
    times: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        t = time.perf_counter()
        times[name] = times.get(name, 0.0) + t - t0
        return t

    for it in range(args.steps + 100):
        if it == 100:
            times.clear()  # warm-up done
        idx = torch.randperm(n)[: args.minibatch]
        t = time.perf_counter()
        if args.per_tensor:
            obs, act, adv, ret, logp_old = (data[k][idx] for k in ("obs", "act", "adv", "ret", "logp"))
            t = lap("gather", t)
            logp, entropy, v = ac.evaluate(obs, act)
        else:
            obs, act, adv, ret, logp_old, _ = table.index_select(0, idx).split(widths, 1)
            adv, ret, logp_old = adv.squeeze(1), ret.squeeze(1), logp_old.squeeze(1)
            t = lap("gather", t)
            logp, entropy, v = ac.evaluate(obs, act, obs_normalized=True)
        t = lap("forward", t)
        log_ratio = logp - logp_old
        ratio = log_ratio.exp()
        loss_pi = -torch.min(ratio * adv, torch.clamp(ratio, 0.8, 1.2) * adv).mean()
        loss = loss_pi + 0.5 * 0.5 * ((v - ret) ** 2).mean()
        t = lap("loss", t)
        if args.per_tensor:
            optimizer.zero_grad(set_to_none=False)
        else:
            params[0].grad.zero_()
        t = lap("zero_grad", t)
        loss.backward()
        t = lap("backward", t)
        if args.per_tensor:
            torch.nn.utils.clip_grad_norm_(params, 0.5)
        else:
            norm = torch.linalg.vector_norm(params[0].grad)
            params[0].grad.mul_(torch.clamp(0.5 / (norm + 1e-6), max=1.0))
        t = lap("clip", t)
        optimizer.step()
        t = lap("adam", t)
        with torch.no_grad():
            torch.stack([loss_pi, loss, entropy.mean(), ((ratio - 1) - log_ratio).mean()])
        lap("statistics", t)
    total = sum(times.values()) / args.steps * 1e6
    parts = ", ".join(f"{k} {v / args.steps * 1e6:.0f}" for k, v in times.items())
    kind = "per-tensor" if args.per_tensor else "flat"
    print(
        f"update step ({kind}) minibatch={args.minibatch} hid={args.hid}: "
        f"{total:.0f} us per step ({parts} us)"
    )


if __name__ == "__main__":
    main()
