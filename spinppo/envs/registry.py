"""Environment names to environments.

``--env`` takes any gymnasium id (``Walker2d-v5``), a short name (``Walker`` means Walker2d-v5; ``Hopper``,
``CartPole``... mean the newest registered version), ``my_module:MyEnv-v0`` for an environment that
``my_module`` registers, or ``unity:/path/to/Build.x86_64`` for a Unity
ML-Agents build. ``Walker`` means a Unity Walker build when one is given (``unity_file`` or the
SPINPPO_UNITY_FILE environment variable), else MuJoCo's Walker2d-v5.

Atari games (ale-py) are their own kind, "atari", made with the standard preprocessing of
``envs.atari``: ``Pong``, ``Breakout``, ``SpaceInvaders``... (any game's name, any case) mean
``ALE/<Game>-v5``; any ale-py id (``ALE/Pong-v5``, the legacy ``PongNoFrameskip-v4``) is taken as it is.

Every environment is handed to the rollout as a gymnasium ``VectorEnv`` in SAME_STEP autoreset mode: when a
sub-environment's episode ends, ``step`` returns the first observation of its next episode and puts the
last observation of the finished one in ``info["final_obs"]`` (where ``info["_final_obs"]`` is True).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from spinppo.envs.atari import (
    SCREEN,
    STACK,
    atari_short_names,
    check_frame_size,
    is_atari_id,
    make_atari_env,
    register_ale,
)
from spinppo.envs.unity.params import check_environment_parameters
from spinppo.utils.errors import UserError, first_line

# Short names whose target is not simply "the newest version of the same name".
ALIASES = {"Walker": "Walker2d"}


@dataclass(frozen=True)
class EnvChoice:
    """What ``--env`` resolved to: ``kind`` is "gym" (``target`` a gymnasium id), "atari" (an ale-py id,
    made by ``envs.atari.make_atari_env``) or "unity" (a file path)."""

    kind: str
    target: str

    def describe(self, frame_size: int = SCREEN) -> str:
        """A line for the run's log saying which environment it uses (an Atari game's frames are
        ``frame_size`` pixels a side)."""
        if self.kind == "unity":
            return f"Unity ML-Agents build {self.target}"
        if self.kind == "atari":
            size = f"{frame_size}x{frame_size}"
            return f"Atari {self.target} (ale-py, {size} grayscale, 4 frames stacked, frame skip 4)"
        return f"gymnasium {self.target}"


# The kinds config.json's env_fn may record.
KINDS = ("gym", "atari", "unity")


def _gym_choice(env_id: str) -> EnvChoice:
    """A registered id as a choice: ale-py's games are "atari" (preprocessed), the rest "gym"."""
    return EnvChoice("atari" if is_atari_id(env_id) else "gym", env_id)


def _newest_versions() -> dict[str, str]:
    newest: dict[str, tuple[int, str]] = {}
    for env_id in gym.registry:
        m = re.fullmatch(r"([A-Za-z0-9_]+)-v(\d+)", env_id)
        if m and (m[1] not in newest or int(m[2]) > newest[m[1]][0]):
            newest[m[1]] = (int(m[2]), env_id)
    return {name: env_id for name, (_, env_id) in newest.items()}


def short_names() -> dict[str, str]:
    """Every short name and the gymnasium id it means."""
    newest = _newest_versions()
    names = dict(newest)
    for alias, name in ALIASES.items():
        if name in newest:
            names[alias] = newest[name]
    return names


