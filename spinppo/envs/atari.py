"""Atari 2600 games through ale-py, with the standard preprocessing of gymnasium's own wrappers.

``make_atari_env("ALE/Breakout-v5", {})`` gives one environment whose observations are the last 4
preprocessed frames, ``(4, 84, 84)`` uint8, channels first. The stack, from the emulator up:

- ``gym.make(id, frameskip=1, full_action_space=False, repeat_action_probability=0)``: the raw game, one
  emulator frame per step (the frame skip is the next wrappers'). ``env_kwargs`` go here too (``mode``,
  ``difficulty``...), except ``repeat_action_probability``, which goes to
- ``StickyActions`` (ours): sticky actions, as ALE draws them, but in Python (see below); it also steps
  the emulator itself, without the full-colour screen copy ale-py's step makes at every frame.
- ``AtariPreprocessing(noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True)``: a random number
  (1-30) of no-ops at every reset, each action repeated 4 frames with the last two frames max-pooled
  (sprites that flicker), 84x84 grayscale by area interpolation (``frame_size=42``: 42x42, RLlib's
  ``dim: 42``, a quarter of the pixels).
- ``FrameStackObservation(4)``: the last 4 observations (the first one repeated after a reset).
- ``GameScore`` (ours): the real score. At the step a game ends (terminated or truncated, all lives
  lost), ``info["game_return"]`` is the sum of the game's unclipped rewards and ``info["game_length"]``
  its agent steps (each 4 frames); the reset that follows repeats both keys in its info, which is where a
  SAME_STEP VectorEnv puts them at top level (with the ``_game_return`` mask; the step's own info goes to
  ``info["final_info"]``).
- training only: ``EpisodicLife`` (a lost life ends the training episode as terminated; the next reset
  continues the same game with one no-op step instead of restarting it, as SB3's and CleanRL's
  EpisodicLifeEnv do) and ``ClipReward`` (rewards become their sign: -1, 0 or 1).

Sticky actions: each id keeps its own ``repeat_action_probability``: 0.25 for ``ALE/<Game>-v5`` (Machado
et al. 2018's protocol, what the v5 ids document: at every emulator frame, with probability 0.25 the
previous frame's action is repeated instead of the new one, so a policy cannot replay a memorised action
sequence), 0 for the legacy ``<Game>NoFrameskip-v4`` ids (the setting of CleanRL's ``ppo_atari`` and of
the DQN-era figures). Scores from v5 ids are therefore not directly comparable with CleanRL's published
v4 figures; give ``--env_kwargs '{"repeat_action_probability": 0.0}'`` (or ``--env
BreakoutNoFrameskip-v4``) to compare. StickyActions draws them exactly as ALE 0.12 does (per frame; the
previous action is NOOP after a reset) but from the environment's numpy generator, with ALE's own
probability set to 0: ALE keeps the previous action outside the state ``cloneState`` saves
(``StellaEnvironment::m_actions``), so a game restored from a checkpoint would repeat a different action
than the original did, and a resumed run would drift from an uninterrupted one.
No FIRE-on-reset wrapper: Machado et al. advise against it and the policy learns to press FIRE.

Episodes end at the game's own end or at ALE's limit of 108,000 frames (27,000 agent steps, 30 minutes
of play), reported as truncated.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from spinppo.envs.state import wrapper_chain
from spinppo.utils.errors import UserError

FRAME_SKIP = 4
STACK = 4
SCREEN = 84  # the frames' height and width unless a run asks for another of FRAME_SIZES
FRAME_SIZES = (42, 84)  # 84: DQN's and CleanRL's; 42: RLlib's tuned Pong examples (model dim: 42)
NOOP_MAX = 30


def register_ale() -> bool:
    """Register ale-py's ids (``ALE/Pong-v5``, ``PongNoFrameskip-v4``...) with gymnasium; False when ale-py
    is not installed. Cheap after the first call."""
    try:
        import ale_py
    except ImportError:
        return False
    if "ALE/Pong-v5" not in gym.registry:
        gym.register_envs(ale_py)
        # ALE prints its banner at Info level for every game made: on every rank, for every sub-environment.
        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Warning)
    return True


def is_atari_id(env_id: str) -> bool:
    """Whether ``env_id`` is a registered ale-py game (any of its ids: ``ALE/Pong-v5``, ``Pong-v4``...)."""
    spec = gym.registry.get(env_id)
    return spec is not None and str(spec.entry_point).startswith("ale_py")


def atari_short_names() -> dict[str, str]:
    """Every game's short name (``Pong``, ``Breakout``, ``SpaceInvaders``...) and its ``ALE/<Game>-v5``."""
    names = {}
    for env_id in gym.registry:
        if env_id.startswith("ALE/") and env_id.endswith("-v5") and is_atari_id(env_id):
            names[env_id[len("ALE/") : -len("-v5")]] = env_id
    return names


