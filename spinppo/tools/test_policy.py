"""Replay a saved policy: ``python -m spinppo.run test_policy RUN_DIR``, as in Spinning Up.

    python -m spinppo.run test_policy data/ppo-walker/ppo-walker_s0 --episodes 5 --deterministic
    python -m spinppo.run test_policy data/ppo-hopper/ppo-hopper_s0 --itr 40 --len 300 --video hopper.mp4

The policy is ``pyt_save/model.pt`` (the latest) or ``pyt_save/model<N>.pt`` with ``--itr N``, loaded with
``torch.load(weights_only=True)`` and rebuilt from the architecture saved beside the weights; the
environment is rebuilt from ``config.json`` (environment id and keyword arguments). Observation
normalisation is part of the saved module, so the policy takes the environment's raw observations. Box,
Discrete and MultiDiscrete (a Unity build's several discrete branches) policies replay; Box actions are
clipped to the action space's bounds before they are sent, as in training.

``--video FILE`` (.mp4 or .gif) renders offscreen (``render_mode="rgb_array"``): one frame per step, the
state the policy acted in. Without a display, MUJOCO_GL is set to ``egl`` (unless already set) before
MuJoCo is loaded, so MuJoCo renders headless; ``--render`` opens a window and needs a display. A GIF
written by Pillow merges identical consecutive frames into one longer frame; an MP4 keeps every frame.

Atari runs (config kind "atari") replay whole games with the real score: the evaluation variant of the
game (no life-loss episode ends, no reward clipping), so each episode's return is the game's score. Their
videos show the full colour screen at 15 frames a second (real time: one step is 4 of 60 frames).

Unity runs (config kind "unity") are replayed through the Unity adapter: every agent of the build is a
sub-environment, episodes are counted as the agents finish them, and ``--render`` starts the player with
graphics. ``--len`` and ``--video`` are for gymnasium environments only.

An exported policy (``python -m spinppo.run export``) replays the same way from its .onnx file, run with
onnxruntime: ``test_policy OUT.onnx`` (the environment named in the file's metadata) or ``test_policy
OUT.onnx --env ENV`` (a file that names none, such as one ML-Agents wrote, or another environment). Its
actions are sent as the graph gives them (it already clips and shifts them as spinppo does); sampling
uses onnxruntime's own random generator, which ``--seed`` does not reach.

From Python::

    env, get_action = load_policy_and_env("data/ppo-walker/ppo-walker_s0", deterministic=True)
    episodes = run_policy(env, get_action, num_episodes=5)     # [Episode(ret, length), ...]
    env, get_action = load_onnx_policy_and_env("walker.onnx", deterministic=True)
    episodes = run_policy(env, get_action, num_episodes=5, send_as_is=True)
"""

from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from spinppo.envs.atari import SCREEN
from spinppo.envs.registry import saved_env_spec
from spinppo.envs.spaces import action_for_env
from spinppo.tools.plot import has_display
from spinppo.utils.errors import OneLineParser, UserError, first_line
from spinppo.utils.logx import read_run_config

VIDEO_SUFFIXES = (".mp4", ".gif")


def headless_gl() -> None:
    """Without a display, let MuJoCo render offscreen with EGL (unless MUJOCO_GL says otherwise).

    Takes effect only before MuJoCo is first imported in this process.
    """
    if not has_display() and not os.environ.get("MUJOCO_GL"):
        os.environ["MUJOCO_GL"] = "egl"


def _raised_in(e: BaseException, package: str) -> bool:
    """Whether the traceback of ``e`` passes through ``package``'s files."""
    tb = e.__traceback__
    while tb is not None:
        if f"{os.sep}{package}{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


# -------------------------------------------------------------------------------------------- checkpoints


def run_dir_and_file(path: str) -> tuple[str, str | None]:
    """(run directory, checkpoint file or None) for a run directory or a ``pyt_save/model*.pt`` path."""
    if not osp.exists(path):
        raise UserError(f"{path} does not exist: give a run directory such as data/ppo-walker/ppo-walker_s0")
    if osp.isfile(path):
        parent = osp.dirname(osp.abspath(path))
        if path.endswith(".pt") and osp.basename(parent) == "pyt_save":
            return osp.dirname(parent), path
        raise UserError(f"{path} is a file: give the run directory (it holds config.json and pyt_save/)")
    if not (osp.isdir(osp.join(path, "pyt_save")) or osp.isfile(osp.join(path, "config.json"))):
        runs = sorted(
            d for d in os.listdir(path) if osp.isfile(osp.join(path, d, "config.json"))
        )  # an experiment directory: its seeds are the runs
        if len(runs) == 1:  # an experiment with one seed: that run
            return osp.join(path, runs[0]), None
        if runs:
            shown = ", ".join(runs[:4]) + (", ..." if len(runs) > 4 else "")
            raise UserError(f"{path} holds several runs ({shown}): give one of them")
        raise UserError(f"{path} is not a run directory (no config.json or pyt_save/ in it)")
    return path, None


