"""One logger for screen and file, as Spinning Up's users know it.

``EpochLogger.store()`` collects values during an epoch on every rank; ``log_tabular()`` reduces them over
all ranks; ``dump_tabular()`` prints the table on rank 0 and appends a tab-separated row to
``progress.txt`` (and TensorBoard). Every file is written atomically: a temporary file, then a rename, so
a killed run never leaves a torn config or checkpoint behind.
"""

from __future__ import annotations

import fcntl
import glob
import io
import json
import os
import os.path as osp
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spinppo.utils.errors import UserError, first_line
from spinppo.utils.mpi_tools import broadcast, mpi_statistics_scalar, proc_id

MODEL_FORMAT = "spinppo-model-v1"
_UMASK = os.umask(0)
os.umask(_UMASK)


def default_data_dir() -> str:
    """Where runs go: $SPINPPO_DATA_DIR, else the source checkout's data/, else ./data."""
    if os.environ.get("SPINPPO_DATA_DIR"):
        return os.environ["SPINPPO_DATA_DIR"]
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "setup.py").exists() and (checkout / "spinppo").is_dir():
        return str(checkout / "data")
    return osp.join(os.getcwd(), "data")


# ---------------------------------------------------------------------------------------------- atomic files


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` by calling ``write(f)`` on a temporary file beside it, then renaming it into place.

    Readers see the old file or the new one, never half of one; on any error the old file is untouched
    and the temporary file is removed.
    """
    directory = osp.dirname(osp.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{osp.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp makes 0600; others may plot shared runs
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def remove_stale_temp_files(run_dir: str) -> list[str]:
    """Delete what ``atomic_write`` left behind in a run when a process was killed mid-write (SIGKILL,
    power loss): its ``.NAME.XXXX.tmp`` files in the run directory, ``checkpoints/`` and ``pyt_save/``.
    Call it only while holding the run's lock (no other writer). Returns the removed paths."""
    removed = []
    for sub in ("", "checkpoints", "pyt_save"):
        for path in glob.glob(osp.join(run_dir, sub, ".*.tmp")):
            try:
                os.unlink(path)
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` made atomic.

    Serialised in memory first: torch's zip writer reports a full disk as a RuntimeError (or not at
    all, depending on where it hits), while a plain write raises the OSError that callers handle.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def atomic_write_text(path: str, text: str) -> None:
    """Write a text file atomically."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def convert_json(obj: Any) -> Any:
    """A JSON-serialisable version of ``obj`` (callables and classes by name, numpy values as numbers)."""
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, dict):
        return {str(k): convert_json(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [convert_json(x) for x in obj]
    if hasattr(obj, "to_json"):
        return convert_json(obj.to_json())
    if hasattr(obj, "__name__") and not hasattr(obj, "lambda"):
        return getattr(obj, "__qualname__", obj.__name__)
    if hasattr(obj, "__dict__") and obj.__dict__:
        return {str(obj): {str(k): convert_json(v) for k, v in obj.__dict__.items()}}
    return str(obj)


def setup_logger_kwargs(
    exp_name: str, seed: int | None = None, data_dir: str | None = None, datestamp: bool = False
) -> dict[str, str]:
    """Logger arguments for a run: ``output_dir`` is ``data_dir/exp_name/exp_name_s<seed>``.

    With ``datestamp`` both levels get a date (and the run a time) so that repeated runs never collide;
    every rank gets rank 0's time stamp. Call it on every rank.
    """
    data_dir = data_dir or default_data_dir()
    stamp = broadcast(time.strftime("%Y-%m-%d_%H-%M-%S") if proc_id() == 0 else None)
    relpath = f"{stamp[:10]}_{exp_name}" if datestamp else exp_name
    subfolder = f"{exp_name}" if seed is None else f"{exp_name}_s{seed}"
    if datestamp:
        subfolder = f"{stamp}-{subfolder}"
    return dict(output_dir=osp.join(data_dir, relpath, subfolder), exp_name=exp_name)


_held_locks: dict[str, int] = {}  # run directory lock files this process holds, and their descriptors


def run_files(output_dir: str) -> list[str]:
    """The files that make ``output_dir`` a run (empty when it holds none)."""
    return [f for f in ("progress.txt", "config.json", "pyt_save") if osp.exists(osp.join(output_dir, f))]


def existing_run_message(output_dir: str) -> str:
    """The error for a run directory that already holds a run (without --overwrite)."""
    return (
        f"{output_dir} already holds a run: pass --overwrite to replace it, --datestamp for a fresh "
        "directory, or another --exp_name"
    )


def read_run_config(run_dir: str, required: bool = True) -> dict[str, Any]:
    """A run's ``config.json`` as a dict: the one reader that resume, replay and plot share.

    A missing file is a UserError ("not a spinppo run"), or ``{}`` when not ``required`` (plot draws a
    run from its progress.txt alone). A file that is not a JSON object (damaged, hand-edited) is always a
    UserError naming the file.
    """
    path = osp.join(run_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        if not required:
            return {}
        raise UserError(f"{run_dir} is not a spinppo run (no config.json): give a run directory") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({first_line(e)}): the file is damaged or was edited") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} holds a {type(config).__name__}, not a run's settings: it was edited")
    return config


def _write_config(output_dir: str, config: dict[str, Any]) -> None:
    text = json.dumps(config, separators=(",", ":\t"), indent=4, sort_keys=True)
    atomic_write_text(osp.join(output_dir, "config.json"), text + "\n")


# TensorBoard tags of ML-Agents' trainer, written beside spinppo's own column names so that dashboards made
# for ML-Agents runs keep working (mlagents/trainers/ppo/optimizer_torch.py, trainer/rl_trainer.py).
ML_AGENTS_TAGS = {
    "AverageEpRet": "Environment/Cumulative Reward",
    "EpLen": "Environment/Episode Length",
    "LossPi": "Losses/Policy Loss",
    "LossV": "Losses/Value Loss",
    "Entropy": "Policy/Entropy",
    "LR": "Policy/Learning Rate",
    "ClipRange": "Policy/Epsilon",
    "EntCoef": "Policy/Beta",
    "AverageVVals": "Policy/Extrinsic Value Estimate",
}
# ...in ML-Agents' scale: it logs |policy loss|, and its value loss without spinppo's factor 0.5.
ML_AGENTS_SCALE = {"LossPi": abs, "LossV": lambda v: 2.0 * v}


class Logger:
    """Writes a run's files: ``progress.txt``, ``config.json`` and TensorBoard events.

    Only rank 0 writes. ``output_dir`` defaults to ``./data/<timestamp>``. A directory that already holds a
    run is refused with a clear message unless ``overwrite=True``: nothing a user has made is lost silently.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        exp_name: str | None = None,
        overwrite: bool = False,
        tensorboard: bool = True,
        resume: bool = False,
    ) -> None:
        self.output_dir = output_dir or osp.join(default_data_dir(), f"run_{int(time.time())}")
        self.exp_name = exp_name
        self.first_row = True
        self.log_headers: list[str] = []
        self.log_current_row: dict[str, Any] = {}
        self.tb_writer = None
        error = None
        if proc_id() == 0:
            error = self._prepare_dir(overwrite, resume)
        error = broadcast(error)
        if error:
            raise UserError(error)
        self.progress_path = osp.join(self.output_dir, "progress.txt")
        self.tensorboard = tensorboard
        self.resume = resume
        if proc_id() == 0:
            if not resume:
                open(self.progress_path, "w").close()
                print(f"Logging data to {self.progress_path}", flush=True)
                self._open_tensorboard(None)

    def _open_tensorboard(self, purge_step: int | None) -> None:
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb_writer = SummaryWriter(log_dir=osp.join(self.output_dir, "tb"), purge_step=purge_step)

    def restore_progress(self, last_epoch: int, step: int | None = None) -> None:
        """Resume logging after ``last_epoch``: rows of later epochs are dropped from progress.txt (they
        are about to be made again) and TensorBoard events after ``step`` are purged. Rank 0 writes.
        """
        header: list[str] = []
        if proc_id() == 0:
            with open(self.progress_path) as f:
                lines = f.read().splitlines()
            header = lines[0].split("\t") if lines else []
            kept = lines[:1]
            if "Epoch" in header:
                col = header.index("Epoch")
                kept += [ln for ln in lines[1:] if ln and int(float(ln.split("\t")[col])) <= last_epoch]
            atomic_write_text(self.progress_path, "".join(ln + "\n" for ln in kept))
            print(f"Logging data to {self.progress_path} (resumed after epoch {last_epoch})", flush=True)
            self._open_tensorboard(None if step is None else step + 1)
        self.log_headers = broadcast(header)
        self.first_row = not self.log_headers

    def _prepare_dir(self, overwrite: bool, resume: bool) -> str | None:
        try:
            if resume and not osp.exists(osp.join(self.output_dir, "config.json")):
                return f"{self.output_dir} is not a spinppo run (no config.json): check the --resume path"
            os.makedirs(self.output_dir, exist_ok=True)
            busy = self._lock_dir()
            if busy:
                return busy
            if osp.isdir(self.output_dir) and run_files(self.output_dir) and not (overwrite or resume):
                return existing_run_message(self.output_dir)
            if overwrite and not resume and osp.isdir(self.output_dir):
                # The replaced run's events, checkpoints and models must not mix with the new run's.
                for name in ("tb", "checkpoints", "pyt_save"):
                    shutil.rmtree(osp.join(self.output_dir, name), ignore_errors=True)
            os.makedirs(self.output_dir, exist_ok=True)
            probe = osp.join(self.output_dir, ".write_test")
            with open(probe, "w") as f:
                f.write("ok")
            os.unlink(probe)
        except OSError as e:
            return (
                f"cannot write the run directory {self.output_dir} ({e.strerror}): choose another --data_dir"
            )
        return None

    def _lock_dir(self) -> str | None:
        """Hold an exclusive lock on the run directory for this process's life; a message if another has it.

        Two runs writing one directory (the same --exp_name and seed started twice, or --overwrite while the
        old run is still going) would interleave their rows and checkpoints. The kernel drops the lock when
        the process ends, however it ends.
        """
        path = osp.realpath(osp.join(self.output_dir, ".lock"))
        if path in _held_locks:  # this process's own earlier logger (a grid, a test): done with it
            return None
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 100).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            return (
                f"another run (pid {holder}) is writing to {self.output_dir}: wait for it to end or stop "
                "it, or pick another --exp_name (or --datestamp)"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}@{socket.gethostname()}\n".encode(), 0)
        _held_locks[path] = fd  # kept open: closing it would release the lock
        return None

    # -------------------------------------------------------------------------------------------- table

    def log(self, msg: str) -> None:
        """Print a message on rank 0."""
        if proc_id() == 0:
            print(msg, flush=True)

    def log_tabular(self, key: str, val: Any) -> None:
        """Set this epoch's value of column ``key``. The columns of the first row fix the table's columns."""
        if self.first_row:
            if key not in self.log_headers:
                self.log_headers.append(key)
        elif key not in self.log_headers:
            raise KeyError(f"new column {key!r} after the first row; log every column in the first epoch")
        if key in self.log_current_row:
            raise KeyError(f"column {key!r} set twice this epoch; call dump_tabular() between epochs")
        self.log_current_row[key] = val

    def dump_tabular(self, step: int | None = None) -> dict[str, Any]:
        """Print the epoch's table (rank 0), append its row to progress.txt and TensorBoard; return the row.

        ``step`` is TensorBoard's x value (default: the row's Epoch column).
        """
        row = {k: self.log_current_row.get(k, "") for k in self.log_headers}
        if proc_id() == 0:
            width = max(15, max(len(k) for k in self.log_headers))
            lines = ["-" * (width + 22)]
            for k, v in row.items():
                shown = f"{v:8.3g}" if isinstance(v, (float, np.floating)) else str(v)
                lines.append(f"| {k:>{width}} | {shown:>15} |")
            lines.append("-" * (width + 22))
            print("\n".join(lines), flush=True)
            text = ""
            if self.first_row:
                text += "\t".join(self.log_headers) + "\n"
            text += "\t".join(_cell(v) for v in row.values()) + "\n"
            # One write() of the whole row with O_APPEND: a kill leaves the row whole or absent.
            fd = os.open(self.progress_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, text.encode("utf-8"))
            finally:
                os.close(fd)
            if self.tb_writer is not None:
                x = step if step is not None else row.get("Epoch", 0)
                for k, v in row.items():
                    # NaN marks a value this row has not (EvalEpRet between evaluations): no point.
                    if isinstance(v, (int, float, np.number)) and k != "Epoch" and not np.isnan(v):
                        self.tb_writer.add_scalar(k, float(v), int(x))
                        if k in ML_AGENTS_TAGS:
                            value = ML_AGENTS_SCALE.get(k, float)(float(v))
                            self.tb_writer.add_scalar(ML_AGENTS_TAGS[k], value, int(x))
                        elif k.startswith("Lesson/"):  # a curriculum's lesson, as ML-Agents names it
                            self.tb_writer.add_scalar(f"Environment/Lesson Number/{k[7:]}", float(v), int(x))
                self.tb_writer.flush()
        self.log_current_row.clear()
        self.first_row = False
        return row

    # ------------------------------------------------------------------------------------------ saving

    def save_config(self, config: dict[str, Any]) -> None:
        """Write ``config.json`` (atomically) and print it, on rank 0."""
        config_json = convert_json(config)
        if self.exp_name is not None:
            config_json["exp_name"] = self.exp_name
        if proc_id() == 0:
            _write_config(self.output_dir, config_json)

    def update_config(self, **changes: Any) -> None:
        """Set keys of the run's existing ``config.json`` (atomically), on rank 0; unchanged files stay."""
        if proc_id() != 0:
            return
        path = osp.join(self.output_dir, "config.json")
        with open(path) as f:
            config = json.load(f)
        changes = convert_json(changes)
        if all(config.get(k) == v for k, v in changes.items()):
            return
        config.update(changes)
        _write_config(self.output_dir, config)

    def on_rank0(self, write: Callable[[], None], what: str) -> None:
        """Run ``write`` on rank 0 and tell every rank whether it worked (a collective).

        A full disk or a file-size limit becomes a UserError on every rank (so no rank waits forever
        for rank 0); the atomic writes leave the previous files intact.
        """
        error = None
        if proc_id() == 0:
            try:
                write()
            except OSError as e:
                error = (
                    f"could not {what} in {self.output_dir} ({e.strerror or e}); the previous files are "
                    "intact: free some disk space, then resume the run"
                )
        error = broadcast(error)
        if error:
            raise UserError(error)

    def close(self) -> None:
        """Flush and close TensorBoard files."""
        if self.tb_writer is not None:
            self.tb_writer.close()
            self.tb_writer = None


