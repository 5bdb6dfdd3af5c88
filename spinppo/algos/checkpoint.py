"""Checkpoints: everything a run needs to continue exactly where it stopped.

``checkpoints/ckpt-<epoch>.pt`` holds the shared state (the actor-critic, the optimisers) once and every
rank's own state (random generators, environments, the episodes in progress, the reward scaler) as
pickled bytes; the last ``keep`` of them are kept. ``pyt_save/model.pt`` and ``pyt_save/model<epoch>.pt``
hold the policy alone, for ``test_policy``. Rank 0 writes, atomically; a resume reads the latest
checkpoint on rank 0 and hands every rank its part.

Files are device-independent: tensors are written from host copies (a GPU run's too) and read with
``map_location="cpu"``; loading a state_dict copies it to wherever the module and optimisers are. So a
GPU run resumes on a CPU machine and the reverse; on the same device a resume stays exact (a GPU rank's
CUDA generator is saved with its other generators).
"""

from __future__ import annotations

import copy
import glob
import json
import os
import os.path as osp
import pickle
import random
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from spinppo.core.networks import MLPActorCritic
from spinppo.core.normalize import RewardScaler
from spinppo.core.rollout import RolloutWorker
from spinppo.envs.state import get_vector_env_state, set_vector_env_state
from spinppo.utils.errors import UserError
from spinppo.utils.logx import EpochLogger, atomic_torch_save, remove_stale_temp_files, save_model
from spinppo.utils.mpi_tools import COMM, broadcast, num_procs, proc_id

CHECKPOINT_FORMAT = "spinppo-checkpoint-v1"


def checkpoint_epochs(run_dir: str) -> list[int]:
    """Epochs that have a checkpoint in ``run_dir``, oldest first."""
    found = glob.glob(osp.join(run_dir, "checkpoints", "ckpt-*.pt"))
    return sorted(int(m[1]) for f in found if (m := re.fullmatch(r"ckpt-(\d+)\.pt", osp.basename(f))))


def read_checkpoint(run_dir: str) -> dict[str, Any]:
    """The latest checkpoint of a run (weights-only loading); a UserError when none is readable."""
    epochs = checkpoint_epochs(run_dir)
    if not epochs:
        raise UserError(f"{run_dir} has no checkpoint to resume from (checkpoints/ckpt-*.pt)")
    path = osp.join(run_dir, "checkpoints", f"ckpt-{epochs[-1]:06d}.pt")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        hint = f" (delete it to resume from epoch {epochs[-2]})" if len(epochs) > 1 else ""
        raise UserError(f"checkpoint {path} is damaged ({type(e).__name__}){hint}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a spinppo checkpoint")
    return payload


def initial_model_file(path: str) -> str:
    """The policy file ``--initialize_from PATH`` names: PATH itself when it is a file, else the run
    directory's ``pyt_save/model.pt``. A UserError when there is none. Rank 0 looks (other hosts need not
    share its disk) and every rank gets its answer."""
    found, error = None, None
    if proc_id() == 0:
        path = osp.expanduser(path)
        model = osp.join(path, "pyt_save", "model.pt")
        if osp.isfile(path) or osp.isfile(model):
            found = path if osp.isfile(path) else model
        else:
            error = (
                f"--initialize_from {path}: no policy there (a run directory with pyt_save/model.pt, or a "
                "pyt_save/model*.pt file)"
            )
    found, error = broadcast((found, error))
    if error:
        raise UserError(error)
    return found


def initialize_policy(ac: MLPActorCritic, path: str) -> str:
    """Load the weights and observation statistics saved at ``path`` (``initial_model_file``) into ``ac``;
    return the file used. A network of another shape is a UserError."""
    from spinppo.utils.logx import load_model_payload

    file = initial_model_file(path)
    payload, error = None, None
    if proc_id() == 0:
        try:
            payload = load_model_payload(file)
        except UserError as e:
            error = str(e)
    payload, error = broadcast((payload, error))
    if error:
        raise UserError(error)
    theirs = payload.get("ctor") or {}
    ours = json.loads(json.dumps(ac.ctor_spec))  # tuples as lists, as the file holds them
    # The same weights' shapes are not enough: another activation or normalisation is another function.
    differ = sorted(
        key
        for key in set(theirs) | set(ours)
        # (the initial log std and the update's sequence length are not part of the function)
        if key not in ("log_std_init", "sequence_length") and theirs.get(key) != ours.get(key)
    )
    named = {"activation", "layer_norm", "shared_trunk", "norm_obs", "encoder", "memory_size"}
    named |= {"conv_filters", "conv_activation", "pixel_scale"}
    if differ and set(differ) <= named:
        shown = ", ".join(f"{k} {theirs.get(k)!r} (this run: {ours.get(k)!r})" for k in differ)
        raise UserError(
            f"--initialize_from {file}: the saved network has {shown}: give the same options to start from it"
        )
    try:
        ac.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError):
        raise UserError(
            f"--initialize_from {file}: its network does not fit this run's (saved: hidden sizes "
            f"{theirs.get('hidden_sizes')}, observation {theirs.get('observation')}, action "
            f"{theirs.get('action')}): train from scratch or match its --hid and environment"
        ) from None
    return file


