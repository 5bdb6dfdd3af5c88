"""The one description of a network (``core.network_spec``): what it holds, and that both of its other
executors agree with the torch module: the numpy ``RolloutPolicy`` and the ONNX graph (onnxruntime), on
vector, image (every encoder) and LSTM networks, discrete and continuous."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from spinppo.core import rollout_policy
from spinppo.core.network_spec import (
    Activation,
    CategoricalHead,
    Conv,
    Flatten,
    GaussianHead,
    LayerNorm,
    Linear,
    MaxPool,
    Residual,
    Undescribable,
    VectorInput,
)
from spinppo.core.networks import MLPActorCritic
from spinppo.core.policy_step import PolicyAct, PolicyStep
from spinppo.tools.onnx_runner import OnnxPolicy
from spinppo.tools.onnx_writer import gym_model
from spinppo.utils.errors import UserError

VECTOR = gym.spaces.Box(-np.inf, np.inf, (5,), np.float32)
ACTIONS = {
    "box": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),  # unbounded: the graph clips nothing
    "discrete": gym.spaces.Discrete(3),
    "multidiscrete": gym.spaces.MultiDiscrete([3, 2]),
}
# Each encoder on images it fits, in each layout and dtype the encoders take.
IMAGES = {
    "nature_cnn": (gym.spaces.Box(0, 255, (36, 36, 3), np.uint8), {}),
    "simple": (gym.spaces.Box(0.0, 1.0, (3, 20, 24), np.float32), {}),
    "resnet": (gym.spaces.Box(0, 255, (15, 15, 2), np.uint8), {}),
    # RLlib's 42x42 stack: its second layer's "same" padding is uneven (a ZeroPad2d before the Conv2d)
    "rllib": (gym.spaces.Box(0, 255, (4, 42, 42), np.uint8), {}),
    "rllib-lstm": (gym.spaces.Box(0, 255, (4, 42, 42), np.uint8), {"memory_size": 8}),
}
NETWORKS = {
    "vector": (VECTOR, {}),
    "vector-lstm": (VECTOR, {"memory_size": 16}),
    **{name: (space, {"encoder": name.split("-")[0], **kw}) for name, (space, kw) in IMAGES.items()},
}


def network(obs_space, kind: str, **kwargs) -> MLPActorCritic:
    """An actor-critic with weights away from their initial values and observation statistics."""
    torch.manual_seed(0)
    ac = MLPActorCritic(obs_space, ACTIONS[kind], hidden_sizes=(16, 16), **kwargs)
    with torch.no_grad():
        for name, p in ac.named_parameters():
            if not name.startswith("encoder"):  # the encoders' own initialisation keeps pixels in range
                p.add_(torch.randn_like(p) * 0.3)
        ac.pi[-1].weight.mul_(30)  # logits far apart: the most likely action does not hang on rounding
    dim = ac.layout.vector_dim
    if dim:
        ac.obs_rms._merge(np.linspace(-1, 1, dim), np.linspace(0.5, 4.0, dim), 100.0)
    with torch.no_grad():  # logits centred over observations: the most likely action differs between them
        x = ac.layout.to_torch(observations(ac, 64, 99))
        memory = ac.initial_memory(64) if ac.memory_size else None
        feat = ac.features(x, memory)
        ac.pi[-1].bias.sub_(ac.pi(feat).mean(0))
    return ac


def observations(ac: MLPActorCritic, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    part = ac.layout.parts[0]
    if part.image:  # each image of its own brightness, so that the features differ from image to image
        level = rng.random((n, *[1] * len(part.shape)))
        pixels = np.clip(level + 0.1 * rng.standard_normal((n, *part.shape)), 0, 1)
        return (pixels * 255).astype(np.uint8) if part.dtype == np.uint8 else pixels.astype(np.float32)
    return (rng.standard_normal((n, *part.shape)) * 3).astype(np.float32)


@pytest.fixture
def warnings_said(monkeypatch):
    """A fresh record of the rollout's warnings, as a new process has."""
    monkeypatch.setattr(rollout_policy, "_warned", set())


# --------------------------------------------------------------------------------------- the records


