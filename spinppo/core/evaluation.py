"""Deterministic evaluation episodes during training, on copies of the environment of their own.

The training environments, their episodes in progress and every random generator training draws from are
left alone: the policy acts deterministically (the Gaussian's mean, each branch's most likely action), the
observation statistics are read, not updated, and each evaluation episode is seeded by its number. So a
run's training rows are the same with evaluation on or off, and every evaluation starts its episodes
from the same states, which makes evaluations of different epochs comparable.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from spinppo.core.encoders import ObsLayout
from spinppo.core.networks import MLPActorCritic
from spinppo.envs.spaces import action_for_env
from spinppo.utils.errors import UserError
from spinppo.utils.mpi_tools import allgather, num_procs, proc_id

# An episode of an environment without a time limit stops here (counted as it stands).
MAX_EPISODE_STEPS = 100_000


class Evaluator:
    """``episodes`` deterministic episodes per evaluation, split over the ranks: rank r plays episodes r,
    r + R, r + 2R, ... on its own copies of ``env_fn()``, all at once with one batched policy call per step.
    Episode i is reset with seed ``seed + i``. ``evaluate()`` is a collective and returns every rank's
    episodes, merged in episode order.

    An ``env_fn`` with a ``training`` keyword (EnvFactory) is called with ``training=False``: the game as
    it is scored (an Atari game without episodic life or reward clipping), not as it is trained on.
    """

    def __init__(
        self, env_fn: Callable[[], Any], ac: MLPActorCritic, episodes: int, seed: int, alone: bool = False
    ) -> None:
        self.ac = ac
        self.alone = alone  # this rank plays every episode, without collectives (A3C's rank 0)
        self.episode_ids = list(range(episodes)) if alone else list(range(proc_id(), episodes, num_procs()))
        self.seed = seed
        self.envs: list[gym.Env] = []
        try:
            takes_training = "training" in inspect.signature(env_fn).parameters
        except (TypeError, ValueError):  # a callable without a signature (some builtins)
            takes_training = False
        for _ in self.episode_ids:
            env = env_fn(training=False) if takes_training else env_fn()
            if isinstance(env, gym.vector.VectorEnv):
                env.close()
                raise UserError(
                    "--eval_freq needs an environment it can copy (a gymnasium id): this env_fn makes a "
                    "vector environment (a Unity build); evaluate with test_policy after training"
                )
            self.envs.append(env)
        self.to_env_action = action_for_env(self.envs[0].action_space) if self.envs else None
        self.layout = ObsLayout.from_space(self.envs[0].observation_space) if self.envs else None

    @torch.no_grad()
    def _play_mine(self) -> list[tuple[int, float, int]]:
        """(episode id, return, length) of this rank's episodes."""
        n = len(self.envs)
        if n == 0:
            return []
        layout = self.layout
        obs = layout.stack([env.reset(seed=self.seed + i)[0] for env, i in zip(self.envs, self.episode_ids)])
        returns, lengths = np.zeros(n), np.zeros(n, dtype=np.int64)
        running = np.ones(n, dtype=bool)
        # A recurrent policy's memory of each episode, empty at its start.
        memory = self.ac.initial_memory(n) if getattr(self.ac, "memory_size", 0) else None
        device = next(self.ac.parameters()).device  # (the policy's: a GPU's with --device cuda)
        while running.any():
            idx = np.flatnonzero(running)
            rows = torch.from_numpy(idx).to(device)
            batch = layout.to_torch(layout.take(obs, idx), device)
            out = self.ac.act(batch, deterministic=True, memory=None if memory is None else memory[rows])
            if memory is not None:
                memory[rows] = out.memory
            actions = out.action.cpu().numpy()
            for k, i in enumerate(idx):
                o, r, terminated, truncated, _ = self.envs[i].step(self.to_env_action(actions[k : k + 1])[0])
                returns[i] += float(r)
                lengths[i] += 1
                layout.assign(obs, i, o)
                if terminated or truncated or lengths[i] >= MAX_EPISODE_STEPS:
                    running[i] = False
        return [(i, float(returns[k]), int(lengths[k])) for k, i in enumerate(self.episode_ids)]

    def evaluate(self) -> tuple[list[float], list[int]]:
        """Play every rank's episodes; (returns, lengths) of all of them, in episode order, on every rank."""
        was_training = self.ac.training
        self.ac.eval()
        try:
            mine = self._play_mine()
        finally:
            self.ac.train(was_training)
        played = sorted(mine if self.alone else [e for rank in allgather(mine) for e in rank])
        return [r for _, r, _ in played], [n for _, _, n in played]

    def close(self) -> None:
        """Close the evaluation environments."""
        for env in self.envs:
            env.close()
