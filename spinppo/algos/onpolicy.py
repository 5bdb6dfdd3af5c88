"""The steps PPO, VPG and A2C share, with names, so that each algorithm file shows its own epoch loop::

    with OnPolicyRun(env_fn, ..., config=config, algo="ppo") as run:     # environments, actor-critic, logger
        ac = run.ac
        optimizer = ...
        for epoch in run.epochs(epochs, save_freq, {"optimizer": optimizer}):  # resumes; stops on a signal
            batch = run.collect()          # steps_per_epoch / num_procs steps on this rank, GAE
            stats = update(batch)          # the algorithm's loss and optimisation (gradients averaged)
            run.after_update(stats)        # sync params, finiteness check, observation and reward stats
            run.end_epoch(epoch, LOG_KEYS) # log the row, checkpoint (every save_freq), stop on a signal

``OnPolicyRun.__init__`` builds the run's parts, each by a function or class of its own below
(``seed_rank``, ``Evaluation``, ``open_logger``, ``make_buffer``, ``PreemptibleRollouts``, ``curriculum``,
``StopSignals``, ``log_start``); ``epochs`` builds the ``Checkpointer`` once the optimizers exist. What
one epoch's steps hand on to later ones is its ``EpochState``; the session's fixed facts (epochs, save
frequency, start times) are its ``Schedule``. A3C (``asynchronous.AsyncTraining``) writes its rows with the
same ``log_row_start``/``log_row_end`` and ends its epochs with the same ``checkpoint_and_report``,
``stopped_by_signal`` and ``divergence_message``.

A run's flags are checked by ``check_common_flags`` (and each algorithm's own ``check_flags``) before
anything is built: with --overwrite the old run would already be gone.
"""

from __future__ import annotations

import math
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import torch

from spinppo.algos.checkpoint import Checkpointer, checkpoint_epochs, initial_model_file, initialize_policy
from spinppo.core.buffer import Batch, GAEBuffer
from spinppo.core.encoders import ObsLayout
from spinppo.core.evaluation import Evaluator
from spinppo.core.networks import MLPActorCritic, check_ac_kwargs
from spinppo.core.normalize import RewardScaler, ValueNormalizer
from spinppo.core.rollout import RolloutWorker
from spinppo.envs.registry import make_vector_env
from spinppo.utils.device import bf16_is_native, check_precision, rank_device, requested_device, use_device
from spinppo.utils.errors import TrainingDiverged, TrainingStopped, UserError
from spinppo.utils.logx import EpochLogger
from spinppo.utils.mpi_pytorch import setup_pytorch_for_mpi, sync_params
from spinppo.utils.mpi_tools import (
    Preemption,
    allgather,
    mpi_max,
    mpi_sum,
    mpi_time,
    num_procs,
    oversubscription_warning,
    proc_id,
)

_warned: set[str] = set()  # warnings already printed by this process

# Flags every on-policy algorithm has that must be positive numbers.
COMMON_POSITIVE = ("epochs", "steps_per_epoch", "num_envs", "save_freq", "keep_checkpoints")


def check_common_flags(
    config: dict[str, Any], positive: tuple[str, ...] = (), nonnegative: tuple[str, ...] = ()
) -> None:
    """A UserError for the first bad flag: every number (``ac_kwargs`` included) finite, the shared
    counts and the algorithm's ``positive`` flags above zero, its ``nonnegative`` ones at least zero,
    the network's options buildable (``--hid``, ``--act``), gamma in (0, 1] and lam in [0, 1].

    ``config`` maps flag names to values (an algorithm's ``locals()``, or a grid variant).
    """
    for name in positive + tuple(k for k in COMMON_POSITIVE if k in config):
        value = config[name]
        if value is None or not value > 0:
            raise UserError(f"--{name} must be positive, not {value}")
    for name in nonnegative:
        value = config[name]
        if value is None or not value >= 0:
            raise UserError(f"--{name} must be zero or a positive finite number, not {value}")
    for name, value in {**config, **(config.get("ac_kwargs") or {})}.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--{name} must be a finite number, not {value}")
    if config.get("actor_critic", MLPActorCritic) is MLPActorCritic:
        # An Atari game's frames are known before the game is made: the encoder is checked against them.
        image_shape = getattr(config.get("env_fn"), "image_shape", None)
        check_ac_kwargs(**(config.get("ac_kwargs") or {}), image_shape=image_shape)
    # A gymnasium environment is made num_envs times (a Unity build or a Python env_fn may bring its own
    # count: OnPolicyRun checks that once the environment exists).
    if getattr(getattr(config.get("env_fn"), "choice", None), "kind", None) in ("gym", "atari"):
        rollout_length(config["steps_per_epoch"], config["num_envs"])
    check_precision(config.get("precision", "fp32"))
    if config.get("eval_freq", 0) < 0 or config.get("eval_episodes", 1) < 1:
        raise UserError(
            f"--eval_freq must be 0 (off) or a number of epochs and --eval_episodes at least 1, not "
            f"{config.get('eval_freq')} and {config.get('eval_episodes')}"
        )
    if config.get("stop_at_return") is not None and not config.get("eval_freq"):
        raise UserError("--stop_at_return needs evaluation: give --eval_freq N (every N epochs)")
    if (
        config.get("eval_freq")
        and getattr(getattr(config.get("env_fn"), "choice", None), "kind", None) == "unity"
    ):
        raise UserError(
            "--eval_freq needs a gymnasium environment (a Unity build cannot be copied for evaluation): "
            "replay the run with test_policy instead"
        )
    preempt = config.get("preempt")
    if preempt is not None and not 0 < preempt <= 1:
        raise UserError(
            f"--preempt must be a fraction of the ranks in (0, 1], such as 0.6 (DD-PPO's), or None (off), "
            f"not {preempt}"
        )
    if config.get("time_horizon", 0) < 0:
        raise UserError(f"--time_horizon must be 0 (off) or a number of steps, not {config['time_horizon']}")
    if config.get("initialize_from"):
        initial_model_file(config["initialize_from"])  # a UserError when there is no policy there
    gamma, lam = config.get("gamma", 0.99), config.get("lam", 0.95)
    if not 0 < gamma <= 1 or not 0 <= lam <= 1:
        raise UserError(f"--gamma must be in (0, 1] and --lam in [0, 1], not {gamma} and {lam}")


