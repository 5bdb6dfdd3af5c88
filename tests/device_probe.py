"""Run under ``mpirun -np 2``: the GPU's plumbing of ``mpi_avg_grads`` and ``sync_params`` (a flat buffer
copied to a host buffer, one Allreduce, copied back) on CPU tensors, against the zero-copy path.

Prints one JSON line on rank 0: for each case, whether the staged buffer gave every rank the mean of the
ranks' gradients bit for bit as the zero-copy path does (a parameter without a gradient on every rank
stays None, or zero after flatten_parameters; one without a gradient on one rank counts zero there),
and whether ``sync_params`` left the ranks' parameters identical.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections.abc import Iterator

import torch

from spinppo.utils.mpi_pytorch import (
    _GradientBuffer,
    flatten_parameters,
    mpi_avg_grads,
    state_vectors,
    sync_params,
)
from spinppo.utils.mpi_tools import allgather, proc_id


def net(mixed: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    module.unused = torch.nn.Linear(2, 2)  # no gradient on any rank: stays None
    module.sometimes = torch.nn.Linear(5, 1)  # a gradient on rank 1 only
    if mixed:
        module.sometimes.double()
    return module


def backward(module: torch.nn.Module) -> None:
    torch.manual_seed(100 + proc_id())  # each rank its own data
    x = torch.randn(16, 5)
    loss = module[2](module[1](module[0](x))).pow(2).mean()
    if proc_id() == 1:
        loss = loss + module.sometimes(x.to(module.sometimes.weight.dtype)).float().mean()
    loss.backward()


def grads(module: torch.nn.Module) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in module.parameters()]


def same(a: list[torch.Tensor | None], b: list[torch.Tensor | None]) -> bool:
    return all(
        (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
        for x, y in zip(a, b)
    )


def digest(module: torch.nn.Module) -> str:
    return hashlib.sha256(b"".join(v.tobytes() for v in state_vectors(module))).hexdigest()


@contextlib.contextmanager
def forced_staging() -> Iterator[None]:
    """Every gradient buffer made inside takes the GPU's path (``staged=True``), as on a GPU."""
    made = _GradientBuffer.__init__
    _GradientBuffer.__init__ = lambda self, params, staged=None: made(self, params, staged=True)
    try:
        yield
    finally:
        _GradientBuffer.__init__ = made


def case(mixed: bool, flat: bool) -> dict[str, bool]:
    plain, staged = net(mixed), net(mixed)
    if flat:
        flatten_parameters(plain)
        with forced_staging():
            flatten_parameters(staged)
    backward(plain)
    backward(staged)
    mine = grads(plain)
    everyone = allgather([None if g is None else g.numpy() for g in mine])
    mpi_avg_grads(plain)
    with forced_staging():
        mpi_avg_grads(staged)
    assert staged._gradient_buffer.staged and staged._gradient_buffer.host is not staged._gradient_buffer.flat
    # The mean by hand: a missing gradient counts zero, and stays None when no rank had one.
    mean = []
    for i in range(len(mine)):
        parts = [r[i] for r in everyone if r[i] is not None]
        mean.append(None if not parts else torch.as_tensor(sum(parts)) * 0.5)
    staged_grads = grads(staged)
    out = {
        "staged_equals_plain": same(staged_grads, grads(plain)),
        "staged_is_the_mean": all(
            (m is None and s is None)
            or (m is not None and s is not None and torch.allclose(m.to(s.dtype), s))
            for m, s in zip(mean, staged_grads, strict=True)
        ),
        # (flatten_parameters gives every parameter a gradient view: zeros where nothing flowed)
        "unused_none_or_zero": staged.unused.weight.grad is None
        if not flat
        else not staged.unused.weight.grad.any(),
        "ranks_agree": len(
            set(
                allgather(
                    hashlib.sha256(
                        b"".join(g.numpy().tobytes() for g in staged_grads if g is not None)
                    ).hexdigest()
                )
            )
        )
        == 1,
    }
    with torch.no_grad():  # ranks apart, then sync_params: rank 0's everywhere, bit for bit
        for p in staged.parameters():
            p.add_(proc_id())
    sync_params(staged)
    out["sync_identical"] = len(set(allgather(digest(staged)))) == 1
    copy.deepcopy(staged)  # a copied module makes its own buffer (the staged one must not break it)
    return out


if __name__ == "__main__":
    results = {
        f"mixed={m},flat={f}": case(m, f) for m in (False, True) for f in (False, True) if not (m and f)
    }
    if proc_id() == 0:
        print(json.dumps(results), flush=True)
