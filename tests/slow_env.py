"""CartPole with one slow rank: ``--env tests.slow_env:SlowCartPole-v0 --env_kwargs slow_rank=1 delay=0.001``.

On MPI rank ``slow_rank`` every step sleeps ``delay`` seconds, as a straggler on a shared machine would be
slow; on the other ranks it sleeps ``base_delay`` (0: plain CartPole-v1). With ``record=PATH`` each
environment appends one line to PATH when closed: its rank, its steps, and the times of its first and last
step (what the tests measure step rates with)."""

from __future__ import annotations

import json
import time

import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from spinppo.utils.mpi_tools import proc_id


class SlowCartPole(CartPoleEnv):
    def __init__(
        self,
        slow_rank: int = 1,
        delay: float = 0.001,
        base_delay: float = 0.0,
        record: str | None = None,
        render_mode: str | None = None,
    ):
        super().__init__(render_mode=render_mode)
        self.delay = float(delay) if proc_id() == int(slow_rank) else float(base_delay)
        self.record, self.steps, self.first, self.last = record, 0, None, None

    def step(self, action):
        if self.delay:
            time.sleep(self.delay)
        if self.record:
            now = time.perf_counter()
            self.first = now if self.first is None else self.first
            self.last, self.steps = now, self.steps + 1
        return super().step(action)

    def close(self):
        if self.record and self.steps:
            line = json.dumps(
                {"rank": proc_id(), "steps": self.steps, "first": self.first, "last": self.last}
            )
            with open(self.record, "a") as f:
                f.write(line + "\n")
            self.steps = 0
        super().close()


gym.register("SlowCartPole-v0", entry_point=SlowCartPole, max_episode_steps=500)
