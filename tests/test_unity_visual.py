"""Unity visual observations over the real ML-Agents protocol, against the stand-in (tests/unity_standin).

A behavior with a camera gives a gymnasium Dict: ``obs_0``, ``obs_1``, ... per sensor in Unity's order,
images as uint8 HxWxC (round(255 x Unity's [0, 1] floats)), vectors as float32. The stand-in's camera
sends float data or PNG (as Unity's CameraSensor does by default). In the "script" task the camera's
channel c is the agent's c-th observation (lineage, id, episode step) / 255, so a slot's image tells whose
it is; in the "side" task the image alone shows which of two actions earns the reward.
"""

from __future__ import annotations

import ast
import re
from collections import namedtuple

import numpy as np
import pytest
import torch

from spinppo.core.buffer import GAEBuffer
from spinppo.core.encoders import ObsLayout
from spinppo.core.networks import MLPActorCritic
from spinppo.core.rollout import RolloutWorker
from spinppo.envs.unity.vector_env import SensorLayout, UnityVectorEnv
from spinppo.utils.errors import UserError
from tests.conftest import mpirun
from tests.test_unity import free_ports, launch, no_leftover_players  # noqa: F401 (a fixture)
from tests.test_unity_memory import DIGESTS
from tests.unity_standin.build import write_build

# Three lineages, one physics step per env.step, episodes cut at 6 steps (truncated); lineage 0 terminates
# after 2, then 3 steps, lineage 1 after 4 (as in tests/test_unity_memory.py).
SCRIPT = dict(
    task="script", agents=3, decision_period=1, max_step=6, first_id=100, script={"lengths": [[2, 3], [4]]}
)
TERMINATED = {2: [0], 4: [1], 5: [0]}
TRUNCATED = {6: [2], 10: [1], 11: [0], 12: [2]}
H, W = 20, 24


def identity_image(vector: np.ndarray) -> np.ndarray:
    """The script task's camera for the flat observation [lineage, id, episode step, action]."""
    return np.broadcast_to(vector[:3].astype(np.int64) % 256, (H, W, 3)).astype(np.uint8)


def play(env, steps: int = 12):
    """reset() and ``steps`` steps with action 1 (0.5 for continuous): the results, copied."""
    out = [env.reset()]
    for _ in range(steps):
        out.append(env.step(np.full((env.num_envs, 1), 0.5, np.float32)))
    return out


@pytest.mark.parametrize("png", [False, True])
def test_visual_observations_are_a_dict_per_slot(tmp_path, png):
    """The script task with a 20x24x3 camera: the space, shapes and dtypes; every slot's image is its own
    agent's (its vector parts say whose); final_obs at terminations and truncations is a Dict observation
    of the episode's last step; and the vector parts, rewards and ends are bit for bit those of the same
    script without a camera (the flat observation, split by sensor)."""
    visual = launch(
        tmp_path / "visual", visual={"height": H, "width": W, "channels": 3, "png": png}, **SCRIPT
    )
    try:
        space = visual.single_observation_space
        assert list(space.spaces) == ["obs_0", "obs_1", "obs_2"]  # Identity, Progress, Camera
        assert [(s.shape, s.dtype) for s in space.spaces.values()] == [
            ((2,), np.float32),
            ((2,), np.float32),
            ((H, W, 3), np.uint8),
        ]
        assert visual.observation_shapes == [(2,), (2,), (H, W, 3)] and visual.obs_dim == 4
        assert visual.observation_space["obs_2"].shape == (3, H, W, 3)
        got = play(visual)
    finally:
        visual.close()
    flat = launch(tmp_path / "flat", **SCRIPT)
    try:
        want = play(flat)
    finally:
        flat.close()

    ends = {}
    for t, (mine, theirs) in enumerate(zip(got, want, strict=True)):
        obs, flat_obs = mine[0], theirs[0]
        assert sorted(obs) == ["obs_0", "obs_1", "obs_2"] and obs["obs_2"].dtype == np.uint8
        np.testing.assert_array_equal(np.concatenate([obs["obs_0"], obs["obs_1"]], 1), flat_obs)
        for slot in range(3):  # each slot's image is its own agent's
            np.testing.assert_array_equal(obs["obs_2"][slot], identity_image(flat_obs[slot]), f"{t} {slot}")
        if t == 0:
            continue
        for a, b in zip(mine[1:4], theirs[1:4], strict=True):  # reward, terminated, truncated
            np.testing.assert_array_equal(a, b)
        info, flat_info = mine[4], theirs[4]
        assert sorted(info) == sorted(flat_info)
        for slot in np.flatnonzero(info.get("_final_obs", [])):
            final, flat_final = info["final_obs"][slot], flat_info["final_obs"][slot]
            assert sorted(final) == ["obs_0", "obs_1", "obs_2"]
            np.testing.assert_array_equal(np.concatenate([final["obs_0"], final["obs_1"]]), flat_final)
            np.testing.assert_array_equal(final["obs_2"], identity_image(flat_final))
            step = int(final["obs_1"][0])
            truncated = bool(mine[3][slot])
            ends.setdefault(t, []).append((int(slot), truncated, 6 if truncated else None))
            assert (step == 6) == truncated, (t, slot, step)
    # Which slots' episodes ended at which step, how, and their final observations' episode step (6
    # exactly where max_step cut them).
    assert ends == {
        t: sorted(
            [(s, False, None) for s in TERMINATED.get(t, [])] + [(s, True, 6) for s in TRUNCATED.get(t, [])]
        )
        for t in sorted(set(TERMINATED) | set(TRUNCATED))
    }


