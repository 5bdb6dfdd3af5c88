"""What RLlib's tuned Pong examples need: 42-pixel Atari frames (``--frame_size``), RLlib's conv stacks
(``--encoder rllib``, ``--conv_filters``, ``--conv_activation``) with RLlib's shapes and padding, their
ONNX export, and PPO's adaptive KL penalty (``--kl_coeff``, ``--kl_target``): the rule, exact resume,
identical on every rank."""

from __future__ import annotations

import json
import math

import gymnasium as gym
import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from spinppo.algos.ppo import adapt_kl_coeff
from spinppo.cli.flags import parse_algo_args
from spinppo.core.encoders import ImageEncoder, check_conv_filters, conv_stack_sizes
from spinppo.core.networks import MLPActorCritic, build_actor_critic
from spinppo.envs.registry import EnvFactory, saved_env_spec
from spinppo.tools.onnx_writer import gym_model, unity_model
from spinppo.utils.errors import UserError
from tests.conftest import mpirun, rows_without_timing

A3C = [[32, [3, 3], 2]] * 4  # RLlib's pong-a3c conv_filters (with conv_activation elu)
FRAMES_42 = gym.spaces.Box(0, 255, (4, 42, 42), np.uint8)


# --------------------------------------------------------------------------------------------- conv stacks


def rllib_reference(c: int, hw: tuple[int, int], filters: list, activation: type[nn.Module]) -> nn.Sequential:
    """RLlib's torch VisionNetwork convolutions, written from its ``same_padding`` (models/torch/misc.py):
    a ZeroPad2d of (left, right, top, bottom) before every layer but the last, the last unpadded."""
    layers, (h, w) = [], hw
    for i, (channels, (kh, kw), stride) in enumerate(filters):
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        if i < len(filters) - 1:
            out_h, out_w = math.ceil(h / sh), math.ceil(w / sw)
            pad_h, pad_w = (out_h - 1) * sh + kh - h, (out_w - 1) * sw + kw - w
            layers.append(nn.ZeroPad2d((pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)))
            h, w = out_h, out_w
        layers += [nn.Conv2d(c, channels, (kh, kw), (sh, sw)), activation()]
        c = channels
    return nn.Sequential(*layers)


