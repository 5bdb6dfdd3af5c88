"""A saved policy, found and loaded: a run directory's checkpoints (torch) or an exported .onnx file
(onnxruntime), as a ``get_action`` function from raw observations to actions.

A run's policy is ``pyt_save/model.pt`` (the latest), ``pyt_save/model<N>.pt`` or ``pyt_save/model_best.pt``
(``find_checkpoint``), loaded with ``torch.load(weights_only=True)`` and rebuilt from the architecture saved
beside the weights; observation normalisation is part of the saved module. ``load_policy_and_env`` and
``load_onnx_policy_and_env`` also rebuild the environment (``replay.make_run_env``) and check that its
spaces are the ones the policy was made for.
"""

from __future__ import annotations

import json
import os
import os.path as osp
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from spinppo.envs.registry import saved_env_spec
from spinppo.tools.replay import make_run_env, read_env_spec
from spinppo.utils.errors import UserError, first_line


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
        state = None
        if ac.memory_size:
            n = batch[next(iter(batch))].shape[0] if isinstance(batch, dict) else batch.shape[0]
            state = torch.from_numpy(memory.rows(n))
        result = ac.act(batch, deterministic=deterministic, memory=state)
        if result.memory is not None:
            memory.keep(result.memory.numpy())
        action = result.action.numpy()
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


def parse_itr(text: str) -> int | str:
    """--itr's text as ``find_checkpoint`` takes it: "last", N, or the text itself (which it refuses)."""
    if re.fullmatch(r"-?\d+", text.strip()):
        return int(text)
    return text.lower() if text.lower() in ("last", "best") else text


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
    from spinppo.tools.onnx_runner import OnnxPolicy
    from spinppo.tools.onnx_writer import META_CTOR

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
        state = None
        if policy.memory_size:
            n = len(next(iter(batch.values()))) if isinstance(batch, dict) else len(batch)
            state = memory.rows(n)
        result = policy.act(batch, deterministic, memory=state)
        if result.memory is not None:
            memory.keep(result.memory)
        action = result.action
        if one_branch:
            action = action[:, 0]
        if not single:
            return action
        return int(action[0]) if action[0].ndim == 0 else action[0]

    get_action.episodes_ended = memory.episodes_ended  # type: ignore[attr-defined]
    return made, get_action