def _starts(log) -> list[list[str]]:
    """The command-line arguments of each start of the stand-in player that wrote ``log``."""
    return [
        ast.literal_eval(m) for m in re.findall(r"started pid \d+ port \d+ args (\[.*?\])", log.read_text())
    ]


def test_a_camera_gets_graphics_unless_no_graphics_true(tmp_path, capsys):
    """Unity's cameras render nothing under -nographics (the stand-in's too: black images). By default
    (auto) a behavior with a camera has its player started again with graphics, once, with one line saying
    so, and sees its images; a later player of the same build starts with graphics at once. A vector-only
    behavior keeps -nographics and prints nothing. no_graphics=True (--no_graphics true) gives blank
    images and a warning."""
    exe = write_build(tmp_path / "visual", visual={"height": H, "width": W, "channels": 3}, **SCRIPT)
    log = tmp_path / "visual" / "unity_logs" / "rank0.log"

    def open_env(no_graphics=None, build=exe):
        return UnityVectorEnv(
            str(build),
            base_port=free_ports(),
            no_graphics=no_graphics,
            time_scale=1000,
            log_dir=str(build.parent),
            timeout_wait=30,
        )

    for _ in range(2):
        env = open_env()
        try:
            obs, _ = env.reset()
            assert not env.no_graphics
            for slot in range(3):
                np.testing.assert_array_equal(
                    obs["obs_2"][slot], identity_image(np.r_[obs["obs_0"][slot], obs["obs_1"][slot]])
                )
            assert obs["obs_2"].any()
        finally:
            env.close()
    assert _starts(log) == [["-nographics", "-batchmode"], [], []]  # started again once, then at once
    out, err = capsys.readouterr()
    assert out.count("spinppo: note:") == 1 and not err, (out, err)
    assert (
        f"spinppo: note: Unity behavior 'StandIn' has a camera (Camera {(H, W, 3)}): its player runs with "
        "graphics (auto: graphics for a camera), as ML-Agents' do"
    ) in out

    env = open_env(no_graphics=True)
    try:
        obs, _ = env.reset()
        assert not obs["obs_2"].any()  # blank
    finally:
        env.close()
    out, err = capsys.readouterr()
    assert "has a camera (Camera (20, 24, 3)) but --no_graphics true" in err and "blank images" in err

    flat = write_build(tmp_path / "flat", **SCRIPT)
    env = open_env(build=flat)
    env.close()
    assert _starts(tmp_path / "flat" / "unity_logs" / "rank0.log") == [["-nographics", "-batchmode"]]
    assert capsys.readouterr() == ("", "")


