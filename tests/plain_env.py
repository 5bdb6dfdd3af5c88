"""An environment written the plainest way: its ``__init__`` takes no ``render_mode`` at all."""

import gymnasium as gym
import numpy as np


class NoRenderMode(gym.Env):
    """Walk right on a line: +1 reward a step at x >= 0, episode of 20 steps."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, scale: float = 1.0):
        self.scale = scale
        self.x, self.t = 0.0, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.t = 0.0, 0
        return np.array([self.x, 0.0], np.float32), {}

    def step(self, action):
        self.x += self.scale * (1.0 if action else -1.0)
        self.t += 1
        obs = np.array([self.x, self.t / 20], np.float32)
        return obs, float(self.x >= 0), False, self.t >= 20, {}


gym.register("NoRenderMode-v0", entry_point=NoRenderMode)
