"""Data-parallel PyTorch over MPI, with Spinning Up's names and meaning.

The pattern::

    setup_pytorch_for_mpi()          # once, at the start
    sync_params(module)              # after building the module: every rank starts from rank 0's weights
    loss.backward()
    mpi_avg_grads(module)            # after every backward: every rank now holds the mean gradient
    optimizer.step()                 # the same step on every rank, so the weights stay identical

``flatten_parameters(module)`` (optional, before building the optimiser) is a speed trick: every weight
and gradient becomes a view of one flat tensor, so that Adam, gradient clipping and zeroing are one
operation per step instead of one per layer. Read its contract before using it.
"""

from __future__ import annotations

import os

import torch
from mpi4py import MPI
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

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


def sync_params(module: torch.nn.Module, root: int = 0) -> None:
    """Copy rank ``root``'s parameters and buffers to every rank, bitwise (one Bcast per dtype)."""
    if num_procs() == 1:
        return
    tensors = [p.data for p in module.parameters()] + list(module.buffers())
    for dtype in dict.fromkeys(t.dtype for t in tensors):  # first-seen order: the same on every rank
        group = [t for t in tensors if t.dtype == dtype]
        flat = torch.cat([t.reshape(-1) for t in group])
        COMM.Bcast(flat.numpy(), root=root)
        for t, value in zip(group, flat.split([t.numel() for t in group]), strict=True):
            t.copy_(value.view_as(t))


def mpi_avg_grads(module: torch.nn.Module) -> None:
    """Replace every trainable parameter's gradient by its mean over ranks, with ONE Allreduce.

    A parameter without a gradient on a rank counts as a zero gradient there. Afterwards a parameter has
    the mean gradient on every rank if any rank had a gradient for it, and stays ``None`` on every rank if
    none had: all ranks end with the same gradients, bit for bit, so their optimisers stay in step.
    Existing gradients are overwritten in place, so a module given to ``flatten_parameters`` ends with
    the mean gradient in the flat Parameter's ``.grad``.

    How: every gradient (zeros where missing) and one has-a-gradient flag per parameter are concatenated
    into one tensor (in the parameters' dtype, float64 if they mix dtypes), summed over ranks in place,
    scaled by ``1 / num_procs()`` and copied back.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(
            f"mpi_avg_grads takes the module, not a {type(module).__name__} (see flatten_parameters)"
        )
    flat_param = module.__dict__.get("_flat_parameter")  # set by flatten_parameters
    if flat_param is not None:
        _check_flat_gradient(module, flat_param)
    if num_procs() == 1:
        return
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return
    dtype = params[0].dtype if len({p.dtype for p in params}) == 1 else torch.float64
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    flags = torch.tensor([p.grad is not None for p in params], dtype=dtype)
    # One torch.cat of everything (it promotes to the flags' dtype), and views of the result shaped like
    # the inputs: two C++ calls instead of two Python operations per parameter.
    flat = _flatten_dense_tensors([*grads, flags])
    COMM.Allreduce(MPI.IN_PLACE, flat.numpy(), op=MPI.SUM)
    flat.mul_(1.0 / num_procs())
    *means, flags = _unflatten_dense_tensors(flat, [*grads, flags])
    targets, values = [], []
    for p, mean, any_rank in zip(params, means, flags.tolist(), strict=True):
        if not any_rank:
            continue  # no rank had a gradient: it stays None everywhere
        if p.grad is None:
            p.grad = mean.to(p.dtype, copy=True)
        else:
            targets.append(p.grad)
            values.append(mean)
    if targets:
        torch._foreach_copy_(targets, values)  # p.grad.copy_(mean) for all of them, in one call


def flatten_parameters(module: torch.nn.Module) -> torch.nn.Parameter:
    """Make all of ``module``'s trainable parameters views of one new flat Parameter, and return it.

    What it does to the module: every trainable parameter's ``.data`` is swapped for a view of the returned
    Parameter (same values), and its ``.grad`` for a view of that Parameter's ``.grad`` (zero-filled); the
    Parameter is also kept as the plain (unregistered) attribute ``module._flat_parameter``. The module's
    ``parameters()``, forward, ``state_dict`` and ``load_state_dict`` are unchanged, and backward
    accumulates straight into the flat gradient.

    Why: build the optimiser over ``[flat]`` and clip ``flat.grad``; Adam, clipping and zeroing are then
    one operation per step, where PyTorch's per-tensor overhead, not arithmetic, dominates the step of a
    small network.

    The contract, because the views must stay attached:

    - zero gradients with ``flat.grad.zero_()``, never ``optimizer.zero_grad()`` or ``module.zero_grad()``:
      their default ``set_to_none=True`` replaces gradients by ``None``, detaching the module's gradients
      from ``flat.grad``, and the optimiser would silently stop stepping;
    - ``mpi_avg_grads(module)`` works as usual: it writes the mean back in place, into ``flat.grad``. It
      raises a ``RuntimeError`` when it finds the views detached;
    - do not move or cast the module afterwards (``.to()``, ``.double()``): that replaces the views.

    All trainable parameters must share one dtype.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if len({p.dtype for p in params}) != 1:
        raise ValueError("flatten_parameters needs trainable parameters, all of one dtype")
    flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
    flat.grad = torch.zeros_like(flat)
    sizes = [p.numel() for p in params]
    for p, data, grad in zip(params, flat.data.split(sizes), flat.grad.split(sizes), strict=True):
        p.data = data.view_as(p)
        p.grad = grad.view_as(p)
    # A plain attribute, not a registered Parameter: parameters() and state_dict() stay as they were.
    object.__setattr__(module, "_flat_parameter", flat)
    return flat


def _check_flat_gradient(module: torch.nn.Module, flat: torch.nn.Parameter) -> None:
    """Raise if ``module``'s gradients are no longer views of ``flat.grad`` (see flatten_parameters)."""
    first = next(p for p in module.parameters() if p.requires_grad)
    if flat.grad is None or first.grad is None or first.grad.data_ptr() != flat.grad.data_ptr():
        raise RuntimeError(
            "mpi_avg_grads: the module's gradients are no longer views of flatten_parameters' flat.grad "
            "(optimizer.zero_grad() or module.zero_grad() set them to None); zero them with "
            "flat.grad.zero_() instead"
        )