def checkpoints(run_dir: str) -> dict[int | str, str]:
    """The policy checkpoints of a run: ``{"last": pyt_save/model.pt, N: pyt_save/model<N>.pt, ...}``."""
    save_dir = osp.join(run_dir, "pyt_save")
    found: dict[int | str, str] = {}
    if osp.isdir(save_dir):
        for name in os.listdir(save_dir):
            m = re.fullmatch(r"model(\d*|_best)\.pt", name)
            if m:
                key: int | str = "best" if m[1] == "_best" else int(m[1]) if m[1] else "last"
                found[key] = osp.join(save_dir, name)
    return found


def find_checkpoint(run_dir: str, itr: int | str | None = "last") -> str:
    """The checkpoint file for ``itr``: "last" (or None, or -1) is model.pt, else the newest model<N>.pt;
    an integer N is model<N>.pt. A UserError listing what exists when it is missing."""
    found = checkpoints(run_dir)
    numbered = sorted(k for k in found if isinstance(k, int))
    if itr in (None, "last", -1):
        if "last" in found:
            return found["last"]
        if numbered:
            return found[numbered[-1]]
        raise UserError(
            f"no checkpoint in {osp.join(run_dir, 'pyt_save')}: the run saves its policy every save_freq "
            "epochs and at its end; wait for one or train longer"
        )
    if itr == "best":
        if "best" in found:
            return found["best"]
        raise UserError(
            f"no pyt_save/model_best.pt in {run_dir}: the run kept no best policy (train with --eval_freq N "
            "to evaluate and keep it)"
        )
    if not isinstance(itr, int) or itr < 0:
        raise UserError(f"--itr takes an iteration number, 'last' or 'best', not {itr!r}")
    if itr in found:
        return found[itr]
    have = (
        (["last"] if "last" in found else [])
        + [str(n) for n in numbered]
        + (["best"] if "best" in found else [])
    )
    raise UserError(
        f"no checkpoint for --itr {itr} in {osp.join(run_dir, 'pyt_save')}: "
        + (f"it has --itr {', '.join(have)}" if have else "it has none")
    )


def load_policy(
    path: str, itr: int | str | None = "last", deterministic: bool = False
) -> tuple[Any, Callable[[Any], Any]]:
    """(actor-critic, get_action) from a run directory (``itr`` picks its checkpoint, as in
    ``find_checkpoint``) or a ``pyt_save/model*.pt`` file, loaded weights-only.

    ``get_action(obs)`` takes one raw observation and returns one action: an int for a Discrete policy,
    an int64 array of one entry per branch for a MultiDiscrete one, a float32 array for a Box one
    (unclipped; ``run_policy`` clips to the bounds). Given a batch (2-D), it returns the batch's actions.
    ``deterministic`` takes the mean action (Box) or each branch's most likely one (Discrete).

    A recurrent policy's ``get_action`` carries its memory from call to call (one per observation of a
    batch); ``get_action.episodes_ended(mask)`` empties the memories of the episodes that ended (all of
    them when ``mask`` is None), which ``run_policy`` calls.
    """
    run_dir, file = run_dir_and_file(path)
    return _load_policy(file or find_checkpoint(run_dir, itr), deterministic)