@pytest.mark.parametrize(
    "shape, filters, activation, sizes, features",
    [
        ((4, 42, 42), None, "relu", [(21, 21), (11, 11), (1, 1)], 256),  # RLlib's 42x42 default
        ((84, 84, 3), None, "relu", [(21, 21), (11, 11), (1, 1)], 256),  # its 84x84 default, HWC
        ((4, 42, 42), A3C, "elu", [(21, 21), (11, 11), (6, 6), (2, 2)], 128),  # pong-a3c
        ((2, 30, 23), [[8, [5, 3], [2, 1]], [4, [3, 3], 3]], "tanh", [(15, 23), (5, 7)], 140),
    ],
)
def test_rllib_stacks_compute_what_rllibs_do(shape, filters, activation, sizes, features):
    """Same sizes, same padding (the odd pixel at the bottom and right), same outputs as RLlib's layers
    given the same weights; the features are the last layer's output, flattened."""
    torch.manual_seed(0)
    encoder = ImageEncoder(shape, "rllib", uint8=False, conv_filters=filters, conv_activation=activation)
    defaults = {(42, 42): [[16, [4, 4], 2], [32, [4, 4], 2], [256, [11, 11], 1]]}
    defaults[(84, 84)] = [[16, [8, 8], 4], [32, [4, 4], 2], [256, [11, 11], 1]]
    channels_first = shape[0] < shape[2]
    c, hw = (shape[0], shape[1:]) if channels_first else (shape[2], shape[:2])
    used = check_conv_filters(filters if filters is not None else defaults[tuple(hw)])
    assert conv_stack_sizes(tuple(hw), used) == sizes and encoder.out_dim == features
    reference = rllib_reference(c, tuple(hw), used, type(encoder.convs[-1]))
    ours = [m for m in encoder.convs if isinstance(m, nn.Conv2d)]
    theirs = [m for m in reference if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for a, b in zip(ours, theirs, strict=True):
            b.weight.copy_(a.weight)
            b.bias.copy_(torch.randn_like(b.bias))
            a.bias.copy_(b.bias)
    x = torch.rand(3, *shape)
    chw = x if channels_first else x.permute(0, 3, 1, 2)
    torch.testing.assert_close(encoder(x), reference(chw).flatten(1))
    assert encoder(torch.rand(2, *shape)).shape == (2, features)


def test_conv_options_rebuild_and_leave_other_encoders_as_they_were():
    ac = MLPActorCritic(FRAMES_42, gym.spaces.Discrete(6), hidden_sizes=(), encoder="rllib",
                        conv_filters=A3C, conv_activation="elu", memory_size=16)  # fmt: skip
    assert ac.ctor_spec["conv_filters"] == A3C and ac.ctor_spec["conv_activation"] == "elu"
    assert json.loads(json.dumps(ac.ctor_spec)) == ac.ctor_spec  # plain values, as checkpoints keep them
    again = build_actor_critic(ac.ctor_spec)
    again.load_state_dict(ac.state_dict())
    frames = torch.randint(0, 256, (5, 4, 42, 42), dtype=torch.uint8)
    memory = ac.initial_memory(5)
    torch.testing.assert_close(again.act(frames, True, memory), ac.act(frames, True, memory))
    assert type(ac.encoder.images[0].convs[2]) is nn.ELU
    default = MLPActorCritic(FRAMES_42, gym.spaces.Discrete(6), encoder="rllib")
    assert default.ctor_spec["conv_filters"] is None and default.encoder.out_dim == 256
    nature = MLPActorCritic(FRAMES_42, gym.spaces.Discrete(6))  # no conv keys: old checkpoints rebuild
    assert "conv_filters" not in nature.ctor_spec and "conv_activation" not in nature.ctor_spec


@pytest.mark.parametrize(
    "kwargs, shape, message",
    [
        ({"conv_filters": [[32, [3, 3]]]}, (4, 42, 42), "its layer 1 is [32, [3, 3]]"),
        ({"conv_filters": [[32, [3, 0], 2]]}, (4, 42, 42), "its layer 1 is [32, [3, 0], 2]"),
        ({"conv_filters": [[1.5, 3, 2]]}, (4, 42, 42), "its layer 1 is [1.5, 3, 2]"),
        ({"conv_filters": []}, (4, 42, 42), "--conv_filters takes a list of [out_channels"),
        ({"conv_filters": A3C * 2}, (4, 42, 42), "below one pixel: the last layer (kernel 3x3, stride 2"),
        ({}, (4, 50, 50), "RLlib's default conv_filters for 84x84 and 42x42 images only"),
        ({"conv_activation": "sigmoid"}, (4, 42, 42), "--conv_activation must be one of tanh, relu, elu"),
    ],
)
def test_bad_conv_options_are_one_line_errors(kwargs, shape, message):
    with pytest.raises(UserError) as e:
        MLPActorCritic(
            gym.spaces.Box(0, 255, shape, np.uint8), gym.spaces.Discrete(2), encoder="rllib", **kwargs
        )
    assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="--conv_filters sets the layers of --encoder rllib"):
        MLPActorCritic(FRAMES_42, gym.spaces.Discrete(2), conv_filters=A3C)  # nature_cnn has its own
    with pytest.raises(UserError, match="--conv_activation elu sets the layers of --encoder rllib"):
        MLPActorCritic(FRAMES_42, gym.spaces.Discrete(2), encoder="simple", conv_activation="elu")


def test_conv_filters_from_the_command_line_and_config_files(tmp_path):
    """JSON on the command line (quoted, or typed with spaces), a YAML list in a file (one stack), or a
    list of stacks (a grid)."""
    grid, _ = parse_algo_args(
        "ppo", ["--env", "Pong", "--encoder", "rllib", "--conv_filters", json.dumps(A3C)]
    )
    assert grid["ac:conv_filters"] == [A3C]
    grid, _ = parse_algo_args("ppo", ["--env", "Pong", "--conv_filters", "[[16,", "[4,4],", "2]]"])
    assert grid["ac:conv_filters"] == [[[16, [4, 4], 2]]]
    one = tmp_path / "one.yaml"
    one.write_text("env: Pong\nencoder: rllib\nconv_filters: [[32, [3, 3], 2], [32, [3, 3], 2]]\n")
    grid, _ = parse_algo_args("ppo", ["--config", str(one)])
    assert grid["ac:conv_filters"] == [[[32, [3, 3], 2], [32, [3, 3], 2]]]
    two = tmp_path / "two.yaml"
    two.write_text("env: Pong\nencoder: rllib\nconv_filters: [[[16, 4, 2]], null]\nframe_size: 42\n")
    grid, options = parse_algo_args("ppo", ["--config", str(two)])
    assert grid["ac:conv_filters"] == [[[16, 4, 2]], None] and options["frame_size"] == 42


