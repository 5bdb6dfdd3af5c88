"""The steps PPO, VPG and A2C share, with names, so that each algorithm file shows its own epoch loop::

    with OnPolicyRun(env_fn, ..., config=config, algo="ppo") as run:     # environments, actor-critic, logger
        ac = run.ac
        optimizer = ...
        for epoch in run.epochs(epochs, save_freq, {"optimizer": optimizer}):  # resumes; stops on a signal
            batch = run.collect()          # steps_per_epoch / num_procs steps on this rank, GAE
            stats = update(batch)          # the algorithm's loss and optimisation (gradients averaged)
            run.after_update(stats)        # sync params, finiteness check, observation and reward stats
            run.end_epoch(epoch, LOG_KEYS) # log the row, checkpoint (every save_freq), stop on a signal

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
from types import TracebackType
from typing import Any

import numpy as np
import torch

from spinppo.algos.checkpoint import Checkpointer, checkpoint_epochs, initial_model_file, initialize_policy
from spinppo.core.buffer import Batch, GAEBuffer
from spinppo.core.encoders import ObsLayout
from spinppo.core.evaluation import Evaluator
from spinppo.core.networks import MLPActorCritic, check_ac_kwargs
from spinppo.core.normalize import RewardScaler
from spinppo.core.rollout import RolloutWorker
from spinppo.envs.registry import make_vector_env
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


def print_progress(
    epoch: int,
    epochs_total: int,
    start_time: float,
    session_start: float,
    first_epoch: int,
    stopped: str | None = None,
) -> None:
    """Rank 0's line after each epoch's row: "Epoch k of N: h:mm:ss elapsed, about h:mm:ss left" (left
    estimated from this session's epochs), and ``stopped``, the line that says why the run ends early."""
    now = time.time()
    per_epoch = (now - session_start) / (epoch + 1 - first_epoch)
    left = 0.0 if stopped is not None else per_epoch * (epochs_total - epoch - 1)
    print(
        f"Epoch {epoch + 1} of {epochs_total}: {_clock(now - start_time)} elapsed, about {_clock(left)} left",
        flush=True,
    )
    if stopped is not None:
        print(stopped, flush=True)


def eval_return_reason(epoch: int, stop_at_return: float) -> str:
    """The line that ends a run stopped by --stop_at_return."""
    return (
        f"Evaluation return reached --stop_at_return {stop_at_return:g} after epoch {epoch}: stopped with "
        "a checkpoint"
    )


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


def evaluate_and_log(
    evaluator: Evaluator,
    logger: EpochLogger,
    checkpointer: Checkpointer,
    epoch: int,
    due: bool,
    stop_at_return: float | None,
) -> bool:
    """When ``due``: play the evaluation episodes, log their mean as ``EvalEpRet``/``EvalEpLen`` and keep
    the policy as the best when it beats every earlier one; else log NaN. True when the return reached
    ``stop_at_return``."""
    ret = length = float("nan")
    if due:
        returns, lengths = evaluator.evaluate()
        ret, length = float(np.mean(returns)), float(np.mean(lengths))
        if ret > checkpointer.best_eval:
            checkpointer.save_best(epoch, ret)
    logger.log_tabular("EvalEpRet", ret)
    logger.log_tabular("EvalEpLen", length)
    return due and stop_at_return is not None and ret >= stop_at_return


def threads_line(threads: list[int]) -> str:
    """The start-of-run line that says how many threads each rank uses (``threads``: every rank's count,
    in rank order, as ``setup_pytorch_for_mpi`` set them)."""
    low, high = min(threads), max(threads)
    count = f"{low}" if low == high else f"{low} to {high} (by host)"
    return (
        f"Threads per rank: {count} for numpy's BLAS, OpenMP and torch (each rank's share of its host's "
        "cores, capped by OMP_NUM_THREADS)"
    )


class OnPolicyRun:
    """The parts of one training run on one rank: environments, actor-critic, buffer, worker, logger,
    checkpoints; and the shared steps of an epoch. Use it as a context manager: leaving closes the
    environments and the logger and restores the signal handlers, however the run ends.

    ``steps_per_epoch`` counts environment steps over all ranks and environments; each rank collects
    ``steps_per_epoch / num_procs`` of them per epoch, in ``rollouts_per_epoch`` batches (A2C's n-step
    rollouts). The flags are assumed checked (``check_common_flags``).
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
        time_horizon: int = 0,
        reward_scale: float = 1.0,
        initialize_from: str | None = None,
        eval_freq: int = 0,
        eval_episodes: int = 10,
        stop_at_return: float | None = None,
        stop_at_train_return: float | None = None,
        preempt: float | None = None,
        logger_kwargs: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        algo: str = "ppo",
        keep_checkpoints: int = 5,
    ) -> None:
        threads = setup_pytorch_for_mpi()  # before the environments: their processes inherit the limit
        self.algo = algo
        self.resume = bool((logger_kwargs or {}).get("resume"))
        # Each rank explores differently; sync_params below makes the networks identical anyway.
        self.seed = seed + 10000 * proc_id()
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        random.seed(self.seed)

        self.env = make_vector_env(env_fn, num_envs, self.seed)
        # Whatever fails from here on (bad input found once the environment exists, a policy that does
        # not fit) must not leave the environments running: a Unity player would keep the process alive.
        try:
            self.num_envs = self.env.num_envs
            per_env = rollout_length(steps_per_epoch, self.num_envs, rollouts_per_epoch)
            self.steps_per_epoch = steps_per_epoch
            self.rollouts_per_epoch = rollouts_per_epoch
            self.norm_adv = norm_adv
            self.rollout_steps = per_env  # steps per environment in one rollout

            obs_space, act_space = self.env.single_observation_space, self.env.single_action_space
            self.ac = actor_critic(obs_space, act_space, **(ac_kwargs or {}))
            # With memory, a --sequence_length that does not divide the rollout pads each environment's last
            # sequence (GAEBuffer): the losses leave the padded steps out.
            memory_size = getattr(self.ac, "memory_size", 0)
            # A resume continues from its own checkpoint instead. Before the run directory exists: a policy
            # that does not fit is bad input.
            # Evaluation on environments of its own (made before the run directory: a Unity build cannot
            # be copied, which is bad input). Seeds far from the training ones; the same every evaluation.
            self.evaluator = (
                Evaluator(env_fn, self.ac, eval_episodes, seed + 1_000_000) if eval_freq else None
            )
            self.eval_freq, self.stop_at_return = eval_freq, stop_at_return
            self.stop_at_train_return = stop_at_train_return
            self.reached_return: str | None = None  # why the epochs end after this one (a stop reached)
            init_file = None
            if initialize_from and not self.resume:
                init_file = initialize_policy(self.ac, initialize_from)
            # Only now, with the input checked, make the run directory.
            self.logger = EpochLogger(**(logger_kwargs or {}))
            # A resumed run keeps the config.json it was made with (epochs() records a new --epochs there once
            # the checkpoint has loaded): a resume that is refused must leave the run as it was.
            if config is not None and not self.resume:
                kwargs = {k: v for k, v in (config.get("logger_kwargs") or {}).items() if k != "resume"}
                saved = {**config, "logger_kwargs": kwargs, "num_procs": num_procs(), "algo": algo}
                if hasattr(self.env, "observation_shapes"):  # a Unity behavior's sensors, for export --onnx
                    saved["observation_shapes"] = [list(shape) for shape in self.env.observation_shapes]
                self.logger.save_config(saved)
            if init_file:
                self.logger.log(f"Initialised from {init_file}")
            sync_params(self.ac)
            self.buf = GAEBuffer(
                ObsLayout.from_space(obs_space),  # vectors as float32, images in their own dtype (uint8)
                self.ac.act_shape,
                self.num_envs,
                self.rollout_steps,
                gamma,
                lam,
                discrete=self.ac.discrete,
                time_horizon=time_horizon,
                memory_size=memory_size,
                sequence_length=getattr(self.ac, "sequence_length", 1),
            )
            self.reward_scaler = RewardScaler(self.num_envs, gamma) if norm_reward else None
            self.worker = RolloutWorker(self.env, self.ac, self.seed, self.reward_scaler, reward_scale)
            self.checkpointer = Checkpointer(
                self.logger, self.ac, self.worker, self.reward_scaler, keep_checkpoints
            )
            self.checkpointer.keeps_best = self.evaluator is not None
            # DD-PPO's preemption: a rollout ends once --preempt of the ranks have collected their share,
            # after at least a quarter of this rank's (DD-PPO's short-rollout threshold), at a sequence
            # boundary.
            self.preemption = Preemption(preempt) if preempt is not None and num_procs() > 1 else None
            if self.preemption is not None and self.preemption.needed >= num_procs() and proc_id() == 0:
                # ceil(fraction x ranks) ranks must complete: all of them, so no rank is ever cut short.
                print(
                    f"spinppo: warning: --preempt {preempt:g} with {num_procs()} ranks waits for all of "
                    f"them and never preempts; give at most {(num_procs() - 1) / num_procs():.2g}",
                    file=sys.stderr,
                    flush=True,
                )
            steps_per_row = self.buf.sequence_length  # (a sequence no longer than the rollout)
            self.min_steps = steps_per_row * math.ceil(0.25 * self.rollout_steps / steps_per_row)
            self.steps_per_row = steps_per_row
            self.epoch_steps = 0  # environment steps this rank collected in this epoch
            # With preemption an epoch collects fewer steps than steps_per_epoch: the true count, kept in
            # checkpoints, is TotalEnvInteracts.
            self.checkpointer.run_state = {"total_steps": 0}
            # A Unity run's environment parameters with lessons (ML-Agents' curricula): checked every epoch.
            self.lessons = getattr(self.env, "parameter_manager", None)
            if self.lessons is not None and not self.lessons.has_curriculum():
                self.lessons = None
            self.checkpointer.parameter_manager = self.lessons
            self._old_handlers: dict[int, Any] = {}
            self.stop_signals: list[int] = []
            self.logger.log(threads_line(allgather(threads)))
            if num_procs() > 1:  # so that a launcher's "process PID died" can be traced to its rank
                ranks = allgather(f"{proc_id()}={os.getpid()}@{socket.gethostname()}")
                self.logger.log("MPI ranks (rank=pid@host): " + " ".join(ranks))
                crowded = oversubscription_warning()
                if crowded and proc_id() == 0 and crowded not in _warned:  # once a process, not once a run
                    _warned.add(crowded)
                    print(f"spinppo: warning: {crowded}", file=sys.stderr, flush=True)
            n_params = sum(p.numel() for p in self.ac.parameters())
            self.logger.log(
                f"{num_procs()} rank(s) x {self.num_envs} env(s), {self.rollout_steps} steps each per "
                f"rollout; actor-critic with {n_params} parameters"
            )
        except BaseException:
            if getattr(self, "evaluator", None) is not None:
                self.evaluator.close()
            self.env.close()
            if getattr(self, "logger", None) is not None:
                self.logger.close()
            raise

    @property
    def output_dir(self) -> str:
        """The run directory."""
        return self.logger.output_dir

    def __enter__(self) -> OnPolicyRun:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, tb: TracebackType | None) -> None:
        for signum, old in self._old_handlers.items():
            signal.signal(signum, old)
        if self.evaluator is not None:
            self.evaluator.close()
        self.env.close()
        self.logger.close()

    # ------------------------------------------------------------------------------- the epoch's steps

    def restore(self, epochs: int, logged_step: Callable[[int], int]) -> tuple[int, float]:
        """With ``--resume``: load the latest checkpoint (models, optimizers, generators, environments,
        statistics, ``checkpointer.run_state``), cut progress.txt and TensorBoard back to its epoch
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
        self.epochs_total, self.save_freq = epochs, save_freq
        self.checkpointer.optimizers = optimizers
        first_epoch, elapsed = self.restore(epochs, lambda last: (last + 1) * self.steps_per_epoch)
        self.checkpointer.run_state.setdefault("total_steps", first_epoch * self.steps_per_epoch)
        self.start_time = time.time() - elapsed
        self.install_signal_handlers()
        self.first_epoch, self.session_start = first_epoch, time.time()  # for the time-left estimate
        for epoch in range(first_epoch, epochs):
            if self.reached_return:
                break
            self.epoch_start = time.perf_counter()
            self.env_t0, self.inf_t0 = self.worker.env_time, self.worker.inference_time
            self.mpi_t0, self.update_time = mpi_time(), 0.0
            self.epoch, self.epoch_steps = epoch, 0
            yield epoch

    def collect(self) -> Batch:
        """Step the environments with the current policy for one rollout; return its ``Batch``
        (``GAEBuffer.get``) with GAE-lambda advantages, normalised over all ranks when ``norm_adv``.
        Episode returns go to the logger.

        With ``--preempt`` the rollout may end early on this rank (DD-PPO): the batch is then shorter,
        and every rank's update still takes the same number of gradient steps (``full_rows``)."""
        preemption = self.preemption
        if preemption is None:
            self.worker.collect(self.buf, self.logger)
        else:
            preemption.begin()

            def stop(steps: int) -> bool:
                return (
                    steps >= self.min_steps and steps % self.steps_per_row == 0 and preemption.should_stop()
                )

            self.worker.collect(self.buf, self.logger, stop)
            preemption.end(complete=self.buf.filled == self.buf.steps)
        self.epoch_steps += self.buf.filled * self.num_envs
        batch = self.buf.get(normalize_adv=self.norm_adv)
        self._update_start = time.perf_counter()
        return batch

    def after_update(self, stats: dict[str, float]) -> None:
        """After an update: make the ranks' parameters bitwise identical, stop on a non-finite loss or
        parameter, store ``stats`` for the epoch's row, and fold this rollout's observations (all ranks)
        and rewards into the normalisation statistics used from now on."""
        self.update_time += time.perf_counter() - self._update_start
        # Bitwise-identical hosts stay identical anyway; this one Bcast keeps hosts whose CPU kernels round
        # differently from drifting apart.
        sync_params(self.ac)
        self._check_finite(stats)
        self.logger.store(**stats)
        layout = self.buf.layout
        if layout.vector_dim:  # only vectors have running statistics (the same layout on every rank)
            filled = self.buf.filled  # (fewer than the buffer's steps after a preemption)
            obs = self.buf.obs[:filled] if layout.flat else layout.take(self.buf.obs, slice(0, filled))
            self.ac.obs_rms.update(layout.vectors(obs))
        if self.reward_scaler is not None:
            self.reward_scaler.sync()

    def end_epoch(self, epoch: int, log_keys: list[str]) -> None:
        """Log the epoch's row (returns, the algorithm's ``log_keys``, timings); save a checkpoint every
        ``save_freq`` epochs, at the last epoch and when a signal arrived on any rank; then, after a
        signal, raise TrainingStopped on every rank."""
        logger, worker = self.logger, self.worker
        epoch_time = time.perf_counter() - self.epoch_start
        epoch_mpi_time = mpi_time() - self.mpi_t0
        if self.lessons is not None:
            self._advance_lessons(epoch)
        state, collected = self.checkpointer.run_state, self.steps_per_epoch
        if self.stop_at_train_return is not None:  # the same window, and verdict, on every rank
            mine = [float(r) for r in logger.epoch_dict.get("EpRet", [])]
            returns = [r for rank in allgather(mine) for r in rank]
            self.reached_return = train_return_reached(state, returns, self.stop_at_train_return)
        logger.log_tabular("Epoch", epoch)
        logger.log_tabular("EpRet", with_min_and_max=True)
        logger.log_tabular("EpLen", average_only=True)
        logger.log_tabular("VVals", with_min_and_max=True)
        if self.preemption is None:
            state["total_steps"] = (epoch + 1) * self.steps_per_epoch
            logger.log_tabular("TotalEnvInteracts", state["total_steps"])
        else:  # the steps the ranks really collected, and the share of the epoch's they did not
            collected = int(mpi_sum(self.epoch_steps))
            state["total_steps"] += collected
            logger.log_tabular("TotalEnvInteracts", state["total_steps"])
            logger.log_tabular("Preempted", 1.0 - collected / self.steps_per_epoch)
        if self.evaluator is not None:
            self._evaluate(epoch)
        for key in log_keys:
            logger.log_tabular(key, average_only=True)
        if self.lessons is not None:  # the lesson of each parameter that has a curriculum
            for name, lesson in self.lessons.lesson_numbers().items():
                if len(self.lessons.settings[name]["curriculum"]) > 1:
                    logger.log_tabular(f"Lesson/{name}", lesson)
        logger.log_tabular("StepsPerSec", collected / epoch_time)
        logger.log_tabular("EnvTime", worker.env_time - self.env_t0)
        logger.log_tabular("InferenceTime", worker.inference_time - self.inf_t0)
        logger.log_tabular("UpdateTime", self.update_time)
        logger.log_tabular("MPITime", epoch_mpi_time)
        logger.log_tabular("Time", time.time() - self.start_time)
        logger.dump_tabular(step=(epoch + 1) * self.steps_per_epoch)

        # A signal on any rank stops every rank here, at the same epoch, with a checkpoint. Every rank
        # learns the signal (the highest number when ranks got different ones).
        stop_signum = int(mpi_max(self.stop_signals[0] if self.stop_signals else 0))
        last = epoch == self.epochs_total - 1 or self.reached_return
        if stop_signum or (epoch + 1) % self.save_freq == 0 or last:
            self.checkpointer.save(epoch, time.time() - self.start_time)
        if proc_id() == 0:
            print_progress(
                epoch,
                self.epochs_total,
                self.start_time,
                self.session_start,
                self.first_epoch,
                self.reached_return,
            )
        if stop_signum:
            raise TrainingStopped(
                f"stopped by {signal.Signals(stop_signum).name} after epoch {epoch}; checkpoint "
                f"saved. Resume with: python -m spinppo.run {self.algo} --resume {self.output_dir}",
                signum=stop_signum,
            )

    def _evaluate(self, epoch: int) -> None:
        """Every ``eval_freq`` epochs and at the last: deterministic episodes over all ranks, their mean
        as ``EvalEpRet``/``EvalEpLen`` (NaN in the other rows), the best policy by it kept in
        ``pyt_save/model_best.pt``, and ``--stop_at_return`` checked (the same verdict on every rank)."""
        due = (epoch + 1) % self.eval_freq == 0 or epoch == self.epochs_total - 1
        if evaluate_and_log(self.evaluator, self.logger, self.checkpointer, epoch, due, self.stop_at_return):
            self.reached_return = self.reached_return or eval_return_reason(epoch, self.stop_at_return)

    def _advance_lessons(self, epoch: int) -> None:
        """ML-Agents' curriculum check, once an epoch: every rank feeds the same episode returns (all
        ranks', in rank order) and progress to its copy of the manager, so all reach the same lessons.
        A changed lesson's values go to each rank's player; with require_reset the players reset now and
        the episodes in progress are abandoned (as mlagents-learn does)."""
        mine = [float(r) for r in self.logger.epoch_dict.get("EpRet", [])]
        returns = [r for rank in allgather(mine) for r in rank]
        changed, reset = self.lessons.update((epoch + 1) / self.epochs_total, returns)
        if changed:
            self.logger.log(f"Epoch {epoch}: {self.lessons.describe()}")
            fresh = self.env.apply_lessons(reset)
            if reset:
                self.worker.restart_episodes(fresh[0])

    # ------------------------------------------------------------------------------- failure handling

    def install_signal_handlers(self) -> None:
        """From now on SIGINT and SIGTERM are recorded in ``stop_signals`` (the run stops at the end of
        the epoch, with a checkpoint); a second Ctrl-C stops at once. ``close`` puts the old handlers back."""
        received = self.stop_signals

        def handler(signum: int, frame: Any) -> None:
            if received and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now
            received.append(signum)
            if proc_id() == 0:
                again = " (Ctrl-C again: stop now, without a checkpoint)" if signum == signal.SIGINT else ""
                name = signal.Signals(signum).name
                print(f"\n{name} received: stopping after this epoch{again}", flush=True)

        self._old_handlers = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def _check_finite(self, stats: dict[str, float]) -> None:
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
                f"non-finite {', '.join(bad[:4])} in epoch {self.epoch}: training stopped; {kept} (try a "
                "smaller --lr, and check that the environment's observations and rewards are finite)"
            )
