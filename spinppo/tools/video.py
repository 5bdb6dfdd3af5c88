"""Video of a replay: frames rendered offscreen, written as .mp4 or .gif.

``headless_gl`` lets MuJoCo render without a display (EGL) and must run before MuJoCo is first imported;
``render_frame`` gives the frame of the state the policy is about to act in, with the camera following
the body a MuJoCo environment names; ``save_video`` writes the frames (Pillow for GIF, which merges identical
consecutive frames into one longer frame; imageio-ffmpeg for MP4, every frame).
"""

from __future__ import annotations

import os
import os.path as osp
from collections.abc import Sequence
from typing import Any

import numpy as np

from spinppo.tools.plot import has_display
from spinppo.utils.errors import UserError, first_line

VIDEO_SUFFIXES = (".mp4", ".gif")


def headless_gl() -> None:
    """Without a display, let MuJoCo render offscreen with EGL (unless MUJOCO_GL says otherwise).

    Takes effect only before MuJoCo is first imported in this process.
    """
    if not has_display() and not os.environ.get("MUJOCO_GL"):
        os.environ["MUJOCO_GL"] = "egl"


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


def render_frame(env: Any) -> np.ndarray:
    """One frame (H x W x 3) of ``env``, made with render_mode="rgb_array"; a UserError when it cannot
    render."""
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