# ------------------------------------------------------------------------------------------ frame size


def test_frame_size_makes_42_pixel_frames_and_is_saved_with_the_run():
    factory = EnvFactory("Pong", frame_size=42)
    for training in (True, False):  # training, and the evaluation and replay variant
        env = factory(training=training)
        assert env.observation_space == FRAMES_42
        assert env.reset(seed=0)[0].shape == (4, 42, 42)
        env.close()
    spec = factory.to_json()
    assert spec["frame_size"] == 42 and factory.image_shape == (4, 42, 42)
    assert saved_env_spec({"env_fn": spec}, "config.json")["frame_size"] == 42
    assert "42x42 grayscale" in factory.describe()
    assert "frame_size" not in EnvFactory("Pong").to_json()  # 84: config.json as before
    assert saved_env_spec({"env_fn": EnvFactory("Pong").to_json()}, "c")["frame_size"] == 84
    with pytest.raises(UserError, match="env_fn.frame_size is 64, not 42 or 84: the file was edited"):
        saved_env_spec({"env_fn": {**spec, "frame_size": 64}}, "config.json")
    with pytest.raises(
        UserError, match="--frame_size must be 42 or 84 .pixels a side of an Atari frame., not 64"
    ):
        EnvFactory("Pong", frame_size=64)
    with pytest.raises(
        UserError, match="--frame_size sizes an Atari game's frames; gymnasium CartPole-v1 is"
    ):
        EnvFactory("CartPole", frame_size=42)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--env", "CartPole", "--frame_size", "42"], "--frame_size sizes an Atari game's frames"),
        (["--env", "Pong", "--frame_size", "64"], "--frame_size must be 42 or 84"),
        (["--env", "Pong", "--frame_size", "big"], "--frame_size takes an integer, not 'big'"),
        (["--env", "Pong", "--conv_filters", "[[32, [3"], "--conv_filters takes JSON such as"),
        (  # known before the game is made: a stack too deep for 42-pixel frames
            [
                "--env",
                "Pong",
                "--frame_size",
                "42",
                "--encoder",
                "rllib",
                "--conv_filters",
                json.dumps(A3C * 2),
            ],
            "shrink images of shape (4, 42, 42) (42x42 pixels) below one pixel",
        ),
        (["--env", "Pong", "--kl_coeff", "-1"], "--kl_coeff must be zero or a positive finite number"),
        (["--env", "Pong", "--kl_target", "0"], "--kl_target must be positive"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(tmp_path, cli, args, message):
    proc = cli("ppo", *args, "--data_dir", str(tmp_path))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------- export


@pytest.mark.parametrize(
    "filters, activation, memory_size, as_rllib",
    [(None, "relu", 0, False), (A3C, "elu", 16, False), (None, "relu", 0, True), (A3C, "elu", 16, True)],
)
def test_42_pixel_policies_export_and_act_as_torch(filters, activation, memory_size, as_rllib):
    """The generic form (uint8 CHW frames; uneven "same" padding as the Conv's own pads) and the Unity
    form (a Dict with a 42x42 camera) give the torch policy's actions; a recurrent one over 3 steps.
    ``as_rllib``: as RLlib's files build it, unscaled pixels (--pixel_scale 1) and RLlib's weights."""
    rllib = {"pixel_scale": 1.0, "weight_init": "rllib"} if as_rllib else {}
    torch.manual_seed(0)
    ac = MLPActorCritic(
        FRAMES_42,
        gym.spaces.Discrete(6, start=1),
        hidden_sizes=(16,),
        encoder="rllib",
        conv_filters=filters,
        conv_activation=activation,
        memory_size=memory_size,
        **rllib,
    )
    with torch.no_grad():
        for p in ac.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.1)
        ac.pi[-1].weight.mul_(100.0)  # well-separated logits
    model = gym_model(ac, gym.spaces.Discrete(6, start=1))
    assert [n.op_type for n in model.graph.node].count("Pad") == 0  # folded into the Conv's pads
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    memory, mine = np.zeros((16, memory_size), np.float32), ac.initial_memory(16)
    actions = []
    for _ in range(3 if memory_size else 1):
        frames = rng.integers(0, 256, (16, 4, 42, 42), dtype=np.uint8)
        feeds = {"obs": frames, **({"memory_in": memory} if memory_size else {})}
        got = session.run(["deterministic_actions", *(["memory_out"] if memory_size else [])], feeds)
        with torch.no_grad():
            if memory_size:
                want, mine = ac.act(torch.from_numpy(frames), True, mine)
                np.testing.assert_allclose(got[1], mine.numpy(), rtol=1e-4, atol=1e-4)
                memory = got[1]
            else:
                want = ac.act(torch.from_numpy(frames), True).action
        np.testing.assert_array_equal(got[0], want.numpy() + 1)
        actions += want.tolist()
    assert len(set(actions)) > 1  # the pixels matter
    camera = gym.spaces.Dict({"obs_0": gym.spaces.Box(0, 255, (42, 42, 3), np.uint8)})
    ac = MLPActorCritic(camera, gym.spaces.Discrete(3), hidden_sizes=(16,), encoder="rllib",
                        conv_filters=filters, conv_activation=activation, **rllib)  # fmt: skip
    unity = ort.InferenceSession(unity_model(ac, [[42, 42, 3]]).SerializeToString())
    pixels = rng.integers(0, 256, (8, 42, 42, 3), dtype=np.uint8)
    feeds = {"obs_0": pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255, "action_masks": np.ones((8, 3))}
    got = unity.run(["deterministic_discrete_actions"], {k: v.astype(np.float32) for k, v in feeds.items()})
    with torch.no_grad():
        want = ac.act({"obs_0": torch.from_numpy(pixels)}, True).action
    assert got[0].reshape(8).tolist() == want.tolist()


