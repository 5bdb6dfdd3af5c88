"""``python -m spinppo.run export RUN --onnx OUT.onnx``: the exported graphs act as the torch policies do.

Real short runs (gymnasium Box, Discrete and MultiDiscrete; Unity stand-in builds with two sensors,
discrete branches and continuous actions), exported, run with onnxruntime on observations recorded from
the environments; sampled outputs checked against the policies' distributions; the Unity form checked
against the names, shapes, dtypes and constants ML-Agents' exporter writes (release 20); test_policy on an
.onnx file replays what it replays from the run directory; bad input is one line and exit code 2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from spinppo.envs.spaces import action_for_env
from spinppo.run import main as run_main
from spinppo.tools.export import export_onnx
from spinppo.tools.onnx_runner import OnnxPolicy
from spinppo.tools.onnx_writer import gym_model, unity_model
from spinppo.tools.test_policy import (
    load_onnx_policy_and_env,
    load_policy,
    load_policy_and_env,
    run_policy,
)
from spinppo.utils.errors import UserError
from tests.conftest import REPO, child_env, run
from tests.test_unity import free_ports
from tests.unity_standin.build import write_build

BRANCHES = "tests.multidiscrete_env:Branches-v0"  # MultiDiscrete([3, 2]) actions
TINY = ["--update_epochs", "1", "--minibatch_size", "256", "--tensorboard", "false"]
UNITY = ["--steps_per_epoch", "256", "--epochs", "1", "--time_scale", "1000", *TINY]
GYM = ["--steps_per_epoch", "512", "--num_envs", "2", "--epochs", "2", *TINY]

# Every operator Unity's Barracuda importer knows (Barracuda/Runtime/ONNX/ONNXModelConverter.cs) that
# these graphs may use.
BARRACUDA_OPS = {
    "Add", "ArgMax", "Clip", "Concat", "Constant", "Div", "Elu", "Erf", "Gemm", "Identity", "LeakyRelu",
    "Max", "Min", "Mul", "Multinomial", "RandomNormalLike", "ReduceMean", "Relu", "Reshape", "Sigmoid",
    "Slice", "Sqrt", "Squeeze", "Sub", "Tanh",
}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Five short runs trained at once: gymnasium Pendulum (Box in [-2, 2]; GELU, LayerNorm), CartPole
    (Discrete; ELU, shared trunk) and Branches (MultiDiscrete; SiLU, LayerNorm, shared trunk); and two
    stand-in Unity builds with two sensors each: CartPole with branches [2, 3] (ReLU, LayerNorm) and
    InvertedPendulum (continuous; leaky ReLU, shared trunk)."""
    data = tmp_path_factory.mktemp("data")
    builds = tmp_path_factory.mktemp("builds")
    discrete = write_build(builds / "d", task="cartpole", agents=4, decision_period=1, max_step=200,
                           obs_pad=3, branches=[2, 3])  # fmt: skip
    continuous = write_build(
        builds / "c", task="pendulum", agents=4, decision_period=1, max_step=200, obs_pad=2
    )
    jobs = {
        "pendulum": ["--env", "Pendulum-v1", "--act", "gelu", "--layer_norm", *GYM],
        "cartpole": ["--env", "CartPole-v1", "--act", "elu", "--shared_trunk", *GYM],
        "branches": ["--env", BRANCHES, "--act", "silu", "--layer_norm", "--shared_trunk", *GYM],
        "unity_discrete": ["--env", f"unity:{discrete}", "--act", "relu", "--layer_norm", *UNITY],
        "unity_continuous": ["--env", f"unity:{continuous}", "--act", "leaky_relu", "--shared_trunk", *UNITY],
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "spinppo.run", "ppo", *args, "--exp_name", name, "--data_dir", str(data)]
            + (["--base_port", str(free_ports())] if name.startswith("unity") else []),
            cwd=REPO,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, args in jobs.items()
    ]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    return {name: data / name / f"{name}_s0" for name in jobs}


def recorded_observations(env_id: str, ac, n: int = 1000) -> np.ndarray:
    """``n`` observations met by stepping the environment with the policy's sampled actions."""
    env = gym.make(env_id)
    to_env = action_for_env(env.action_space)
    obs, _ = env.reset(seed=1)
    seen = []
    torch.manual_seed(1)
    while len(seen) < n:
        seen.append(obs)
        action = ac.act(torch.as_tensor(obs, dtype=torch.float32)[None]).action[0].numpy()
        obs, _, terminated, truncated, _ = env.step(to_env(action))
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return np.asarray(seen, np.float32)


