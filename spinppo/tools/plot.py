"""Plot runs' ``progress.txt``: ``python -m spinppo.run plot DIR [DIR ...]``, as in Spinning Up.

    python -m spinppo.run plot data/ppo-walker data/vpg-walker --value AverageEpRet LossV --smooth 5
    python -m spinppo.run plot data/ --select walker --exclude hid256 --out walker.svg

Each DIR is a run directory (it holds ``progress.txt``) or any directory above runs: every run below it is
plotted. A DIR that does not exist is a prefix, as in Spinning Up: ``data/ppo-`` means every ``data/ppo-*``
directory. Runs with the same experiment name (``exp_name`` in ``config.json``; the seeds of one setting)
make one curve: the mean over runs at each x value with a band of one standard deviation (sample standard
deviation over the runs that have that x value; no band where only one run has it). Runs of unequal
length are not cut to their common prefix: at each x the curve is the mean over the runs present there,
and ``Curve.n`` says how many those are. Several experiments make several curves, with a legend.

The same from Python::

    runs = load_runs(["data/ppo-walker"], select=["s0"])
    for c in curves(runs, xaxis="TotalEnvInteracts", value="AverageEpRet", smooth=5):
        print(c.label, c.x, c.mean, c.std, c.n)
    fig = make_plot(runs, values=["AverageEpRet", "LossV"])   # a matplotlib Figure
    fig.savefig("walker.png")

No display (DISPLAY and WAYLAND_DISPLAY unset): figures are drawn with matplotlib's Agg backend and written
to a file; pyplot and an interactive backend are only used for ``--show``.
"""

from __future__ import annotations

import argparse
import math
import os
import os.path as osp
import re
import reprlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spinppo.utils.errors import OneLineParser, UserError
from spinppo.utils.logx import read_run_config

PROGRESS = "progress.txt"
IMAGE_SUFFIXES = (".png", ".svg", ".pdf")
ESTIMATORS = {"mean": np.nanmean, "median": np.nanmedian, "max": np.nanmax, "min": np.nanmin}