# ----------------------------------------------------------------------------------------- KL penalty


def test_the_kl_coefficient_adapts_as_rllibs():
    assert adapt_kl_coeff(0.5, 0.021, 0.01) == 0.75  # above 2 x target: x1.5
    assert adapt_kl_coeff(0.5, 0.004, 0.01) == 0.25  # under target / 2: x0.5
    for kl in (0.005, 0.01, 0.02):  # the dead zone, bounds included
        assert adapt_kl_coeff(0.5, kl, 0.01) == 0.5


@pytest.mark.parametrize("action", ["box", "multidiscrete"])
def test_kl_is_the_exact_kl_of_the_action_distributions(action):
    from torch.distributions import Categorical, Normal, kl_divergence

    space = gym.spaces.Box(-1, 1, (2,)) if action == "box" else gym.spaces.MultiDiscrete([3, 4])
    ac = MLPActorCritic(gym.spaces.Box(-1, 1, (3,)), space)
    old, new = torch.randn(5, 2 if action == "box" else 7), torch.randn(5, 2 if action == "box" else 7)
    if action == "box":
        old_log_std = torch.tensor([0.3, -0.2])
        with torch.no_grad():
            ac.log_std.copy_(torch.tensor([-0.5, 0.1]))
        want = kl_divergence(Normal(old, old_log_std.exp()), Normal(new, ac.log_std.exp())).sum(-1)
        torch.testing.assert_close(ac.kl(old, new, old_log_std), want)
    else:
        want = sum(
            kl_divergence(Categorical(logits=old[:, a:b]), Categorical(logits=new[:, a:b]))
            for a, b in ((0, 3), (3, 7))
        )
        torch.testing.assert_close(ac.kl(old, new), want)