def _load_policy(file: str, deterministic: bool) -> tuple[Any, Callable[[Any], Any]]:
    import torch

    from spinppo.core.networks import build_actor_critic
    from spinppo.utils.logx import load_model_payload

    payload = load_model_payload(file)
    ctor = payload.get("ctor")
    if not isinstance(ctor, dict):
        raise UserError(f"{file} does not say how to rebuild its network (no architecture saved with it)")
    try:
        ac = build_actor_critic(ctor)
        ac.load_state_dict(payload["state_dict"])
    except Exception as e:  # a foreign or edited architecture: TypeError, ValueError, KeyError, RuntimeError
        raise UserError(f"cannot rebuild the policy saved in {file} ({first_line(e)})") from None
    ac.eval()
    ac.requires_grad_(False)
    scalar = ac.act_shape == ()  # Discrete: one int; MultiDiscrete and Box: an array per observation
    # One observation has the rank of the policy's observation space (1 for vectors, 3 for stacked frames);
    # a Dict observation is one when its parts have their spaces' ranks.
    spec = ctor["observation"]
    parts = spec["spaces"] if spec["kind"] == "dict" else {None: spec}
    obs_rank = {key: len(part.get("shape") or ()) for key, part in parts.items()}

    def get_action(obs: Any) -> Any:
        if spec["kind"] == "dict":
            x: Any = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in obs.items()}
            key = next(iter(obs_rank))
            single = x[key].ndim == obs_rank[key]
            batch = {k: v.unsqueeze(0) for k, v in x.items()} if single else x
        else:
            x = torch.as_tensor(np.asarray(obs, dtype=np.float32))
            single = x.ndim == obs_rank[None]
            batch = x.unsqueeze(0) if single else x
        if ac.memory_size:
            n = batch[next(iter(batch))].shape[0] if isinstance(batch, dict) else batch.shape[0]
            action, next_memory = ac.act(
                batch, deterministic=deterministic, memory=torch.from_numpy(memory.rows(n))
            )
            memory.keep(next_memory.numpy())
            action = action.numpy()
        else:
            action = ac.act(batch, deterministic=deterministic).action.numpy()
        if not single:
            return action
        return int(action[0]) if scalar else action[0]

    memory = _Memories(ac.memory_size)
    get_action.episodes_ended = memory.episodes_ended  # type: ignore[attr-defined]
    return ac, get_action


class _Memories:
    """A recurrent policy's memories across ``get_action`` calls: one row per observation of the batch,
    zeros for episodes that have just begun."""

    def __init__(self, size: int) -> None:
        self.size, self.memory = size, None

    def rows(self, n: int) -> np.ndarray:
        if self.memory is None or len(self.memory) != n:
            self.memory = np.zeros((n, self.size), np.float32)
        return self.memory

    def keep(self, memory: np.ndarray) -> None:
        self.memory = np.array(memory, dtype=np.float32)

    def episodes_ended(self, mask: Any = None) -> None:
        """Empty the memories of the episodes that ended (``mask``; all of them when None)."""
        if self.memory is not None:
            if mask is None:
                self.memory = None
            else:
                self.memory[np.asarray(mask, dtype=bool)] = 0.0


# -------------------------------------------------------------------------------------------- environment


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


def check_spaces(env: Any, ctor: dict[str, Any], where: str) -> None:
    """A UserError unless ``env``'s spaces are the ones the policy (its ``ctor_spec``) was built for."""
    import gymnasium as gym

    from spinppo.core.networks import space_spec

    vector = isinstance(env, gym.vector.VectorEnv)
    obs_space = env.single_observation_space if vector else env.observation_space
    act_space = env.single_action_space if vector else env.action_space
    if ctor["observation"]["kind"] == "dict":
        if space_spec(obs_space) != ctor["observation"]:
            raise UserError(
                f"the environment's observations {obs_space} are not the ones the policy in {where} was "
                "trained on: was the environment changed?"
            )
    else:
        want = ctor["observation"]["shape"]
        if list(obs_space.shape or ()) != list(want):
            raise UserError(
                f"the environment's observations have shape {obs_space.shape}, the policy in {where} "
                f"expects {tuple(want)}: was the environment changed?"
            )
    # space_spec is how the actor-critic recorded its own action space (Box, Discrete, MultiDiscrete).
    if space_spec(act_space) != ctor["action"]:
        raise UserError(f"the environment's action space {act_space} does not fit the policy in {where}")