class StickyActions(gym.Wrapper):
    """ALE's sticky actions on a one-frame-per-step game: at every frame, with probability ``p`` the
    previous frame's action is sent again instead of the new one; NOOP (action 0) after a reset. The draws
    come from the game's ``np_random`` (seeded by ``reset(seed=...)``, saved by ``envs.state``).

    Its steps return no observation (None): the wrapper above, AtariPreprocessing, reads the screens it
    needs from the emulator itself. On a game as ``gym.make`` gives it (no wrappers but OrderEnforcing and
    PassiveEnvChecker, one frame a step, discrete actions), a step goes straight to the emulator, as
    ale-py's ``AtariEnv.step`` does, without the full-colour copy of the screen that AtariEnv makes at
    every frame and the wrappers' calls: about a fifth of an environment's time (docs/benchmarks.md).
    The rewards, ends and frames are the same; any other stack steps through ``env.step``."""

    def __init__(self, env: gym.Env, p: float) -> None:
        super().__init__(env)
        self.p = float(p)
        self.last_action: Any = 0
        game = env.unwrapped
        chain = {type(w) for w in wrapper_chain(env)}
        plain = chain <= {gym.wrappers.OrderEnforcing, gym.wrappers.PassiveEnvChecker}
        # (ale-py 0.12's AtariEnv: its private names are checked, so another version steps through env.step)
        ale_py_012 = all(hasattr(game, name) for name in ("ale", "_action_set", "_get_info"))
        one_frame = getattr(game, "_frameskip", None) == 1 and not getattr(game, "continuous", True)
        direct = plain and ale_py_012 and one_frame
        self._direct = game if direct else None

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        game = self._direct
        if self.p > 0 and self.env.unwrapped.np_random.random() < self.p:
            action = self.last_action
        self.last_action = action
        if game is None:
            return None, *self.env.step(action)[1:]
        ale = game.ale  # what AtariEnv.step does with frameskip 1, less the screen copy
        reward = 0.0 + ale.act(game._action_set[action], 1.0)
        return None, reward, ale.game_over(with_truncation=False), ale.game_truncated(), game._get_info()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        self.last_action = 0
        return self.env.reset(seed=seed, options=options)


class GameScore(gym.Wrapper):
    """Reports the real game's score: ``info["game_return"]`` (unclipped rewards summed over the whole
    game, every life) and ``info["game_length"]`` (agent steps) at the step the game ends, and again in
    the info of the reset that follows. Sits below EpisodicLife, so it sees every real step and only real
    resets."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.game_return = 0.0
        self.game_length = 0
        # The finished game's figures until the next reset repeats them (None: no game just ended).
        self.last_return: float | None = None
        self.last_length = 0

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_return += float(reward)
        self.game_length += 1
        if terminated or truncated:
            info = dict(info, game_return=self.game_return, game_length=self.game_length)
            self.last_return, self.last_length = self.game_return, self.game_length
        return obs, reward, terminated, truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        if self.last_return is not None:
            info = dict(info, game_return=self.last_return, game_length=self.last_length)
        self.game_return, self.game_length, self.last_return = 0.0, 0, None
        return obs, info


class EpisodicLife(gym.Wrapper):
    """A lost life ends the training episode (terminated), but the game goes on: the reset after a lost
    life is one no-op step of the same game, a reset after the game's real end is a real reset (SB3's
    EpisodicLifeEnv). The no-op step's reward is not the learner's; GameScore below still counts it."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.lives = 0
        self.real_done = True

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.real_done = bool(terminated or truncated)
        lives = self.env.unwrapped.ale.lives()
        # lives == 0 is the game's own end (terminated already); some games count lives up or not at all.
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        if self.real_done or seed is not None:
            obs, info = self.env.reset(seed=seed, options=options)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:  # the game ended within the no-op step: a real reset
                obs, reset_info = self.env.reset(options=options)
                info = {**info, **reset_info}
        self.real_done = False
        self.lives = self.env.unwrapped.ale.lives()
        return obs, info


