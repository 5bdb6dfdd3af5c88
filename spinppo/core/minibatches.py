"""The speed tricks of a minibatch update, kept out of the algorithms' loss code.

``MinibatchTable`` keeps a ``Batch``'s fields side by side in one ``[n, columns]`` tensor, so that drawing a
minibatch is one gather instead of one per field, and hands each one back as a ``Minibatch``.
``StatSums`` sums per-minibatch statistics as one tensor (no Python float per minibatch, which would
synchronise and cost ~3% of an update) and reads them back by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

from spinppo.core.buffer import Batch


@dataclasses.dataclass(slots=True)
class Minibatch(Batch):
    """Rows of a ``Batch`` drawn together (``MinibatchTable.shuffled``): its fields at those rows, and
    ``dist_old``, the policy head's outputs before the update at those rows (PPO's KL penalty; else None).

    As the table holds them: float32 except uint8 images, dicts and bool fields (a discrete ``act`` comes
    back as float32, which ``ac.evaluate`` takes), and ``obs`` as given to the table (PPO's: normalised).
    """

    dist_old: torch.Tensor | None = None


# The table's columns, in this order: the batch's fields, then the old distributions.
_FIELDS = tuple(f.name for f in dataclasses.fields(Minibatch))


class MinibatchTable:
    """A ``Batch`` as one table, from which ``shuffled`` draws ``Minibatch``es; fields are [n] or [n, k].

    ``obs``: observations to hand out instead of ``batch.obs`` (PPO normalises them once per update);
    ``dist_old``: [n, ...] the policy head's outputs before the update (PPO's KL penalty), or None.

    A uint8 field (images) or a dict of tensors (a Dict observation) stays out of the table, in its own
    dtype, and is gathered on its own: pixels as float32 would take four times the memory. So does a
    bool field (a recurrent batch's ``starts`` and ``mask``). A field that is None (a feed-forward batch's
    ``memory``) comes back None. A row may be one step or, in a recurrent batch, one sequence ([n, L, ...]
    fields).
    """

    def __init__(self, batch: Batch, obs: Any = None, dist_old: torch.Tensor | None = None) -> None:
        given = {name: getattr(batch, name) for name in _FIELDS[:-1]}
        given.update(obs=batch.obs if obs is None else obs, dist_old=dist_old)
        fields = {name: f for name, f in given.items() if f is not None}
        self.apart = {
            name: f
            for name, f in fields.items()
            if isinstance(f, dict) or f.dtype in (torch.uint8, torch.bool)
        }
        fields = {name: f for name, f in fields.items() if name not in self.apart}
        n = next(iter(fields.values())).shape[0]
        columns = [f.reshape(n, -1).float() for f in fields.values()]
        self.n = n
        self.names = list(fields)
        self.widths = [c.shape[1] for c in columns]
        # A field that was 1-D comes back 1-D; the others keep their trailing shape.
        self.shapes = [tuple(f.shape[1:]) for f in fields.values()]
        self.table = torch.cat(columns, dim=1)

    def replace(self, name: str, values: torch.Tensor) -> None:
        """Put ``values`` ([n] or [n, ...], as the field was given) in the place of the field ``name``
        (PPO's --recompute_adv: new advantages and returns between passes)."""
        i = self.names.index(name)
        start = sum(self.widths[:i])
        self.table[:, start : start + self.widths[i]] = values.reshape(self.n, -1).to(self.table)

    def shuffled(self, size: int, count: int | None = None) -> Iterator[Minibatch]:
        """Minibatches of ``size`` rows in a fresh random order (one ``torch.randperm``, drawn on the CPU
        whatever the table's device: the same order, from the same generator, on a GPU).

        Rows left over when ``size`` does not divide the batch are not used in this pass. ``count``: the
        number of minibatches wanted (every rank must take as many gradient steps); a batch too short for
        ``count`` minibatches of ``size`` (a preempted rollout) is split into ``count`` nearly equal ones,
        and one shorter than ``count`` rows gives one row to each, rows taken again in turn (never an empty
        minibatch).
        """
        for rows in shuffled_rows(self.n, size, count, self.table.device):
            size = len(rows)
            parts = self.table.index_select(0, rows).split(self.widths, 1)
            fields = {
                name: part.reshape(size, *shape)
                for name, part, shape in zip(self.names, parts, self.shapes, strict=True)
            }
            for name, f in self.apart.items():
                fields[name] = (
                    {k: t.index_select(0, rows) for k, t in f.items()}
                    if isinstance(f, dict)
                    else f.index_select(0, rows)
                )
            yield Minibatch(**fields)  # (the fields that are None keep their default)


def shuffled_rows(
    n: int, size: int, count: int | None = None, device: torch.device | str = "cpu"
) -> list[torch.Tensor]:
    """The row indices of minibatches of ``size`` of ``n`` rows, in a fresh random order (one
    ``torch.randperm``, drawn on the CPU, then moved to ``device``): ``n // size`` of them, or ``count``.

    Rows left over when ``size`` does not divide ``n`` are not used. Every rank must take as many gradient
    steps, so a batch too short for ``count`` minibatches of ``size`` (a preempted rollout) is split into
    ``count`` nearly equal ones, and one shorter than ``count`` rows gives one row to each, rows taken again
    in turn (never an empty minibatch)."""
    perm = torch.randperm(n).to(device)
    count = n // size if count is None else count
    if n >= count * size:
        return [perm[start : start + size] for start in range(0, count * size, size)]
    if n >= count:
        edges = [n * i // count for i in range(count + 1)]
        return [perm[a:b] for a, b in zip(edges[:-1], edges[1:])]
    return [perm[i % n : i % n + 1] for i in range(count)]


class StatSums:
    """Statistics summed over minibatches in one tensor: ``add(LossPi=..., KL=...)``, ``means(count)``;
    the tensor on ``device``, where the statistics are computed (read back once, by ``mean``/``means``)."""

    def __init__(self, *names: str, device: torch.device | str = "cpu") -> None:
        self.names = names
        self.sums = torch.zeros(len(names), device=device)

    def zero(self) -> None:
        """Start a new sum (a new pass over the batch)."""
        self.sums.zero_()

    def add(self, **values: torch.Tensor) -> None:
        """Add one minibatch's scalar tensors (every name, detached by the caller)."""
        self.sums += torch.stack([values[name] for name in self.names])

    def mean(self, name: str, count: int) -> float:
        """One statistic's sum over ``count`` minibatches (read as a Python float)."""
        return float(self.sums[self.names.index(name)]) / count

    def means(self, count: int) -> dict[str, float]:
        """Every statistic's sum over ``count`` minibatches, by name."""
        return dict(zip(self.names, (self.sums / count).tolist(), strict=True))
