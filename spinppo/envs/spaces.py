"""What the rollout and the replay both do with an action space."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np


def action_clipper(space: gym.Space) -> Callable[[np.ndarray], np.ndarray]:
    """A function that clips actions into ``space``'s bounds (both of them), or passes them unchanged.

    Policies sample unbounded Gaussian actions; they are stored as sampled and clipped only when sent to
    the environment. Infinite bounds clip nothing; spaces other than Box are passed as they are.
    """
    if not isinstance(space, gym.spaces.Box):
        return _unchanged
    low, high = space.low, space.high
    if not (np.isfinite(low).any() or np.isfinite(high).any()):
        return _unchanged
    # np.minimum/np.maximum: np.clip's Python wrapper costs more than the clipping at rollout sizes.
    return lambda action: np.minimum(np.maximum(action, low), high)


def _unchanged(action: np.ndarray) -> np.ndarray:
    return action
