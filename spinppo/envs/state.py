"""Save and restore a running gymnasium environment, so a resumed run continues the very same episodes.

Gymnasium has no state API, so this goes as far as it allows:
- wrappers: their plain attributes (TimeLimit's step count, OrderEnforcing's flag, ...) and their numpy
  arrays, alone or in lists, tuples and deques (AtariPreprocessing's two max-pooled frames,
  FrameStackObservation's stack);
- MuJoCo environments: MuJoCo's full integration state (``mj_getState``) and the environment's RNG;
- Atari games (ale-py): the emulator's whole state with its random generator
  (``ale.cloneState(include_rng=True)``: RAM, CPU and TIA registers, frame counters, the sticky-action
  RNG), the environment's numpy RNG (the no-op count drawn at each reset) and, through the wrappers, the
  pooled frames, the frame stack, the lives EpisodicLife last saw and GameScore's running game return.
  A restored game continues exactly as the original would: same frames, rewards and ends under the same
  actions. Not restored: ALE's settings that are not state (the ROM, mode, difficulty, sticky-action
  probability: the restoring environment must be made with the same id and kwargs, as a resume makes it),
  and the game's sound and render window, which observations do not use;
- other Python environments (classic control, ...): the unwrapped environment's attributes, pickled.
Environments that live elsewhere (Unity) return ``None``: a resumed run starts new episodes there.
"""

from __future__ import annotations

import pickle
from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np

_PLAIN = (int, float, bool, str, type(None))


def wrapper_chain(env: gym.Env) -> list[gym.Wrapper]:
    """``env``'s wrappers, outermost first (the unwrapped environment not among them)."""
    chain = []
    while isinstance(env, gym.Wrapper):
        chain.append(env)
        env = env.env
    return chain


def _is_mujoco(env: gym.Env) -> bool:
    return hasattr(env, "model") and hasattr(env, "data") and type(env.data).__module__.startswith("mujoco")


def _is_ale(env: gym.Env) -> bool:
    return type(getattr(env, "ale", None)).__module__.startswith("ale_py")


def _saved(value: Any) -> bool:
    """Whether a wrapper's attribute is state this module saves: plain values, numpy scalars and arrays,
    and lists, tuples and deques of arrays (frame buffers). Everything else (spaces, the wrapped env) is
    made anew."""
    if isinstance(value, (_PLAIN, np.ndarray, np.generic)):  # np.generic: numpy scalars (an action)
        return True
    if isinstance(value, (list, tuple, deque)):
        return len(value) > 0 and all(isinstance(v, np.ndarray) for v in value)
    return False


def get_env_state(env: gym.Env) -> bytes | None:
    """A snapshot of ``env`` (bytes), or None when it cannot be taken."""
    wrappers = [{k: v for k, v in vars(w).items() if _saved(v)} for w in wrapper_chain(env)]
    inner = env.unwrapped
    try:
        if _is_ale(inner):
            snapshot: dict[str, Any] = {
                "ale": inner.ale.cloneState(include_rng=True),
                "rng": inner.np_random.bit_generator.state,
            }
        elif _is_mujoco(inner):
            import mujoco

            spec = mujoco.mjtState.mjSTATE_INTEGRATION
            state = np.empty(mujoco.mj_stateSize(inner.model, spec))
            mujoco.mj_getState(inner.model, inner.data, state, spec)
            snapshot = {"mujoco": state, "rng": inner.np_random.bit_generator.state}
        else:
            snapshot = {"attrs": pickle.dumps(inner.__dict__)}
    except Exception:
        return None  # not picklable (a socket, a handle): the caller starts new episodes instead
    return pickle.dumps({"wrappers": wrappers, **snapshot})


def set_env_state(env: gym.Env, blob: bytes) -> None:
    """Put ``env`` back into the state ``get_env_state`` captured (same environment id and kwargs)."""
    snapshot = pickle.loads(blob)
    for w, attrs in zip(wrapper_chain(env), snapshot["wrappers"], strict=True):
        for k, v in attrs.items():
            setattr(w, k, v)
    inner = env.unwrapped
    if "ale" in snapshot:
        inner.ale.restoreState(snapshot["ale"])
        inner.np_random.bit_generator.state = snapshot["rng"]
    elif "mujoco" in snapshot:
        import mujoco

        mujoco.mj_setState(inner.model, inner.data, snapshot["mujoco"], mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(inner.model, inner.data)
        inner.np_random.bit_generator.state = snapshot["rng"]
    else:
        inner.__dict__.update(pickle.loads(snapshot["attrs"]))


def get_vector_env_state(env: gym.vector.VectorEnv) -> list[bytes] | None:
    """Snapshots of every sub-environment of a SyncVectorEnv, or None if any cannot be taken."""
    if not isinstance(env, gym.vector.SyncVectorEnv):
        return None
    states = [get_env_state(e) for e in env.envs]
    return None if any(s is None for s in states) else states


def set_vector_env_state(env: gym.vector.VectorEnv, states: list[bytes]) -> None:
    """Restore what ``get_vector_env_state`` returned."""
    for e, s in zip(env.envs, states, strict=True):
        set_env_state(e, s)
