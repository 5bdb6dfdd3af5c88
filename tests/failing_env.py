"""Environments that fail on purpose, for the failure tests (``--env tests.failing_env:Crash-v0``)."""

import os

import gymnasium as gym
from gymnasium.envs.classic_control import CartPoleEnv


class CrashOnRank1(CartPoleEnv):
    """CartPole that raises on MPI rank 1 after 300 steps (rank 0 keeps going, into a collective)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.steps = 0

    def step(self, action):
        self.steps += 1
        if os.environ.get("PMI_RANK") == "1" and self.steps > 300:
            raise RuntimeError("simulated failure inside the environment")
        return super().step(action)


class NanReward(CartPoleEnv):
    """CartPole whose reward turns NaN after 1500 steps."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.steps = 0

    def step(self, action):
        self.steps += 1
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, float("nan") if self.steps > 1500 else reward, terminated, truncated, info


gym.register("Crash-v0", entry_point=CrashOnRank1, max_episode_steps=500)
gym.register("NanReward-v0", entry_point=NanReward, max_episode_steps=500)