def _clock(seconds: float) -> str:
    """h:mm:ss."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def rollout_length(steps_per_epoch: int, num_envs: int, rollouts_per_epoch: int = 1) -> int:
    """Steps of each environment in one rollout, when ``steps_per_epoch`` divides evenly among the ranks,
    their ``num_envs`` environments and the epoch's rollouts; else a UserError with a value that does."""
    unit = num_procs() * num_envs * rollouts_per_epoch
    if steps_per_epoch % unit or steps_per_epoch < unit:
        raise UserError(
            f"--steps_per_epoch {steps_per_epoch} must be a positive multiple of {unit} "
            f"({num_procs()} ranks x {num_envs} environments"
            + (f" x {rollouts_per_epoch} rollouts" if rollouts_per_epoch > 1 else "")
            + f"), e.g. {max(1, round(steps_per_epoch / unit)) * unit}"
        )
    return steps_per_epoch // unit


TRAIN_RETURN_WINDOW = 100  # episodes, as RLlib's metrics_num_episodes_for_smoothing


def train_return_reached(run_state: dict[str, Any], returns: list[float], threshold: float) -> str | None:
    """RLlib's ``stop: episode_reward_mean``: add this epoch's training ``returns`` (every rank's, in rank
    order) to the window of the last 100 episodes kept in ``run_state["train_returns"]`` (so that it is
    checkpointed and a resumed run decides as the uninterrupted one); the line that ends the run once the
    window's mean reaches ``threshold``, else None."""
    window = run_state.setdefault("train_returns", [])
    window.extend(float(r) for r in returns)
    del window[:-TRAIN_RETURN_WINDOW]
    if not window or float(np.mean(window)) < threshold:
        return None
    return (
        f"Mean return of the last {len(window)} training episodes, {float(np.mean(window)):.4g}, reached "
        f"--stop_at_train_return {threshold:g}: stopped with a checkpoint"
    )


def eval_return_reason(epoch: int, stop_at_return: float) -> str:
    """The line that ends a run stopped by --stop_at_return."""
    return (
        f"Evaluation return reached --stop_at_return {stop_at_return:g} after epoch {epoch}: stopped with "
        "a checkpoint"
    )


# ------------------------------------------------------------------ the loop's schedule and epoch's state


@dataclass(frozen=True, slots=True)
class Schedule:
    """The epochs of this session, fixed when they start (``OnPolicyRun.start``): ``epochs`` in all,
    a checkpoint every ``save_freq``, the first one this session runs (after a resume, the one after the
    checkpoint's), and the wall-clock times the run (earlier sessions included) and this session began."""

    epochs: int
    save_freq: int
    first_epoch: int
    start_time: float
    session_start: float

    def is_last(self, epoch: int) -> bool:
        """Whether ``epoch`` is the run's last (counting from 0)."""
        return epoch == self.epochs - 1

    def elapsed(self) -> float:
        """Seconds the run has taken, earlier sessions included."""
        return time.time() - self.start_time

    def print_progress(self, epoch: int, stopped: str | None = None) -> None:
        """Rank 0's line after each epoch's row: "Epoch k of N: h:mm:ss elapsed, about h:mm:ss left" (left
        estimated from this session's epochs), and ``stopped``, the line that says why the run ends
        early."""
        now = time.time()
        per_epoch = (now - self.session_start) / (epoch + 1 - self.first_epoch)
        left = 0.0 if stopped is not None else per_epoch * (self.epochs - epoch - 1)
        print(
            f"Epoch {epoch + 1} of {self.epochs}: {_clock(now - self.start_time)} elapsed, about "
            f"{_clock(left)} left",
            flush=True,
        )
        if stopped is not None:
            print(stopped, flush=True)