def test_a_vector_network_is_described_layer_by_layer():
    ac = network(VECTOR, "box")
    spec = ac.network_spec()
    assert spec.inputs == (VectorInput(None, (5,)),) and spec.flat and not spec.is_dict
    assert spec.trunk == () and spec.lstm is None and spec.memory_size == 0
    assert [type(x) for x in spec.pi] == [Linear, Activation, Linear, Activation, Linear]
    assert spec.pi[1] == Activation("tanh") and spec.v[-1].weight.shape == (1, 16)
    assert isinstance(spec.head, GaussianHead) and spec.head.shape == (2,)
    np.testing.assert_array_equal(spec.head.std, ac.log_std.exp().detach().numpy())
    with torch.no_grad():  # normalize holds the statistics as the module applies them
        want = ac.normalize_obs(torch.ones(1, 5)).numpy()
    norm = spec.normalize
    ones = np.ones((1, 5), np.float32)
    np.testing.assert_array_equal(np.clip((ones - norm.mean) * norm.inv_std, -10, 10), want)
    # Weights are views of the parameters: an in-place update shows in the description.
    with torch.no_grad():
        ac.pi[0].weight[0, 0] = 123.0
    assert spec.pi[0].weight[0, 0] == 123.0


def test_options_show_as_records():
    spec = network(
        VECTOR, "multidiscrete", layer_norm=True, shared_trunk=True, activation="elu"
    ).network_spec()
    assert [type(x) for x in spec.trunk] == [Linear, LayerNorm, Activation, Linear, Activation]
    assert spec.trunk[2] == Activation("elu", 1.0) and [type(x) for x in spec.pi] == [Linear]
    assert spec.head == CategoricalHead((3, 2), (2,))
    spec = network(VECTOR, "discrete", memory_size=16).network_spec()
    assert spec.lstm.hidden == 8 and spec.lstm.weight_ih.shape == (32, 5) and spec.memory_size == 16
    assert spec.head == CategoricalHead((3,), ())


def test_each_encoder_is_described_by_its_layers():
    def kinds(name):
        space, kwargs = NETWORKS[name]
        (image,) = network(space, "discrete", **kwargs).network_spec().inputs
        return image, [type(x).__name__ for x in image.layers]

    image, layers = kinds("nature_cnn")
    assert layers == ["Conv", "Activation"] * 3 + ["Flatten", "Linear", "Activation"]
    assert image.uint8 and not image.channels_first and image.scale == 1 / 255
    image, layers = kinds("simple")
    assert not image.uint8 and image.channels_first and image.scale is None
    image, layers = kinds("resnet")
    assert layers[:4] == ["Conv", "MaxPool", "Residual", "Residual"] and layers[-4:-3] == ["Activation"]
    block = image.layers[2]
    assert isinstance(block, Residual) and [type(x) for x in block.body] == [
        Activation,
        Conv,
        Activation,
        Conv,
    ]
    assert isinstance(image.layers[1], MaxPool) and image.layers[1].pads == (0, 0, 0, 0)
    image, layers = kinds("rllib")
    convs = [x for x in image.layers if isinstance(x, Conv)]
    # 42 -> 21 (padding 1 each side), 21 -> 11 (1 before, 2 after: the ZeroPad2d's), 11 -> 1 (none)
    assert [c.pads for c in convs] == [(1, 1, 1, 1), (1, 1, 2, 2), (0, 0, 0, 0)]
    assert isinstance(image.layers[-1], Flatten)


# ------------------------------------------------------------------------- numpy policy against torch


