"""One rank's rollout worker: steps its vectorised environments with one batched policy call per step."""

from __future__ import annotations

import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np

from spinppo.core.buffer import GAEBuffer
from spinppo.core.encoders import ObsLayout, weights_cast_once
from spinppo.core.networks import MLPActorCritic
from spinppo.core.normalize import RewardScaler, ValueNormalizer
from spinppo.envs.spaces import action_for_env


class RolloutWorker:
    """Fills a ``GAEBuffer`` from a gymnasium ``VectorEnv`` in SAME_STEP autoreset mode.

    Episode returns and lengths (of the environment's own rewards, before any scaling) go to the logger
    as ``EpRet`` and ``EpLen`` when episodes end. Actions are stored as sampled and clipped to the action
    bounds only when sent to the environment.

    A vector environment whose ``reports_game_score`` is True (Atari: it trains on clipped rewards and
    ends an episode at every lost life) reports each real game's score itself, as ``info["game_return"]``
    and ``info["game_length"]`` (with gymnasium's ``info["_game_return"]`` mask) at the step the game
    ends: those are logged as EpRet/EpLen, and nothing at the episode ends it trains on.

    Observations are kept as ``ObsLayout`` stores them: float32 vectors, images in their own dtype (uint8),
    a dict of arrays for a Dict space.

    A recurrent policy's memory (``self.memory``, [envs, memory_size]) is carried from step to step and
    from rollout to rollout, zeroed where an episode ends (terminated or truncated: the next step begins
    another episode), and stored in the buffer at every sequence start.
    """

    def __init__(
        self,
        env: gym.vector.VectorEnv,
        ac: MLPActorCritic,
        seed: int,
        reward_scaler: RewardScaler | None = None,
        reward_scale: float = 1.0,
        value_norm: ValueNormalizer | None = None,
    ) -> None:
        self.env, self.ac, self.reward_scaler = env, ac, reward_scaler
        self.value_norm = value_norm  # --norm_value: the critic's outputs times value_norm.scale are values
        self.reward_scale = reward_scale  # ML-Agents' extrinsic strength: what is learned, not what is logged
        self.layout = ObsLayout.from_space(env.single_observation_space)
        self.game_score = bool(getattr(env, "reports_game_score", False))
        obs, _ = env.reset(seed=seed)
        self.obs = self.layout.batch(obs)
        self.num_envs = env.num_envs
        self.ep_ret = np.zeros(self.num_envs)
        self.ep_len = np.zeros(self.num_envs, dtype=np.int64)
        self.to_env_action = action_for_env(env.single_action_space)
        memory_size = getattr(ac, "memory_size", 0)
        self.memory = np.zeros((self.num_envs, memory_size), dtype=np.float32) if memory_size else None
        self.env_time = 0.0
        self.inference_time = 0.0

    def restart_episodes(self, obs: np.ndarray) -> None:
        """Continue from ``obs``, the first observations of new episodes in every environment (after the
        environment was reset between rollouts): the episodes in progress are abandoned, not logged."""
        self.obs = self.layout.batch(obs)
        self.ep_ret[:] = 0.0
        self.ep_len[:] = 0
        if self.memory is not None:
            self.memory[:] = 0.0
        if self.reward_scaler is not None:
            self.reward_scaler.returns[:] = 0.0

    def collect(self, buf: GAEBuffer, logger, stop: Callable[[int], bool] | None = None) -> None:
        """Run ``buf.steps`` steps of every environment into ``buf`` and finish it (GAE).

        ``stop(steps_so_far)``, asked after every step, may end the rollout early (DD-PPO's preemption):
        the buffer is finished with the steps it holds and the episodes in progress go on next time."""
        # (--precision bf16: the encoders' weights cast once a rollout, dropped before the update)
        with weights_cast_once(self.ac.device.type):
            self._collect(buf, logger, stop)

    def _collect(self, buf: GAEBuffer, logger, stop: Callable[[int], bool] | None) -> None:
        env = self.env
        buf.value_scale = 1.0 if self.value_norm is None else self.value_norm.scale
        # The weights stay fixed for the whole rollout: the policy runs in numpy (RolloutPolicy).
        policy = self.ac.rollout_policy()
        obs, memory = self.obs, self.memory
        while buf.ptr < buf.steps:
            t0 = time.perf_counter()
            act_np, val, logp, next_memory = policy.step(obs, memory)  # next_memory: None without memory
            env_act = self.to_env_action(act_np)
            t1 = time.perf_counter()
            next_obs, rew, terminated, truncated, info = env.step(env_act)
            t2 = time.perf_counter()
            self.env_time += t2 - t1
            rew = np.asarray(rew, dtype=np.float64)
            terminated, truncated = np.asarray(terminated, dtype=bool), np.asarray(truncated, dtype=bool)
            done = terminated | truncated
            self.ep_ret += rew
            self.ep_len += 1
            final_val, final_obs = None, None
            if truncated.any():
                # The value of where a truncated episode stopped: its return continues past the cut.
                idx = np.flatnonzero(truncated & ~terminated)
                if len(idx):
                    final_obs = self.layout.stack([info["final_obs"][i] for i in idx])
                    final_val = np.zeros(self.num_envs, dtype=np.float32)
                    # (a recurrent policy: with the memory the episode had reached)
                    last_memory = None if memory is None else next_memory[idx]
                    final_val[idx] = policy.value(final_obs, last_memory)
            if self.reward_scale != 1.0:
                rew = rew * self.reward_scale
            if self.reward_scaler is not None:
                rew = self.reward_scaler.scale(rew, done)
            buf.store(obs, act_np, rew, val, logp, terminated, truncated, final_val, memory, final_obs)
            if self.game_score:  # the environment's own scores, at the ends of real games only
                ended = info.get("_game_return")
                if ended is not None and np.any(ended):
                    for i in np.flatnonzero(ended):
                        logger.store(EpRet=info["game_return"][i], EpLen=info["game_length"][i])
            elif done.any():
                for i in np.flatnonzero(done):
                    logger.store(EpRet=self.ep_ret[i], EpLen=self.ep_len[i])
            if done.any():
                self.ep_ret[done] = 0.0
                self.ep_len[done] = 0
                if memory is not None:
                    next_memory[done] = 0.0  # a new episode starts with an empty memory
            obs, memory = self.layout.batch(next_obs), next_memory
            self.inference_time += time.perf_counter() - t2 + t1 - t0
            if stop is not None and buf.ptr < buf.steps and stop(buf.ptr):
                break
        self.obs, self.memory = obs, memory
        buf.finish(policy.value(obs, memory))
        # (a preempted rollout: the steps it has; in the rewards' units)
        logger.store(VVals=buf.val[: buf.filled].reshape(-1) * buf.value_scale)
