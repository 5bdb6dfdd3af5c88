"""Replaying a policy in its run's environment: the environment rebuilt, episodes run, a summary.

``read_env_spec`` reads the environment a run trained on from its config.json, ``make_run_env`` makes it
again (an Atari game's evaluation variant: whole games, real scores; a Unity build's agents as a
VectorEnv), and ``run_policy`` plays episodes with a ``get_action`` (``policies.load_policy``'s, or any
function from observation to action) and returns them as ``Episode(ret, length)``.
"""

from __future__ import annotations

import os
import os.path as osp
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from spinppo.envs.atari import SCREEN
from spinppo.envs.registry import saved_env_spec
from spinppo.envs.spaces import action_for_env
from spinppo.tools.video import headless_gl, render_frame
from spinppo.utils.errors import UserError, first_line
from spinppo.utils.logx import read_run_config


def _raised_in(e: BaseException, package: str) -> bool:
    """Whether the traceback of ``e`` passes through ``package``'s files."""
    tb = e.__traceback__
    while tb is not None:
        if f"{os.sep}{package}{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def read_env_spec(run_dir: str) -> dict[str, Any]:
    """The environment a run trained on, from its config.json's ``env_fn``, checked.

    Returns ``{"kind": "gym", "atari" or "unity", "env": gymnasium id or build path, "env_kwargs": dict,
    ...}`` (``saved_env_spec``'s answer: an Atari game's also has its ``frame_size``). A
    config.json that is missing, unreadable, or whose ``env_fn`` is not that (a hand-edited or damaged
    file) is a UserError naming the file and the key.
    """
    return saved_env_spec(read_run_config(run_dir), osp.join(run_dir, "config.json"))


def make_run_env(
    spec: dict[str, Any],
    render_mode: str | None = None,
    base_port: int = 5005,
    seed: int = 0,
) -> Any:
    """The run's environment from ``spec`` (``read_env_spec``'s answer): a gymnasium Env (an Atari game's
    evaluation variant: whole games, real rewards), or a VectorEnv of agents for a Unity build
    (``render_mode="human"`` starts the player with graphics, as does a behavior with a camera; ``base_port``
    and ``seed`` go to its launch).
    Failures to make it are UserErrors."""
    kind, target, env_kwargs = spec["kind"], spec["env"], spec["env_kwargs"]
    if kind in ("gym", "atari"):
        import gymnasium as gym

        from spinppo.envs.registry import make_env

        headless_gl()
        try:
            return make_env(
                target,
                env_kwargs,
                render_mode=render_mode,
                kind=kind,
                training=False,
                frame_size=spec.get("frame_size", SCREEN),
            )
        except gym.error.Error as e:
            raise UserError(f"cannot make the run's environment {target!r} ({first_line(e)})") from None
        except Exception as e:
            # MuJoCo loads its OpenGL backend (MUJOCO_GL) when imported: a backend missing here fails there.
            gl = os.environ.get("MUJOCO_GL")
            if gl and _raised_in(e, "mujoco"):
                raise UserError(
                    f"cannot load MuJoCo with MUJOCO_GL={gl} ({first_line(e)}): "
                    "set MUJOCO_GL to a backend this machine has (egl, osmesa or glfw)"
                ) from None
            raise
    if kind == "unity":
        if not osp.exists(target):
            raise UserError(
                f"the run's Unity build {target} is not there any more: replay needs the build it trained on"
            )
        try:
            from spinppo.envs.registry import make_unity_vec_env

            window = render_mode == "human"
            unity_kwargs = dict(
                base_port=base_port,
                worker_id=0,
                time_scale=1.0 if window else 20.0,
                no_graphics=False if window else None,  # auto: graphics for a camera
                lessons=spec.get("lessons"),  # a curriculum's, as the replayed policy was saved
            )
            # The run's behavior and environment parameters: replay plays the behavior it trained.
            return make_unity_vec_env(
                target,
                seed=seed,
                env_kwargs=env_kwargs,
                unity_kwargs=unity_kwargs,
                environment_parameters=spec.get("environment_parameters"),
                behavior=spec.get("behavior"),
            )
        except UserError:
            raise
        except ImportError as e:
            raise UserError(f"replaying a Unity run needs mlagents-envs ({first_line(e)})") from None
        except Exception as e:  # the player failed to start or to connect
            raise UserError(f"cannot start the Unity build {target} ({first_line(e)})") from None
    raise ValueError(f"env_fn kind {kind!r}: read_env_spec lets only 'gym', 'atari' and 'unity' through")


class Episode(NamedTuple):
    """One replayed episode: its return (sum of the environment's rewards) and its length in steps."""

    ret: float
    length: int