@dataclass(slots=True)
class EpochState:
    """What one epoch's steps hand on to its later steps, in one place: made when the epoch begins
    (``begin``: the worker's and MPI's clocks then), added to by ``collect`` and ``after_update`` (steps
    collected, update time), stopped by ``end`` when its row begins; ``stop``: why the epochs end after
    this one (a stop reached), None to go on."""

    epoch: int
    started: float  # time.perf_counter() at the epoch's start
    env_time_start: float  # the worker's clocks at the epoch's start
    inference_time_start: float
    mpi_time_start: float
    steps: int = 0  # environment steps collected (this rank's; A3C's rank 0: every rank's)
    update_time: float = 0.0
    update_started: float = 0.0  # when the update in progress began (collect -> after_update)
    seconds: float = 0.0  # the epoch's wall time and MPI time, up to the start of its row (end())
    mpi_seconds: float = 0.0
    stop: str | None = None

    @classmethod
    def begin(cls, epoch: int, worker: RolloutWorker, mpi_seconds: float, **more: Any) -> EpochState:
        """A new epoch's state; ``mpi_seconds``: the MPI clock now; ``more``: a subclass's fields."""
        return cls(epoch, time.perf_counter(), worker.env_time, worker.inference_time, mpi_seconds, **more)

    def end(self, mpi_seconds: float) -> None:
        """Stop the epoch's clocks (``mpi_seconds``: the MPI clock now): its row begins."""
        self.seconds = time.perf_counter() - self.started
        self.mpi_seconds = mpi_seconds - self.mpi_time_start


# ------------------------------------------------- the row and the messages (the synchronous loop's, A3C's)


def log_row_start(logger: EpochLogger, epoch: int, total_steps: int) -> None:
    """The first columns of an epoch's row: Epoch, EpRet (with min and max), EpLen, VVals (with min and
    max), TotalEnvInteracts (``total_steps``)."""
    logger.log_tabular("Epoch", epoch)
    logger.log_tabular("EpRet", with_min_and_max=True)
    logger.log_tabular("EpLen", average_only=True)
    logger.log_tabular("VVals", with_min_and_max=True)
    logger.log_tabular("TotalEnvInteracts", total_steps)


def log_row_end(
    logger: EpochLogger, state: EpochState, steps: int, worker: RolloutWorker, start_time: float, step: int
) -> None:
    """The last columns of an epoch's row, its timings (StepsPerSec: ``steps`` over the epoch's seconds;
    EnvTime, InferenceTime, UpdateTime, MPITime; Time since ``start_time``); then write the row, at
    TensorBoard step ``step``."""
    logger.log_tabular("StepsPerSec", steps / state.seconds)
    logger.log_tabular("EnvTime", worker.env_time - state.env_time_start)
    logger.log_tabular("InferenceTime", worker.inference_time - state.inference_time_start)
    logger.log_tabular("UpdateTime", state.update_time)
    logger.log_tabular("MPITime", state.mpi_seconds)
    logger.log_tabular("Time", time.time() - start_time)
    logger.dump_tabular(step=step)


def checkpoint_and_report(
    schedule: Schedule, checkpointer: Checkpointer, epoch: int, signum: int, stopped: str | None
) -> None:
    """After an epoch's row: a checkpoint every ``save_freq`` epochs, at the last, after a signal
    (``signum``, 0 for none) and when the run stops early (``stopped``: why); then rank 0's progress
    line. Every rank of a synchronous run calls it (the checkpoint is a collective); A3C's rank 0 alone."""
    if signum or (epoch + 1) % schedule.save_freq == 0 or schedule.is_last(epoch) or stopped:
        checkpointer.save(epoch, schedule.elapsed())
    if proc_id() == 0:
        schedule.print_progress(epoch, stopped)


def stopped_by_signal(signum: int, epoch: int, algo: str, run_dir: str) -> TrainingStopped:
    """The error a run stopped by a signal raises on every rank, with the command that resumes it."""
    return TrainingStopped(
        f"stopped by {signal.Signals(signum).name} after epoch {epoch}; checkpoint saved. Resume with: "
        f"python -m spinppo.run {algo} --resume {run_dir}",
        signum=signum,
    )


def divergence_message(what: str, epoch: int, run_dir: str) -> str:
    """The message of a run stopped by a non-finite update: ``what`` went non-finite in ``epoch``, which
    checkpoint is kept, and what to try."""
    kept = (
        f"the last good checkpoint in {run_dir}/checkpoints is kept"
        if checkpoint_epochs(run_dir)
        else "no checkpoint had been saved yet"
    )
    return (
        f"{what} in epoch {epoch}: training stopped; {kept} (try a smaller --lr, and check that the "
        "environment's observations and rewards are finite)"
    )


# ------------------------------------------------------------------------------------ the run's parts


def seed_rank(seed: int) -> int:
    """Seed torch, numpy and random with this rank's seed, ``seed + 10000 * rank``, and return it: each
    rank explores differently (sync_params makes the networks identical anyway)."""
    rank_seed = seed + 10000 * proc_id()
    torch.manual_seed(rank_seed)
    np.random.seed(rank_seed)
    random.seed(rank_seed)
    return rank_seed


