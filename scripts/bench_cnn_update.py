"""The cost of a convolutional PPO update step on this CPU, per sample, with the pixels in the two memory
layouts oneDNN takes: NCHW (as the buffer stores Atari frames) and NHWC (channels-last, what
``ImageEncoder`` converts them to).

    python scripts/bench_cnn_update.py                      # nature_cnn, minibatch 128, 1 thread
    python scripts/bench_cnn_update.py --encoder resnet --batch 256 --repeat 5
    python scripts/bench_cnn_update.py --encoder rllib --frame_size 42 --batch 256     # RLlib's 42x42 stack
    python scripts/bench_cnn_update.py --encoder rllib --frame_size 42 --conv_activation elu \
        --conv_filters '[[32,[3,3],2],[32,[3,3],2],[32,[3,3],2],[32,[3,3],2]]'       # RLlib's pong-a3c
    python scripts/bench_cnn_update.py --compare precision --batch 256    # fp32 against --precision bf16

Each measurement builds spinppo's actor-critic for 4x84x84 (``--frame_size``) uint8 frames and 4 actions
with linear heads
(configs/atari/*.yaml), then times ``--steps`` Adam steps of a PPO-shaped loss (``evaluate``, backward,
step) on one random minibatch; the layouts alternate ``--repeat`` times and the medians are printed, in
milliseconds per sample (a forward and a backward pass), and the policy call of 4 environments
(``step``) in milliseconds per call. One thread, as each MPI rank runs. NHWC is what training uses
(``ImageEncoder.channels_last``); NCHW is the same network with that conversion turned off.
``--compare precision`` alternates float32 and ``--precision bf16`` (``MLPActorCritic.set_precision``)
instead, both NHWC.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from spinppo.core.encoders import ENCODER_NAMES, ImageEncoder
from spinppo.core.networks import MLPActorCritic


def measure(
    channels_last: bool,
    encoder: str,
    batch: int,
    steps: int,
    size: int = 84,
    precision: str = "fp32",
    **conv: Any,
) -> tuple[float, float]:
    """(update ms per sample, policy ms per call of 4 environments) with NCHW or NHWC pixels, in
    ``precision`` (fp32 or bf16); ``conv``: ``--encoder rllib``'s conv_filters and conv_activation."""
    torch.manual_seed(0)
    space = gym.spaces.Box(0, 255, (4, size, size), np.uint8)
    ac = MLPActorCritic(space, gym.spaces.Discrete(4), hidden_sizes=[], encoder=encoder, **conv)
    optimizer = torch.optim.Adam(ac.parameters(), lr=2.5e-4)
    frames = torch.randint(0, 255, (batch, 4, size, size), dtype=torch.uint8)
    actions = torch.randint(0, 4, (batch,))
    for module in ac.modules():
        if isinstance(module, ImageEncoder):
            module.channels_last = channels_last
    ac.set_precision(precision)

    def update() -> None:
        logp, entropy, value = ac.evaluate(frames, actions)
        loss = -logp.mean() + 0.5 * value.pow(2).mean() - 0.01 * entropy.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(2):
        update()
    start = time.perf_counter()
    for _ in range(steps):
        update()
    per_sample = (time.perf_counter() - start) / steps / batch * 1000
    with torch.no_grad():
        for _ in range(5):
            ac.step(frames[:4])
        start = time.perf_counter()
        for _ in range(50):
            ac.step(frames[:4])
        per_call = (time.perf_counter() - start) / 50 * 1000
    return per_sample, per_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="nature_cnn", choices=list(ENCODER_NAMES))
    parser.add_argument("--frame_size", type=int, default=84, help="frames of 4 x N x N pixels")
    parser.add_argument("--conv_filters", type=json.loads, default=None, help="--encoder rllib's, JSON")
    parser.add_argument("--conv_activation", default="relu", help="--encoder rllib's")
    parser.add_argument("--batch", type=int, default=128, help="minibatch per rank (256 / 2 ranks)")
    parser.add_argument("--steps", type=int, default=8, help="timed update steps per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="alternations of the two variants")
    parser.add_argument(
        "--compare", choices=["layout", "precision"], default="layout", help="NCHW/NHWC or fp32/bf16"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = ["NCHW", "NHWC"] if args.compare == "layout" else ["fp32", "bf16"]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    conv = {}
    if args.encoder == "rllib":
        conv = dict(conv_filters=args.conv_filters, conv_activation=args.conv_activation)
    for _ in range(args.repeat):
        for name in results:
            nhwc = name != "NCHW"
            precision = "bf16" if name == "bf16" else "fp32"
            results[name].append(
                measure(nhwc, args.encoder, args.batch, args.steps, args.frame_size, precision, **conv)
            )
    for name, runs in results.items():
        update = statistics.median(r[0] for r in runs)
        policy = statistics.median(r[1] for r in runs)
        each = ", ".join(f"{r[0]:.2f}" for r in runs)
        print(
            f"{args.encoder} {args.frame_size}x{args.frame_size} {name}: update {update:.3f} ms/sample "
            f"({each}), policy of 4 envs {policy:.2f} ms"
        )


if __name__ == "__main__":
    main()
