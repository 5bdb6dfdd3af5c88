"""What the rollout and the replay both do to a policy's actions before an environment gets them."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np


def action_for_env(space: gym.Space) -> Callable[[np.ndarray], np.ndarray]:
    """A function from the policy's actions to actions of ``space`` (a single or a batched action).

    Policies sample unbounded Gaussian actions for a Box: they are stored as sampled and clipped into the
    space's bounds (both of them; an infinite bound clips nothing) only when sent. Categorical policies
    pick 0..n-1 in each branch: a Discrete or MultiDiscrete space whose ``start`` is not 0 gets it added.
    Anything else passes unchanged.
    """
    if isinstance(space, gym.spaces.Box):
        low, high = space.low, space.high
        if not (np.isfinite(low).any() or np.isfinite(high).any()):
            return _unchanged
        # np.minimum/np.maximum: np.clip's Python wrapper costs more than the clipping at rollout sizes.
        return lambda action: np.minimum(np.maximum(action, low), high)
    if isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)) and np.any(space.start != 0):
        start = space.start
        return lambda action: action + start
    return _unchanged


def _unchanged(action: np.ndarray) -> np.ndarray:
    return action
