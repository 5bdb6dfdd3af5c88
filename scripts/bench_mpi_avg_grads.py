"""Time mpi_avg_grads (one flat Allreduce) against a per-tensor Allreduce loop.

    python scripts/bench_mpi_avg_grads.py            # forks itself to 2 ranks
    python scripts/bench_mpi_avg_grads.py --cpu 4
    mpirun -np 2 python scripts/bench_mpi_avg_grads.py
    mpirun -np 4 python scripts/bench_mpi_avg_grads.py --device cuda    # the GPU's path (ranks share GPUs)

Prints microseconds per call for a 64x64 and a 256x256x256 actor-critic on Walker2d's sizes
(17 observations, 6 actions): mpi_avg_grads on the module as built, on the module after
flatten_parameters (PPO's form), Spinning Up's per-tensor loop, and the speed-up of the first over the
last; and "staged", the GPU's path (the flat buffer copied to a host buffer, the Allreduce, copied back) on
the same tensors. Each is the slowest rank's time, so a busy machine shows up as waiting. With ``--device
cuda`` the module is on the rank's GPU: "flat" is then the staged path itself (pinned host memory), each
call timed to the end of its copy back, and the per-tensor loop copies each gradient to the host and back.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch
from mpi4py import MPI

from spinppo.core.networks import MLPActorCritic
from spinppo.utils.device import rank_device, use_device
from spinppo.utils.mpi_pytorch import (
    _GradientBuffer,
    flatten_parameters,
    mpi_avg_grads,
    setup_pytorch_for_mpi,
)
from spinppo.utils.mpi_tools import mpi_fork, num_procs, proc_id


def per_tensor_avg_grads(module: torch.nn.Module) -> None:
    """Spinning Up's original: one Allreduce per parameter tensor (PR #227's copies on a GPU)."""
    for p in module.parameters():
        g = p.grad.cpu().numpy()
        buf = np.empty_like(g)
        MPI.COMM_WORLD.Allreduce(g, buf, op=MPI.SUM)
        p.grad.copy_(torch.from_numpy(buf / num_procs()))


def staged_avg_grads(module: torch.nn.Module) -> None:
    """mpi_avg_grads through the GPU's path, whatever the device (a staged buffer made on first use)."""
    params = [p for p in module.parameters() if p.requires_grad]
    if module.__dict__.get("_gradient_buffer") is None:
        object.__setattr__(module, "_gradient_buffer", _GradientBuffer(params, staged=True))
    mpi_avg_grads(module)


def time_calls(fn, module: torch.nn.Module, reps: int) -> float:
    """Microseconds per call, the slowest rank's (on a GPU, to the end of each call's copies)."""
    cuda = next(module.parameters()).device.type == "cuda"
    for _ in range(20):
        fn(module)
    MPI.COMM_WORLD.Barrier()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(module)
        if cuda:
            torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    return MPI.COMM_WORLD.allreduce(elapsed, op=MPI.MAX) / reps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", type=int, default=2)
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: each rank on GPU local rank mod GPUs")
    args = parser.parse_args()
    mpi_fork(args.cpu)
    setup_pytorch_for_mpi()
    device = rank_device(args.device, prefers_gpu=True)
    use_device(device)
    obs = gym.spaces.Box(-np.inf, np.inf, (17,), np.float32)
    act = gym.spaces.Box(-1, 1, (6,), np.float32)
    for hid in [(64, 64), (256, 256, 256)]:
        ac = MLPActorCritic(obs, act, hidden_sizes=hid).to(device)
        for p in ac.parameters():
            p.grad = torch.randn_like(p)
        n = sum(p.numel() for p in ac.parameters())
        tensors = len(list(ac.parameters()))
        flat = time_calls(mpi_avg_grads, ac, args.reps)
        loop = time_calls(per_tensor_avg_grads, ac, args.reps)
        staged_ac = MLPActorCritic(obs, act, hidden_sizes=hid).to(device)
        for p in staged_ac.parameters():
            p.grad = torch.randn_like(p)
        staged = time_calls(staged_avg_grads, staged_ac, args.reps)
        flatten_parameters(ac).grad.normal_()
        flattened = time_calls(mpi_avg_grads, ac, args.reps)
        if proc_id() == 0:
            print(
                f"mpi_avg_grads hid={'x'.join(map(str, hid))} params={n} tensors={tensors} "
                f"ranks={num_procs()} device={device}: flat {flat:.1f} us/call, flattened module "
                f"{flattened:.1f} us/call, staged {staged:.1f} us/call, per-tensor loop {loop:.1f} us/call, "
                f"speed-up {loop / flat:.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
