"""Data-parallel PyTorch over MPI, with Spinning Up's names and meaning.

The pattern::

    setup_pytorch_for_mpi()          # once, at the start
    sync_params(module)              # after building the module
    loss.backward()
    mpi_avg_grads(module)            # after every backward: all ranks now hold the mean gradient
    optimizer.step()                 # identical on all ranks, so parameters stay identical
"""

from __future__ import annotations

import os

import numpy as np
import torch
from mpi4py import MPI

from spinppo.utils.mpi_tools import local_size, num_procs


def available_cores() -> int:
    """Cores this process may run on (respects taskset and cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def setup_pytorch_for_mpi() -> int:
    """Share the host's cores among the ranks on it, at least one torch thread each.

    Without this, every rank's torch starts one thread per core and they clobber each other.
    Returns the number of threads this rank will use.
    """
    threads = max(1, available_cores() // local_size())
    torch.set_num_threads(threads)
    return threads


def _flat_groups(tensors: list[torch.Tensor]) -> dict[torch.dtype, list[torch.Tensor]]:
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    return groups


def sync_params(module: torch.nn.Module, root: int = 0) -> None:
    """Copy rank ``root``'s parameters and buffers to every rank, bitwise (one Bcast per dtype)."""
    if num_procs() == 1:
        return
    tensors = [p.data for p in module.parameters()] + [b for b in module.buffers()]
    for group in _flat_groups(tensors).values():
        flat = torch.cat([t.reshape(-1) for t in group]).contiguous()
        MPI.COMM_WORLD.Bcast(flat.numpy(), root=root)
        offset = 0
        for t in group:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n


def mpi_avg_grads(module: torch.nn.Module) -> None:
    """Replace every parameter's gradient by its mean over ranks, in place, in ONE flat Allreduce.

    A parameter without a gradient on this rank counts as a zero gradient. After the call it has a
    gradient on every rank if any rank had one, and stays ``None`` on every rank if none had: all ranks
    end with the same set of gradients, so their optimizers stay in step.
    """
    if num_procs() == 1:
        return
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return
    sizes = [p.numel() for p in params]
    total = sum(sizes)
    dtype = np.float32 if all(p.dtype == torch.float32 for p in params) else np.float64
    # Layout: all gradients, then one has-gradient flag per parameter, reduced in the same call.
    send = np.empty(total + len(params), dtype=dtype)
    offset = 0
    for i, (p, n) in enumerate(zip(params, sizes, strict=True)):
        if p.grad is None:
            send[offset : offset + n] = 0.0
            send[total + i] = 0.0
        else:
            send[offset : offset + n] = p.grad.detach().reshape(-1).numpy()
            send[total + i] = 1.0
        offset += n
    recv = np.empty_like(send)
    MPI.COMM_WORLD.Allreduce(send, recv, op=MPI.SUM)
    recv[:total] /= num_procs()
    mean = torch.from_numpy(recv)
    offset = 0
    for i, (p, n) in enumerate(zip(params, sizes, strict=True)):
        if recv[total + i] > 0:
            g = mean[offset : offset + n].view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        offset += n
