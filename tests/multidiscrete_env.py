"""Environments with unusual discrete action spaces: several branches (MultiDiscrete, as a Unity build
has), and a Discrete space that does not start at 0.

Registered as ``tests.multidiscrete_env:Branches-v0`` and ``tests.multidiscrete_env:Shifted-v0``:
importing this module registers them.
"""

import gymnasium as gym
import numpy as np


class Branches(gym.Env):
    """Match the observation's one-hot targets: branch 0 picks one of 3, branch 1 one of 2.

    +1 reward per branch that matches, episodes of 10 steps. ``step`` refuses an action that is not a
    MultiDiscrete action of this space (an int, a wrong shape), as a strict environment would.
    """

    observation_space = gym.spaces.Box(0.0, 1.0, (5,), np.float32)
    action_space = gym.spaces.MultiDiscrete([3, 2])

    def __init__(self) -> None:
        self.t = 0
        self.target = np.zeros(2, dtype=np.int64)

    def _obs(self) -> np.ndarray:
        obs = np.zeros(5, np.float32)
        obs[self.target[0]] = 1.0
        obs[3 + self.target[1]] = 1.0
        return obs

    def _new_target(self) -> None:
        self.target = np.array([self.np_random.integers(3), self.np_random.integers(2)])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self._new_target()
        return self._obs(), {}

    def step(self, action):
        action = np.asarray(action)
        if action.shape != (2,) or not self.action_space.contains(action):
            raise ValueError(f"Branches takes a MultiDiscrete([3, 2]) action, not {action!r}")
        reward = float(np.sum(action == self.target))
        self.t += 1
        self._new_target()
        return self._obs(), reward, False, self.t >= 10, {}


class Shifted(gym.Env):
    """Say the number shown: actions are -1, 0 or 1 (``Discrete(3, start=-1)``), +1 reward for the one in
    the observation (one-hot), 10 steps. ``step`` refuses an action outside the space."""

    observation_space = gym.spaces.Box(0.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Discrete(3, start=-1)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.target = 0, int(self.np_random.integers(-1, 2))
        return np.eye(3, dtype=np.float32)[self.target + 1], {}

    def step(self, action):
        if not self.action_space.contains(int(action)):
            raise ValueError(f"Shifted takes -1, 0 or 1, not {action!r}")
        reward = float(int(action) == self.target)
        self.t, self.target = self.t + 1, int(self.np_random.integers(-1, 2))
        return np.eye(3, dtype=np.float32)[self.target + 1], reward, False, self.t >= 10, {}


gym.register("Branches-v0", entry_point=Branches)
gym.register("Shifted-v0", entry_point=Shifted)