class ClipReward(gym.RewardWrapper):
    """Rewards as their sign, -1.0, 0.0 or 1.0 (training only: one scale for every game)."""

    def reward(self, reward: SupportsFloat) -> float:
        return float(np.sign(float(reward)))


def check_frame_size(frame_size: Any) -> int:
    """``frame_size`` as an int when it is one of ``FRAME_SIZES``, else a one-line UserError."""
    if isinstance(frame_size, bool) or frame_size not in FRAME_SIZES:
        sizes = " or ".join(str(s) for s in FRAME_SIZES)
        raise UserError(f"--frame_size must be {sizes} (pixels a side of an Atari frame), not {frame_size!r}")
    return int(frame_size)


def make_atari_env(
    env_id: str,
    env_kwargs: dict[str, Any] | None = None,
    render_mode: str | None = None,
    training: bool = True,
    frame_size: int = SCREEN,
) -> gym.Env:
    """One preprocessed Atari game (the stack of this module's docstring) for ``env_id``, a registered
    ale-py id (``ALE/Pong-v5``). ``training`` adds EpisodicLife and ClipReward; the evaluation and replay
    variant (False) plays whole games with the real rewards. ``frame_size`` (42 or 84) is the height and
    width of the grayscale frames: observations are ``(4, frame_size, frame_size)`` uint8.
    ``render_mode="rgb_array"`` renders the full colour screen (210x160) for videos;
    ``metadata["render_fps"]`` is 15, real time at 4 frames a step. Bad ``env_kwargs`` or a
    ``frame_size`` other than 42 or 84 are UserErrors."""
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    frame_size = check_frame_size(frame_size)
    if not register_ale():
        raise UserError(f"{env_id} needs ale-py: pip install 'ale-py>=0.12,<0.13'")
    env_kwargs = dict(env_kwargs or {})
    if env_kwargs.get("frameskip", 1) != 1:
        raise UserError(f"{env_id}: drop frameskip from --env_kwargs: the preprocessing skips {FRAME_SKIP}")
    if env_kwargs.get("obs_type", "rgb") not in ("rgb", "grayscale"):
        raise UserError(f"{env_id}: obs_type {env_kwargs['obs_type']!r}: the preprocessing needs the screen")
    # The id's own sticky-action probability (see the module's docstring): v5 0.25, v4 0.
    sticky = env_kwargs.pop(
        "repeat_action_probability", gym.spec(env_id).kwargs.get("repeat_action_probability", 0.25)
    )
    if not isinstance(sticky, (int, float)) or isinstance(sticky, bool) or not 0 <= sticky <= 1:
        raise UserError(f"{env_id}: repeat_action_probability must be a number in [0, 1], not {sticky!r}")
    kwargs = {"frameskip": 1, "full_action_space": False, **env_kwargs, "repeat_action_probability": 0.0}
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    try:
        env = gym.make(env_id, **kwargs)
    except TypeError as e:
        raise UserError(f"{env_id} does not take these keywords ({e}): fix --env_kwargs") from None
    except gym.error.Error as e:
        raise UserError(f"{env_id} could not be made ({e}): fix --env_kwargs") from None
    except RuntimeError as e:  # ALE itself: a mode or difficulty the game does not have
        raise UserError(f"{env_id} could not be made ({e}): fix --env_kwargs") from None
    env = AtariPreprocessing(
        StickyActions(env, sticky),
        noop_max=NOOP_MAX,
        frame_skip=FRAME_SKIP,
        screen_size=frame_size,
        grayscale_obs=True,
        terminal_on_life_loss=False,
    )
    env = FrameStackObservation(env, STACK)
    env = GameScore(env)
    if training:
        env = ClipReward(EpisodicLife(env))
    # One agent step is 4 of the console's 60 frames a second.
    env.metadata = {**env.metadata, "render_fps": 60 // FRAME_SKIP}
    return env