def on_host(value: Any) -> Any:
    """``value`` (a state_dict, or lists and dicts of them) with every tensor on the CPU. What is on the
    CPU already comes back as it is, the same objects, so a CPU run writes the bytes it always wrote; a
    dict that changes keeps its type and attributes (a state_dict's ``_metadata``)."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, (dict, list, tuple)):
        pairs = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
        moved = [(k, on_host(v)) for k, v in pairs]
        if all(new is old for (_, new), (_, old) in zip(moved, pairs, strict=True)):
            return value
        if isinstance(value, dict):
            out = copy.copy(value)
            out.update(moved)
            return out
        return type(value)(v for _, v in moved)
    return value


class Checkpointer:
    """Saves and restores one run's parts, all given here: ``logger`` (the run directory), ``ac``, the
    ``worker`` (environments, episodes in progress), the ``reward_scaler`` (or None), the ``optimizers``
    by name, and ``run_state`` (the run's counters, a dict the run owns: saved as it is and restored in
    place). ``keep``: how many checkpoints stay. ``parameter_manager``: a Unity run's curriculum
    (``envs.unity.params.EnvironmentParameterManager``, identical on all ranks), or None. ``alone``: A3C's
    rank 0, which saves without the other ranks (no collectives, no per-rank states)."""

    def __init__(
        self,
        logger: EpochLogger,
        ac: MLPActorCritic,
        worker: RolloutWorker,
        reward_scaler: RewardScaler | None,
        keep: int,
        optimizers: dict[str, torch.optim.Optimizer],
        run_state: dict[str, Any],
        parameter_manager: Any = None,
        alone: bool = False,
    ) -> None:
        self.logger, self.ac, self.worker, self.reward_scaler = logger, ac, worker, reward_scaler
        self.keep, self.optimizers, self.run_state = keep, optimizers, run_state
        self.parameter_manager, self.alone = parameter_manager, alone
        self.best_eval = float("-inf")  # the best EvalEpRet so far (its policy: pyt_save/model_best.pt)

    @property
    def run_dir(self) -> str:
        return self.logger.output_dir

    def _rank_state(self) -> dict[str, Any]:
        worker = self.worker
        device = self.ac.device
        cuda_rng = {"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}
        return {
            **cuda_rng,  # (only on a GPU: a CPU run's checkpoints hold what they always held)
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
            "envs": get_vector_env_state(worker.env),
            "obs": worker.obs,
            "ep_ret": worker.ep_ret,
            "ep_len": worker.ep_len,
            "memory": worker.memory,  # a recurrent policy's memory of the episodes in progress (or None)
            "reward_scaler": None if self.reward_scaler is None else self.reward_scaler.state_dict(),
            # (--norm_value only: other runs' checkpoints hold what they always held)
            **({} if worker.value_norm is None else {"value_norm": worker.value_norm.state_dict()}),
        }

    def save(self, epoch: int, elapsed: float) -> None:
        """Write ``checkpoints/ckpt-<epoch>.pt`` (every rank's state, gathered to rank 0) and the model.

        A collective: every rank calls it. A failed write is a UserError on every rank. With ``alone``
        (A3C's rank 0) only this rank calls it and the checkpoint holds no per-rank states.
        """
        states = [] if self.alone else COMM.gather(pickle.dumps(self._rank_state()), root=0)
        self._on_rank0(lambda: self._write(epoch, elapsed, states), f"save the checkpoint of epoch {epoch}")

    def _on_rank0(self, write: Callable[[], None], what: str) -> None:
        if not self.alone:
            self.logger.on_rank0(write, what)
            return
        try:
            write()
        except OSError as e:
            raise UserError(
                f"could not {what} in {self.run_dir} ({e.strerror or e}); the previous files are intact: "
                "free some disk space, then resume the run"
            ) from None

    def _write(self, epoch: int, elapsed: float, states: list[bytes]) -> None:
        out = self.run_dir
        payload = {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "elapsed": elapsed,
            "num_procs": num_procs(),
            "ctor": self.ac.ctor_spec,
            "model": on_host(self.ac.state_dict()),
            "optimizers": {k: on_host(o.state_dict()) for k, o in self.optimizers.items()},
            "lessons": None if self.parameter_manager is None else self.parameter_manager.state_dict(),
            "best_eval": self.best_eval,
            "run_state": self.run_state,  # the run's own counters (TotalEnvInteracts)
            # Pickled per-rank states (random generators, environments): read back only on resume.
            "ranks": [torch.frombuffer(bytearray(s), dtype=torch.uint8) for s in states],
        }
        atomic_torch_save(payload, osp.join(out, "checkpoints", f"ckpt-{epoch:06d}.pt"))
        # A curriculum's lessons go with the policy: test_policy replays it in the lessons it reached.
        extra = (
            None if self.parameter_manager is None else {"lessons": self.parameter_manager.lesson_numbers()}
        )
        save_model(self.ac, osp.join(out, "pyt_save", f"model{epoch}.pt"), extra)
        save_model(self.ac, osp.join(out, "pyt_save", "model.pt"), extra)
        for old in checkpoint_epochs(out)[: -self.keep]:
            os.unlink(osp.join(out, "checkpoints", f"ckpt-{old:06d}.pt"))
            if osp.exists(osp.join(out, "pyt_save", f"model{old}.pt")):
                os.unlink(osp.join(out, "pyt_save", f"model{old}.pt"))
        # A run killed while writing left a half-written temporary file; this run holds the lock.
        remove_stale_temp_files(out)

    def save_best(self, epoch: int, eval_return: float) -> None:
        """Keep the policy as ``pyt_save/model_best.pt``: its evaluation return beat every earlier one.
        Every rank records the new best (the checkpoint holds it); rank 0 writes the file."""
        self.best_eval = eval_return
        path = osp.join(self.run_dir, "pyt_save", "model_best.pt")
        extra = {"epoch": epoch, "eval_return": eval_return}
        self._on_rank0(lambda: save_model(self.ac, path, extra), f"save the best policy of epoch {epoch}")

    def load(self, reset_seed: int) -> tuple[int, float]:
        """Restore every part from the run's latest checkpoint; return (its epoch, elapsed seconds).

        A collective. Environments that cannot be snapshotted (Unity) start new episodes, reset with
        ``reset_seed + 1 + epoch``; so do all of a checkpoint without per-rank states (A3C's), whose random
        generators are seeded with ``reset_seed + 1 + epoch`` too.
        """
        payload, error = None, None
        if proc_id() == 0:
            try:
                payload = read_checkpoint(self.run_dir)
                if payload["num_procs"] != num_procs():
                    n = payload["num_procs"]
                    error = (
                        f"the run was made with {n} ranks; resume it with the same number "
                        f"(--cpu {n} or mpirun -np {n}), not {num_procs()}"
                    )
            except UserError as e:
                error = str(e)
        error = broadcast(error)
        if error:
            raise UserError(error)
        # Rank 0 read the file; every rank gets the shared parts and its own state from it.
        shared = broadcast(None if payload is None else {k: v for k, v in payload.items() if k != "ranks"})
        per_rank = broadcast(None if payload is None else bool(payload["ranks"]))
        if per_rank:
            mine = COMM.scatter(None if payload is None else [bytes(t.numpy()) for t in payload["ranks"]])
        try:
            self.ac.load_state_dict(shared["model"])
            for name, opt in self.optimizers.items():
                opt.load_state_dict(shared["optimizers"][name])
        except (KeyError, RuntimeError, ValueError) as e:
            raise UserError(
                f"the checkpoint does not fit this run ({type(e).__name__}): were flags changed?"
            ) from None
        self.best_eval = float(shared.get("best_eval", float("-inf")))
        # In place: the run, and whoever reads its counters, hold this dict.
        saved_state = dict(shared.get("run_state") or {})
        self.run_state.clear()
        self.run_state.update(saved_state)
        if self.parameter_manager is not None and shared.get("lessons") is not None:
            # Before the environments reset below: a Unity reset sends the current lessons' values.
            self.parameter_manager.load_state_dict(shared["lessons"])
        if not per_rank:
            self._fresh_start(reset_seed + 1 + int(shared["epoch"]))
            return int(shared["epoch"]), float(shared["elapsed"])
        state = pickle.loads(mine)
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.ac.device.type == "cuda":  # (a GPU run resumed on a GPU)
            torch.cuda.set_rng_state(state["cuda_rng"], self.ac.device)
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        worker = self.worker
        if state["envs"] is not None:
            set_vector_env_state(worker.env, state["envs"])
            worker.obs = state["obs"]
            worker.ep_ret, worker.ep_len = state["ep_ret"], state["ep_len"]
            if worker.memory is not None:
                worker.memory = state["memory"]
        else:  # an environment we cannot snapshot (Unity): start fresh episodes
            worker.obs = worker.layout.batch(worker.env.reset(seed=reset_seed + 1 + shared["epoch"])[0])
            if worker.memory is not None:
                worker.memory[:] = 0.0  # new episodes, empty memories
        if self.reward_scaler is not None and state["reward_scaler"] is not None:
            self.reward_scaler.load_state_dict(state["reward_scaler"])
        if worker.value_norm is not None and state.get("value_norm") is not None:
            worker.value_norm.load_state_dict(state["value_norm"])
        return int(shared["epoch"]), float(shared["elapsed"])

    def _fresh_start(self, seed: int) -> None:
        """New episodes and generators seeded with ``seed`` (no per-rank state was saved)."""
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        worker = self.worker
        worker.restart_episodes(worker.env.reset(seed=seed)[0])