def note(msg: str) -> None:
    """A remark about the data that does not stop the plot (runs skipped, columns missing), on stderr."""
    print(f"spinppo: note: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ reading


@dataclass
class Run:
    """One run directory's table: ``data[column]`` is a float array with one value per logged epoch.

    ``name`` is the experiment name (config.json's ``exp_name``); ``condition`` is the curve the run belongs
    to (its ``--legend`` name when one was given, else ``name``). ``match_path`` is the path that
    ``select``/``exclude`` look at: the run's directory from the given directory's name down.
    """

    path: str
    name: str
    condition: str
    columns: list[str]
    data: dict[str, np.ndarray]
    seed: Any = None
    config: dict[str, Any] = field(default_factory=dict)
    match_path: str = ""

    @property
    def rows(self) -> int:
        """The number of epochs logged so far."""
        return len(next(iter(self.data.values()))) if self.data else 0

    def column(self, name: str) -> np.ndarray | None:
        """A column's values, or None; ``Performance`` means AverageTestEpRet if logged, else AverageEpRet."""
        if name in self.data:
            return self.data[name]
        if name == "Performance":
            for alias in ("AverageTestEpRet", "AverageEpRet"):
                if alias in self.data:
                    return self.data[alias]
        return None


def _float(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:  # an empty cell (a value not logged that epoch) or text
        return math.nan


def read_progress(path: str) -> tuple[list[str], dict[str, np.ndarray]]:
    """Read a tab-separated ``progress.txt``: (columns, column -> float array).

    A file that is empty or holds only its header (a run that has not finished an epoch) gives arrays of
    length 0. A row with the wrong number of cells (a row being written as the file is read) is dropped.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror})") from None
    lines = text.split("\n")
    header = lines[0].rstrip("\r")
    if not header:
        return [], {}
    columns = header.split("\t")
    rows = []
    for i, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line:
            continue
        cells = line.split("\t")
        if len(cells) != len(columns):
            note(f"{path}: line {i} has {len(cells)} cells for {len(columns)} columns; skipped")
            continue
        rows.append([_float(c) for c in cells])
    table = np.array(rows, dtype=np.float64).reshape(len(rows), len(columns))
    return columns, {c: table[:, j] for j, c in enumerate(columns)}


def _read_config(run_dir: str) -> dict[str, Any]:
    """The run's config.json as a dict, ``{}`` when it has none (a run is plotted from progress.txt alone).

    A config.json that is damaged or not an object, or whose ``exp_name`` is not a string or ``seed`` not
    a number (each may be absent or null), is a UserError naming the file and the key.
    """
    config = read_run_config(run_dir, required=False)
    for key, types, want in (("exp_name", (str,), "a string"), ("seed", (int, float), "a number")):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            raise UserError(
                f"{osp.join(run_dir, 'config.json')}: {key} is {reprlib.repr(value)}, not {want}: "
                "the file was edited or is damaged"
            )
    return config


def _run_dirs(logdir: str) -> list[str]:
    """Every directory at or below ``logdir`` that holds a progress.txt, in sorted order."""
    found = []
    for root, dirs, files in os.walk(logdir):
        dirs.sort()
        if PROGRESS in files:
            found.append(root)
    return found


def get_datasets(logdir: str, condition: str | None = None) -> list[Run]:
    """Every run at or below ``logdir`` (Spinning Up's name), runs without rows included.

    ``condition`` names the curve of all of them (a ``--legend`` entry); by default each run's curve is its
    experiment name: config.json's ``exp_name``, else the directory's name without its ``_s<seed>``.
    """
    base = osp.dirname(osp.normpath(logdir))
    runs = []
    for run_dir in _run_dirs(logdir):
        columns, data = read_progress(osp.join(run_dir, PROGRESS))
        config = _read_config(run_dir)
        name = config.get("exp_name") or re.sub(r"_s-?\d+$", "", osp.basename(osp.normpath(run_dir)))
        runs.append(
            Run(
                path=run_dir,
                name=name,
                condition=condition or name,
                columns=columns,
                data=data,
                seed=config.get("seed"),
                config=config,
                match_path=osp.relpath(run_dir, base) if base else run_dir,
            )
        )
    return runs


def expand_logdirs(logdirs: Sequence[str]) -> list[list[str]]:
    """For each argument, the directories it means: itself if it is a directory, else (Spinning Up's prefix
    rule) the directories beside it whose name starts with its last component. A UserError if none."""
    out = []
    for logdir in logdirs:
        if osp.isdir(logdir):
            out.append([logdir])
            continue
        if osp.exists(logdir):
            raise UserError(f"{logdir} is a file, not a run directory: give the directory that holds it")
        parent, prefix = osp.split(logdir)
        parent = parent or "."
        matches = []
        if prefix and osp.isdir(parent):
            matches = [osp.join(parent, d) for d in sorted(os.listdir(parent)) if d.startswith(prefix)]
            matches = [m for m in matches if osp.isdir(m)]
        if not matches:
            raise UserError(f"{logdir} does not exist (nor any directory starting with {prefix!r} beside it)")
        out.append(matches)
    return out


def get_all_datasets(
    all_logdirs: Sequence[str],
    legend: Sequence[str] | None = None,
    select: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[Run]:
    """The runs of every directory (with prefixes expanded), filtered by ``select``/``exclude``.

    ``legend``: one curve name per directory given. A run is kept when its path (from the given directory's
    name down) contains every ``select`` substring and no ``exclude`` substring. Runs without rows are kept.
    """
    if legend and len(legend) != len(all_logdirs):
        raise UserError(
            f"--legend takes one name per directory given ({len(all_logdirs)}), not {len(legend)}"
        )
    runs: list[Run] = []
    for i, dirs in enumerate(expand_logdirs(all_logdirs)):
        found = []
        for d in dirs:
            found += get_datasets(d, condition=legend[i] if legend else None)
        if not found:
            raise UserError(
                f"no {PROGRESS} in {all_logdirs[i]} or below: it is not a run directory (give a directory "
                "made by python -m spinppo.run ppo|vpg|a2c, or one above such runs)"
            )
        runs += found
    kept = [
        r
        for r in runs
        if all(s in r.match_path for s in select or ()) and not any(s in r.match_path for s in exclude or ())
    ]
    if not kept:
        rule = " and ".join(
            ([f"containing {' and '.join(map(repr, select))}"] if select else [])
            + ([f"without {' or '.join(map(repr, exclude))}"] if exclude else [])
        )
        raise UserError(f"none of the {len(runs)} runs found has a path {rule}")
    return kept


def load_runs(
    dirs: Sequence[str],
    select: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    legend: Sequence[str] | None = None,
) -> list[Run]:
    """The runs to plot: ``get_all_datasets`` without the runs that have no rows yet (with a note each).

    A UserError when no run has a row.
    """
    runs = get_all_datasets(dirs, legend, select, exclude)
    with_rows = [r for r in runs if r.rows]
    if not with_rows:
        raise UserError(f"no epoch logged yet in {', '.join(r.path for r in runs)}: plot again later")
    for r in runs:
        if not r.rows:
            note(f"skipped {r.path}: no epoch logged yet in its {PROGRESS}")
    return with_rows


# ------------------------------------------------------------------------------------------------- curves


@dataclass
class Curve:
    """One plotted line: at each ``x``, ``mean`` (the estimator over runs; the mean by default) and ``std``
    (sample standard deviation over the ``n`` runs that have this x; 0 where n is 1)."""

    label: str
    x: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    n: np.ndarray
    runs: list[Run]
    xaxis: str
    value: str


def smooth_values(y: np.ndarray, smooth: int) -> np.ndarray:
    """Spinning Up's smoothing: the mean over a window of ``smooth`` points centred on each point
    (fewer at the ends), ignoring NaNs; ``smooth <= 1`` leaves ``y`` as it is."""
    y = np.asarray(y, dtype=np.float64)
    if smooth <= 1 or len(y) == 0:
        return y.copy()
    window = np.ones(int(smooth))
    valid = ~np.isnan(y)
    # np.convolve's "same" slice of the full convolution, also for runs shorter than the window.
    start = (len(window) - 1) // 2
    total = np.convolve(np.where(valid, y, 0.0), window, "full")[start : start + len(y)]
    count = np.convolve(valid.astype(np.float64), window, "full")[start : start + len(y)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def available_columns(runs: Sequence[Run]) -> list[str]:
    """Every column of any run, in first-seen order."""
    seen: dict[str, None] = {}
    for r in runs:
        seen.update(dict.fromkeys(r.columns))
    return list(seen)


def _check_column(runs: Sequence[Run], name: str, flag: str) -> list[Run]:
    """The runs that have column ``name`` (a note for each that has not); a UserError if none has."""
    have = [r for r in runs if r.column(name) is not None]
    if not have:
        raise UserError(
            f"unknown {flag} {name!r}: the runs' columns are {', '.join(available_columns(runs))}"
            + (" (or Performance)" if flag == "--value" else "")
        )
    for r in runs:
        if r.column(name) is None:
            note(f"{r.path} has no column {name!r}; left out of its plot")
    return have


def _group(runs: Sequence[Run], count: bool) -> list[tuple[str, list[Run]]]:
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.condition, []).append(r)
    if not count:
        return list(groups.items())
    out = []
    for condition, members in groups.items():
        seeds = [r.seed for r in members]
        by_seed = None not in seeds and len(set(map(str, seeds))) == len(seeds)
        for i, r in enumerate(members):
            out.append((f"{condition}-s{r.seed}" if by_seed else f"{condition}-{i}", [r]))
    return out


def curves(
    runs: Sequence[Run],
    xaxis: str = "TotalEnvInteracts",
    value: str = "AverageEpRet",
    smooth: int = 1,
    count: bool = False,
    estimator: str = "mean",
) -> list[Curve]:
    """The curves of one panel: one per experiment (``condition``), or one per run with ``count``.

    Each run's ``value`` column is smoothed first (``smooth_values``), then at each x value that any run of
    the curve has, the ``estimator`` (mean, median, max, min) and the standard deviation over the runs
    that have that x are taken (NaN values, epochs where nothing was logged, are left out).
    """
    if smooth < 1:
        raise UserError(f"--smooth must be at least 1, not {smooth}")
    if estimator not in ESTIMATORS:
        raise UserError(f"--est must be one of {', '.join(ESTIMATORS)}, not {estimator!r}")
    runs = _check_column(runs, xaxis, "--xaxis")
    runs = _check_column(runs, value, "--value")
    out = []
    for label, members in _group(runs, count):
        xs, ys = [], []
        for r in members:
            x, y = r.column(xaxis), smooth_values(r.column(value), smooth)
            keep = ~np.isnan(x)
            xs.append(x[keep])
            ys.append(y[keep])
        ux = np.unique(np.concatenate(xs))
        mean, std, n = (np.full(len(ux), np.nan) for _ in range(3))
        for i, xv in enumerate(ux):
            at = np.concatenate([y[x == xv] for x, y in zip(xs, ys)])
            at = at[~np.isnan(at)]
            n[i] = len(at)
            if len(at):
                mean[i] = ESTIMATORS[estimator](at)
                std[i] = np.std(at, ddof=1) if len(at) > 1 else 0.0
        out.append(Curve(label, ux, mean, std, n.astype(np.int64), list(members), xaxis, value))
    return out


# ---------------------------------------------------------------------------------------------- plotting


def default_size(panels: int) -> tuple[float, float]:
    """Figure size in inches: 8 x 5 for one panel, a grid of two columns for more."""
    cols = 1 if panels == 1 else 2
    rows = math.ceil(panels / cols)
    return (8.0, 5.0) if panels == 1 else (6.4 * cols, 4.4 * rows)


def plot_curves(ax: Any, panel: Sequence[Curve], legend: bool = True) -> None:
    """Draw curves on a matplotlib Axes: a line for the estimate, a shaded band of +-1 standard deviation."""
    for c in panel:
        # Epochs in which no episode ended (long episodes, short epochs) are NaN: join the points around them.
        ok = np.isfinite(c.mean)
        x, mean, std = c.x[ok], c.mean[ok], c.std[ok]
        (line,) = ax.plot(x, mean, label=c.label, marker="o" if len(x) == 1 else None)
        if np.any(c.n > 1):
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
    if panel:
        ax.set_xlabel(panel[0].xaxis)
        ax.set_ylabel(panel[0].value)
        xs = np.concatenate([c.x for c in panel])
        if xs.size and np.max(np.abs(xs)) > 5e3:
            ax.ticklabel_format(style="sci", axis="x", scilimits=(0, 0))
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(loc="best", frameon=False)


def make_plot(
    runs: Sequence[Run],
    xaxis: str = "TotalEnvInteracts",
    values: Sequence[str] | str = ("AverageEpRet",),
    smooth: int = 1,
    count: bool = False,
    estimator: str = "mean",
    size: tuple[float, float] | None = None,
    dpi: float = 100,
    fig: Any = None,
) -> Any:
    """A matplotlib Figure with one panel per value; ``fig.spinppo_curves[value]`` holds its curves.

    ``size`` is in inches (the image is size x dpi pixels). The figure is made without pyplot (it renders
    with Agg) unless one is passed in ``fig``.
    """
    from matplotlib.figure import Figure

    values = [values] if isinstance(values, str) else list(dict.fromkeys(values))
    if not values:
        raise UserError("--value needs at least one column")
    panels = {v: curves(runs, xaxis, v, smooth, count, estimator) for v in values}
    size = tuple(size) if size else default_size(len(values))
    if size[0] <= 0 or size[1] <= 0 or dpi <= 0:
        raise UserError(f"--size and --dpi must be positive, not {size[0]} {size[1]} and {dpi}")
    if fig is None:
        fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    else:
        fig.set_size_inches(*size)
        fig.set_dpi(dpi)
        fig.set_layout_engine("constrained")
    cols = 1 if len(values) == 1 else 2
    rows = math.ceil(len(values) / cols)
    for i, panel in enumerate(panels.values()):
        ax = fig.add_subplot(rows, cols, i + 1)
        plot_curves(ax, panel)
    fig.spinppo_curves = panels
    return fig


def has_display() -> bool:
    """Whether a window can be opened: always on macOS and Windows, with DISPLAY or WAYLAND_DISPLAY else."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def default_out(first_dir: str, xaxis: str, values: Sequence[str]) -> str:
    """Where a plot goes without ``--out``: ``plot_<values>_vs_<xaxis>.png`` in the first given directory
    (beside it when that was a prefix)."""
    directory = first_dir if osp.isdir(first_dir) else (osp.dirname(first_dir) or ".")
    name = "plot_" + "_".join(re.sub(r"[^A-Za-z0-9._-]+", "-", v) for v in values) + f"_vs_{xaxis}.png"
    return osp.join(directory, name)


def _check_out(out: str) -> None:
    if osp.splitext(out)[1].lower() not in IMAGE_SUFFIXES:
        raise UserError(f"--out must end in {', '.join(IMAGE_SUFFIXES)}, not {out!r}")


def save_figure(fig: Any, out: str) -> str:
    """Write ``fig`` to ``out`` (format from the suffix: .png, .svg or .pdf); return the path."""
    _check_out(out)
    parent = osp.dirname(osp.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
        fig.savefig(out, dpi=fig.dpi)
    except OSError as e:
        raise UserError(f"cannot write {out} ({e.strerror}): choose another --out") from None
    return out


def plot(
    dirs: Sequence[str],
    xaxis: str = "TotalEnvInteracts",
    values: Sequence[str] | str = ("AverageEpRet",),
    smooth: int = 1,
    count: bool = False,
    select: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    legend: Sequence[str] | None = None,
    estimator: str = "mean",
    out: str | None = None,
    show: bool = False,
    size: tuple[float, float] | None = None,
    dpi: float = 100,
) -> str | None:
    """Load, plot and write (or show) runs, as the command line does; return the file written, if any.

    Without ``out`` and without a window to show in, the figure goes to ``default_out``.
    """
    values = [values] if isinstance(values, str) else list(values)
    if out:
        _check_out(out)
    runs = load_runs(dirs, select, exclude, legend)
    window = show and has_display()
    if show and not window:
        note("--show needs a display (DISPLAY and WAYLAND_DISPLAY are unset): writing an image instead")
    fig = None
    if window:
        import matplotlib.pyplot as plt

        fig = plt.figure()
    fig = make_plot(runs, xaxis, values, smooth, count, estimator, size, dpi, fig=fig)
    written = None
    if out or not window:
        written = save_figure(fig, out or default_out(dirs[0], xaxis, values))
    if window:
        import matplotlib.pyplot as plt

        plt.show()
    return written


# --------------------------------------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    """The ``plot`` command's flags (Spinning Up's, plus --out, --show, --size and --dpi)."""
    p = OneLineParser(
        prog="python -m spinppo.run plot",
        description="Plot progress.txt of runs: the seeds of one experiment as a mean with a band of one "
        "standard deviation, one curve per experiment.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("logdir", nargs="+", help="run directories, directories above runs, or name prefixes")
    p.add_argument("--xaxis", "-x", default="TotalEnvInteracts", help="column for the x axis")
    p.add_argument(
        "--value", "-y", nargs="+", default=["AverageEpRet"], help="column(s) to plot, one panel each"
    )
    p.add_argument("--legend", "-l", nargs="+", help="a curve name for each DIR given")
    p.add_argument("--count", action="store_true", help="one curve per run instead of per experiment")
    p.add_argument("--smooth", "-s", type=int, default=1, help="moving average over this many epochs")
    p.add_argument("--select", nargs="+", help="plot only runs whose path contains all of these")
    p.add_argument("--exclude", nargs="+", help="leave out runs whose path contains any of these")
    p.add_argument("--est", default="mean", choices=list(ESTIMATORS), help="estimator over the runs")
    p.add_argument(
        "--out", "-o", help="image file (.png, .svg, .pdf); default: plot_<VALUE>_vs_<XAXIS>.png in DIR"
    )
    p.add_argument("--show", action="store_true", help="open a window (needs a display)")
    p.add_argument("--size", nargs=2, type=float, metavar=("W", "H"), help="figure size in inches")
    p.add_argument("--dpi", type=float, default=100, help="pixels per inch of a PNG")
    return p


def main(argv: Sequence[str]) -> int:
    """``python -m spinppo.run plot ...``; bad input raises UserError. Prints the image's path."""
    args = build_parser().parse_args(list(argv))
    written = plot(
        args.logdir,
        xaxis=args.xaxis,
        values=args.value,
        smooth=args.smooth,
        count=args.count,
        select=args.select,
        exclude=args.exclude,
        legend=args.legend,
        estimator=args.est,
        out=args.out,
        show=args.show,
        size=tuple(args.size) if args.size else None,
        dpi=args.dpi,
    )
    if written:
        print(f"Plot saved to {written}", flush=True)
    return 0