def open_logger(
    logger_kwargs: dict[str, Any] | None, config: dict[str, Any] | None, env: Any, algo: str, resume: bool
) -> EpochLogger:
    """The run's logger (it makes the run directory) with the run's ``config`` saved as config.json
    (``num_procs``, ``algo`` and a Unity behavior's ``observation_shapes`` added). A resumed run keeps the
    config.json it was made with (``restore`` records a new --epochs there once the checkpoint has
    loaded): a resume that is refused must leave the run as it was."""
    logger = EpochLogger(**(logger_kwargs or {}))
    if config is not None and not resume:
        kwargs = {k: v for k, v in (config.get("logger_kwargs") or {}).items() if k != "resume"}
        saved = {**config, "logger_kwargs": kwargs, "num_procs": num_procs(), "algo": algo}
        if hasattr(env, "observation_shapes"):  # a Unity behavior's sensors, for export --onnx
            saved["observation_shapes"] = [list(shape) for shape in env.observation_shapes]
        logger.save_config(saved)
    return logger


def make_buffer(
    env: Any, ac: MLPActorCritic, steps: int, gamma: float, lam: float, time_horizon: int
) -> GAEBuffer:
    """The rollout buffer for ``steps`` steps of each of ``env``'s environments. With memory, a
    --sequence_length that does not divide the rollout pads each environment's last sequence: the losses
    leave the padded steps out."""
    return GAEBuffer(
        ObsLayout.from_space(env.single_observation_space),  # vectors as float32, images as they come (uint8)
        ac.act_shape,
        env.num_envs,
        steps,
        gamma,
        lam,
        discrete=ac.discrete,
        time_horizon=time_horizon,
        memory_size=getattr(ac, "memory_size", 0),
        sequence_length=getattr(ac, "sequence_length", 1),
    )


def rollout_vectors(buf: GAEBuffer) -> np.ndarray | None:
    """The vector part of the observations of the rollout in ``buf`` (its filled steps: fewer than the
    buffer's after a preemption), for the observation statistics; None when the observations have no
    vectors (only vectors have running statistics)."""
    layout, filled = buf.layout, buf.filled
    if not layout.vector_dim:
        return None
    obs = buf.obs[:filled] if layout.flat else layout.take(buf.obs, slice(0, filled))
    return layout.vectors(obs)


class Evaluation:
    """Evaluation during training, on environments of its own: every ``freq`` epochs and at the last,
    ``episodes`` episodes of ``ac`` (split over the ranks, or all on this one when ``alone``, A3C's rank
    0), seeded far from the training ones and alike at every evaluation; their mean is the row's
    ``EvalEpRet``/``EvalEpLen`` (NaN in the other rows), the best policy by it is kept in
    ``pyt_save/model_best.pt``, and reaching ``stop_at_return`` ends the run. ``deterministic``: the
    policy's deterministic actions; False: sampled ones, from generators of the evaluation's own, seeded
    by the epoch (the training's are left alone, and a rerun or resume samples the same)."""

    def __init__(
        self,
        env_fn: Callable[[], Any],
        ac: MLPActorCritic,
        freq: int,
        episodes: int,
        seed: int,
        stop_at_return: float | None,
        alone: bool = False,
        deterministic: bool = True,
    ) -> None:
        self.evaluator = Evaluator(
            env_fn, ac, episodes, seed + 1_000_000, alone=alone, deterministic=deterministic
        )
        self.freq, self.stop_at_return = freq, stop_at_return

    def log(self, epoch: int, last: bool, logger: EpochLogger, checkpointer: Checkpointer) -> str | None:
        """The row's evaluation columns for ``epoch`` (``last``: the run's last epoch), playing the episodes
        when due; the line that ends the run when their return reached ``stop_at_return``, else None.
        A collective unless ``alone``; every rank reaches the same verdict."""
        due = (epoch + 1) % self.freq == 0 or last
        ret = length = float("nan")
        if due:
            returns, lengths = self.evaluator.evaluate(draw=epoch)
            ret, length = float(np.mean(returns)), float(np.mean(lengths))
            if ret > checkpointer.best_eval:
                checkpointer.save_best(epoch, ret)
        logger.log_tabular("EvalEpRet", ret)
        logger.log_tabular("EvalEpLen", length)
        if due and self.stop_at_return is not None and ret >= self.stop_at_return:
            return eval_return_reason(epoch, self.stop_at_return)
        return None

    def close(self) -> None:
        """Close the evaluation environments."""
        self.evaluator.close()