def test_no_graphics_is_true_false_or_auto(capsys):
    from spinppo.cli.flags import parse_algo_args

    def value(*flags: str):
        return parse_algo_args("ppo", ["--env", "CartPole", *flags])[1]["no_graphics"]

    assert [
        value(),
        value("--no_graphics"),
        value("--no_graphics", "false"),
        value("--no_graphics", "auto"),
    ] == [
        None,
        True,
        False,
        None,
    ]
    with pytest.raises(UserError, match="--no_graphics takes true, false or auto, not 'maybe'"):
        value("--no_graphics", "maybe")


def test_rollout_stores_images_and_bootstraps_truncations_with_final_images(tmp_path):
    """A RolloutWorker with an image network (--encoder simple) on the visual script task: the buffer holds
    uint8 images per slot, and every truncated episode is bootstrapped with V of its own last image."""
    env = launch(tmp_path, visual={"height": H, "width": W, "channels": 3}, **SCRIPT)
    try:
        torch.manual_seed(0)
        ac = MLPActorCritic(env.single_observation_space, env.single_action_space, encoder="simple")
        policy = ac.rollout_policy()
        values = []

        class Recording:
            def step(self, obs, memory=None):
                return policy.step(obs)

            def value(self, obs, memory=None):
                values.append({k: np.array(v) for k, v in obs.items()})
                return policy.value(obs)

        ac.rollout_policy = Recording
        worker = RolloutWorker(env, ac, seed=0)
        layout = ObsLayout.from_space(env.single_observation_space)
        buf = GAEBuffer(layout, (1,), 3, 12)
        worker.collect(buf, type("Logger", (), {"store": lambda self, **kw: None})())
    finally:
        env.close()
    images = buf.obs["obs_2"]
    assert images.dtype == np.uint8 and images.shape == (12, 3, H, W, 3)
    assert (images[:, :, 0, 0, 0] == np.arange(3)).all()  # every slot kept its lineage's images
    assert len(values) == len(TRUNCATED) + 1  # one bootstrap per truncating step, then the last value
    for final, slots in zip(values, TRUNCATED.values(), strict=False):
        # The lineages' own last images, at episode step 6.
        assert final["obs_2"][:, 0, 0, 0].tolist() == slots
        assert final["obs_2"][:, 0, 0, 2].tolist() == [6] * len(slots)


def test_ppo_learns_from_unity_pixels_under_mpirun_then_replays(tmp_path, cli):
    """Task "side" (8 agents per rank, 20x20 grayscale camera sent as PNG; the side to name is only in
    the image, the vector is the episode step; the players get graphics, by default, for the camera): PPO
    with --encoder simple on two ranks, 10 epochs of 320
    steps. EpRet counts right answers out of 10, chance 5: the last epoch reaches 8 (seeds 0-3 measured
    at 9.3-9.5). Both ranks end identical, test_policy replays the saved policy on the build and scores as
    well, and so does its export to ONNX in ML-Agents' form."""
    exe = write_build(
        tmp_path,
        task="side",
        agents=8,
        decision_period=1,
        max_step=0,
        visual={"height": 20, "width": 20, "channels": 1, "png": True},
    )
    data = tmp_path / "data"
    flags = f"--env unity:{exe} --data_dir {data} --base_port {free_ports(2)} --encoder simple --hid [32]"
    flags += " --steps_per_epoch 320 --epochs 10 --update_epochs 4 --minibatch_size 80 --lr 0.001"
    proc = mpirun(2, ["-c", DIGESTS, "ppo", *flags.split(), "--time_scale", "1000", "--tensorboard", "false"])
    digests = next(line for line in proc.stdout.splitlines() if line.startswith("DIGESTS")).split()[1:]
    assert len(digests) == 2 and digests[0] == digests[1], "ranks ended with different parameters"
    # The camera got graphics (under -nographics its images would be black: nothing to learn from), said
    # once, by rank 0.
    assert proc.stdout.count("has a camera (Camera (20, 20, 1)): its player runs with graphics") == 1
    (progress,) = data.glob("*/*/progress.txt")
    run_dir = progress.parent
    rows = [line.split("\t") for line in progress.read_text().splitlines()]
    returns = [float(r[rows[0].index("AverageEpRet")]) for r in rows[1:]]
    assert len(returns) == 10 and returns[-1] >= 8.0, returns
    assert returns[0] < 6.5, returns  # it started near chance

    replay_flags = ["-n", "16", "--base_port", str(free_ports())]
    replay = cli("test_policy", str(run_dir), *replay_flags)
    assert replay.returncode == 0, replay.stderr
    episodes = re.findall(r"Episode (\d+) \t EpRet (\S+) \t EpLen (\d+)", replay.stdout)
    assert len(episodes) == 16 and {int(e[2]) for e in episodes} == {10}, replay.stdout
    assert np.mean([float(e[1]) for e in episodes]) >= 8.0, replay.stdout

    # Exported in ML-Agents' form (the camera as Unity feeds it, NCHW floats, beside the vector sensor), the
    # file replays on the build as well.
    onnx_file = tmp_path / "p.onnx"
    export = cli("export", str(run_dir), "--onnx", str(onnx_file))
    assert export.returncode == 0, export.stderr
    assert re.search(r"input  obs_\d \['batch', 1, 20, 20\] tensor\(float\)", export.stdout), export.stdout
    replay = cli("test_policy", str(onnx_file), "-n", "16", "--base_port", str(free_ports()))
    assert replay.returncode == 0, replay.stderr
    episodes = re.findall(r"Episode (\d+) \t EpRet (\S+) \t EpLen (\d+)", replay.stdout)
    assert len(episodes) == 16 and np.mean([float(e[1]) for e in episodes]) >= 8.0, replay.stdout


