"""CartPole with one slow rank: ``--env tests.slow_env:SlowCartPole-v0 --env_kwargs slow_rank=1 delay=0.001``.

On MPI rank ``slow_rank`` every step sleeps ``delay`` seconds, as a straggler on a shared machine would be
slow; on the other ranks it is plain CartPole-v1."""

from __future__ import annotations

import time

import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from spinppo.utils.mpi_tools import proc_id


class SlowCartPole(CartPoleEnv):
    def __init__(self, slow_rank: int = 1, delay: float = 0.001, render_mode: str | None = None):
        super().__init__(render_mode=render_mode)
        self.delay = float(delay) if proc_id() == int(slow_rank) else 0.0

    def step(self, action):
        if self.delay:
            time.sleep(self.delay)
        return super().step(action)


gym.register("SlowCartPole-v0", entry_point=SlowCartPole, max_episode_steps=500)
