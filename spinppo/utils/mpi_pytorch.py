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

import torch
from mpi4py import MPI

from spinppo.utils.mpi_tools import COMM, local_size, num_procs


def available_cores() -> int:
    """Cores this process may run on (respects taskset and cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def setup_pytorch_for_mpi() -> int:
    """Share the host's cores among the ranks on it, at least one torch thread each.

    Without this, every rank's torch starts one thread per core and they clobber each other. An
    OMP_NUM_THREADS set by the user (mpi_fork sets 1) caps the count: for the small networks of on-policy
    RL, extra threads buy little and, on a busy machine, can make each call many times slower.
    Returns the number of threads this rank will use.
    """
    threads = max(1, available_cores() // local_size())
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = max(1, min(threads, int(os.environ["OMP_NUM_THREADS"])))
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
        COMM.Bcast(flat.numpy(), root=root)
        offset = 0
        for t in group:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n


class _FlatGrads:
    """One flat buffer holding every gradient of a module, plus one has-gradient flag per parameter.

    After the first call the parameters' ``.grad`` ARE views into the buffer, so backward accumulates
    straight into it and averaging needs no copies. A gradient replaced by a new tensor (for instance
    after ``zero_grad(set_to_none=True)``) is copied in and the view adopted again.
    """

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        self.params = params
        dtype = params[0].dtype if len({p.dtype for p in params}) == 1 else torch.float64
        self.total = sum(p.numel() for p in params)
        self.flat = torch.zeros(self.total + len(params), dtype=dtype)
        self.views, offset = [], 0
        for p in params:
            self.views.append(self.flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        self.flat_np = self.flat.numpy()  # shares memory; numpy scalar access is far cheaper than torch's
        self.flags = self.flat_np[self.total :]
        self.adopt = all(p.dtype == dtype for p in params)

    def average(self) -> None:
        for i, (p, view) in enumerate(zip(self.params, self.views, strict=True)):
            if p.grad is None:
                view.zero_()
                self.flags[i] = 0.0
            else:
                if p.grad.data_ptr() != view.data_ptr():
                    view.copy_(p.grad)
                self.flags[i] = 1.0
        COMM.Allreduce(MPI.IN_PLACE, self.flat_np, op=MPI.SUM)
        self.flat[: self.total].mul_(1.0 / num_procs())
        flags = self.flags.tolist()
        for i, (p, view) in enumerate(zip(self.params, self.views, strict=True)):
            if flags[i] <= 0:
                continue  # no rank had a gradient: stays None everywhere
            if p.grad is not None and p.grad.data_ptr() == view.data_ptr():
                continue  # already averaged in place
            if self.adopt:
                p.grad = view
            elif p.grad is None:
                p.grad = view.to(p.dtype)
            else:
                p.grad.copy_(view)


_flat_grads: dict[int, tuple[list[int], _FlatGrads]] = {}


def mpi_avg_grads(module: torch.nn.Module) -> None:
    """Replace every parameter's gradient by its mean over ranks, in place, in ONE flat Allreduce.

    A parameter without a gradient on this rank counts as a zero gradient. After the call it has a
    gradient on every rank if any rank had one, and stays ``None`` on every rank if none had: all ranks
    end with the same set of gradients, so their optimizers stay in step. The gradients become views
    of one flat buffer kept for the module, so later calls copy nothing.
    """
    if num_procs() == 1:
        return
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return
    key = [id(p) for p in params]
    cached = _flat_grads.get(id(module))
    if cached is None or cached[0] != key:
        cached = (key, _FlatGrads(params))
        _flat_grads[id(module)] = cached
    cached[1].average()