class PreemptibleRollouts:
    """DD-PPO's preemption (``--preempt``): a rollout ends once that fraction of the ranks have collected
    their share, after at least a quarter of this rank's (DD-PPO's short-rollout threshold), at a sequence
    boundary (``sequence_length`` steps)."""

    def __init__(self, fraction: float, rollout_steps: int, sequence_length: int) -> None:
        self.preemption = Preemption(fraction)  # a collective: a communicator of its own
        if self.preemption.needed >= num_procs() and proc_id() == 0:
            # ceil(fraction x ranks) ranks must complete: all of them, so no rank is ever cut short.
            print(
                f"spinppo: warning: --preempt {fraction:g} with {num_procs()} ranks waits for all of "
                f"them and never preempts; give at most {(num_procs() - 1) / num_procs():.2g}",
                file=sys.stderr,
                flush=True,
            )
        self.steps_per_row = sequence_length  # (a sequence no longer than the rollout)
        self.min_steps = sequence_length * math.ceil(0.25 * rollout_steps / sequence_length)

    def collect(self, worker: RolloutWorker, buf: GAEBuffer, logger: EpochLogger) -> None:
        """One rollout into ``buf``, cut short when enough other ranks have completed theirs."""
        preemption = self.preemption
        preemption.begin()

        def stop(steps: int) -> bool:
            return steps >= self.min_steps and steps % self.steps_per_row == 0 and preemption.should_stop()

        worker.collect(buf, logger, stop)
        preemption.end(complete=buf.filled == buf.steps)


def curriculum(env: Any) -> Any:
    """A Unity run's environment parameters with lessons (ML-Agents' curricula, checked every epoch), or
    None."""
    lessons = getattr(env, "parameter_manager", None)
    return lessons if lessons is not None and lessons.has_curriculum() else None