def torch_actions(ac, obs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return ac.act(torch.as_tensor(obs), deterministic=True).action.numpy()


def assert_trained_statistics(ac) -> None:
    """The observation statistics are the run's, far from the initial mean 0 and variance 1."""
    assert float(ac.obs_rms.count) > 0
    assert not torch.allclose(ac.obs_rms.var, torch.ones_like(ac.obs_rms.var))


# ---------------------------------------------------------------------------------------- the generic form


@pytest.mark.parametrize(
    "name, env_id, dtype, shape",
    [
        ("pendulum", "Pendulum-v1", "tensor(float)", ["batch", 1]),
        ("cartpole", "CartPole-v1", "tensor(int64)", ["batch"]),
        ("branches", BRANCHES, "tensor(int64)", ["batch", 2]),
    ],
)
def test_generic_form_acts_as_the_torch_policy(runs, tmp_path, name, env_id, dtype, shape):
    out = export_onnx(str(runs[name]), str(tmp_path / f"{name}.onnx"))
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import] == [9]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["spinppo.form"] == "gym" and json.loads(meta["spinppo.env"])["env"] == env_id
    policy = OnnxPolicy(out)
    inputs, outputs = policy.session.get_inputs(), policy.session.get_outputs()
    obs_dim = gym.make(env_id).observation_space.shape[0]
    assert [(i.name, i.shape, i.type) for i in inputs] == [("obs", ["batch", obs_dim], "tensor(float)")]
    assert [(o.name, o.shape, o.type) for o in outputs] == [
        ("actions", shape, dtype),
        ("deterministic_actions", shape, dtype),
    ]
    ac, _ = load_policy(str(runs[name]))
    assert_trained_statistics(ac)
    obs = recorded_observations(env_id, ac)
    space = gym.make(env_id).action_space
    want = action_for_env(space)(torch_actions(ac, obs))
    got, memory = policy.act(obs, deterministic=True)
    assert memory is None
    assert got.dtype == want.dtype or dtype == "tensor(int64)"
    if dtype != "tensor(float)":
        np.testing.assert_array_equal(got, want)
        return
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # A short run's means stay well inside Pendulum's [-2, 2]: larger last-layer weights reach the bounds,
    # where the graph clips as spinppo's replay does.
    with torch.no_grad():
        ac.pi[-1].weight *= 100
    want = action_for_env(space)(torch_actions(ac, obs))
    assert np.abs(want).max() == 2.0 and np.abs(want).min() < 2.0
    got = ort.InferenceSession(gym_model(ac, space).SerializeToString()).run(
        ["deterministic_actions"], {"obs": obs}
    )
    np.testing.assert_allclose(got[0], want, rtol=0, atol=1e-4)


def test_sampled_actions_follow_the_policy(runs, tmp_path):
    """20000 samples at one observation: Gaussian mean and spread (clipped to Pendulum's bounds as the
    environment gets them), categorical frequencies per branch."""
    n = 20000
    rng = np.random.default_rng(0)
    for name, env_id in (("pendulum", "Pendulum-v1"), ("cartpole", "CartPole-v1"), ("branches", BRANCHES)):
        out = export_onnx(str(runs[name]), str(tmp_path / f"{name}.onnx"))
        ac, _ = load_policy(str(runs[name]))
        obs = recorded_observations(env_id, ac, 1)
        samples = OnnxPolicy(out).act(np.repeat(obs, n, axis=0)).action
        with torch.no_grad():
            head = ac.pi(ac._features(torch.as_tensor(obs)))[0].numpy()
        if name == "pendulum":
            std = ac.log_std.exp().detach().numpy()
            expected = np.clip(head + std * rng.standard_normal((n, 1)), -2, 2)
            assert abs(samples.mean() - expected.mean()) < 0.03 and abs(samples.std() - expected.std()) < 0.03
            continue
        samples = samples.reshape(n, -1)
        for b, logits in enumerate(np.split(head, np.cumsum(ac.branches)[:-1])):
            probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
            freq = np.bincount(samples[:, b], minlength=len(probs)) / n
            np.testing.assert_allclose(freq, probs, atol=0.02)


# ------------------------------------------------------------------------------------------ the Unity form


def unity_obs(ac, n: int = 1000) -> np.ndarray:
    """Observations spread around the run's own statistics (and beyond, into the +-10 clip)."""
    rng = np.random.default_rng(2)
    mean, std = ac.obs_rms.mean.numpy(), np.sqrt(ac.obs_rms.var.numpy())
    return (mean + std * rng.normal(size=(n, len(mean))) * 3).astype(np.float32)


