"""Data-parallel PyTorch over MPI, with Spinning Up's names and meaning.

The pattern::

    setup_pytorch_for_mpi()          # once, at the start
    sync_params(module)              # after building the module
    loss.backward()
    mpi_avg_grads(module)            # after every backward: all ranks now hold the mean gradient
    optimizer.step()                 # identical on all ranks, so parameters stay identical

``flatten_parameters(module)`` (optional, before building the optimiser) puts every parameter and gradient
in one flat tensor, so that the optimiser, gradient clipping, zeroing and the Allreduce each touch one
tensor per step instead of one per layer.
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
_flat_params: dict[int, tuple[list[int], torch.nn.Parameter]] = {}


def flatten_parameters(module: torch.nn.Module) -> torch.nn.Parameter:
    """Move all of ``module``'s trainable parameters into one flat Parameter and return it.

    Afterwards the module's parameters are views of the returned tensor and their ``.grad`` views of its
    ``.grad`` (zero-filled, never ``None``): build the optimiser over ``[flat]``, zero with
    ``flat.grad.zero_()`` and clip ``flat.grad``. Each is then one operation per step, where PyTorch's
    per-tensor overhead, not arithmetic, dominates the step of a small network. The module's forward,
    ``state_dict`` and ``load_state_dict`` are unchanged; ``mpi_avg_grads(module)`` averages the flat
    gradient with one Allreduce. All parameters must share one dtype.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if len({p.dtype for p in params}) != 1:
        raise ValueError("flatten_parameters needs every trainable parameter in one dtype")
    flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
    flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat.data[offset : offset + n].view_as(p)
        p.grad = flat.grad[offset : offset + n].view_as(p)
        offset += n
    _flat_params[id(module)] = ([id(p) for p in params], flat)
    return flat


def _flat_gradient(module: torch.nn.Module, params: list[torch.nn.Parameter]) -> torch.Tensor | None:
    """The flat gradient of a module given to ``flatten_parameters``, with every ``.grad`` a view of it."""
    entry = _flat_params.get(id(module))
    if entry is None or entry[0] != [id(p) for p in params]:
        return None
    flat = entry[1]
    if flat.grad is None:  # optimizer.zero_grad() sets it to None by default
        flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        view = flat.grad[offset : offset + n]
        if p.grad is None or p.grad.data_ptr() != view.data_ptr():
            # A gradient replaced by a new tensor (zero_grad(set_to_none=True)): copy it in, adopt the view.
            if p.grad is None:
                view.zero_()
            else:
                view.copy_(p.grad.reshape(-1))
            p.grad = view.view_as(p)
        offset += n
    return flat.grad


def _average_in_place(flat: torch.Tensor) -> None:
    """``flat`` (a contiguous CPU tensor) becomes its mean over ranks: one Allreduce."""
    COMM.Allreduce(MPI.IN_PLACE, flat.numpy(), op=MPI.SUM)
    flat.mul_(1.0 / num_procs())


def mpi_avg_grads(module: torch.nn.Module | torch.nn.Parameter) -> None:
    """Replace every parameter's gradient by its mean over ranks, in place, in ONE flat Allreduce.

    A parameter without a gradient on this rank counts as a zero gradient. After the call it has a
    gradient on every rank if any rank had one, and stays ``None`` on every rank if none had: all ranks
    end with the same set of gradients, so their optimizers stay in step. The gradients become views
    of one flat buffer kept for the module, so later calls copy nothing. For a module given to
    ``flatten_parameters`` that buffer is the flat Parameter's ``.grad``.

    ``module`` may also be the flat Parameter that ``flatten_parameters`` returned: its ``.grad`` is averaged
    without walking the module's parameters (the fastest form, for a loop that zeroes with
    ``flat.grad.zero_()``; a ``.grad`` set to None by ``zero_grad()`` is an error there).
    """
    if isinstance(module, torch.Tensor):
        if module.grad is None:
            raise ValueError(
                "mpi_avg_grads(flat): flat.grad is None (zero_grad() set it to None, which detaches the "
                "module's gradients from it); zero with flat.grad.zero_() or pass the module instead"
            )
        if num_procs() > 1:
            _average_in_place(module.grad)
        return
    params = [p for p in module.parameters() if p.requires_grad]
    # flatten_parameters: the gradients are one buffer already (re-adopted even on one rank, so that the
    # optimiser over the flat tensor sees them), and never None, so no flags are needed.
    flat = _flat_gradient(module, params)
    if num_procs() == 1 or not params:
        return
    if flat is not None:
        _average_in_place(flat)
        return
    key = [id(p) for p in params]
    cached = _flat_grads.get(id(module))
    if cached is None or cached[0] != key:
        cached = (key, _FlatGrads(params))
        _flat_grads[id(module)] = cached
    cached[1].average()