def run_policy(
    env: Any,
    get_action: Callable[[Any], Any],
    max_ep_len: int | None = None,
    num_episodes: int = 10,
    render: bool = False,
    seed: int | None = None,
    frames: list[np.ndarray] | None = None,
    verbose: bool = True,
    send_as_is: bool = False,
) -> list[Episode]:
    """Run ``num_episodes`` episodes with ``get_action``; return them as ``[Episode(ret, length), ...]``.

    The first reset gets ``seed`` (later ones continue the environment's random generator), which also
    seeds torch for a stochastic policy. An episode ends when the environment terminates or truncates it,
    or after ``max_ep_len`` steps. Box actions are clipped to the bounds. With ``frames`` (a list; the
    environment made with render_mode="rgb_array") one frame per step is appended: the state acted in.
    ``render`` needs an environment made with render_mode="human" (gymnasium draws it every step).
    A gymnasium VectorEnv (a Unity build's agents) runs all its sub-environments and counts the episodes
    as they end. Prints each episode and a summary when ``verbose``. ``send_as_is``: ``get_action`` already
    gives the environment's actions (an exported .onnx policy's, clipped and shifted in its graph), so
    they are sent unchanged.
    """
    import gymnasium as gym
    import torch

    check_counts(num_episodes, max_ep_len)
    vector = isinstance(env, gym.vector.VectorEnv)
    if render and not vector and getattr(env, "render_mode", None) != "human":
        raise UserError("render=True needs an environment made with render_mode='human'")
    if seed is not None:
        torch.manual_seed(seed)
    space = env.single_action_space if vector else env.action_space
    to_env = _unchanged if send_as_is else action_for_env(space)
    if vector:
        episodes = _run_vector(env, get_action, to_env, max_ep_len, num_episodes, seed, frames, verbose)
    else:
        episodes = _run_single(env, get_action, to_env, max_ep_len, num_episodes, seed, frames, verbose)
    if verbose:
        print(summary(episodes), flush=True)
    return episodes


def check_counts(num_episodes: int, max_ep_len: int | None) -> None:
    """A UserError unless ``num_episodes`` is at least 1 and ``max_ep_len`` None or not negative."""
    if num_episodes < 1:
        raise UserError(f"--episodes must be at least 1, not {num_episodes}")
    if max_ep_len is not None and max_ep_len < 0:
        raise UserError(f"--len must be positive (or 0 for no limit), not {max_ep_len}")


def _report(i: int, ep: Episode, verbose: bool) -> None:
    if verbose:
        print(f"Episode {i} \t EpRet {ep.ret:.3f} \t EpLen {ep.length}", flush=True)


def _unchanged(action: Any) -> Any:
    return action


def _episodes_ended(get_action: Any, mask: Any = None) -> None:
    """Tell a recurrent policy's ``get_action`` (``load_policy``) that episodes ended: its memory empties."""
    ended = getattr(get_action, "episodes_ended", None)
    if ended is not None:
        ended(mask)


def _run_single(env, get_action, to_env, max_ep_len, num_episodes, seed, frames, verbose) -> list[Episode]:
    episodes: list[Episode] = []
    _episodes_ended(get_action)
    obs, _ = env.reset(seed=seed)
    ep_ret, ep_len = 0.0, 0
    while len(episodes) < num_episodes:
        if frames is not None:
            frames.append(render_frame(env))
        obs, rew, terminated, truncated, _ = env.step(to_env(get_action(obs)))
        ep_ret += float(rew)
        ep_len += 1
        if terminated or truncated or (max_ep_len and ep_len >= max_ep_len):
            episodes.append(Episode(ep_ret, ep_len))
            _report(len(episodes) - 1, episodes[-1], verbose)
            if len(episodes) < num_episodes:
                obs, _ = env.reset()
            _episodes_ended(get_action)
            ep_ret, ep_len = 0.0, 0
    return episodes


def _run_vector(env, get_action, to_env, max_ep_len, num_episodes, seed, frames, verbose) -> list[Episode]:
    if max_ep_len:
        raise UserError(
            "--len is not supported for vector environments (a Unity build's own max_step applies)"
        )
    if frames is not None:
        raise UserError("--video is not supported for vector environments such as Unity builds")
    episodes: list[Episode] = []
    obs, _ = env.reset(seed=seed)
    _episodes_ended(get_action)
    ep_ret = np.zeros(env.num_envs)
    ep_len = np.zeros(env.num_envs, dtype=np.int64)
    while len(episodes) < num_episodes:
        obs, rew, terminated, truncated, _ = env.step(to_env(get_action(obs)))
        ep_ret += np.asarray(rew, dtype=np.float64)
        ep_len += 1
        done = np.logical_or(terminated, truncated)
        _episodes_ended(get_action, done)  # each agent slot keeps its own memory until its episode ends
        for i in np.flatnonzero(done):
            if len(episodes) < num_episodes:
                episodes.append(Episode(float(ep_ret[i]), int(ep_len[i])))
                _report(len(episodes) - 1, episodes[-1], verbose)
            ep_ret[i], ep_len[i] = 0.0, 0
    return episodes


def summary(episodes: Sequence[Episode]) -> str:
    """One line: mean, standard deviation, min and max of the returns, and the mean length."""
    rets = np.array([e.ret for e in episodes], dtype=np.float64)
    lens = np.array([e.length for e in episodes], dtype=np.float64)
    return (
        f"{len(episodes)} episodes: EpRet mean {rets.mean():.3f} std {rets.std():.3f} "
        f"min {rets.min():.3f} max {rets.max():.3f}; EpLen mean {lens.mean():.1f}"
    )
