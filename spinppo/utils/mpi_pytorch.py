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

On a GPU (``--device cuda``) the names keep their meaning: the gradients live in one flat tensor on the
device, copied once into a pinned host buffer, summed by one Allreduce and copied back once; parameters
are broadcast as one host array per dtype. CPU tensors take no copy at all (the buffer is the host's).
"""

from __future__ import annotations

import numpy as np
import torch
from mpi4py import MPI

from spinppo.utils.mpi_tools import COMM, limit_thread_pools, num_procs, rank_thread_share


def setup_pytorch_for_mpi(most: int | None = None) -> int:
    """Limit every thread pool of this rank to its share of its host's cores (at most ``most`` when
    given), and return that count.

    Without this, every rank's numpy (OpenBLAS or MKL), OpenMP and torch start one thread per core, and
    the ranks' threads fight over the cores: a rank of the 256-wide Walker2d network then spent 3.5 s an
    epoch in the policy's matrix products where it needs 0.07 s (docs/benchmarks.md, "Threads per rank").
    The share is ``rank_thread_share()`` (an ``OMP_NUM_THREADS`` set by the user caps it). It is applied
    at run time, whoever launched the rank (``--cpu``, ``mpirun``, ``srun``), since environment variables
    act only on libraries loaded after they are set:

    - numpy's BLAS and any OpenMP runtime loaded (torch's libgomp among them), through threadpoolctl,
      and ``OMP_NUM_THREADS`` and the BLAS variables for child processes and libraries loaded later
      (``mpi_tools.limit_thread_pools``; onnxruntime sessions read ``mpi_tools.rank_threads()``);
    - torch's intra-op pool (``torch.set_num_threads``) and inter-op pool (once per process, before any
      inter-op work: later calls keep the first count).
    """
    threads = rank_thread_share() if most is None else max(1, min(rank_thread_share(), most))
    limit_thread_pools(threads)
    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != threads:
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:
            pass  # inter-op work has started, or it was set before: torch allows it once a process
    return threads


def thread_report() -> dict[str, int]:
    """Threads each pool of this process may use now, as threadpoolctl sees them (``blas``, ``openmp``:
    the most of any library of that kind) and as torch reports them (``torch``, ``torch_interop``)."""
    from threadpoolctl import threadpool_info

    report: dict[str, int] = {}
    for lib in threadpool_info():
        report[lib["user_api"]] = max(report.get(lib["user_api"], 0), int(lib["num_threads"]))
    report["torch"] = torch.get_num_threads()
    report["torch_interop"] = torch.get_num_interop_threads()
    return report


def sync_params(module: torch.nn.Module, root: int = 0) -> None:
    """Copy rank ``root``'s parameters and buffers to every rank, bitwise (one Bcast per dtype; on a GPU,
    one copy to the host and one back per dtype)."""
    if num_procs() == 1:
        return
    vectors = state_vectors(module)
    for flat in vectors:
        COMM.Bcast(flat, root=root)
    load_state_vectors(module, vectors)


def state_vectors(module: torch.nn.Module) -> list[np.ndarray]:
    """The module's parameters and buffers as one flat array per dtype, in first-seen order (the same on
    every rank): what ``sync_params`` broadcasts and A3C's rank 0 sends. Host arrays wherever the module
    is (a GPU's tensors are joined there and copied once)."""
    tensors = [p.data for p in module.parameters()] + list(module.buffers())
    return [
        torch.cat([t.reshape(-1) for t in tensors if t.dtype == dtype]).cpu().numpy()
        for dtype in dict.fromkeys(t.dtype for t in tensors)
    ]


def load_state_vectors(module: torch.nn.Module, vectors: list[np.ndarray]) -> None:
    """Set the module's parameters and buffers from what ``state_vectors`` gave (bit for bit)."""
    tensors = [p.data for p in module.parameters()] + list(module.buffers())
    dtypes = list(dict.fromkeys(t.dtype for t in tensors))
    for dtype, flat in zip(dtypes, vectors, strict=True):
        group = [t for t in tensors if t.dtype == dtype]
        # (one copy to the module's device; on the CPU none)
        values = torch.from_numpy(flat).to(group[0].device).split([t.numel() for t in group])
        for t, value in zip(group, values, strict=True):
            t.copy_(value.view_as(t))


def mpi_avg_grads(module: torch.nn.Module) -> None:
    """Replace every trainable parameter's gradient by its mean over ranks, with ONE in-place Allreduce.

    A parameter without a gradient on a rank counts as a zero gradient there. Afterwards a parameter has
    the mean gradient on every rank if any rank had a gradient for it, and stays ``None`` on every rank if
    none had: all ranks end with the same gradients, bit for bit, so their optimisers stay in step.

    How: the module keeps one flat gradient buffer (``_GradientBuffer``, made on the first call and
    stored on the module itself, so it lives and dies with it). The parameters' ``.grad`` become views
    of it, so backward accumulates straight into it and a call copies nothing: one Allreduce of the
    buffer, one scaling. A gradient that was replaced since (``zero_grad()`` sets them to None) is copied
    in once and the view adopted again. For a module given to ``flatten_parameters`` the buffer holds the
    flat Parameter's ``.grad``. On a GPU the buffer is on the device and the Allreduce works on a pinned
    host copy of it: one copy out, one Allreduce, one copy back.
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
    buffer = module.__dict__.get("_gradient_buffer")
    if buffer is None or not buffer.holds(params):  # first call, or the module's parameters changed
        buffer = _GradientBuffer(params)
        object.__setattr__(module, "_gradient_buffer", buffer)
    buffer.average()


class _GradientBuffer:
    """Every gradient of a list of parameters in one flat tensor, then one has-a-gradient flag each.

    ``views[i]`` is parameter i's slice, shaped like it; the parameters' ``.grad`` are made those views
    (when the dtypes agree: with mixed dtypes the buffer is float64 and gradients are copied in and out).

    ``flat`` lives on the parameters' device. The Allreduce works on ``host``: ``flat`` itself on the CPU
    (no copy), else a host tensor of the same size (pinned on CUDA, so that the copies run at full speed)
    that ``average`` copies into and back out of (``staged``). ``staged=True`` takes that path for CPU
    parameters too: the tests check the GPU's plumbing on a machine without one.
    """

    def __init__(self, params: list[torch.nn.Parameter], staged: bool | None = None) -> None:
        self.params = params
        dtype = params[0].dtype if len({p.dtype for p in params}) == 1 else torch.float64
        device = params[0].device
        self.total = sum(p.numel() for p in params)
        self.flat = torch.zeros(self.total + len(params), dtype=dtype, device=device)
        self.views = [
            v.view_as(p)
            for p, v in zip(params, self.flat[: self.total].split([p.numel() for p in params]), strict=True)
        ]
        self.staged = device.type != "cpu" if staged is None else staged
        self.host = (
            torch.zeros(self.total + len(params), dtype=dtype, pin_memory=device.type == "cuda")
            if self.staged
            else self.flat
        )
        self.host_np = self.host.numpy()  # shares memory; numpy's scalar writes are far cheaper than torch's
        self.flags = self.host_np[self.total :]  # (on the host: no device write per parameter)
        self.adopt = all(p.dtype == dtype for p in params)

    def __deepcopy__(self, memo: dict) -> None:
        return None  # a copied module makes its own buffer on its first mpi_avg_grads

    def __reduce__(self) -> tuple:
        return (type(None), ())  # a pickled module too: the buffer's views would not survive pickling

    def holds(self, params: list[torch.nn.Parameter]) -> bool:
        """Whether this buffer was made for exactly these parameters."""
        return len(params) == len(self.params) and all(
            a is b for a, b in zip(params, self.params, strict=True)
        )

    def average(self) -> None:
        """Sum the gradients and flags over ranks in place, scale the gradients by 1 / num_procs()."""
        for i, (p, view) in enumerate(zip(self.params, self.views, strict=True)):
            if p.grad is None:
                view.zero_()
                self.flags[i] = 0.0
            else:
                if p.grad.data_ptr() != view.data_ptr():
                    view.copy_(p.grad)
                self.flags[i] = 1.0
        if self.staged:  # one copy out (it waits for backward's kernels)
            self.host[: self.total].copy_(self.flat[: self.total])
        COMM.Allreduce(MPI.IN_PLACE, self.host_np, op=MPI.SUM)
        self.host[: self.total].mul_(1.0 / num_procs())  # (on the host: the same rounding on any device)
        if self.staged:
            # One copy back, queued before the optimiser's kernels on the same stream. The next call's
            # copy out is queued after it, so the host buffer is never overwritten while being read.
            self.flat[: self.total].copy_(self.host[: self.total], non_blocking=True)
        for any_rank, p, view in zip(self.flags.tolist(), self.params, self.views, strict=True):
            if not any_rank:
                continue  # no rank had a gradient: it stays None everywhere
            if p.grad is not None and p.grad.data_ptr() == view.data_ptr():
                continue  # averaged in place
            if self.adopt:
                p.grad = view
            elif p.grad is None:
                p.grad = view.to(p.dtype)
            else:
                p.grad.copy_(view)


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
    # The flat gradient is the module's gradient buffer for mpi_avg_grads (with room for its flags after
    # it), so that averaging it copies nothing.
    buffer = _GradientBuffer(params)
    flat.grad = buffer.flat[: buffer.total]
    for p, data, grad in zip(params, flat.data.split([p.numel() for p in params]), buffer.views, strict=True):
        p.data = data.view_as(p)
        p.grad = grad
    # Plain attributes, not registered Parameters: parameters() and state_dict() stay as they were.
    object.__setattr__(module, "_flat_parameter", flat)
    object.__setattr__(module, "_gradient_buffer", buffer)
    return flat


def clip_grad_norm_flat(flat: torch.nn.Parameter, max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_([flat], max_norm)`` for ``flatten_parameters``' flat Parameter:
    the same arithmetic (bit for bit), without its per-call bookkeeping, which costs 50-100 µs a step
    where the whole PPO step takes 1.7 ms."""
    norm = torch.linalg.vector_norm(flat.grad)
    flat.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))


def _check_flat_gradient(module: torch.nn.Module, flat: torch.nn.Parameter) -> None:
    """Raise if ``module``'s gradients are no longer views of ``flat.grad`` (see flatten_parameters)."""
    first = next(p for p in module.parameters() if p.requires_grad)
    if flat.grad is None or first.grad is None or first.grad.data_ptr() != flat.grad.data_ptr():
        raise RuntimeError(
            "mpi_avg_grads: the module's gradients are no longer views of flatten_parameters' flat.grad "
            "(optimizer.zero_grad() or module.zero_grad() set them to None); zero them with "
            "flat.grad.zero_() instead"
        )