@pytest.mark.parametrize("kind", list(ACTIONS))
@pytest.mark.parametrize("name", ["vector", "vector-lstm"])
def test_the_numpy_policy_is_the_torch_policy(name, kind, warnings_said, capsys):
    """Its log-probabilities and values are those the update computes (evaluate), its memory the LSTM's."""
    space, kwargs = NETWORKS[name]
    ac = network(space, kind, **kwargs)
    policy = ac.rollout_policy()
    assert policy.in_numpy and capsys.readouterr().err == ""  # nothing to say
    obs = observations(ac, 32, 1)
    memory = np.random.default_rng(2).standard_normal((32, ac.memory_size)).astype(np.float32)
    memory = memory if ac.memory_size else None
    step = policy.step(obs, memory)
    assert type(step) is PolicyStep and (step.memory is None) == (memory is None)
    x, act = torch.from_numpy(obs), torch.from_numpy(step.action)
    if memory is None:
        logp, _, value = ac.evaluate(x, act)
    else:  # one step of 32 sequences, each from its memory
        starts = torch.zeros(32, 1, dtype=torch.bool)
        logp, _, value = ac.evaluate(x[:, None], act[:, None], memory=torch.from_numpy(memory), starts=starts)
        torch_step = ac.step(x, torch.from_numpy(memory))
        np.testing.assert_allclose(step.memory, torch_step.memory.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(step.logp, logp.detach().numpy().reshape(-1), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(step.value, value.detach().numpy().reshape(-1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(policy.value(obs, memory), step.value)


@pytest.mark.parametrize("name", list(IMAGES))
def test_an_image_network_runs_in_torch_and_says_so_once(name, warnings_said, capsys):
    space, kwargs = NETWORKS[name]
    ac = network(space, "discrete", **kwargs)
    policy = ac.rollout_policy()
    assert not policy.in_numpy
    ac.rollout_policy()  # the next rollout's: nothing more said
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "runs the policy in torch" in err[0] and "image observations" in err[0], err
    obs = observations(ac, 6, 3)
    memory = np.zeros((6, ac.memory_size), np.float32) if ac.memory_size else None
    torch.manual_seed(4)
    got = policy.step(obs, memory)
    torch.manual_seed(4)
    want = ac.step(ac.layout.to_torch(obs), None if memory is None else torch.from_numpy(memory))
    assert type(got) is PolicyStep and (got.memory is None) == (memory is None)
    for g, w in zip(got, want, strict=True):
        if w is not None:
            np.testing.assert_array_equal(g, w.numpy())


# --------------------------------------------------------------------------------- ONNX against torch


@pytest.mark.parametrize("kind", ["box", "discrete"])
@pytest.mark.parametrize("name", list(NETWORKS))
def test_the_onnx_graph_is_the_torch_policy(name, kind, tmp_path):
    """Deterministic actions (and the memory, over three steps) of the generic graph run by onnxruntime."""
    space, kwargs = NETWORKS[name]
    ac = network(space, kind, **kwargs)
    path = tmp_path / "policy.onnx"
    path.write_bytes(gym_model(ac, ACTIONS[kind]).SerializeToString())
    policy = OnnxPolicy(str(path))
    memory = np.zeros((16, ac.memory_size), np.float32) if ac.memory_size else None
    theirs = ac.initial_memory(16) if ac.memory_size else None
    seen = set()
    for t in range(3 if ac.memory_size else 1):
        obs = observations(ac, 16, 10 + t)
        got = policy.act(obs, deterministic=True, memory=memory)
        want = ac.act(ac.layout.to_torch(obs), deterministic=True, memory=theirs)
        assert type(got) is PolicyAct and type(want) is PolicyAct
        if kind == "box":
            np.testing.assert_allclose(got.action, want.action.numpy(), rtol=1e-4, atol=1e-4)
        else:
            np.testing.assert_array_equal(got.action, want.action.numpy())
            seen.update(got.action.tolist())
        if ac.memory_size:
            np.testing.assert_allclose(got.memory, want.memory.numpy(), rtol=1e-4, atol=1e-5)
        memory, theirs = got.memory, want.memory
    assert kind == "box" or len(seen) > 1  # the observations matter


# ---------------------------------------------------------------------------- what it cannot describe


def test_a_layer_it_does_not_know_keeps_the_network_out_of_numpy_and_onnx(warnings_said, capsys):
    ac = network(VECTOR, "box")
    ac.pi[1] = torch.nn.Softplus()
    with pytest.raises(Undescribable, match="a Softplus layer"):
        ac.network_spec()
    assert not ac.rollout_policy().in_numpy
    assert "the network has a Softplus layer" in capsys.readouterr().err
    with pytest.raises(UserError, match="cannot export a network with a Softplus layer"):
        gym_model(ac, ACTIONS["box"])


def test_a_subclass_with_its_own_sampling_is_not_described():
    class Squashed(MLPActorCritic):
        def _sample(self, out):
            action, logp = super()._sample(out)
            return torch.tanh(action), logp

    with pytest.raises(Undescribable, match=r"its own _sample \(Squashed\)"):
        Squashed(VECTOR, ACTIONS["box"]).network_spec()
