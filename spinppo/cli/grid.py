"""ExperimentGrid: every combination of parameter values, named as Spinning Up names them.

    eg = ExperimentGrid("ppo-walker")
    eg.add("seed", [0, 10, 20])
    eg.add("ac_kwargs:hidden_sizes", [(64, 64), (256, 256)], "hid")
    for variant in eg.variants():   # ppo-walker_hid64-64/ppo-walker_hid64-64_s0, ...
        name = eg.variant_name(variant)
        ppo(EnvFactory("Walker"), **variant, logger_kwargs=setup_logger_kwargs(name, variant["seed"]))

Each variant's runs go to ``data_dir/<name>_<shorthand><value>.../<...>_s<seed>``. Seeds never enter the
experiment name, so the seeds of one setting land side by side and plot as one curve. Under MPI every
rank runs the same variants in the same order.
"""

from __future__ import annotations

import itertools
import re
from typing import Any


def _valid_str(v: Any) -> str:
    """A value as a string fit for a directory name."""
    if hasattr(v, "__name__"):
        return _valid_str(v.__name__)
    if isinstance(v, (tuple, list)):
        return "-".join(_valid_str(x) for x in v)
    s = str(v).lower()
    return re.sub(r"[^a-z0-9._-]+", "-", s).strip("-")


class ExperimentGrid:
    """A grid of parameter values: ``variants()`` are its combinations, ``variant_name`` their names."""

    def __init__(self, name: str = "") -> None:
        self.keys: list[str] = []
        self.vals: list[list[Any]] = []
        self.shs: list[str | None] = []
        self.in_names: list[bool] = []
        self.name = name

    def add(self, key: str, vals: Any, shorthand: str | None = None, in_name: bool = False) -> None:
        """Add a parameter; ``key`` may be nested (``"ac_kwargs:hidden_sizes"``); a non-list is one value.

        ``shorthand`` names it in experiment names; parameters with several values (or ``in_name``) appear
        in the name, except ``seed``.
        """
        if not isinstance(vals, list):
            vals = [vals]
        if key in self.keys:
            raise ValueError(f"key {key!r} already in the grid")
        self.keys.append(key)
        self.vals.append(vals)
        self.shs.append(shorthand)
        self.in_names.append(in_name)

    def variant_name(self, variant: dict[str, Any]) -> str:
        """The experiment name of a variant: the grid's name, then shorthand+value of its varied keys."""
        parts = [self.name] if self.name else []
        for key, vals, sh, in_name in zip(self.keys, self.vals, self.shs, self.in_names, strict=True):
            if key == "seed" or not (len(vals) > 1 or in_name):
                continue
            label = sh if sh is not None else key.split(":")[-1]
            value = _get(variant, key)
            parts.append(f"{label}{_valid_str(value)}" if label else _valid_str(value))
        return "_".join(parts) or "exp"

    def variants(self) -> list[dict[str, Any]]:
        """Every combination, as nested dicts (``"a:b"`` keys become ``{"a": {"b": ...}}``)."""
        out = []
        for combo in itertools.product(*self.vals):
            variant: dict[str, Any] = {}
            for key, value in zip(self.keys, combo, strict=True):
                _set(variant, key, value)
            out.append(variant)
        return out


def _get(d: dict[str, Any], key: str) -> Any:
    for part in key.split(":"):
        d = d[part]
    return d


def _set(d: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(":")
    for part in parents:
        d = d.setdefault(part, {})
    d[last] = value
