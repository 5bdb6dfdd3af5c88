"""What PPO, VPG and A2C share: building the parts, the epoch loop, logging and saving.

An algorithm is a function that builds an ``OnPolicyRun`` and hands ``train`` its update rule::

    run = OnPolicyRun(env_fn, ..., config=locals())
    def update(data) -> dict: ...            # the algorithm's loss and optimisation, returns stats to log
    run.train(update, epochs, log_keys=[...])

Each epoch, on every rank: collect ``steps_per_epoch / num_procs`` steps -> update (gradients averaged over
ranks) -> fold the epoch's observations into the normalisation statistics -> log -> save.

Checkpoints (``checkpoints/ckpt-<epoch>.pt``, the last ``keep_checkpoints`` kept) hold the whole state of
every rank: model, optimisers, normalisation statistics, random generators, environments and the episodes
in progress. Resuming from one (``logger_kwargs=dict(output_dir=RUN, resume=True)``) continues exactly as
the run would have gone on.
"""

from __future__ import annotations

import glob
import math
import os
import os.path as osp
import pickle
import random
import re
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from spinppo.core.buffer import GAEBuffer
from spinppo.core.networks import MLPActorCritic
from spinppo.core.normalize import RewardScaler
from spinppo.core.rollout import RolloutWorker
from spinppo.envs.registry import make_vector_env
from spinppo.envs.state import get_vector_env_state, set_vector_env_state
from spinppo.utils.errors import TrainingDiverged, TrainingStopped, UserError
from spinppo.utils.logx import EpochLogger, atomic_torch_save, remove_stale_temp_files, save_model
from spinppo.utils.mpi_pytorch import setup_pytorch_for_mpi, sync_params
from spinppo.utils.mpi_tools import COMM, allgather, broadcast, mpi_max, mpi_time, num_procs, proc_id

CHECKPOINT_FORMAT = "spinppo-checkpoint-v1"


def check_positive(**values: float) -> None:
    """A UserError naming the first value that is not a positive (finite) number."""
    for name, value in values.items():
        if value is None or not value > 0:
            raise UserError(f"--{name} must be positive, not {value}")
        if not math.isfinite(value):
            raise UserError(f"--{name} must be a finite number, not {value}")


def check_nonnegative(**values: float) -> None:
    """A UserError naming the first value that is negative or not a finite number."""
    for name, value in values.items():
        if value is None or not value >= 0 or not math.isfinite(value):
            raise UserError(f"--{name} must be zero or a positive finite number, not {value}")


def check_config(config: dict[str, Any]) -> None:
    """Flags every algorithm shares, checked before the run directory is touched (with --overwrite the
    old run would already be gone): every number finite, the saving flags positive."""
    flat = {**config, **(config.get("ac_kwargs") or {})}
    for name, value in flat.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--{name} must be a finite number, not {value}")
    check_positive(**{k: config[k] for k in ("epochs", "save_freq", "keep_checkpoints") if k in config})