def test_the_kl_coefficient_is_kept_in_the_checkpoint_and_resume_is_exact(tmp_path, cli):
    """3 epochs, against 1 then a resume for two more: the same rows, KLCoeff halving each update (the
    KL stays under kl_target / 2); the coefficient for the next update is in the checkpoint. Without
    --kl_coeff the columns are not there (the run as before)."""
    job = ["ppo", "--env", "CartPole", "--hid", "16", "--steps_per_epoch", "512", "--num_envs", "2",
           "--minibatch_size", "128", "--update_epochs", "2", "--save_freq", "1", "--exp_name", "k",
           "--kl_coeff", "0.5", "--kl_target", "1.0", "--tensorboard", "false"]  # fmt: skip
    assert cli(*job, "--epochs", "3", "--data_dir", str(tmp_path / "whole")).returncode == 0
    assert cli(*job, "--epochs", "1", "--data_dir", str(tmp_path / "part")).returncode == 0
    whole, part = tmp_path / "whole" / "k" / "k_s0", tmp_path / "part" / "k" / "k_s0"
    ckpt = torch.load(part / "checkpoints" / "ckpt-000000.pt", weights_only=True)
    assert ckpt["run_state"]["kl_coeff"] == 0.25  # 0.5 used, 0.25 next
    assert cli("ppo", "--resume", str(part), "--epochs", "3").returncode == 0
    rows = rows_without_timing(whole)
    assert rows == rows_without_timing(part)
    header = rows[0]
    assert [float(r[header.index("KLCoeff")]) for r in rows[1:]] == [0.5, 0.25, 0.125]
    assert all(0 < float(r[header.index("PolicyKL")]) < 0.5 for r in rows[1:])
    plain = [a for a in job if a not in ("--kl_coeff", "0.5", "--kl_target", "1.0")]
    assert cli(*plain, "--epochs", "1", "--data_dir", str(tmp_path / "plain")).returncode == 0
    header = rows_without_timing(tmp_path / "plain" / "k" / "k_s0")[0]
    assert "KLCoeff" not in header and "PolicyKL" not in header


def test_the_kl_coefficient_is_the_same_on_every_rank(tmp_path):
    out = mpirun(2, ["tests/kl_check.py", str(tmp_path / "run")], timeout=120).stdout
    line = next(x for x in out.splitlines() if x.startswith("COEFFICIENTS "))
    seen = json.loads(line.split(" ", 1)[1])  # [[coefficient used, mean KL, next coefficient], ...]
    assert [round(c, 6) for c, _, _ in seen] == [0.2, 0.3, 0.45]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "ckpt-000002.pt", weights_only=True)
    assert ckpt["run_state"]["kl_coeff"] == seen[-1][2]


# ------------------------------------------------------------------------------------------ end to end


def test_pong_at_42_pixels_trains_replays_exports_and_resumes(tmp_path, cli):
    """RLlib's pong-a3c network (42-pixel frames, four 3x3 ELU convolutions, an LSTM) as RLlib builds it
    (unscaled pixels, RLlib's initial weights) with the KL penalty: one epoch, replayed from the run
    directory and from its .onnx file (with and without --env), resumed for a second."""
    job = ["ppo", "--env", "Pong", "--frame_size", "42", "--encoder", "rllib", "--conv_filters",
           json.dumps(A3C), "--conv_activation", "elu", "--memory_size", "32", "--sequence_length", "8",
           "--hid", "[]", "--kl_coeff", "0.5", "--steps_per_epoch", "128", "--num_envs", "2",
           "--minibatch_size", "64", "--update_epochs", "1", "--exp_name", "p", "--data_dir", str(tmp_path),
           "--tensorboard", "false", "--pixel_scale", "1", "--weight_init", "rllib"]  # fmt: skip
    trained = cli(*job, "--epochs", "1")
    assert trained.returncode == 0, trained.stderr
    out = trained.stdout
    assert "Atari ALE/Pong-v5 (ale-py, 42x42 grayscale" in out
    run_dir = tmp_path / "p" / "p_s0"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["env_fn"]["frame_size"] == 42 and config["ac_kwargs"]["conv_filters"] == A3C
    assert config["ac_kwargs"]["pixel_scale"] == 1.0 and config["ac_kwargs"]["weight_init"] == "rllib"
    replay = cli("test_policy", str(run_dir), "-n", "1", "--len", "30")
    assert replay.returncode == 0 and "EpLen 30" in replay.stdout, replay.stderr
    onnx_file = tmp_path / "p.onnx"
    exported = cli("export", str(run_dir), "--onnx", str(onnx_file))
    assert exported.returncode == 0 and "obs ['batch', 4, 42, 42] tensor(uint8)" in exported.stdout
    for env in ([], ["--env", "Pong"]):  # the file's own environment, or the game named (42 from the input)
        replay = cli("test_policy", str(onnx_file), *env, "-n", "1", "--len", "30")
        assert replay.returncode == 0 and "EpLen 30" in replay.stdout, replay.stderr
    resumed = cli("ppo", "--resume", str(run_dir), "--epochs", "2")
    assert resumed.returncode == 0 and "Resumed from the checkpoint of epoch 0" in resumed.stdout
    proc = cli("ppo", "--resume", str(run_dir), "--frame_size", "84")
    assert proc.returncode == 2 and "contradicts the run's saved frame_size 42" in proc.stderr