def _cell(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return str(v)


def save_model(module: torch.nn.Module, path: str, extra: dict[str, Any] | None = None) -> None:
    """Save a module as its state_dict plus ``module.ctor_spec`` (how to rebuild it), atomically.

    The file loads with ``torch.load(path, weights_only=True)``: it holds tensors and plain values only.
    """
    payload = {
        "format": MODEL_FORMAT,
        "ctor": getattr(module, "ctor_spec", None),
        "state_dict": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
    }
    if extra:
        payload.update(extra)
    atomic_torch_save(payload, path)


def load_model_payload(path: str) -> dict[str, Any]:
    """Read a file written by ``save_model`` with weights-only loading; a UserError if it is unreadable."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"no checkpoint at {path}: train a run first or pick another --itr") from None
    except Exception as e:  # torch raises several types for torn or foreign files
        raise UserError(
            f"cannot read checkpoint {path} ({type(e).__name__}): it is damaged or not spinppo's"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise UserError(f"{path} is not a spinppo model checkpoint")
    return payload


class EpochLogger(Logger):
    """A Logger that also averages values stored over an epoch, over all ranks.

    ``store(EpRet=r)`` any number of times on any rank, then ``log_tabular('EpRet', with_min_and_max=True)``
    logs AverageEpRet, StdEpRet, MaxEpRet and MinEpRet over every value stored on every rank.
    Every rank must call ``log_tabular`` for the same keys in the same order (they are collectives).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epoch_dict: dict[str, list] = {}
        # False: the statistics of this rank's values only, without collectives (A3C's rank 0 holds every
        # rank's values, sent to it by message).
        self.across_ranks = True

    def store(self, **kwargs: Any) -> None:
        """Add values to this epoch's lists, one list per keyword."""
        for k, v in kwargs.items():
            self.epoch_dict.setdefault(k, []).append(v)

    def log_tabular(
        self, key: str, val: Any = None, with_min_and_max: bool = False, average_only: bool = False
    ) -> None:
        """Log ``val``, or the statistics over ranks of the values stored under ``key`` this epoch."""
        if val is not None:
            super().log_tabular(key, val)
            return
        stats = self.get_stats(key, with_min_and_max)
        super().log_tabular(key if average_only else "Average" + key, stats[0])
        if not average_only:
            super().log_tabular("Std" + key, stats[1])
        if with_min_and_max:
            super().log_tabular("Max" + key, stats[3])
            super().log_tabular("Min" + key, stats[2])
        self.epoch_dict[key] = []

    def get_stats(self, key: str, with_min_and_max: bool = False) -> tuple:
        """(mean, std[, min, max]) over ranks of the values stored under ``key`` (nan where none were)."""
        values = self.epoch_dict.get(key, [])
        flat = np.concatenate([np.ravel(v) for v in values]) if values else np.zeros(0)
        if not self.across_ranks:
            if flat.size == 0:
                return (float("nan"),) * (4 if with_min_and_max else 2)
            stats = (float(flat.mean()), float(flat.std()), float(flat.min()), float(flat.max()))
            return stats if with_min_and_max else stats[:2]
        return mpi_statistics_scalar(flat, with_min_and_max=with_min_and_max)
