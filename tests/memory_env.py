"""A task that needs memory (``--env tests.memory_env:Cue-v0``): the cue is shown at the first step only and
decides the reward at the last.

Each episode lasts ``delay + 1`` steps. The first observation is ``[cue, 0]`` with the cue +1 or -1 (drawn
from the environment's generator), the observations after it ``[0, 0]``, and the last one ``[0, 1]``: the
action taken there (Discrete(2): 1 means "the cue was +1") earns +1 when it names the cue and -1 when it
does not; every other step earns 0. A policy without memory sees the same ``[0, 1]`` whatever the cue was,
so its expected return is 0 whatever it does; a policy that remembers the cue earns 1.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class Cue(gym.Env):
    """Remember the first observation's sign for ``delay`` steps; say it at the last step."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, delay: int = 3):
        self.delay = int(delay)
        self.cue, self.t = 1.0, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.cue, self.t = float(self.np_random.choice([-1.0, 1.0])), 0
        return np.array([self.cue, 0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        if self.t > self.delay:  # the last step: the action names the cue
            reward = 1.0 if (int(action) == 1) == (self.cue > 0) else -1.0
            return np.zeros(2, np.float32), reward, True, False, {}
        last = 1.0 if self.t == self.delay else 0.0
        return np.array([0.0, last], np.float32), 0.0, False, False, {}


gym.register("Cue-v0", entry_point=Cue)