def test_an_image_too_small_for_the_encoder_is_a_one_line_error(tmp_path):
    """The stand-in's 8x8 camera with --encoder simple (20x20 at least), on two ranks: exit 2, one line
    naming the shape and that no encoder fits, and every player stopped (the fixture checks)."""
    exe = write_build(tmp_path, task="cartpole", agents=2, visual=True)
    flags = f"--env unity:{exe} --data_dir {tmp_path / 'data'} --base_port {free_ports(2)} --encoder simple"
    proc = mpirun(2, ["-m", "spinppo.run", "ppo", *flags.split(), "--tensorboard", "false"], check=False)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert re.search(r"\(8, 8, 3\) \(8x8 pixels\) are too small for --encoder simple.*fit: none", lines[0])


Spec = namedtuple("Spec", "shape name")


def test_sensor_layout_keys_order_and_errors():
    """Keys keep Unity's order when sorted (obs_00 ... obs_11 for 12 sensors); an HxWxC image with fewer
    rows than channels, and a 2-D observation, are one-line errors; vector-only behaviors stay flat."""
    specs = [Spec((3,), "Body")] * 11 + [Spec((36, 36, 3), "Camera")]
    layout = SensorLayout("B", specs)
    assert list(layout.space.spaces) == [f"obs_{i:02d}" for i in range(12)]
    assert layout.space["obs_11"].dtype == np.uint8 and layout.vector_dim == 33
    flat = SensorLayout("B", [Spec((3,), "A"), Spec((2,), "B")])
    assert not flat.is_dict and flat.space.shape == (5,) and flat.space.dtype == np.float32
    with pytest.raises(UserError, match=r"'Strip' \(2, 64, 3\) \(HxWxC\) with fewer rows than channels"):
        SensorLayout("B", [Spec((2, 64, 3), "Strip")])
    with pytest.raises(UserError, match=r"variable-length observation 'Buffer' \(20, 6\): not supported"):
        SensorLayout("B", [Spec((20, 6), "Buffer")])
    pixels = np.array([[0.0, 1 / 255, 0.5, 254 / 255, 1.0, 1.2, -0.1]], np.float32)
    converted = SensorLayout("B", [Spec((1, 7, 1), "C")]).convert([pixels.reshape(1, 1, 7, 1)])
    assert converted["obs_0"].ravel().tolist() == [0, 1, 128, 254, 255, 255, 0]
