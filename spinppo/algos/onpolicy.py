"""What PPO, VPG and A2C share: building the parts, the epoch loop, logging and saving.

An algorithm is a function that builds an ``OnPolicyRun`` and hands ``train`` its update rule::

    run = OnPolicyRun(env_fn, ..., config=locals())
    def update(data) -> dict: ...            # the algorithm's loss and optimisation, returns stats to log
    run.train(update, epochs, log_keys=[...])

Each epoch, on every rank: collect ``steps_per_epoch / num_procs`` steps -> update (gradients averaged over
ranks) -> fold the epoch's observations into the normalisation statistics -> log -> save.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from spinppo.core.buffer import GAEBuffer
from spinppo.core.networks import MLPActorCritic
from spinppo.core.normalize import RewardScaler
from spinppo.core.rollout import RolloutWorker
from spinppo.utils.errors import UserError
from spinppo.utils.logx import EpochLogger
from spinppo.utils.mpi_pytorch import setup_pytorch_for_mpi, sync_params
from spinppo.utils.mpi_tools import num_procs, proc_id


def make_vector_env(env_fn: Callable[[], Any], num_envs: int) -> gym.vector.VectorEnv:
    """``env_fn()`` as a vector env: a VectorEnv is used as it is; a plain Env is made ``num_envs`` times."""
    first = env_fn()
    if isinstance(first, gym.vector.VectorEnv):
        return first
    envs = [first] + [env_fn() for _ in range(num_envs - 1)]
    return SyncVectorEnv([lambda e=e: e for e in envs], autoreset_mode=AutoresetMode.SAME_STEP)


def check_positive(**values: float) -> None:
    """A UserError naming the first value that is not positive."""
    for name, value in values.items():
        if value is None or value <= 0:
            raise UserError(f"--{name} must be positive, not {value}")


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
    ) -> None:
        check_positive(steps_per_epoch=steps_per_epoch, num_envs=num_envs)
        if not 0 < gamma <= 1 or not 0 <= lam <= 1:
            raise UserError(f"--gamma must be in (0, 1] and --lam in [0, 1], not {gamma} and {lam}")
        setup_pytorch_for_mpi()
        # Each rank explores differently; sync_params below makes the networks identical anyway.
        self.seed = seed + 10000 * proc_id()
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        random.seed(self.seed)

        self.env = make_vector_env(env_fn, num_envs)
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
        if config is not None:
            self.logger.save_config(config)
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
        self.logger.setup_pytorch_saver(self.ac)
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
    ) -> MLPActorCritic:
        """Run ``epochs`` epochs of collect -> ``update(data)`` -> log -> save; return the actor-critic.

        ``update`` returns a dict of statistics; the keys named in ``log_keys`` become table columns
        (averaged over the epoch's updates and over ranks).
        """
        check_positive(epochs=epochs, save_freq=save_freq)
        logger, worker, buf, ac = self.logger, self.worker, self.buf, self.ac
        start = time.time()
        for epoch in range(epochs):
            if on_epoch_start is not None:
                on_epoch_start(epoch)
            epoch_start = time.perf_counter()
            env_t0, inf_t0 = worker.env_time, worker.inference_time
            update_time = 0.0
            for _ in range(self.rollouts_per_epoch):
                worker.collect(buf, logger)
                data = buf.get(normalize_adv=self.norm_adv)
                t0 = time.perf_counter()
                stats = update(data)
                update_time += time.perf_counter() - t0
                logger.store(**stats)
                # Fold this rollout's observations (all ranks) into the statistics used from now on.
                ac.obs_rms.update(buf.obs.reshape(-1, buf.obs.shape[-1]))
                if self.reward_scaler is not None:
                    self.reward_scaler.sync()
            epoch_time = time.perf_counter() - epoch_start

            if (epoch + 1) % save_freq == 0 or epoch == epochs - 1:
                logger.save_state({"epoch": epoch}, itr=None)

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
            logger.log_tabular("Time", time.time() - start)
            logger.dump_tabular(step=(epoch + 1) * self.steps_per_epoch)
        self.env.close()
        logger.close()
        return ac

    @property
    def output_dir(self) -> str:
        """The run directory."""
        return self.logger.output_dir