def load_policy_and_env(
    fpath: str,
    itr: int | str | None = "last",
    deterministic: bool = False,
    render_mode: str | None = None,
    base_port: int = 5005,
    seed: int = 0,
) -> tuple[Any, Callable[[Any], Any]]:
    """(env, get_action) for a run directory, as Spinning Up's function of the same name.

    ``fpath`` is a run directory (or one of its ``pyt_save/model*.pt`` files); ``itr`` is "last"
    (pyt_save/model.pt) or N (pyt_save/model<N>.pt); ``deterministic`` acts with the mean action (Box) or
    the most likely one of each branch (Discrete, MultiDiscrete). ``render_mode`` goes to ``gym.make``
    ("rgb_array" to record frames, "human" for a window). ``base_port`` and ``seed`` are for launching a
    Unity build (a gymnasium environment is seeded by ``run_policy``'s first reset). ``get_action`` is
    ``load_policy``'s; the caller closes ``env``. Bad input is a UserError.
    """
    run_dir, file = run_dir_and_file(fpath)
    file = file or find_checkpoint(run_dir, itr)
    ac, get_action = _load_policy(file, deterministic)
    spec = read_env_spec(run_dir)
    if spec["kind"] == "unity":  # a curriculum's lessons when this policy was saved: replay in those
        from spinppo.utils.logx import load_model_payload

        lessons = load_model_payload(file).get("lessons")
        spec["lessons"] = lessons if isinstance(lessons, dict) else None
    env = make_run_env(spec, render_mode=render_mode, base_port=base_port, seed=seed)
    try:
        check_spaces(env, ac.ctor_spec, run_dir)
    except UserError:
        env.close()
        raise
    return env, get_action


def load_onnx_policy_and_env(
    path: str,
    env: str | None = None,
    deterministic: bool = False,
    render_mode: str | None = None,
    base_port: int = 5005,
    seed: int = 0,
) -> tuple[Any, Callable[[Any], Any]]:
    """(env, get_action) for an exported .onnx policy at ``path``, run with onnxruntime.

    ``env`` is an ``--env`` value (a gymnasium id, a short name, ``unity:PATH``); without it, the
    environment the file's metadata names (spinppo's exports carry it; a UserError when there is none).
    ``get_action`` takes one raw observation (or a batch) and returns what the graph gives:
    ``deterministic_*`` or sampled actions, already as the environment takes them, so pass
    ``send_as_is=True`` to ``run_policy``. Other arguments as for ``load_policy_and_env``.
    """
    import gymnasium as gym

    from spinppo.envs.registry import resolve_env
    from spinppo.tools.onnx_policy import META_CTOR, OnnxPolicy

    if not osp.isfile(path):
        raise UserError(f"{path} does not exist: give an .onnx file written by export (or by ML-Agents)")
    policy = OnnxPolicy(path)
    if env is not None:
        choice = resolve_env(env)
        given = {"name": env, "kind": choice.kind, "env": choice.target}
        if choice.kind == "atari" and policy.image_shape is not None and policy.image_shape[1] == 42:
            given["frame_size"] = 42  # the game's frames at the size the policy takes ([4, 42, 42])
        spec = saved_env_spec({"env_fn": given}, "--env")
    elif policy.env_spec is not None:
        spec = saved_env_spec({"env_fn": policy.env_spec}, f"{path}'s metadata")
    else:
        raise UserError(f"{path} does not say which environment it plays: pass --env ENV")
    made = make_run_env(spec, render_mode=render_mode, base_port=base_port, seed=seed)
    try:
        vector = isinstance(made, gym.vector.VectorEnv)
        obs_space = made.single_observation_space if vector else made.observation_space
        act_space = made.single_action_space if vector else made.action_space
        if META_CTOR in policy.metadata:
            check_spaces(made, json.loads(policy.metadata[META_CTOR]), path)
        elif isinstance(obs_space, gym.spaces.Dict):  # sensors in order, each its input's size
            sizes = [int(np.prod(space.shape)) for space in obs_space.spaces.values()]
            if sizes != policy.obs_sizes:
                raise UserError(
                    f"the environment's sensors have {sizes} numbers each, {path} takes {policy.obs_sizes}"
                )
        elif list(obs_space.shape or ()) != [sum(policy.obs_sizes)]:
            raise UserError(
                f"the environment's observations have shape {obs_space.shape}, {path} takes "
                f"{sum(policy.obs_sizes)} numbers ({', '.join(map(str, policy.obs_sizes))} per input)"
            )
    except UserError:
        made.close()
        raise
    # The Unity form gives [batch, branches]; one branch is a Discrete space, which takes one number.
    one_branch = policy.form == "unity" and act_space.shape == ()
    obs_rank = len(obs_space.shape or (0,))  # one observation's rank (3 for an Atari game's frames)

    memory = _Memories(policy.memory_size)

    def get_action(obs: Any) -> Any:
        if isinstance(obs, dict):  # a Dict observation (a Unity behavior with cameras): by key, as given
            x: Any = {k: np.asarray(v) for k, v in obs.items()}
            single = next(iter(x.values())).ndim == policy.ranks[0]
            batch = {k: v[None] for k, v in x.items()} if single else x
        else:
            x = np.asarray(obs, dtype=np.float32)
            single = x.ndim == obs_rank
            batch = x[None] if single else x
        if policy.memory_size:
            n = len(next(iter(batch.values()))) if isinstance(batch, dict) else len(batch)
            action, next_memory = policy.act(batch, deterministic, memory=memory.rows(n))
            memory.keep(next_memory)
        else:
            action = policy.act(batch, deterministic).action
        if one_branch:
            action = action[:, 0]
        if not single:
            return action
        return int(action[0]) if action[0].ndim == 0 else action[0]

    get_action.episodes_ended = memory.episodes_ended  # type: ignore[attr-defined]
    return made, get_action


