"""Evaluation episodes during training, on copies of the environment of their own.

The training environments, their episodes in progress and every random generator training draws from are
left alone: the policy acts deterministically (the Gaussian's mean, each branch's most likely action) or,
with ``deterministic=False`` (``--eval_deterministic false``), samples its actions inside a fork of torch's
generators (the CPU's and the policy's GPU's) seeded from the evaluator's seed, the evaluation's draw
number (the epoch) and the rank's episodes; the observation statistics are read, not updated, and each
evaluation episode is seeded by its number. So a run's training rows are the same with evaluation on or
off, sampled or not, every evaluation starts its episodes from the same states, which makes evaluations of
different epochs comparable, and a sampled evaluation is the same on a rerun with the same seed and ranks.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from spinppo.core.encoders import ObsLayout, weights_cast_once
from spinppo.core.networks import MLPActorCritic
from spinppo.envs.spaces import action_for_env
from spinppo.utils.errors import UserError
from spinppo.utils.mpi_tools import allgather, num_procs, proc_id

# An episode of an environment without a time limit stops here (counted as it stands).
MAX_EPISODE_STEPS = 100_000
MASK64 = (1 << 64) - 1  # (SeedSequence takes no negative seed)


class Evaluator:
    """``episodes`` episodes per evaluation, split over the ranks: rank r plays episodes r, r + R, r + 2R,
    ... on its own copies of ``env_fn()``, all at once with one batched policy call per step. Episode i is
    reset with seed ``seed + i``. ``evaluate(draw)`` is a collective and returns every rank's episodes,
    merged in episode order.

    ``deterministic`` (the default): the policy's deterministic action (the Gaussian's mean, each branch's
    most likely action). False: actions sampled from the policy's distribution, as in training, from
    torch's generators forked and seeded by (``seed``, ``draw``, the rank's first episode): the caller's
    generators are left as they were, and the same ``draw`` samples the same actions again.

    An ``env_fn`` with a ``training`` keyword (EnvFactory) is called with ``training=False``: the game as
    it is scored (an Atari game without episodic life or reward clipping), not as it is trained on.
    """

    def __init__(
        self,
        env_fn: Callable[[], Any],
        ac: MLPActorCritic,
        episodes: int,
        seed: int,
        alone: bool = False,
        deterministic: bool = True,
    ) -> None:
        self.ac = ac
        self.deterministic = deterministic
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
        with weights_cast_once(device.type):  # (--precision bf16: the encoders' weights cast once)
            while running.any():
                idx = np.flatnonzero(running)
                rows = torch.from_numpy(idx).to(device)
                batch = layout.to_torch(layout.take(obs, idx), device)
                out = self.ac.act(
                    batch, deterministic=self.deterministic, memory=None if memory is None else memory[rows]
                )
                if memory is not None:
                    memory[rows] = out.memory
                actions = out.action.cpu().numpy()
                for k, i in enumerate(idx):
                    action = self.to_env_action(actions[k : k + 1])[0]
                    o, r, terminated, truncated, _ = self.envs[i].step(action)
                    returns[i] += float(r)
                    lengths[i] += 1
                    layout.assign(obs, i, o)
                    if terminated or truncated or lengths[i] >= MAX_EPISODE_STEPS:
                        running[i] = False
        return [(i, float(returns[k]), int(lengths[k])) for k, i in enumerate(self.episode_ids)]

    def evaluate(self, draw: int = 0) -> tuple[list[float], list[int]]:
        """Play every rank's episodes; (returns, lengths) of all of them, in episode order, on every rank.
        ``draw`` (the epoch, during training) seeds the sampled actions when not ``deterministic``."""
        was_training = self.ac.training
        self.ac.eval()
        try:
            if self.deterministic:
                mine = self._play_mine()
            else:
                with self._own_generators(draw):
                    mine = self._play_mine()
        finally:
            self.ac.train(was_training)
        played = sorted(mine if self.alone else [e for rank in allgather(mine) for e in rank])
        return [r for _, r, _ in played], [n for _, _, n in played]

    @contextlib.contextmanager
    def _own_generators(self, draw: int) -> Iterator[None]:
        """torch's generators that sampling draws from (the CPU's and, for a policy on a GPU, that GPU's)
        seeded for this ``draw`` and this rank's episodes, and put back as they were afterwards: training
        draws exactly what it would have drawn without this evaluation."""
        device = next(self.ac.parameters()).device
        first = self.episode_ids[0] if self.episode_ids else 0
        seed = int(np.random.SeedSequence([self.seed & MASK64, draw, first]).generate_state(1, np.uint64)[0])
        on_gpu = device.type == "cuda"
        with torch.random.fork_rng(devices=[device] if on_gpu else []):
            torch.default_generator.manual_seed(seed)
            if on_gpu:  # (torch.manual_seed would reseed every GPU, not only the forked one)
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(seed)
            yield

    def close(self) -> None:
        """Close the evaluation environments."""
        for env in self.envs:
            env.close()