class OnPolicyRun:
    """The parts of one training run on one rank: environments, actor-critic, buffer, worker, logger.

    ``steps_per_epoch`` counts environment steps over all ranks and environments; each rank collects
    ``steps_per_epoch / num_procs`` of them, ``rollouts_per_epoch`` times an update's worth.
    """

    def __init__(
        self,
        env_fn: Callable[[], Any],
        actor_critic: type[MLPActorCritic] = MLPActorCritic,
        ac_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
        steps_per_epoch: int = 4000,
        rollouts_per_epoch: int = 1,
        num_envs: int = 1,
        gamma: float = 0.99,
        lam: float = 0.95,
        norm_reward: bool = True,
        norm_adv: bool = True,
        logger_kwargs: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        algo: str = "ppo",
    ) -> None:
        check_positive(steps_per_epoch=steps_per_epoch, num_envs=num_envs)
        if config is not None:
            check_config(config)
        if not 0 < gamma <= 1 or not 0 <= lam <= 1:
            raise UserError(f"--gamma must be in (0, 1] and --lam in [0, 1], not {gamma} and {lam}")
        setup_pytorch_for_mpi()
        self.algo = algo
        self.resume = bool((logger_kwargs or {}).get("resume"))
        # Each rank explores differently; sync_params below makes the networks identical anyway.
        self.seed = seed + 10000 * proc_id()
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        random.seed(self.seed)

        self.env = make_vector_env(env_fn, num_envs, self.seed)
        self.num_envs = self.env.num_envs
        local_steps, rem = divmod(steps_per_epoch, num_procs())
        per_env, rem_env = divmod(local_steps, self.num_envs * rollouts_per_epoch)
        if rem or rem_env or per_env < 1:
            unit = num_procs() * self.num_envs * rollouts_per_epoch
            raise UserError(
                f"--steps_per_epoch {steps_per_epoch} must be a positive multiple of {unit} "
                f"({num_procs()} ranks x {self.num_envs} environments"
                + (f" x {rollouts_per_epoch} rollouts" if rollouts_per_epoch > 1 else "")
                + f"), e.g. {max(1, round(steps_per_epoch / unit)) * unit}"
            )
        self.steps_per_epoch = steps_per_epoch
        self.rollouts_per_epoch = rollouts_per_epoch
        self.norm_adv = norm_adv
        self.rollout_steps = per_env  # steps per environment in one rollout

        obs_space, act_space = self.env.single_observation_space, self.env.single_action_space
        self.ac = actor_critic(obs_space, act_space, **(ac_kwargs or {}))
        # Only now, with the input checked, make the run directory.
        self.logger = EpochLogger(**(logger_kwargs or {}))
        # A resumed run keeps the config.json it was made with (train() records a new --epochs there once
        # the checkpoint has loaded): a resume that is refused must leave the run as it was.
        if config is not None and not self.resume:
            kwargs = {k: v for k, v in (config.get("logger_kwargs") or {}).items() if k != "resume"}
            self.logger.save_config(
                {**config, "logger_kwargs": kwargs, "num_procs": num_procs(), "algo": algo}
            )
        sync_params(self.ac)
        self.buf = GAEBuffer(
            obs_space.shape[0],
            self.ac.act_shape,
            self.num_envs,
            self.rollout_steps,
            gamma,
            lam,
            discrete=self.ac.discrete,
        )
        self.reward_scaler = RewardScaler(self.num_envs, gamma) if norm_reward else None
        self.worker = RolloutWorker(self.env, self.ac, self.seed, self.reward_scaler)
        if num_procs() > 1:  # so that a launcher's "process PID died" can be traced to its rank
            ranks = allgather(f"{proc_id()}={os.getpid()}@{socket.gethostname()}")
            self.logger.log("MPI ranks (rank=pid@host): " + " ".join(ranks))
        n_params = sum(p.numel() for p in self.ac.parameters())
        self.logger.log(
            f"{num_procs()} rank(s) x {self.num_envs} env(s), {self.rollout_steps} steps each per rollout; "
            f"actor-critic with {n_params} parameters"
        )

    def train(
        self,
        update: Callable[[dict[str, torch.Tensor]], dict[str, float]],
        epochs: int,
        log_keys: list[str],
        save_freq: int = 10,
        on_epoch_start: Callable[[int], None] | None = None,
        optimizers: dict[str, torch.optim.Optimizer] | None = None,
        keep_checkpoints: int = 5,
    ) -> MLPActorCritic:
        """Run ``epochs`` epochs of collect -> ``update(data)`` -> log -> save; return the actor-critic.

        ``update`` returns a dict of statistics; the keys named in ``log_keys`` become table columns
        (averaged over the epoch's updates and over ranks). ``optimizers`` are saved in checkpoints.
        """
        check_positive(epochs=epochs, save_freq=save_freq, keep_checkpoints=keep_checkpoints)
        self.optimizers = optimizers or {}
        self.keep_checkpoints = keep_checkpoints
        logger, worker, buf, ac = self.logger, self.worker, self.buf, self.ac
        first_epoch, elapsed = 0, 0.0
        if self.resume:
            first_epoch, elapsed = self.load_checkpoint()
            if epochs > first_epoch:
                self.logger.update_config(epochs=epochs)
            else:
                self.logger.log(
                    f"Nothing to train: the run has done {first_epoch} epochs; pass --epochs N with N > "
                    f"{first_epoch} to train further"
                )
        start = time.time() - elapsed
        stop_signal = self._install_signal_handlers()
        try:
            for epoch in range(first_epoch, epochs):
                if on_epoch_start is not None:
                    on_epoch_start(epoch)
                epoch_start = time.perf_counter()
                env_t0, inf_t0, mpi_t0 = worker.env_time, worker.inference_time, mpi_time()
                update_time = 0.0
                for _ in range(self.rollouts_per_epoch):
                    worker.collect(buf, logger)
                    data = buf.get(normalize_adv=self.norm_adv)
                    t0 = time.perf_counter()
                    stats = update(data)
                    update_time += time.perf_counter() - t0
                    # Bitwise-identical hosts stay identical anyway; this one Bcast keeps hosts whose CPU
                    # kernels round differently from drifting apart.
                    sync_params(ac)
                    self._check_finite(stats, epoch)
                    logger.store(**stats)
                    # Fold this rollout's observations (all ranks) into the statistics used from now on.
                    ac.obs_rms.update(buf.obs.reshape(-1, buf.obs.shape[-1]))
                    if self.reward_scaler is not None:
                        self.reward_scaler.sync()
                epoch_time = time.perf_counter() - epoch_start
                epoch_mpi_time = mpi_time() - mpi_t0

                logger.log_tabular("Epoch", epoch)
                logger.log_tabular("EpRet", with_min_and_max=True)
                logger.log_tabular("EpLen", average_only=True)
                logger.log_tabular("VVals", with_min_and_max=True)
                logger.log_tabular("TotalEnvInteracts", (epoch + 1) * self.steps_per_epoch)
                for key in log_keys:
                    logger.log_tabular(key, average_only=True)
                logger.log_tabular("StepsPerSec", self.steps_per_epoch / epoch_time)
                logger.log_tabular("EnvTime", worker.env_time - env_t0)
                logger.log_tabular("InferenceTime", worker.inference_time - inf_t0)
                logger.log_tabular("UpdateTime", update_time)
                logger.log_tabular("MPITime", epoch_mpi_time)
                logger.log_tabular("Time", time.time() - start)
                logger.dump_tabular(step=(epoch + 1) * self.steps_per_epoch)

                # A signal on any rank stops every rank here, at the same epoch, with a checkpoint.
                # Every rank learns the signal (the highest number when ranks got different ones).
                stop_signum = int(mpi_max(stop_signal[0] if stop_signal else 0))
                if stop_signum or (epoch + 1) % save_freq == 0 or epoch == epochs - 1:
                    self.save_checkpoint(epoch, time.time() - start)
                if stop_signum:
                    raise TrainingStopped(
                        f"stopped by {signal.Signals(stop_signum).name} after epoch {epoch}; checkpoint "
                        f"saved. Resume with: python -m spinppo.run {self.algo} --resume {self.output_dir}",
                        signum=stop_signum,
                    )
        finally:
            self._restore_signal_handlers()
            self.env.close()
            logger.close()
        return ac

    # ------------------------------------------------------------------------------- failure handling

    def _install_signal_handlers(self) -> list[int]:
        received: list[int] = []

        def handler(signum: int, frame: Any) -> None:
            if received and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now
            received.append(signum)
            if proc_id() == 0:
                again = " (Ctrl-C again: stop now, without a checkpoint)" if signum == signal.SIGINT else ""
                name = signal.Signals(signum).name
                print(f"\n{name} received: stopping after this epoch{again}", flush=True)

        self._old_handlers = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        return received

    def _restore_signal_handlers(self) -> None:
        for signum, old in getattr(self, "_old_handlers", {}).items():
            signal.signal(signum, old)

    def _check_finite(self, stats: dict[str, float], epoch: int) -> None:
        # Parameters are identical on all ranks, so every rank reaches the same verdict.
        bad = [k for k, v in stats.items() if not np.isfinite(v)]
        bad += [n for n, p in self.ac.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            kept = (
                f"the last good checkpoint in {self.output_dir}/checkpoints is kept"
                if checkpoint_epochs(self.output_dir)
                else "no checkpoint had been saved yet"
            )
            raise TrainingDiverged(
                f"non-finite {', '.join(bad[:4])} in epoch {epoch}: training stopped; {kept} (try a "
                "smaller --lr, and check that the environment's observations and rewards are finite)"
            )

    # ------------------------------------------------------------------------------------ checkpoints

    def _rank_state(self) -> dict[str, Any]:
        worker = self.worker
        return {
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
            "envs": get_vector_env_state(self.env),
            "obs": worker.obs,
            "ep_ret": worker.ep_ret,
            "ep_len": worker.ep_len,
            "reward_scaler": None if self.reward_scaler is None else self.reward_scaler.state_dict(),
        }

    def save_checkpoint(self, epoch: int, elapsed: float) -> None:
        """Write ``checkpoints/ckpt-<epoch>.pt`` (every rank's state, gathered to rank 0) and the model."""
        states = COMM.gather(pickle.dumps(self._rank_state()), root=0)
        out = self.output_dir

        def write() -> None:
            payload = {
                "format": CHECKPOINT_FORMAT,
                "epoch": epoch,
                "elapsed": elapsed,
                "num_procs": num_procs(),
                "ctor": self.ac.ctor_spec,
                "model": self.ac.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                # Pickled per-rank states (random generators, environments): read back only on resume.
                "ranks": [torch.frombuffer(bytearray(s), dtype=torch.uint8) for s in states],
            }
            atomic_torch_save(payload, osp.join(out, "checkpoints", f"ckpt-{epoch:06d}.pt"))
            save_model(self.ac, osp.join(out, "pyt_save", f"model{epoch}.pt"))
            save_model(self.ac, osp.join(out, "pyt_save", "model.pt"))
            for old in checkpoint_epochs(out)[: -self.keep_checkpoints]:
                os.unlink(osp.join(out, "checkpoints", f"ckpt-{old:06d}.pt"))
                if osp.exists(osp.join(out, "pyt_save", f"model{old}.pt")):
                    os.unlink(osp.join(out, "pyt_save", f"model{old}.pt"))
            # A run killed while writing left a half-written temporary file; this run holds the lock.
            remove_stale_temp_files(out)

        self.logger.on_rank0(write, f"save the checkpoint of epoch {epoch}")

    def load_checkpoint(self) -> tuple[int, float]:
        """Restore every part from the run's latest checkpoint; return (first epoch to run, elapsed time)."""
        payload, error = None, None
        if proc_id() == 0:
            try:
                payload = read_checkpoint(self.output_dir)
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
        mine = COMM.scatter(None if payload is None else [bytes(t.numpy()) for t in payload["ranks"]])
        try:
            self.ac.load_state_dict(shared["model"])
            for name, opt in self.optimizers.items():
                opt.load_state_dict(shared["optimizers"][name])
        except (KeyError, RuntimeError, ValueError) as e:
            raise UserError(
                f"the checkpoint does not fit this run ({type(e).__name__}): were flags changed?"
            ) from None
        state = pickle.loads(mine)
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        if state["envs"] is not None:
            set_vector_env_state(self.env, state["envs"])
            self.worker.obs = state["obs"]
            self.worker.ep_ret, self.worker.ep_len = state["ep_ret"], state["ep_len"]
        else:  # an environment we cannot snapshot (Unity): start fresh episodes
            self.worker.obs = np.asarray(
                self.env.reset(seed=self.seed + 1 + shared["epoch"])[0], dtype=np.float32
            )
        if self.reward_scaler is not None and state["reward_scaler"] is not None:
            self.reward_scaler.load_state_dict(state["reward_scaler"])
        epoch = shared["epoch"]
        self.logger.restore_progress(epoch, step=(epoch + 1) * self.steps_per_epoch)
        self.logger.log(f"Resumed from the checkpoint of epoch {epoch}")
        return epoch + 1, float(shared["elapsed"])

    @property
    def output_dir(self) -> str:
        """The run directory."""
        return self.logger.output_dir


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