def test_unity_form_is_ml_agents_form(runs, tmp_path):
    """Names, order, shapes, dtypes and constants as ML-Agents 0.30 (release 20) exports them: inputs
    obs_0.. (one per sensor) and action_masks; outputs version_number (3), memory_size (0) and the action
    outputs with their shape constants; opset 9; Barracuda's operators only."""
    for name, sensors in (("unity_discrete", [4, 3]), ("unity_continuous", [4, 2])):
        config = json.loads((runs[name] / "config.json").read_text())
        assert config["observation_shapes"] == [[n] for n in sensors]
        out = export_onnx(str(runs[name]), str(tmp_path / f"{name}.onnx"))
        model = onnx.load(out)
        onnx.checker.check_model(model, full_check=True)
        assert [(o.domain, o.version) for o in model.opset_import] == [("", 9)]
        assert {node.op_type for node in model.graph.node} <= BARRACUDA_OPS
        assert {p.key for p in model.metadata_props} >= {"spinppo.form", "spinppo.env"}
        session = ort.InferenceSession(out)
        inputs = [(i.name, i.shape, i.type) for i in session.get_inputs()]
        outputs = [(o.name, o.shape, o.type) for o in session.get_outputs()]
        obs_inputs = [(f"obs_{i}", ["batch", n], "tensor(float)") for i, n in enumerate(sensors)]
        head = [("version_number", [1], "tensor(float)"), ("memory_size", [1], "tensor(float)")]
        ac, _ = load_policy(str(runs[name]))
        assert_trained_statistics(ac)
        obs = unity_obs(ac)
        feeds = dict(zip(["obs_0", "obs_1"], np.split(obs, [sensors[0]], axis=1)))
        if name == "unity_discrete":
            assert inputs == [*obs_inputs, ("action_masks", ["batch", 5], "tensor(float)")]
            assert outputs == [
                *head,
                ("discrete_actions", ["batch", 2], "tensor(int64)"),
                ("discrete_action_output_shape", [1, 2], "tensor(float)"),
                ("deterministic_discrete_actions", ["batch", 2], "tensor(int64)"),
            ]
            feeds["action_masks"] = np.ones((len(obs), 5), np.float32)
            got = dict(zip([o[0] for o in outputs], session.run(None, feeds)))
            np.testing.assert_array_equal(got["discrete_action_output_shape"], [[2.0, 3.0]])
            np.testing.assert_array_equal(got["deterministic_discrete_actions"], torch_actions(ac, obs))
            assert got["discrete_actions"].shape == (len(obs), 2)
        else:
            assert inputs == obs_inputs
            assert outputs == [
                *head,
                ("continuous_actions", ["batch", 1], "tensor(float)"),
                ("continuous_action_output_shape", [1], "tensor(float)"),
                ("deterministic_continuous_actions", ["batch", 1], "tensor(float)"),
            ]
            got = dict(zip([o[0] for o in outputs], session.run(None, feeds)))
            np.testing.assert_array_equal(got["continuous_action_output_shape"], [1.0])
            # what spinppo sends Unity: the mean clipped to [-1, 1]
            want = np.clip(torch_actions(ac, obs), -1, 1)
            np.testing.assert_allclose(got["deterministic_continuous_actions"], want, rtol=0, atol=1e-5)
            # larger last-layer weights reach the clip
            with torch.no_grad():
                ac.pi[-1].weight *= 100
            want = np.clip(torch_actions(ac, obs), -1, 1)
            assert np.abs(want).max() == 1.0 and np.abs(want).min() < 1.0
            boosted = ort.InferenceSession(unity_model(ac, [[4], [2]]).SerializeToString())
            sampled, mean = boosted.run(["continuous_actions", "deterministic_continuous_actions"], feeds)
            np.testing.assert_allclose(mean, want, rtol=0, atol=1e-4)
            assert np.all(np.abs(sampled) <= 1.0) and np.abs(sampled).max() == 1.0
        np.testing.assert_array_equal(got["version_number"], [3.0])
        np.testing.assert_array_equal(got["memory_size"], [0.0])


def test_unity_action_masks(runs, tmp_path):
    """Masked actions (0 in action_masks) are never sampled nor picked; the others keep their odds."""
    out = export_onnx(str(runs["unity_discrete"]), str(tmp_path / "d.onnx"))
    ac, _ = load_policy(str(runs["unity_discrete"]))
    session = ort.InferenceSession(out)
    obs = np.repeat(unity_obs(ac, 1), 20000, axis=0)
    masks = np.ones((len(obs), 5), np.float32)
    masks[:, 1] = 0  # branch 0: only action 0 is allowed
    masks[:, 2 + 2] = 0  # branch 1: actions 0 and 1
    feeds = {"obs_0": obs[:, :4], "obs_1": obs[:, 4:], "action_masks": masks}
    sampled, best = session.run(["discrete_actions", "deterministic_discrete_actions"], feeds)
    assert np.all(sampled[:, 0] == 0) and np.all(best[:, 0] == 0)
    assert set(np.unique(sampled[:, 1])) == {0, 1} and best[0, 1] in (0, 1)
    with torch.no_grad():
        logits = ac.pi(ac._features(torch.as_tensor(obs[:1])))[0, 2:4].numpy()
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(np.mean(sampled[:, 1] == 1), probs[1], atol=0.02)
    assert best[0, 1] == np.argmax(logits)