# ------------------------------------------------------------------------------------------------ running


class Episode(NamedTuple):
    """One replayed episode: its return (sum of the environment's rewards) and its length in steps."""

    ret: float
    length: int


def _follow_the_body(env: Any) -> None:
    """Make a MuJoCo environment's offscreen camera follow the body its default camera config names.

    Gymnasium's v5 environments name a body to track (Walker2d: the torso), but its renderer sets the free
    camera again at every frame (camera_id -1), so a walker walks out of the video after a few metres.
    """
    renderer = getattr(getattr(env, "unwrapped", env), "mujoco_renderer", None)
    if renderer is None or renderer.camera_id not in (None, -1):
        return  # not MuJoCo, or the user chose a camera
    import mujoco

    viewer = renderer._get_viewer("rgb_array")
    if viewer.cam.trackbodyid > 0:  # a body (0 is the world: InvertedPendulum's stays a fixed view)
        renderer.camera_id = None  # keep our camera type: the renderer resets it only for an id
        viewer.cam.type = mujoco.mjtCamera.mjCAMERA_TRACKING


def _render_frame(env: Any) -> np.ndarray:
    import gymnasium as gym

    try:
        if not getattr(env, "_spinppo_follows", False):
            _follow_the_body(env)
            env._spinppo_follows = True
        frame = env.render()
    except gym.error.DependencyNotInstalled as e:
        raise UserError(f"cannot render this environment ({first_line(e)})") from None
    except Exception as e:
        gl = os.environ.get("MUJOCO_GL", "unset")
        raise UserError(
            f"cannot render offscreen ({first_line(e)}) with MUJOCO_GL={gl}: try MUJOCO_GL=egl or osmesa"
        ) from None
    if frame is None:
        raise UserError("the environment gave no frame: it was not made with render_mode='rgb_array'")
    return np.asarray(frame)


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

    _check_counts(num_episodes, max_ep_len)
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


def _check_counts(num_episodes: int, max_ep_len: int | None) -> None:
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
            frames.append(_render_frame(env))
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


def check_video_path(path: str) -> None:
    """A UserError unless ``path`` ends in .mp4 or .gif and its folder can be made."""
    if osp.splitext(path)[1].lower() not in VIDEO_SUFFIXES:
        raise UserError(f"--video must end in {' or '.join(VIDEO_SUFFIXES)}, not {path!r}")
    try:
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror}): choose another --video") from None


def save_video(frames: Sequence[np.ndarray], path: str, fps: float = 30) -> str:
    """Write frames (H x W x 3 uint8) to ``path``: a GIF with Pillow or an MP4 with imageio-ffmpeg."""
    check_video_path(path)
    if not frames:
        raise UserError("no frames to write")
    try:
        if path.lower().endswith(".gif"):
            import imageio.v3 as iio

            iio.imwrite(path, np.stack(frames), plugin="pillow", duration=1000.0 / fps, loop=0)
        else:
            import imageio.v2 as imageio

            try:
                writer = imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, macro_block_size=2)
            except (ImportError, RuntimeError) as e:
                raise UserError(
                    f"writing .mp4 needs imageio-ffmpeg ({first_line(e)}): pip install imageio-ffmpeg"
                ) from None
            with writer:
                for frame in frames:
                    writer.append_data(np.asarray(frame))
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror or e}): choose another --video") from None
    return path