def resolve_env(name: str, unity_file: str | None = None) -> EnvChoice:
    """Resolve an ``--env`` value; a UserError listing close matches when the name is unknown."""
    if name.startswith("unity:"):
        return EnvChoice("unity", name[len("unity:") :])
    unity_file = unity_file or os.environ.get("SPINPPO_UNITY_FILE")
    if unity_file and name.lower() == "walker":
        return EnvChoice("unity", unity_file)
    register_ale()  # ale-py's ids join gymnasium's registry (when ale-py is installed)
    if name in gym.registry:
        return _gym_choice(name)
    if ":" in name:  # gymnasium's "module:EnvId": importing the module registers the environment
        module, _, env_id = name.partition(":")
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise UserError(f"cannot import {module!r} for environment {name!r}: {e}") from None
        if env_id not in gym.registry:
            raise UserError(f"importing {module!r} registered no environment {env_id!r}")
        return EnvChoice("gym", name)
    # A game's name means its ALE/<Game>-v5 (not the legacy Pong-v4 that "newest version" would pick).
    atari = atari_short_names()
    by_lower = {k.lower(): v for k, v in atari.items()}
    if name.lower() in by_lower:
        return EnvChoice("atari", by_lower[name.lower()])
    names = short_names()
    by_lower = {k.lower(): v for k, v in names.items()}
    if name.lower() in by_lower:
        return _gym_choice(by_lower[name.lower()])
    namespaced = {k for k in gym.registry if "/" in k} if "/" in name else set()
    candidates = sorted(set(names) | {k for k in gym.registry if "/" not in k} | namespaced)
    close = difflib.get_close_matches(name, candidates, n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see gymnasium.registry for the ids"
    raise UserError(f"unknown environment {name!r}{hint}")


def make_env(
    env_id: str,
    env_kwargs: dict[str, Any] | None = None,
    render_mode: str | None = None,
    kind: str = "gym",
    training: bool = True,
    frame_size: int = SCREEN,
) -> gym.Env:
    """One gymnasium environment, with bad keyword arguments and missing extras as UserErrors.

    ``render_mode`` is passed only when given: an environment of the user's may not take it at all.
    ``kind`` "atari" makes ``env_id`` (an ale-py id) with the Atari preprocessing, its training variant
    (lives end episodes, rewards clipped) when ``training``, else whole games with the real score, its
    frames ``frame_size`` (42 or 84) pixels a side; other kinds ignore ``training`` and ``frame_size``.
    """
    if kind == "atari":
        return make_atari_env(
            env_id, env_kwargs, render_mode=render_mode, training=training, frame_size=frame_size
        )
    if env_id.startswith("ALE/"):
        register_ale()  # an ale-py id outside the "atari" kind (a replay of an .onnx file with --env)
    env_kwargs = dict(env_kwargs or {})
    if render_mode is not None:
        env_kwargs["render_mode"] = render_mode
    try:
        return gym.make(env_id, **env_kwargs)
    except TypeError as e:
        bad = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if bad is None and not env_kwargs:
            raise
        if bad and bad[1] == "render_mode" and render_mode is not None:
            raise UserError(f"{env_id} takes no render_mode, so it cannot be shown or recorded") from None
        what = f"keyword {bad[1]!r}" if bad else f"these keywords ({first_line(e)})"
        raise UserError(f"{env_id} does not take {what}: fix --env_kwargs") from None
    except gym.error.DependencyNotInstalled as e:
        raise UserError(f"{env_id} needs an extra package: {first_line(e)}") from None
    except ImportError as e:
        if ":" not in env_id:
            raise
        # gymnasium imports "module:EnvId"'s module itself (a replay on a machine without the module)
        module = env_id.partition(":")[0]
        raise UserError(f"cannot import {module!r} for environment {env_id!r}: {first_line(e)}") from None
    except Exception as e:
        if not env_kwargs or set(env_kwargs) == {"render_mode"}:
            raise  # a bug in the environment itself: its traceback is what the user needs
        shown = ", ".join(f"{k}={v!r}" for k, v in env_kwargs.items())
        raise UserError(
            f"{env_id} could not be made with {shown} ({first_line(e)}): fix --env_kwargs"
        ) from None


def make_unity_vec_env(
    file_name: str,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    unity_kwargs: dict[str, Any] | None = None,
    environment_parameters: dict[str, Any] | None = None,
    behavior: str | None = None,
) -> gym.vector.VectorEnv:
    """A Unity build as the VectorEnv a rank's rollout steps: the agents of its behavior are the
    sub-environments. ``unity_kwargs`` (base_port, worker_id, time_scale, no_graphics, listen, log_dir, and
    run_seed, lessons for the environment parameters) go to the Unity adapter; ``environment_parameters``
    (ML-Agents' section, checked) and ``behavior`` (the behavior to train; None: the first) too. The caller
    resets it (``env.reset(seed=seed)``) before the first step.
    """
    from spinppo.envs.unity import make_unity_env

    env = make_unity_env(
        file_name=file_name,
        seed=seed,
        env_kwargs=env_kwargs,
        environment_parameters=environment_parameters,
        behavior_name=behavior,
        **(unity_kwargs or {}),
    )
    env.action_space.seed(seed)
    return env


def saved_env_spec(config: dict[str, Any], where: str) -> dict[str, Any]:
    """The ``env_fn`` entry of a run's config.json (``EnvFactory.to_json``), checked: ``kind`` "gym", "atari"
    or "unity", ``env`` a gymnasium id (an ale-py id for "atari") or a build's path, ``name`` (what ``--env``
    said; ``env`` when absent) and ``env_kwargs`` a dict (null is none); for a Unity build also
    ``environment_parameters`` (ML-Agents' section, normalised: ``{}`` when the run had none) and ``behavior``
    (the trained behavior's name as given; None: the build's first); for an Atari game ``frame_size``,
    its frames' height and width (42 or 84; 84 when the entry has none, as runs before the option). A
    UserError naming ``where`` (the file) and the bad key when the entry is missing or was edited into
    something else: the one check that resume and replay share."""
    spec = config.get("env_fn")
    if not isinstance(spec, dict):
        raise UserError(
            f"{where} does not name the run's environment (env_fn is {spec!r}): a run made from Python with "
            "its own env_fn (resume it from Python with logger_kwargs=dict(output_dir=RUN, resume=True)), "
            "or an edited file"
        )
    kind, env, name = spec.get("kind"), spec.get("env"), spec.get("name", spec.get("env"))
    if kind not in KINDS:
        raise UserError(
            f"{where}: env_fn.kind is {kind!r}, not 'gym', 'atari' or 'unity': the file was edited"
        )
    for key, value in (("env", env), ("name", name)):
        if not isinstance(value, str) or not value:
            raise UserError(f"{where}: env_fn.{key} is {value!r}, not a string: the file was edited")
    env_kwargs = spec.get("env_kwargs")
    if env_kwargs is not None and not isinstance(env_kwargs, dict):
        raise UserError(f"{where}: env_fn.env_kwargs is {env_kwargs!r}, not an object: the file was edited")
    parameters = spec.get("environment_parameters")
    behavior = spec.get("behavior")
    if kind != "unity" and (parameters or behavior is not None):
        raise UserError(
            f"{where}: env_fn has environment_parameters or a behavior for a gymnasium environment"
        )
    frame_size = spec.get("frame_size", SCREEN)
    if "frame_size" in spec and kind != "atari":
        raise UserError(f"{where}: env_fn has a frame_size for a {kind} environment: the file was edited")
    try:
        frame_size = check_frame_size(frame_size)
    except UserError:
        raise UserError(
            f"{where}: env_fn.frame_size is {frame_size!r}, not 42 or 84: the file was edited"
        ) from None
    if kind == "atari":
        if not register_ale():
            raise UserError(f"{where}: the run plays the Atari game {env}: pip install ale-py")
        if not is_atari_id(env):
            raise UserError(f"{where}: env_fn.env {env!r} is not an ale-py game: the file was edited")
    if behavior is not None and (not isinstance(behavior, str) or not behavior):
        raise UserError(f"{where}: env_fn.behavior is {behavior!r}, not a string: the file was edited")
    # The section was normalised before it was saved; checking it again catches an edited file.
    parameters = check_environment_parameters(parameters, f"{where} (env_fn)")
    checked = {
        "name": name,
        "kind": kind,
        "env": env,
        "env_kwargs": dict(env_kwargs or {}),
        "environment_parameters": parameters,
        "behavior": behavior,
    }
    if kind == "atari":
        checked["frame_size"] = frame_size
    return checked


class EnvFactory:
    """A picklable ``env_fn`` for the algorithms, saved in config.json as plain values.

    Calling it gives one gymnasium Env, or for a Unity build a VectorEnv of all its agents (``unity_kwargs``
    as for ``make_unity_vec_env``). For an Atari game ``training=False`` gives the evaluation variant (whole
    games, real rewards): the evaluator and replay ask for it; ``frame_size`` (42 or 84; None: 84) is its
    frames' height and width, a UserError for any other value or any other kind of environment (which has
    no frames to size). ``environment_parameters`` is ML-Agents'
    ``environment_parameters`` section (checked, kept normalised; ``where`` names its file in errors) and
    ``behavior`` the Unity behavior to train; both need a Unity build (a UserError for gymnasium).
    """

    def __init__(
        self,
        name: str,
        env_kwargs: dict[str, Any] | None = None,
        unity_file: str | None = None,
        unity_kwargs: dict[str, Any] | None = None,
        environment_parameters: dict[str, Any] | None = None,
        behavior: str | None = None,
        where: str = "environment_parameters",
        frame_size: int | None = None,
    ) -> None:
        self.name = name
        self.choice = resolve_env(name, unity_file)
        if frame_size is not None and self.choice.kind != "atari":
            raise UserError(
                f"--frame_size sizes an Atari game's frames; {self.choice.describe()} is not an Atari game: "
                "drop it"
            )
        self.frame_size = SCREEN if frame_size is None else check_frame_size(frame_size)
        self.env_kwargs = dict(env_kwargs or {})
        self.unity_kwargs = dict(unity_kwargs or {})
        self.environment_parameters = check_environment_parameters(environment_parameters, where)
        self.behavior = behavior
        if self.choice.kind != "unity" and self.environment_parameters:
            raise UserError(
                f"environment_parameters need a Unity build; {self.choice.describe()} has none: "
                "drop them or train a Unity build (--env unity:PATH)"
            )
        if self.choice.kind != "unity" and behavior is not None:
            raise UserError(f"behavior {behavior!r} needs a Unity build; {self.choice.describe()} has none")
        if behavior is not None and (not isinstance(behavior, str) or not behavior):
            raise UserError(f"behavior must be a behavior's name, not {behavior!r}")

    def __call__(self, seed: int = 0, training: bool = True) -> gym.Env | gym.vector.VectorEnv:
        """A new environment. ``seed`` matters for Unity builds, which are seeded only at launch;
        gymnasium environments are seeded when the rollout resets them. ``training`` picks an Atari
        game's variant (``make_env``); other kinds are the same either way."""
        if self.choice.kind == "unity":
            return make_unity_vec_env(
                self.choice.target,
                seed=seed,
                env_kwargs=self.env_kwargs,
                unity_kwargs=self.unity_kwargs,
                environment_parameters=self.environment_parameters,
                behavior=self.behavior,
            )
        return make_env(
            self.choice.target,
            self.env_kwargs,
            kind=self.choice.kind,
            training=training,
            frame_size=self.frame_size,
        )

    def describe(self) -> str:
        """A line for the run's log saying which environment it makes."""
        return self.choice.describe(self.frame_size)

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """The shape of an Atari game's observations, ``(4, frame_size, frame_size)``, known before any is
        made (for checking a network against it); None for other kinds."""
        if self.choice.kind != "atari":
            return None
        return (STACK, self.frame_size, self.frame_size)

    def to_json(self) -> dict[str, Any]:
        """What config.json records, enough to make the environment again; ``environment_parameters``,
        ``behavior`` and ``frame_size`` (other than 84) only when set, so that the files of runs without
        them stay as they were."""
        spec: dict[str, Any] = {
            "name": self.name,
            "kind": self.choice.kind,
            "env": self.choice.target,
            "env_kwargs": self.env_kwargs,
        }
        if self.environment_parameters:
            spec["environment_parameters"] = self.environment_parameters
        if self.behavior is not None:
            spec["behavior"] = self.behavior
        if self.frame_size != SCREEN:
            spec["frame_size"] = self.frame_size
        return spec


def make_vector_env(env_fn: Callable[..., Any], num_envs: int, seed: int = 0) -> gym.vector.VectorEnv:
    """``env_fn()`` as the VectorEnv a rank's rollout steps: a VectorEnv is used as it is; a plain Env is
    made ``num_envs`` times (SAME_STEP autoreset).

    An ``env_fn`` that takes a ``seed`` keyword (EnvFactory does) gets this rank's seed.

    For an Atari EnvFactory the VectorEnv has ``reports_game_score = True``: episodes (lives) are not
    games there, so the rollout logs EpRet/EpLen from ``info["game_return"]``/``info["game_length"]``
    (where ``info["_game_return"]`` is True: the step a game ended) instead of its own sums of the clipped
    rewards.
    """
    atari = getattr(getattr(env_fn, "choice", None), "kind", None) == "atari"
    if "seed" in inspect.signature(env_fn).parameters:
        env_fn = functools.partial(env_fn, seed=seed)
    first = env_fn()
    if isinstance(first, gym.vector.VectorEnv):
        return first
    envs = [first] + [env_fn() for _ in range(num_envs - 1)]
    vec = SyncVectorEnv([lambda e=e: e for e in envs], autoreset_mode=AutoresetMode.SAME_STEP)
    vec.reports_game_score = atari
    return vec
