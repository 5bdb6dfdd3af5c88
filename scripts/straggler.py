"""A straggler for benchmarks:
``--env scripts.straggler:Straggler-v0 --env_kwargs env=Walker2d-v5 delay=0.001``.

The environment ``env`` (made with gymnasium's own settings, time limit included), whose every step on MPI
rank ``slow_rank`` (default 1) first sleeps ``delay`` seconds, as a rank on a busy node of a shared
machine is slow; on the other ranks it is the environment itself. Used by ``scripts/bench_stragglers.py``.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym

from spinppo.utils.mpi_tools import proc_id


class Straggler(gym.Wrapper):
    def __init__(self, env: str, delay: float = 0.001, slow_rank: int = 1, **kwargs: Any) -> None:
        super().__init__(gym.make(env, **kwargs))
        self.delay = float(delay) if proc_id() == int(slow_rank) else 0.0

    def step(self, action):
        if self.delay:
            time.sleep(self.delay)
        return self.env.step(action)


gym.register("Straggler-v0", entry_point=Straggler)