# --------------------------------------------------------------------------------------------- the command


def parse_itr(text: str) -> int | str:
    """--itr's text as ``find_checkpoint`` takes it: "last", N, or the text itself (which it refuses)."""
    if re.fullmatch(r"-?\d+", text.strip()):
        return int(text)
    return text.lower() if text.lower() in ("last", "best") else text


def build_parser() -> argparse.ArgumentParser:
    """The ``test_policy`` command's flags (Spinning Up's, plus --seed, --render, --video and --fps)."""
    p = OneLineParser(
        prog="python -m spinppo.run test_policy",
        description="Replay a saved policy in its environment and print each episode's return and length.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "fpath", help="the run directory (it holds config.json and pyt_save/), or an .onnx file from export"
    )
    p.add_argument(
        "--itr",
        "-i",
        default="last",
        help="checkpoint: 'last', N for pyt_save/model<N>.pt, or 'best' (the best evaluation, --eval_freq)",
    )
    p.add_argument("--episodes", "-n", type=int, default=10, help="episodes to run")
    p.add_argument("--len", "-l", type=int, default=0, help="cut episodes at this many steps (0: no limit)")
    p.add_argument("--deterministic", "-d", action="store_true", help="mean action (Box), argmax (Discrete)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first reset and of action sampling")
    p.add_argument("--render", action="store_true", help="show the episodes in a window (needs a display)")
    p.add_argument(
        "--norender", "-nr", action="store_true", help="no window (the default; Spinning Up's flag)"
    )
    p.add_argument("--video", metavar="FILE", help="record the episodes offscreen to FILE (.mp4 or .gif)")
    p.add_argument("--fps", type=float, help="video frames per second (None: the environment's render_fps)")
    p.add_argument("--base_port", type=int, default=5005, help="Unity runs: the player's port")
    p.add_argument(
        "--env", help=".onnx files: the environment (as ppo's --env) when the file names none, or another"
    )
    return p


def main(argv: Sequence[str]) -> int:
    """``python -m spinppo.run test_policy RUN_DIR ...`` (or ``OUT.onnx``); bad input raises UserError."""
    import gymnasium as gym

    args = build_parser().parse_args(list(argv))
    itr = parse_itr(args.itr)
    render = args.render and not args.norender
    if render and args.video:
        raise UserError(
            "--render and --video cannot be combined: an environment renders to a window or to frames"
        )
    if render and not has_display():
        raise UserError("--render needs a display (DISPLAY and WAYLAND_DISPLAY are unset): use --video FILE")
    if args.video:
        check_video_path(args.video)
    _check_counts(args.episodes, args.len)
    if args.fps is not None and args.fps <= 0:
        raise UserError(f"--fps must be positive, not {args.fps}")
    render_mode = "human" if render else "rgb_array" if args.video else None
    onnx_file = args.fpath.lower().endswith(".onnx")
    if onnx_file:
        if itr != "last":
            raise UserError("--itr picks a checkpoint of a run directory: an .onnx file holds one policy")
        env, get_action = load_onnx_policy_and_env(
            args.fpath, args.env, args.deterministic, render_mode, args.base_port, args.seed
        )
    else:
        if args.env is not None:
            raise UserError(
                "--env is for .onnx files: a run directory replays in the environment it trained on"
            )
        run_dir, _ = run_dir_and_file(args.fpath)
        if read_env_spec(run_dir)["kind"] == "unity" and (args.len or args.video):
            raise UserError(
                "--len and --video are for gymnasium runs: a Unity build ends episodes at its max_step"
            )
        env, get_action = load_policy_and_env(
            args.fpath, itr, args.deterministic, render_mode, args.base_port, args.seed
        )
    frames: list[np.ndarray] | None = [] if args.video else None
    try:
        if isinstance(env, gym.vector.VectorEnv) and (args.len or args.video):
            raise UserError(
                "--len and --video are for gymnasium runs: a Unity build ends episodes at its max_step"
            )
        run_policy(
            env, get_action, args.len or None, args.episodes, render, args.seed, frames, True, onnx_file
        )
    finally:
        env.close()
    if args.video:
        fps = args.fps or (getattr(env, "metadata", None) or {}).get("render_fps") or 30
        save_video(frames, args.video, fps)
        print(f"Video saved to {args.video} ({len(frames)} frames at {fps:g} fps)", flush=True)
    return 0
