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

This module is the command line; the work is in ``policies`` (finding checkpoints, loading torch and
ONNX policies), ``replay`` (the run's environment rebuilt, episodes run) and ``video``. From Python (the
names are importable from here too, as Spinning Up's are from its ``test_policy``)::

    from spinppo.tools.policies import load_onnx_policy_and_env, load_policy_and_env
    from spinppo.tools.replay import run_policy

    env, get_action = load_policy_and_env("data/ppo-walker/ppo-walker_s0", deterministic=True)
    episodes = run_policy(env, get_action, num_episodes=5)     # [Episode(ret, length), ...]
    env, get_action = load_onnx_policy_and_env("walker.onnx", deterministic=True)
    episodes = run_policy(env, get_action, num_episodes=5, send_as_is=True)
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from spinppo.tools.plot import has_display
from spinppo.tools.policies import (
    find_checkpoint,
    load_onnx_policy_and_env,
    load_policy,
    load_policy_and_env,
    parse_itr,
    run_dir_and_file,
)
from spinppo.tools.replay import Episode, check_counts, make_run_env, read_env_spec, run_policy, summary
from spinppo.tools.video import check_video_path, save_video
from spinppo.utils.errors import OneLineParser, UserError

# What ``from spinppo.tools.test_policy import ...`` gave before loading, replay and video had modules of
# their own (Spinning Up's users import load_policy_and_env and run_policy from here).
__all__ = [
    "Episode",
    "build_parser",
    "find_checkpoint",
    "load_onnx_policy_and_env",
    "load_policy",
    "load_policy_and_env",
    "main",
    "make_run_env",
    "read_env_spec",
    "run_policy",
    "save_video",
    "summary",
]


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
    check_counts(args.episodes, args.len)
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