class StopSignals:
    """SIGINT and SIGTERM, once ``install``ed, are recorded (``first``) and stop the run at the end of the
    epoch, with a checkpoint; a second Ctrl-C stops at once. ``restore`` puts the old handlers back."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._old_handlers: dict[int, Any] = {}

    @property
    def first(self) -> int:
        """The first signal received; 0 for none."""
        return self.received[0] if self.received else 0

    def install(self) -> None:
        """From now on SIGINT and SIGTERM are recorded in ``received``."""
        received = self.received

        def handler(signum: int, frame: Any) -> None:
            if received and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now
            received.append(signum)
            if proc_id() == 0:
                again = " (Ctrl-C again: stop now, without a checkpoint)" if signum == signal.SIGINT else ""
                name = signal.Signals(signum).name
                print(f"\n{name} received: stopping after this epoch{again}", flush=True)

        self._old_handlers = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore(self) -> None:
        """Put back the handlers ``install`` replaced (nothing when it was not called)."""
        for signum, old in self._old_handlers.items():
            signal.signal(signum, old)
        self._old_handlers = {}


def threads_line(threads: list[int]) -> str:
    """The start-of-run line that says how many threads each rank uses (``threads``: every rank's count,
    in rank order, as ``setup_pytorch_for_mpi`` set them)."""
    low, high = min(threads), max(threads)
    count = f"{low}" if low == high else f"{low} to {high} (by host)"
    return (
        f"Threads per rank: {count} for numpy's BLAS, OpenMP and torch (each rank's share of its host's "
        "cores, capped by OMP_NUM_THREADS; one for a network without images)"
    )


def log_start(
    logger: EpochLogger, threads: int, ac: MLPActorCritic, num_envs: int, rollout_steps: int
) -> None:
    """The run's first lines: every rank's threads, its pid and host (so that a launcher's "process PID
    died" can be traced to its rank), an oversubscription warning, and the run's shape. A collective."""
    logger.log(threads_line(allgather(threads)))
    if num_procs() > 1:
        ranks = allgather(f"{proc_id()}={os.getpid()}@{socket.gethostname()}")
        logger.log("MPI ranks (rank=pid@host): " + " ".join(ranks))
        crowded = oversubscription_warning()
        if crowded and proc_id() == 0 and crowded not in _warned:  # once a process, not once a run
            _warned.add(crowded)
            print(f"spinppo: warning: {crowded}", file=sys.stderr, flush=True)
    n_params = sum(p.numel() for p in ac.parameters())
    logger.log(
        f"{num_procs()} rank(s) x {num_envs} env(s), {rollout_steps} steps each per rollout; actor-critic "
        f"with {n_params} parameters"
    )


# ------------------------------------------------------------------------------------------- the run


class OnPolicyRun:
    """The parts of one training run on one rank: environments, actor-critic, evaluation, logger, buffer,
    worker, preemption, curriculum, signals; and the shared steps of an epoch. Use it as a context
    manager: leaving closes the environments and the logger and restores the signal handlers, however the
    run ends.

    ``steps_per_epoch`` counts environment steps over all ranks and environments; each rank collects
    ``steps_per_epoch / num_procs`` of them per epoch, in ``rollouts_per_epoch`` batches (A2C's n-step
    rollouts). The flags are assumed checked (``check_common_flags``).

    Built by ``start`` (``epochs`` calls it), when the optimizers exist: ``checkpointer`` and ``schedule``.
    Each epoch's state is ``epoch_state`` (``EpochState``).
    """

    checkpointer: Checkpointer
    schedule: Schedule
    epoch_state: EpochState

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
        norm_value: bool = False,
        norm_adv: bool = True,
        time_horizon: int = 0,
        reward_scale: float = 1.0,
        initialize_from: str | None = None,
        eval_freq: int = 0,
        eval_episodes: int = 10,
        eval_deterministic: bool = True,
        stop_at_return: float | None = None,
        stop_at_train_return: float | None = None,
        preempt: float | None = None,
        logger_kwargs: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        algo: str = "ppo",
        keep_checkpoints: int = 5,
        precision: str = "fp32",
    ) -> None:
        threads = setup_pytorch_for_mpi()  # before the environments: their processes inherit the limit
        self.algo, self.resume = algo, bool((logger_kwargs or {}).get("resume"))
        self.steps_per_epoch, self.rollouts_per_epoch = steps_per_epoch, rollouts_per_epoch
        self.norm_adv, self.stop_at_train_return = norm_adv, stop_at_train_return
        self.keep_checkpoints = keep_checkpoints
        self.signals = StopSignals()  # installed by start()
        self.evaluation: Evaluation | None = None  # (until built: close() closes what was built)
        self.logger: EpochLogger | None = None
        self.seed = seed_rank(seed)
        self.env = make_vector_env(env_fn, num_envs, self.seed)
        # Whatever fails from here on (bad input found once the environment exists, a policy that does
        # not fit) must not leave the environments running: a Unity player would keep the process alive.
        try:
            self.num_envs = self.env.num_envs
            self.rollout_steps = rollout_length(steps_per_epoch, self.num_envs, rollouts_per_epoch)
            obs_space, act_space = self.env.single_observation_space, self.env.single_action_space
            self.ac = actor_critic(obs_space, act_space, **(ac_kwargs or {}))
            layout = getattr(self.ac, "layout", None)
            if layout is not None and not layout.has_images and threads > 1:
                # A network without images computes on products too small to share out: a second thread
                # gained a rank 2-14% alone (the 256-wide Walker2d config) and cost it 8-13x when another
                # process needed the cores, as its threads wait for each other (docs/benchmarks.md, "One
                # thread for vector networks"). Image networks keep their share for their convolutions.
                threads = setup_pytorch_for_mpi(most=1)
            # Before the run directory exists (a Unity build cannot be copied, a policy that does not fit:
            # both bad input). A resume continues from its own checkpoint instead of initialize_from.
            if eval_freq:
                self.evaluation = Evaluation(
                    env_fn,
                    self.ac,
                    eval_freq,
                    eval_episodes,
                    seed,
                    stop_at_return,
                    deterministic=eval_deterministic,
                )
            init_file = (
                initialize_policy(self.ac, initialize_from) if initialize_from and not self.resume else None
            )
            # --device (a GPU per rank, DD-PPO's rule): the actor-critic lives there from here on, and
            # its optimisers are built over the parameters there.
            spec = requested_device() if algo != "a3c" else "cpu"  # A3C's ranks exchange numpy gradients
            self.device = rank_device(spec, getattr(self.ac, "prefers_gpu", False))
            use_device(self.device)
            self.ac.to(self.device)
            # --precision bf16: the image encoders compute in bfloat16 (an update on pixels takes about
            # half the time); rollout, update and evaluation alike, so logp_old and logp agree.
            set_precision = getattr(self.ac, "set_precision", lambda _: False)  # (another actor_critic)
            reduced = precision != "fp32" and set_precision(precision)
            self.logger = open_logger(logger_kwargs, config, self.env, algo, self.resume)
            if precision != "fp32" and not reduced:
                self.logger.log(
                    f"Note: --precision {precision} acts on image encoders only; this network has none, "
                    "so it computes in float32"
                )
            elif reduced and not bf16_is_native(self.device):
                self.logger.log(
                    f"Note: --precision {precision}: {self.device} has no bfloat16 instructions (AVX-512 "
                    "BF16 or AMX), so the encoders emulate them, slower than fp32: --precision fp32 is faster"
                )
            if init_file:
                self.logger.log(f"Initialised from {init_file}")
            sync_params(self.ac)
            self.buf = make_buffer(self.env, self.ac, self.rollout_steps, gamma, lam, time_horizon)
            self.reward_scaler = RewardScaler(self.num_envs, gamma) if norm_reward else None
            value_norm = ValueNormalizer() if norm_value else None
            self.worker = RolloutWorker(
                self.env, self.ac, self.seed, self.reward_scaler, reward_scale, value_norm
            )
            self.preemption = (
                PreemptibleRollouts(preempt, self.rollout_steps, self.buf.sequence_length)
                if preempt is not None and num_procs() > 1
                else None
            )
            # The run's counters, checkpointed. With preemption an epoch collects fewer steps than
            # steps_per_epoch: the true count is TotalEnvInteracts.
            self.run_state: dict[str, Any] = {"total_steps": 0}
            self.lessons = curriculum(self.env)
            log_start(self.logger, threads, self.ac, self.num_envs, self.rollout_steps)
            if self.device.type != "cpu":
                self.logger.log(f"Device: rank 0 trains on {self.device} (--device {spec})")
        except BaseException:
            self.close()
            raise

    @property
    def output_dir(self) -> str:
        """The run directory."""
        return self.logger.output_dir

    def __enter__(self) -> OnPolicyRun:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Put the signal handlers back and close the parts built so far: evaluation, environments,
        logger."""
        self.signals.restore()
        if self.evaluation is not None:
            self.evaluation.close()
        self.env.close()
        if self.logger is not None:
            self.logger.close()

    # ------------------------------------------------------------------------------- the epoch's steps

    def start(
        self, epochs: int, save_freq: int, checkpointer: Checkpointer, logged_step: Callable[[int], int]
    ) -> Schedule:
        """Begin the epochs with ``checkpointer`` (this run's, or A3C's): with ``--resume`` restore its
        latest checkpoint (``restore``), then install the signal handlers. Returns the session's
        ``Schedule`` (``epochs`` in all, a checkpoint every ``save_freq``), kept as ``schedule``."""
        self.checkpointer = checkpointer
        first_epoch, elapsed = self.restore(epochs, logged_step)
        start_time = time.time() - elapsed
        self.signals.install()
        self.schedule = Schedule(epochs, save_freq, first_epoch, start_time, time.time())
        return self.schedule

    def restore(self, epochs: int, logged_step: Callable[[int], int]) -> tuple[int, float]:
        """With ``--resume``: load the latest checkpoint (models, optimizers, generators, environments,
        statistics, ``run_state``), cut progress.txt and TensorBoard back to its epoch
        (``logged_step(epoch)`` is the step that epoch's row was logged at) and record the new ``epochs``.
        Returns (the first epoch to run, the seconds the run had taken); (0, 0.0) without ``--resume``."""
        if not self.resume:
            return 0, 0.0
        last, elapsed = self.checkpointer.load(reset_seed=self.seed)
        self.logger.restore_progress(last, step=logged_step(last))
        self.logger.log(f"Resumed from the checkpoint of epoch {last}")
        if epochs > last + 1:
            self.logger.update_config(epochs=epochs)
        else:
            self.logger.log(
                f"Nothing to train: the run has done {last + 1} epochs; pass --epochs N with N > "
                f"{last + 1} to train further"
            )
        return last + 1, elapsed

    def epochs(
        self, epochs: int, save_freq: int, optimizers: dict[str, torch.optim.Optimizer]
    ) -> Iterator[int]:
        """The epochs to run: ``0 .. epochs-1``, or after a resume those after the checkpoint's.

        On a resume the actor-critic, ``optimizers`` (saved in every checkpoint by name), random
        generators, environments and statistics are restored first. From here on SIGINT and SIGTERM
        stop the run at the end of the epoch, with a checkpoint (see ``end_epoch``).
        """
        checkpointer = Checkpointer(
            self.logger,
            self.ac,
            self.worker,
            self.reward_scaler,
            self.keep_checkpoints,
            optimizers,
            self.run_state,
            parameter_manager=self.lessons,
        )
        schedule = self.start(epochs, save_freq, checkpointer, lambda last: (last + 1) * self.steps_per_epoch)
        self.run_state.setdefault("total_steps", schedule.first_epoch * self.steps_per_epoch)
        for epoch in range(schedule.first_epoch, epochs):
            self.epoch_state = EpochState.begin(epoch, self.worker, mpi_time())
            yield epoch
            if self.epoch_state.stop is not None:
                break

    def collect(self) -> Batch:
        """Step the environments with the current policy for one rollout; return its ``Batch``
        (``GAEBuffer.get``) with GAE-lambda advantages, normalised over all ranks when ``norm_adv``.
        Episode returns go to the logger.

        With ``--preempt`` the rollout may end early on this rank (DD-PPO): the batch is then shorter,
        and every rank's update still takes the same number of gradient steps (``full_rows``)."""
        if self.preemption is None:
            self.worker.collect(self.buf, self.logger)
        else:
            self.preemption.collect(self.worker, self.buf, self.logger)
        self.epoch_state.steps += self.buf.filled * self.num_envs
        # (on a GPU: copied there once, for every minibatch of the update)
        batch = self.buf.get(normalize_adv=self.norm_adv).to(self.device)
        self.epoch_state.update_started = time.perf_counter()
        return batch

    def recompute_advantages(self, batch: Batch, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """PPO's ``--recompute_adv``: the rollout's GAE advantages and lambda-returns again, from the
        critic as it is now (Tianshou's recompute_adv, "What Matters in On-Policy RL" section 3.5), as
        ``(adv, ret)`` [n] tensors in the batch's order and on its device; ``adv`` normalised over all
        ranks when ``norm_adv`` (three small collectives: every rank must call this as often).

        The critic is evaluated, without gradients and ``chunk`` rows at a time, at the batch's
        observations, at the observations after the rollout (the worker's) and at the final observations
        of episodes truncated in it; the rewards, ends and the value scale are the rollout's."""
        buf, ac, layout = self.buf, self.ac, self.buf.layout
        steps, envs = buf.filled, buf.num_envs
        with torch.no_grad():
            val = torch.cat(
                [ac.value(layout.take(batch.obs, slice(a, a + chunk))) for a in range(0, steps * envs, chunk)]
            )

            def values(obs: Any) -> np.ndarray:  # stored (numpy) observations
                return ac.value(layout.to_torch(obs, self.device)).float().cpu().numpy()

            last_val = values(self.worker.obs)
            final_val = {t: values(obs) for t, (_, obs) in buf.final_obs.items()}
        buf.recompute(val.float().cpu().numpy().reshape(steps, envs), last_val, final_val)
        adv = np.ascontiguousarray(buf.advantages(self.norm_adv), dtype=np.float32)
        ret = buf.ret[:steps].reshape(-1).copy()
        return torch.from_numpy(adv).to(self.device), torch.from_numpy(ret).to(self.device)

    def after_update(self, stats: dict[str, float]) -> None:
        """After an update: make the ranks' parameters bitwise identical, stop on a non-finite loss or
        parameter, store ``stats`` for the epoch's row, and fold this rollout's observations (all ranks)
        and rewards into the normalisation statistics used from now on."""
        state = self.epoch_state
        state.update_time += time.perf_counter() - state.update_started
        # Bitwise-identical hosts stay identical anyway; this one Bcast keeps hosts whose CPU kernels round
        # differently from drifting apart.
        sync_params(self.ac)
        self._check_finite(stats)
        self.logger.store(**stats)
        vectors = rollout_vectors(self.buf)
        if vectors is not None:  # (the same layout on every rank)
            self.ac.obs_rms.update(vectors)
        if self.reward_scaler is not None:
            self.reward_scaler.sync()
        if self.worker.value_norm is not None:  # this rollout's lambda-returns, in the rewards' units
            self.worker.value_norm.update(self.buf.ret[: self.buf.filled] * self.buf.value_scale)

    def end_epoch(self, epoch: int, log_keys: list[str]) -> None:
        """Log the epoch's row (returns, the algorithm's ``log_keys``, timings); save a checkpoint every
        ``save_freq`` epochs, at the last epoch, when a stop is reached and when a signal arrived on any
        rank; then, after a signal, raise TrainingStopped on every rank."""
        logger, state, run_state = self.logger, self.epoch_state, self.run_state
        state.end(mpi_time())
        if self.lessons is not None:
            self._advance_lessons(epoch)
        if self.stop_at_train_return is not None:  # the same window, and verdict, on every rank
            mine = [float(r) for r in logger.epoch_dict.get("EpRet", [])]
            returns = [r for rank in allgather(mine) for r in rank]
            state.stop = train_return_reached(run_state, returns, self.stop_at_train_return)
        collected = self.steps_per_epoch
        if self.preemption is None:
            run_state["total_steps"] = (epoch + 1) * self.steps_per_epoch
            log_row_start(logger, epoch, run_state["total_steps"])
        else:  # the steps the ranks really collected, and the share of the epoch's they did not
            collected = int(mpi_sum(state.steps))
            run_state["total_steps"] += collected
            log_row_start(logger, epoch, run_state["total_steps"])
            logger.log_tabular("Preempted", 1.0 - collected / self.steps_per_epoch)
        if self.evaluation is not None:
            reached = self.evaluation.log(epoch, self.schedule.is_last(epoch), logger, self.checkpointer)
            state.stop = state.stop or reached
        for key in log_keys:
            logger.log_tabular(key, average_only=True)
        if self.lessons is not None:  # the lesson of each parameter that has a curriculum
            for name, lesson in self.lessons.lesson_numbers().items():
                if len(self.lessons.settings[name]["curriculum"]) > 1:
                    logger.log_tabular(f"Lesson/{name}", lesson)
        log_row_end(
            logger,
            state,
            collected,
            self.worker,
            self.schedule.start_time,
            (epoch + 1) * self.steps_per_epoch,
        )

        # A signal on any rank stops every rank here, at the same epoch, with a checkpoint. Every rank
        # learns the signal (the highest number when ranks got different ones).
        stop_signum = int(mpi_max(self.signals.first))
        checkpoint_and_report(self.schedule, self.checkpointer, epoch, stop_signum, state.stop)
        if stop_signum:
            raise stopped_by_signal(stop_signum, epoch, self.algo, self.output_dir)

    def _advance_lessons(self, epoch: int) -> None:
        """ML-Agents' curriculum check, once an epoch: every rank feeds the same episode returns (all
        ranks', in rank order) and progress to its copy of the manager, so all reach the same lessons.
        A changed lesson's values go to each rank's player; with require_reset the players reset now and
        the episodes in progress are abandoned (as mlagents-learn does)."""
        mine = [float(r) for r in self.logger.epoch_dict.get("EpRet", [])]
        returns = [r for rank in allgather(mine) for r in rank]
        changed, reset = self.lessons.update((epoch + 1) / self.schedule.epochs, returns)
        if changed:
            self.logger.log(f"Epoch {epoch}: {self.lessons.describe()}")
            fresh = self.env.apply_lessons(reset)
            if reset:
                self.worker.restart_episodes(fresh[0])

    def _check_finite(self, stats: dict[str, float]) -> None:
        # Parameters are identical on all ranks, so every rank reaches the same verdict.
        bad = [k for k, v in stats.items() if not np.isfinite(v)]
        bad += [n for n, p in self.ac.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            what = f"non-finite {', '.join(bad[:4])}"
            raise TrainingDiverged(divergence_message(what, self.epoch_state.epoch, self.output_dir))