# ------------------------------------------------------------------------------------------------- replay


@pytest.mark.parametrize("name", ["pendulum", "cartpole", "branches", "unity_discrete"])
def test_replay_of_the_onnx_file_is_the_run_dirs(runs, tmp_path, name):
    out = export_onnx(str(runs[name]), str(tmp_path / f"{name}.onnx"))
    port = free_ports() if name.startswith("unity") else 5005
    episodes = []
    for onnx_file in (False, True):
        if onnx_file:
            env, get_action = load_onnx_policy_and_env(out, deterministic=True, base_port=port)
        else:
            env, get_action = load_policy_and_env(str(runs[name]), deterministic=True, base_port=port)
        try:
            episodes.append(run_policy(env, get_action, num_episodes=3, seed=4, verbose=False,
                                       send_as_is=onnx_file))  # fmt: skip
        finally:
            env.close()
    # Same lengths; the same returns up to float32 rounding of Gemm against torch's Linear (continuous)
    assert [e.length for e in episodes[0]] == [e.length for e in episodes[1]]
    assert [e.ret for e in episodes[1]] == pytest.approx([e.ret for e in episodes[0]], rel=1e-6)


def test_policy_cli_on_an_onnx_file(runs, tmp_path, cli):
    """The command line: the file names its environment; without that metadata --env is needed."""
    out = export_onnx(str(runs["cartpole"]), str(tmp_path / "cartpole.onnx"))
    args = ["-n", "2", "-d", "--seed", "3"]
    from_dir, from_file = cli("test_policy", str(runs["cartpole"]), *args), cli("test_policy", out, *args)
    assert from_dir.returncode == 0 and from_file.returncode == 0, from_dir.stderr + from_file.stderr
    assert from_file.stdout == from_dir.stdout and "EpRet" in from_file.stdout
    model = onnx.load(out)
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, bare)
    assert run_main(["test_policy", str(bare), *args, "--env", "CartPole-v1"]) == 0


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line(runs, tmp_path, capsys):
    """Each bad input: one line on stderr, exit code 2, no file (nor temporary file) left behind."""
    empty_run = tmp_path / "empty_run"
    shutil.copytree(runs["cartpole"], empty_run)
    shutil.rmtree(empty_run / "pyt_save")
    (empty_run / "pyt_save").mkdir()
    shapes_run = tmp_path / "shapes_run"
    shutil.copytree(runs["unity_discrete"], shapes_run)
    config = json.loads((shapes_run / "config.json").read_text())
    (shapes_run / "config.json").write_text(json.dumps({**config, "observation_shapes": [[3], [3]]}))
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    out = tmp_path / "out" / "x.onnx"
    cases = [
        (["export", str(tmp_path / "nothing"), "--onnx", str(out)], "does not exist"),
        (["export", str(a_file), "--onnx", str(out)], "is a file"),
        (["export", str(empty_run), "--onnx", str(out)], "no checkpoint"),
        (["export", str(runs["cartpole"]), "--onnx", str(out), "--itr", "7"], "no checkpoint for --itr 7"),
        (["export", str(runs["cartpole"]), "--onnx", str(a_file / "x.onnx")], "cannot write"),
        (["export", str(runs["cartpole"]), "--onnx", str(tmp_path / "x.pt")], "must name an .onnx file"),
        (["export", str(runs["cartpole"])], "--onnx"),
        (["export", str(shapes_run), "--onnx", str(out)], "observation_shapes"),
        (["test_policy", str(a_file) + ".onnx"], "does not exist"),
        (["test_policy", str(a_file), "--env", "CartPole-v1"], "--env is for .onnx files"),
    ]
    for argv, message in cases:
        assert run_main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("spinppo: error: ") and message in err[0], (argv, err)
    assert not out.parent.exists() or not os.listdir(out.parent)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "empty_run", "shapes_run"]
    # A damaged file and a graph in neither form
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"not a model")
    assert run_main(["test_policy", str(damaged)]) == 2
    assert "cannot load" in capsys.readouterr().err
    # And through a real process: the exit code and the one line
    proc = run(
        [sys.executable, "-m", "spinppo.run", "export", str(empty_run), "--onnx", str(out)], check=False
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_network_the_exporter_cannot_write(runs):
    ac, _ = load_policy(str(runs["cartpole"]))
    ac.trunk[1] = torch.nn.Softplus()  # not one of spinppo's activations
    with pytest.raises(UserError, match="cannot export a network with a Softplus layer"):
        gym_model(ac, gym.spaces.Discrete(2))
