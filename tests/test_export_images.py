"""ONNX export of image policies (generic form): tiny networks with random weights for each encoder, run
with onnxruntime on random pixels, act as the torch policy does; export_onnx from a run directory and
test_policy on the .onnx file replay as the run directory does; Dict observations (image and vector) in
both forms.

Registers ``tests.test_export_images:Pixels-v0`` (a uint8 HWC image game) for the replay test.
"""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from spinppo.core.networks import MLPActorCritic
from spinppo.envs.spaces import action_for_env
from spinppo.run import main as run_main
from spinppo.tools.export import export_onnx
from spinppo.tools.onnx_runner import OnnxPolicy
from spinppo.tools.onnx_writer import gym_model, unity_model
from spinppo.tools.test_policy import load_onnx_policy_and_env, load_policy_and_env, run_policy
from spinppo.utils.errors import UserError
from spinppo.utils.logx import save_model

PIXELS = "tests.test_export_images:Pixels-v0"


class Pixels(gym.Env):
    """Random 24x24x3 uint8 frames (HWC); actions Discrete(3); 12 steps; reward 1 for action 1."""

    observation_space = gym.spaces.Box(0, 255, (24, 24, 3), np.uint8)
    action_space = gym.spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.integers(0, 256, (24, 24, 3), np.uint8), {}

    def step(self, action):
        self.t += 1
        obs = self.np_random.integers(0, 256, (24, 24, 3), np.uint8)
        return obs, float(int(action) == 1), False, self.t >= 12, {}


if PIXELS.split(":")[1] not in gym.registry:
    gym.register(PIXELS.split(":")[1], entry_point=Pixels)


def tiny(obs_space: gym.Space, act_space: gym.Space, encoder: str, gain: float = 100.0) -> MLPActorCritic:
    """A small image policy with random weights (biases too, so that they count)."""
    torch.manual_seed(0)
    ac = MLPActorCritic(obs_space, act_space, encoder=encoder, hidden_sizes=(16,))
    with torch.no_grad():
        for p in ac.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.1)
        ac.pi[-1].weight.mul_(gain)  # well-separated logits, means of some size
    return ac


def onnx_actions(ac: MLPActorCritic, act_space: gym.Space, obs: np.ndarray) -> np.ndarray:
    model = gym_model(ac, act_space)
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import] == [9]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (i,) = session.get_inputs()
    assert i.name == "obs" and i.shape == ["batch", *obs.shape[1:]]
    assert i.type == ("tensor(uint8)" if obs.dtype == np.uint8 else "tensor(float)")
    return session.run(["deterministic_actions"], {"obs": obs})[0]


