"""Image encoders and observation layouts: shapes, errors, uint8 storage, and the vector path unchanged."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from spinppo.core.buffer import GAEBuffer
from spinppo.core.encoders import ENCODERS, ImageEncoder, ObsLayout
from spinppo.core.minibatches import MinibatchTable
from spinppo.core.networks import MLPActorCritic, build_actor_critic
from spinppo.utils.errors import UserError

DISCRETE = gym.spaces.Discrete(3)


def image_space(shape, dtype=np.uint8) -> gym.spaces.Box:
    return gym.spaces.Box(0, 255 if dtype == np.uint8 else 1, shape, dtype)


@pytest.mark.parametrize(
    ("name", "least", "features"), [("nature_cnn", 36, 512), ("simple", 20, 256), ("resnet", 15, 256)]
)
def test_each_encoder_takes_its_smallest_image(name, least, features):
    assert ENCODERS[name][0] == least
    for shape in [(least, least, 3), (4, least, least)]:  # channels-last and channels-first
        enc = ImageEncoder(shape, name, uint8=True)
        images = torch.randint(0, 256, (5, *shape), dtype=torch.uint8)
        out = enc(images)
        assert out.shape == (5, features) and out.dtype == torch.float32
        assert enc.out_dim == features
    with pytest.raises(UserError) as e:
        ImageEncoder((least - 1, least + 10, 3), name, uint8=True)
    message = str(e.value)
    assert "\n" not in message and f"({least - 1}, {least + 10}, 3)" in message
    fits = [n for n, (m, _) in ENCODERS.items() if m <= least - 1]
    assert f"encoders that fit: {', '.join(fits) or 'none'}" in message


def test_layout_rule_and_scaling():
    """(4, 84, 84) is channels-first, (84, 84, 3) channels-last; uint8 pixels are scaled by 1/255, float
    ones are not: the same picture as uint8 and as float/255 gives the same features."""
    from spinppo.core.encoders import image_chw

    assert image_chw((4, 84, 84)) == ((4, 84, 84), True)
    assert image_chw((84, 84, 3)) == ((3, 84, 84), False)
    torch.manual_seed(0)
    as_uint8 = ImageEncoder((20, 20, 3), "simple", uint8=True)
    torch.manual_seed(0)
    as_float = ImageEncoder((20, 20, 3), "simple", uint8=False)
    pixels = torch.randint(0, 256, (2, 20, 20, 3), dtype=torch.uint8)
    torch.testing.assert_close(as_uint8(pixels), as_float(pixels.float() / 255))
    # channels-last input is the channels-first picture transposed
    torch.manual_seed(0)
    chw = ImageEncoder((3, 20, 20), "simple", uint8=True)
    torch.testing.assert_close(chw(pixels.permute(0, 3, 1, 2)), as_uint8(pixels))


def test_bad_images_are_one_line_errors():
    with pytest.raises(UserError) as e:  # too small for the default encoder
        MLPActorCritic(image_space((24, 24, 3)), DISCRETE)
    assert "\n" not in str(e.value)
    assert "(24, 24, 3)" in str(e.value) and "nature_cnn" in str(e.value)
    assert "encoders that fit: simple, resnet" in str(e.value)
    for shape in [(84, 84), (2, 84, 84, 3)]:  # wrong number of dimensions
        with pytest.raises(UserError) as e:
            MLPActorCritic(image_space(shape), DISCRETE)
        assert "\n" not in str(e.value) and str(shape) in str(e.value) and "3 dimensions" in str(e.value)
    names = "nature_cnn, simple, resnet, rllib"
    with pytest.raises(UserError, match=f"--encoder must be one of {names}, not 'bogus'"):
        MLPActorCritic(image_space((36, 36, 3)), DISCRETE, encoder="bogus")
    with pytest.raises(UserError, match="must be a Box .a vector or an image., not discrete"):
        MLPActorCritic(gym.spaces.Dict({"a": gym.spaces.Discrete(2)}), DISCRETE)


def test_encoder_typo_on_the_command_line_is_exit_2(cli):
    proc = cli("ppo", "--env", "CartPole-v1", "--encoder", "bogus")
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--encoder must be one of nature_cnn, simple, resnet" in lines[0], proc.stderr


def test_rollout_buffer_keeps_pixels_as_uint8():
    """4096 steps of (4, 84, 84) frames: 115 MB as uint8 (462 MB had they been float32)."""
    layout = ObsLayout.from_space(image_space((4, 84, 84)))
    buf = GAEBuffer(layout, (), num_envs=1, steps=4096, discrete=True)
    assert buf.obs.dtype == np.uint8
    assert buf.obs.nbytes == 4096 * 4 * 84 * 84


def test_buffer_and_minibatches_keep_dict_observations_apart():
    space = gym.spaces.Dict({"cam": image_space((3, 20, 20)), "pos": gym.spaces.Box(-1, 1, (5,))})
    layout = ObsLayout.from_space(space)
    buf = GAEBuffer(layout, (), num_envs=2, steps=4, discrete=True)
    for t in range(4):
        obs = {"cam": np.full((2, 3, 20, 20), t, np.uint8), "pos": np.full((2, 5), t, np.float32)}
        buf.store(
            obs, np.zeros(2), np.ones(2), np.zeros(2), np.zeros(2), np.zeros(2, bool), np.zeros(2, bool)
        )
    buf.finish(np.zeros(2))
    assert layout.vectors(buf.obs).shape == (8, 5)
    batch = buf.get(normalize_adv=False)
    assert batch.obs["cam"].dtype == torch.uint8 and batch.obs["cam"].shape == (8, 3, 20, 20)
    table = MinibatchTable(batch)
    (mb,) = list(table.shuffled(8))
    assert mb.obs["cam"].dtype == torch.uint8
    # rows stay together: each row's image value equals its vector value
    assert torch.equal(mb.obs["cam"][:, 0, 0, 0].float(), mb.obs["pos"][:, 0])


def test_vector_networks_are_unchanged():
    """No encoder for vectors: the old ctor_spec (old checkpoints rebuild), the numpy rollout path, the
    same weights for a seed as an image-free build."""
    space = gym.spaces.Box(-1, 1, (6,))
    torch.manual_seed(0)
    ac = MLPActorCritic(space, DISCRETE, encoder="resnet")  # ignored for vectors
    assert "encoder" not in ac.ctor_spec and ac.encoder is None
    assert ac.rollout_policy().in_numpy
    torch.manual_seed(0)
    again = build_actor_critic(ac.ctor_spec)
    for (name, a), (_, b) in zip(ac.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_image_network_runs_in_torch_with_one_batched_call():
    ac = MLPActorCritic(image_space((20, 20, 1)), DISCRETE, hidden_sizes=(16,), encoder="simple")
    policy = ac.rollout_policy()
    assert not policy.in_numpy
    obs = np.random.randint(0, 256, (7, 20, 20, 1)).astype(np.uint8)
    action, value, logp, _ = policy.step(obs)
    assert action.shape == (7,) and value.shape == (7,) and logp.shape == (7,)
    logp2, _, value2 = ac.evaluate(torch.as_tensor(obs), torch.as_tensor(action))
    np.testing.assert_allclose(logp2.detach().numpy(), logp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(value2.detach().numpy(), value, rtol=1e-5, atol=1e-6)
    rebuilt = build_actor_critic(ac.ctor_spec)
    rebuilt.load_state_dict(ac.state_dict())
    assert torch.equal(
        rebuilt.act(torch.as_tensor(obs), True).action, ac.act(torch.as_tensor(obs), True).action
    )


def test_a_rebuilt_dict_space_keeps_the_order_of_its_parts():
    """A Dict whose keys are not in sorted order (an OrderedDict space) is rebuilt from its spec in the same
    order, so a loaded policy feeds each part to the encoder or weights it was trained with."""
    from collections import OrderedDict

    import gymnasium as gym
    import numpy as np

    from spinppo.core.encoders import ObsLayout, space_from_spec, space_spec

    space = gym.spaces.Dict(
        OrderedDict(
            b=gym.spaces.Box(-1, 1, (2,), np.float32), a=gym.spaces.Box(0, 255, (20, 20, 1), np.uint8)
        )
    )
    assert list(space.spaces) == ["b", "a"]
    rebuilt = space_from_spec(space_spec(space))
    assert list(rebuilt.spaces) == ["b", "a"]
    assert [p.key for p in ObsLayout.from_space(rebuilt).parts] == [
        p.key for p in ObsLayout.from_space(space).parts
    ]


def test_pixel_scale_sets_what_pixels_are_multiplied_by():
    """--pixel_scale 1 (RLlib's unscaled frames): the network sees the 0-255 values, where the default
    divides by 255; it is kept in ctor_spec (a rebuilt network scales as the saved one), and networks
    without it keep their old ctor_spec."""
    space = image_space((4, 42, 42))
    torch.manual_seed(0)
    unscaled = MLPActorCritic(space, DISCRETE, hidden_sizes=(), encoder="rllib", pixel_scale=1)
    default = MLPActorCritic(space, DISCRETE, hidden_sizes=(), encoder="rllib")
    default.load_state_dict(unscaled.state_dict())
    assert unscaled.ctor_spec["pixel_scale"] == 1.0 and "pixel_scale" not in default.ctor_spec
    pixels = torch.randint(0, 256, (3, 4, 42, 42), dtype=torch.uint8)
    with torch.no_grad():
        got = unscaled.encoder(pixels)
        torch.testing.assert_close(got, default.encoder(pixels.float() * 255), rtol=1e-3, atol=1e-3)
        assert not torch.allclose(got, default.encoder(pixels))
        rebuilt = build_actor_critic(unscaled.ctor_spec)
        rebuilt.load_state_dict(unscaled.state_dict())
        torch.testing.assert_close(rebuilt.encoder(pixels), got)
    # The default's own factor is not kept: such a network is the one saved without the option.
    same = MLPActorCritic(space, DISCRETE, hidden_sizes=(), encoder="rllib", pixel_scale=1 / 255)
    floats = MLPActorCritic(image_space((4, 42, 42), np.float32), DISCRETE, encoder="rllib", pixel_scale=1)
    assert "pixel_scale" not in same.ctor_spec and "pixel_scale" not in floats.ctor_spec
    with pytest.raises(UserError, match="--pixel_scale must be a positive number") as e:
        MLPActorCritic(space, DISCRETE, encoder="rllib", pixel_scale=0)
    assert "\n" not in str(e.value)


def _row_norms(weight: torch.Tensor) -> torch.Tensor:
    return weight.pow(2).sum(1).sqrt()


def _xavier_bound(weight: torch.Tensor) -> float:
    fan_out, fan_in = weight.shape[0], weight[0].numel()
    receptive = weight[0, 0].numel()
    return float(np.sqrt(6.0 / (fan_in + fan_out * receptive)))


def _assert_xavier(weight: torch.Tensor) -> None:
    """Uniform in Xavier's bound: inside it, and filling it (a large layer's largest within 5% of it, a
    small one's above a third of it), mean ~ 0."""
    bound = _xavier_bound(weight)
    top = weight.abs().max().item()
    assert bound * (0.95 if weight.numel() >= 100 else 0.33) < top <= bound
    assert abs(weight.mean().item()) < (0.1 if weight.numel() >= 100 else 0.5) * bound


def test_rllib_weight_init_starts_as_rllibs_vision_network():
    """--weight_init rllib: Xavier-uniform convolutions and logits, the value head's rows of norm 0.01
    (normc), zero biases; with dense layers the first is Xavier, the rest and the logits normc(1.0); an
    LSTM as Keras' (forget-gate bias 1). The default stays orthogonal (a value head of gain 1)."""
    space = image_space((4, 42, 42))
    torch.manual_seed(0)
    ac = MLPActorCritic(space, gym.spaces.Discrete(6), hidden_sizes=(), encoder="rllib", weight_init="rllib")
    convs = [m for m in ac.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3  # RLlib's 42x42 stack
    for conv in convs:
        _assert_xavier(conv.weight)
        assert not conv.bias.any()
    _assert_xavier(ac.pi[-1].weight)
    torch.testing.assert_close(_row_norms(ac.v[-1].weight), torch.tensor([0.01]))
    assert not ac.pi[-1].bias.any() and not ac.v[-1].bias.any()
    assert "weight_init" not in ac.ctor_spec  # initial weights only: not part of the function
    torch.manual_seed(0)
    hidden = MLPActorCritic(
        space, gym.spaces.Discrete(6), hidden_sizes=(64, 32), encoder="rllib", shared_trunk=True,
        weight_init="rllib",
    )  # fmt: skip
    first, second = [m for m in hidden.trunk.modules() if isinstance(m, torch.nn.Linear)]
    _assert_xavier(first.weight)
    torch.testing.assert_close(_row_norms(second.weight), torch.ones(32))
    torch.testing.assert_close(_row_norms(hidden.pi[-1].weight), torch.ones(6))
    torch.testing.assert_close(_row_norms(hidden.v[-1].weight), torch.tensor([0.01]))
    recurrent = MLPActorCritic(
        space, gym.spaces.Discrete(6), hidden_sizes=(), encoder="rllib", memory_size=32, weight_init="rllib"
    )
    forget = recurrent.lstm.bias_ih_l0[16:32]
    assert torch.equal(forget, torch.ones(16)) and not recurrent.lstm.bias_ih_l0[:16].any()
    _assert_xavier(recurrent.lstm.weight_ih_l0)
    _assert_xavier(recurrent.pi[-1].weight)
    _assert_xavier(recurrent.v[-1].weight)  # RLlib's LSTM wrapper's own value layer
    orthogonal = MLPActorCritic(space, gym.spaces.Discrete(6), hidden_sizes=(64,), encoder="rllib")
    torch.testing.assert_close(_row_norms(orthogonal.v[-1].weight), torch.tensor([1.0]))  # gain 1
    vectors = gym.spaces.Box(-1, 1, (5,))
    for kwargs, message in [
        ({"encoder": "nature_cnn"}, "--encoder nature_cnn is not RLlib's"),
        ({"encoder": "rllib", "space": vectors}, "these are vectors"),
        ({"encoder": "rllib", "space": gym.spaces.Dict({"a": vectors, "b": vectors})}, "these are vectors"),
    ]:
        obs_space = kwargs.pop("space", space)
        with pytest.raises(UserError, match=message) as e:
            MLPActorCritic(obs_space, DISCRETE, weight_init="rllib", **kwargs)
        assert "\n" not in str(e.value)