def torch_actions(ac: MLPActorCritic, act_space: gym.Space, obs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return action_for_env(act_space)(ac.act(torch.as_tensor(obs), deterministic=True).action.numpy())


CASES = [  # encoder, observation shape (CHW when the first dimension is the smallest), dtype
    ("nature_cnn", (4, 36, 36), np.uint8),
    ("nature_cnn", (40, 37, 3), np.uint8),
    ("simple", (2, 20, 23), np.uint8),
    ("simple", (21, 20, 3), np.float32),
    ("resnet", (3, 15, 17), np.uint8),
    ("resnet", (16, 15, 2), np.uint8),
    ("rllib", (4, 42, 42), np.uint8),  # RLlib's 42x42 default stack: uneven "same" padding
    ("rllib", (84, 84, 2), np.float32),
]


@pytest.mark.parametrize("encoder, shape, dtype", CASES)
def test_image_policies_act_as_torch(encoder, shape, dtype):
    """Deterministic actions equal torch's: exactly for Discrete, to 1e-5 for Box (clipped to bounds)."""
    rng = np.random.default_rng(1)
    if dtype == np.uint8:
        obs_space = gym.spaces.Box(0, 255, shape, np.uint8)
        obs = rng.integers(0, 256, (8, *shape), dtype=np.uint8)
    else:
        obs_space = gym.spaces.Box(0, 1, shape, np.float32)
        obs = rng.random((8, *shape), dtype=np.float32)
    discrete = gym.spaces.Discrete(5, start=2)
    ac = tiny(obs_space, discrete, encoder)
    got, want = onnx_actions(ac, discrete, obs), torch_actions(ac, discrete, obs)
    np.testing.assert_array_equal(got, want)
    box = gym.spaces.Box(-1, 1, (3,), np.float32)
    ac = tiny(obs_space, box, encoder, gain=10.0)
    got, want = onnx_actions(ac, box, obs), torch_actions(ac, box, obs)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.ptp(want, axis=0).max() > 1e-3  # the pixels matter
    if encoder == "resnet":  # the graph has the IMPALA blocks: max-pools and residual Adds
        ops = [n.op_type for n in gym_model(ac, box).graph.node]
        assert ops.count("MaxPool") == 3 and ops.count("Add") >= 6 and ops.count("Conv") == 15


def fake_run(tmp_path, ac: MLPActorCritic, env_id: str) -> str:
    run_dir = tmp_path / "run"
    (run_dir / "pyt_save").mkdir(parents=True)
    save_model(ac, str(run_dir / "pyt_save" / "model.pt"))
    config = {"env_fn": {"kind": "gym", "env": env_id, "name": env_id, "env_kwargs": {}}}
    (run_dir / "config.json").write_text(json.dumps(config))
    return str(run_dir)


def test_export_and_replay_of_an_image_policy(tmp_path, capsys):
    """export_onnx from a run directory; test_policy on the .onnx file replays as the run directory."""
    env = gym.make(PIXELS)
    ac = tiny(env.observation_space, env.action_space, "simple")
    run_dir = fake_run(tmp_path, ac, PIXELS)
    out = export_onnx(run_dir, str(tmp_path / "pixels.onnx"))
    policy = OnnxPolicy(out)
    assert policy.form == "gym" and policy.image_shape == [24, 24, 3] and policy.obs_dtype == np.uint8
    obs = np.stack([env.reset(seed=s)[0] for s in range(16)])
    np.testing.assert_array_equal(policy.act(obs, True).action, torch_actions(ac, env.action_space, obs))
    episodes = []
    for onnx_file in (False, True):
        if onnx_file:
            made, get_action = load_onnx_policy_and_env(out, deterministic=True)
        else:
            made, get_action = load_policy_and_env(run_dir, deterministic=True)
        try:
            episodes.append(run_policy(made, get_action, num_episodes=2, seed=4, verbose=False,
                                       send_as_is=onnx_file))  # fmt: skip
        finally:
            made.close()
    assert [(e.length, e.ret) for e in episodes[0]] == [(e.length, e.ret) for e in episodes[1]]
    assert episodes[0][0].length == 12
    # The command line, with --env naming the game
    assert run_main(["test_policy", out, "-n", "1", "-d", "--env", PIXELS]) == 0
    assert "EpRet" in capsys.readouterr().out


@pytest.mark.parametrize("memory_size", [0, 8])
def test_dict_observations_export_in_both_forms_and_act_as_torch(memory_size):
    """A Dict of a uint8 HWC camera and a vector (what a Unity behavior with a camera gives): the generic
    form takes obs.<key> inputs as stored; the Unity form takes ML-Agents' obs_0 (float NCHW in [0, 1], as
    Unity feeds a visual sensor) and obs_1; both give the torch policy's actions (memory carried over 3
    steps for a recurrent one). A policy on one image Box has no Unity form (Unity runs give Dicts)."""
    image = gym.spaces.Box(0, 255, (20, 20, 3), np.uint8)
    vector = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
    space = gym.spaces.Dict({"obs_0": image, "obs_1": vector})
    ac = MLPActorCritic(
        space, gym.spaces.Discrete(3), hidden_sizes=(16,), encoder="simple", memory_size=memory_size
    )
    ac.obs_rms.update(np.random.default_rng(0).normal(1.0, 3.0, (50, 4)))
    generic = ort.InferenceSession(gym_model(ac, gym.spaces.Discrete(3)).SerializeToString())
    assert [(i.name, i.shape, i.type) for i in generic.get_inputs()][:2] == [
        ("obs.obs_0", ["batch", 20, 20, 3], "tensor(uint8)"),
        ("obs.obs_1", ["batch", 4], "tensor(float)"),
    ]
    unity = ort.InferenceSession(unity_model(ac, [[20, 20, 3], [4]]).SerializeToString())
    assert [(i.name, i.shape) for i in unity.get_inputs()][:2] == [
        ("obs_0", ["batch", 3, 20, 20]),
        ("obs_1", ["batch", 4]),
    ]
    rng = np.random.default_rng(1)
    mine = ac.initial_memory(16) if memory_size else None
    memories = {
        "generic": np.zeros((16, memory_size), np.float32),
        "unity": np.zeros((16, 1, memory_size), np.float32),
    }
    for _ in range(3 if memory_size else 1):
        pixels = rng.integers(0, 256, (16, 20, 20, 3), dtype=np.uint8)
        vectors = rng.normal(1.0, 3.0, (16, 4)).astype(np.float32)
        batch = {"obs_0": torch.from_numpy(pixels), "obs_1": torch.from_numpy(vectors)}
        want, mine = ac.act(batch, deterministic=True, memory=mine)
        feeds = {
            "generic": {"obs.obs_0": pixels, "obs.obs_1": vectors},
            "unity": {
                "obs_0": pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255,
                "obs_1": vectors,
                "action_masks": np.ones((16, 3), np.float32),
            },
        }
        for form, session, out in (
            ("generic", generic, "deterministic_actions"),
            ("unity", unity, "deterministic_discrete_actions"),
        ):
            outputs = [out]
            if memory_size:
                feeds[form]["memory_in" if form == "generic" else "recurrent_in"] = memories[form]
                outputs.append("memory_out" if form == "generic" else "recurrent_out")
            got = session.run(outputs, feeds[form])
            if memory_size:
                memories[form] = got[1]
            assert got[0].reshape(16).tolist() == want.numpy().tolist(), form
    ac = tiny(image, gym.spaces.Discrete(2), "simple")
    with pytest.raises(UserError, match="Unity form of a policy on one image Box") as e:
        unity_model(ac, [[20, 20, 3]])
    assert "\n" not in str(e.value)
