"""``python -m spinppo.run test_policy``: reloaded policies act exactly as saved (Box, Discrete and
MultiDiscrete), returns are the environment's, videos hold one frame per step, Unity runs replay, bad
input (a damaged config.json too) is one line."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from spinppo.core.networks import MLPActorCritic, build_actor_critic
from spinppo.tools.policies import load_policy, load_policy_and_env
from spinppo.tools.replay import run_policy
from spinppo.tools.video import render_frame, save_video
from spinppo.utils.errors import UserError
from spinppo.utils.logx import save_model
from tests.conftest import REPO, child_env, run
from tests.unity_standin.build import write_build

BRANCHES = "tests.multidiscrete_env:Branches-v0"  # MultiDiscrete([3, 2]) actions
TINY = ["--steps_per_epoch", "128", "--num_envs", "1", "--update_epochs", "1", "--minibatch_size", "128"]
EPISODE = re.compile(r"^Episode (\d+) \t EpRet (-?[\d.]+) \t EpLen (\d+)$", re.M)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Real short runs: CartPole (Discrete actions), InvertedPendulum (Box actions, MuJoCo) and
    tests/multidiscrete_env.py's Branches (MultiDiscrete actions, as a Unity build's branches are)."""
    data = tmp_path_factory.mktemp("data")
    envs = {
        "cartpole": ("CartPole", "3"),
        "pendulum": ("InvertedPendulum", "2"),
        "branches": (BRANCHES, "1"),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "spinppo.run", "ppo", "--env", env, "--epochs", epochs, *TINY]
            + ["--exp_name", name, "--data_dir", str(data)],
            cwd=REPO,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, (env, epochs) in envs.items()
    ]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    return {name: data / name / f"{name}_s0" for name in envs}


def test_policy_process(*args: str, **env: str) -> subprocess.CompletedProcess:
    """``python -m spinppo.run test_policy ARGS`` as a real process (for videos: MuJoCo and pygame pick
    their rendering when they start)."""
    return run([sys.executable, "-m", "spinppo.run", "test_policy", *args], check=False, **env)


test_policy_process.__test__ = False  # a helper, not a test


@pytest.fixture
def policy_cli(cli, monkeypatch):
    """``policy_cli(*ARGS, **ENV)``: ``python -m spinppo.run test_policy ARGS`` in this process, ENV set."""

    def call(*args: str, **env: str) -> subprocess.CompletedProcess:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return cli("test_policy", *args)

    return call


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spinppo: error: "), proc.stderr
    return lines[0]


def printed_episodes(stdout: str) -> list[tuple[float, int]]:
    found = EPISODE.findall(stdout)
    assert [int(i) for i, _, _ in found] == list(range(len(found))), stdout
    return [(float(r), int(n)) for _, r, n in found]


def replay_by_hand(
    run_dir: Path, env_id: str, seed: int, episodes: int, max_len: int = 0, model: str = "model.pt"
):
    """Episodes of the run's latest policy (or ``model``; mean action), computed without
    spinppo.tools.test_policy."""
    payload = torch.load(run_dir / "pyt_save" / model, weights_only=True)
    ac = build_actor_critic(payload["ctor"])
    ac.load_state_dict(payload["state_dict"])
    env = gym.make(env_id)
    out = []
    obs, _ = env.reset(seed=seed)
    for _ in range(episodes):
        ret, n, done = 0.0, 0, False
        while not done:
            a = ac.act(torch.as_tensor(obs, dtype=torch.float32)[None], deterministic=True).action.numpy()[0]
            if isinstance(env.action_space, gym.spaces.Box):
                a = np.clip(a, env.action_space.low, env.action_space.high)
            obs, r, term, trunc, _ = env.step(a)
            ret, n = ret + float(r), n + 1
            done = term or trunc or n == max_len
        out.append((ret, n))
        obs, _ = env.reset()
    env.close()
    return out


def random_actor_critic(env: gym.Env, **kwargs) -> MLPActorCritic:
    """An actor-critic unlike the run's, with non-trivial weights and normalisation statistics."""
    ac = MLPActorCritic(env.observation_space, env.action_space, **kwargs)
    with torch.no_grad():
        for p in ac.parameters():
            p.normal_(0.0, 0.5)
    rng = np.random.default_rng(1)
    ac.obs_rms.update(rng.normal(2.0, 3.0, size=(200, env.observation_space.shape[0])))
    return ac


@pytest.mark.parametrize(
    "name, env_id, kwargs",
    [
        ("cartpole", "CartPole-v1", dict(hidden_sizes=(32, 16), activation="relu", shared_trunk=True)),
        ("pendulum", "InvertedPendulum-v5", dict(hidden_sizes=(16, 16), layer_norm=True, log_std_init=-0.5)),
    ],
)
def test_reloaded_policy_acts_exactly_like_the_saved_one(runs, tmp_path, name, env_id, kwargs):
    run_dir = tmp_path / name
    shutil.copytree(runs[name], run_dir)
    env = gym.make(env_id)
    torch.manual_seed(0)
    ac = random_actor_critic(env, **kwargs)
    save_model(ac, str(run_dir / "pyt_save" / "model7.pt"))

    obs = [env.reset(seed=0)[0]]
    for _ in range(30):
        o, _, terminated, truncated, _ = env.step(env.action_space.sample())
        obs.append(env.reset()[0] if terminated or truncated else o)
    obs += list(np.random.default_rng(0).normal(0, 3, size=(30, env.observation_space.shape[0])))
    batch = np.stack(obs).astype(np.float32)
    # Per observation and per batch (a batch's matrix products may round differently from one row's).
    expected = np.stack(
        [ac.act(torch.as_tensor(o)[None], deterministic=True).action[0].numpy() for o in batch]
    )
    expected_batch = ac.act(torch.as_tensor(batch), deterministic=True).action.numpy()

    loaded_env, get_action = load_policy_and_env(str(run_dir), itr=7, deterministic=True)
    assert loaded_env.spec.id == env_id
    got = np.stack([np.asarray(get_action(o)) for o in obs])
    assert np.array_equal(got, expected)
    assert np.array_equal(get_action(batch), expected_batch)
    if name == "cartpole":
        assert all(isinstance(get_action(o), int) for o in obs) and len(set(expected.tolist())) == 2
    else:
        assert get_action(obs[0]).shape == (1,)

    # Sampled actions too: the same torch seed gives the same samples.
    _, sample = load_policy(str(run_dir), itr=7)
    torch.manual_seed(3)
    sampled = np.stack([np.asarray(sample(o)) for o in obs])
    torch.manual_seed(3)
    assert np.array_equal(
        sampled, np.stack([ac.act(torch.as_tensor(o)[None]).action[0].numpy() for o in batch])
    )

    # itr 'last' is pyt_save/model.pt (the trained policy), with its weights exactly.
    trained, _ = load_policy(str(run_dir))
    payload = torch.load(run_dir / "pyt_save" / "model.pt", weights_only=True)
    for k, v in trained.state_dict().items():
        assert torch.equal(v, payload["state_dict"][k]), k
    loaded7, _ = load_policy(str(run_dir / "pyt_save" / "model7.pt"))  # a checkpoint file works too
    assert all(torch.equal(v, ac.state_dict()[k]) for k, v in loaded7.state_dict().items())
    loaded_env.close()


def test_printed_returns_are_the_environments(runs, policy_cli):
    proc = policy_cli(str(runs["cartpole"]), "-n", "3", "-d", "--seed", "5")
    assert proc.returncode == 0, proc.stderr
    got = printed_episodes(proc.stdout)
    expected = replay_by_hand(runs["cartpole"], "CartPole-v1", seed=5, episodes=3)
    assert [n for _, n in got] == [n for _, n in expected]
    np.testing.assert_allclose([r for r, _ in got], [r for r, _ in expected], atol=5e-4)
    mean = np.mean([r for r, _ in expected])
    assert f"3 episodes: EpRet mean {mean:.3f}" in proc.stdout

    # --len cuts episodes; Box actions are clipped to the bounds as in training.
    proc = policy_cli(str(runs["cartpole"]), "--episodes", "2", "-d", "--seed", "5", "--len", "20")
    assert printed_episodes(proc.stdout) == replay_by_hand(runs["cartpole"], "CartPole-v1", 5, 2, max_len=20)
    assert [n for _, n in printed_episodes(proc.stdout)] == [20, 20]


def test_video_has_one_frame_per_step(runs, tmp_path):
    import imageio.v2 as imageio
    from PIL import Image

    video = tmp_path / "pendulum.mp4"
    args = [str(runs["pendulum"]), "-n", "2", "-d", "--seed", "2", "--len", "20", "--video", str(video)]
    # No display and MUJOCO_GL unset: test_policy itself picks headless EGL before MuJoCo loads.
    proc = test_policy_process(*args, MUJOCO_GL="", DISPLAY="", WAYLAND_DISPLAY="")
    assert proc.returncode == 0, proc.stderr
    episodes = printed_episodes(proc.stdout)
    np.testing.assert_allclose(
        episodes, replay_by_hand(runs["pendulum"], "InvertedPendulum-v5", 2, 2, max_len=20), atol=5e-4
    )
    steps = sum(n for _, n in episodes)
    assert f"Video saved to {video} ({steps} frames at 25 fps)" in proc.stdout
    with imageio.get_reader(str(video), format="FFMPEG") as reader:
        frames = [f for f in reader]
    assert len(frames) == steps and frames[0].shape == (480, 480, 3)

    # The same from Python, to a GIF.
    gif = tmp_path / "sub" / "pendulum.gif"
    env, get_action = load_policy_and_env(str(runs["pendulum"]), deterministic=True, render_mode="rgb_array")
    frames = []
    ((_, length),) = run_policy(env, get_action, max_ep_len=20, num_episodes=1, seed=2, frames=frames)
    env.close()
    assert (length, len(frames)) == (episodes[0][1], length)
    save_video(frames, str(gif), fps=25)
    with Image.open(gif) as im:
        assert im.n_frames == length and im.size == (480, 480)
        first = np.asarray(im.convert("RGB"), dtype=np.float64)
    # The first frame is the state after the seeded reset, rendered headless.
    env = gym.make("InvertedPendulum-v5", render_mode="rgb_array")
    env.reset(seed=2)
    reference = env.render().astype(np.float64)
    env.close()
    assert reference.mean() > 1 and np.abs(first - reference).mean() < 2


def test_multidiscrete_policy_replays_as_saved(runs, tmp_path, policy_cli):
    """Several discrete action branches (MultiDiscrete, as a Unity build's): one action per branch."""
    run_dir = tmp_path / "branches"
    shutil.copytree(runs["branches"], run_dir)
    env = gym.make(BRANCHES)
    assert env.action_space == gym.spaces.MultiDiscrete([3, 2])
    torch.manual_seed(0)
    ac = random_actor_critic(env, hidden_sizes=(16,))
    save_model(ac, str(run_dir / "pyt_save" / "model7.pt"))
    obs = [env.reset(seed=0)[0]]
    for _ in range(20):
        obs.append(env.step(env.action_space.sample())[0])
    obs += list(np.random.default_rng(0).normal(0, 3, size=(20, 5)))
    batch = np.stack(obs).astype(np.float32)

    # Deterministic: each branch's most likely action, from the policy's logits (3 then 2 of them).
    with torch.no_grad():
        logits = [ac.pi(ac.normalize_obs(torch.as_tensor(o)[None]))[0].numpy() for o in batch]
    expected = np.array([[lg[:3].argmax(), lg[3:].argmax()] for lg in logits])
    assert len({tuple(a) for a in expected}) > 2  # the weights make varied actions
    loaded_env, get_action = load_policy_and_env(str(run_dir), itr=7, deterministic=True)
    got = [get_action(o) for o in obs]
    assert all(isinstance(a, np.ndarray) and a.shape == (2,) for a in got)
    assert np.array_equal(np.stack(got), expected)
    assert get_action(batch).shape == (len(batch), 2)

    # Sampled: the same torch seed gives the same samples, every one an action of the space.
    _, sample = load_policy(str(run_dir), itr=7)
    torch.manual_seed(3)
    sampled = [sample(o) for o in obs]
    torch.manual_seed(3)
    assert np.array_equal(
        np.stack(sampled), np.stack([ac.act(torch.as_tensor(o)[None]).action[0] for o in batch])
    )
    assert all(a.shape == (2,) and loaded_env.action_space.contains(a) for a in sampled)

    # Episodes in the environment (it refuses anything but a MultiDiscrete([3, 2]) action).
    episodes = run_policy(loaded_env, get_action, num_episodes=2, seed=1, verbose=False)
    loaded_env.close()
    assert episodes == replay_by_hand(run_dir, BRANCHES, seed=1, episodes=2, model="model7.pt")
    assert [n for _, n in episodes] == [10, 10]

    # The command line, with the trained policy: deterministic, then sampled.
    proc = policy_cli(str(run_dir), "-n", "2", "-d", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert printed_episodes(proc.stdout) == replay_by_hand(run_dir, BRANCHES, seed=1, episodes=2)
    proc = policy_cli(str(run_dir), "-n", "1", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert [n for _, n in printed_episodes(proc.stdout)] == [10]


def test_cartpole_video(runs, tmp_path):
    """Classic-control environments render with pygame (a dependency: gymnasium[classic-control])."""
    video = tmp_path / "cartpole.mp4"
    args = [str(runs["cartpole"]), "-n", "1", "--len", "20", "--video", str(video)]
    proc = test_policy_process(*args, DISPLAY="", WAYLAND_DISPLAY="")
    assert proc.returncode == 0, proc.stderr
    assert video.is_file() and video.stat().st_size > 0


def test_vector_env_replay_counts_episodes_like_a_single_env(runs):
    _, get_action = load_policy(str(runs["cartpole"]), deterministic=True)
    single = gym.make("CartPole-v1")
    vector = SyncVectorEnv([lambda: gym.make("CartPole-v1")], autoreset_mode=AutoresetMode.SAME_STEP)
    one = run_policy(single, get_action, num_episodes=3, seed=4, verbose=False)
    many = run_policy(vector, get_action, num_episodes=3, seed=4, verbose=False)
    assert one == many and len(one) == 3 and all(n > 1 for _, n in one)
    with pytest.raises(UserError, match="--len"):
        run_policy(vector, get_action, max_ep_len=5, num_episodes=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _players(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_unity_run_replays_through_the_adapter(tmp_path, capfd, policy_cli):
    """A run of a Unity build (the stand-in player's scripted task): every agent's episodes are counted.

    Its agents earn their action per step and end after scripted lengths, so a policy whose mean action
    is 0.5 must score 0.5 x length; lineage 0 ends after 3 then 5 steps, lineage 1 after 4 then 2.
    """
    exe = write_build(
        tmp_path / "build", task="script", agents=2, decision_period=1, max_step=0,
        script={"lengths": [[3, 5, 9], [4, 2, 9]]},
    )  # fmt: skip
    run_dir = tmp_path / "run"
    env_fn = {"kind": "unity", "env": str(exe), "name": f"unity:{exe}", "env_kwargs": {}}
    (run_dir / "pyt_save").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"exp_name": "u", "seed": 0, "env_fn": env_fn}))
    ac = MLPActorCritic(gym.spaces.Box(-np.inf, np.inf, (4,)), gym.spaces.Box(-1, 1, (1,)), hidden_sizes=(8,))
    with torch.no_grad():
        ac.pi[-1].weight.zero_()
        ac.pi[-1].bias.fill_(0.5)
    save_model(ac, str(run_dir / "pyt_save" / "model.pt"))

    env, get_action = load_policy_and_env(str(run_dir), deterministic=True, base_port=_free_port())
    try:
        assert env.num_envs == 2
        episodes = run_policy(env, get_action, num_episodes=4, seed=0)
    finally:
        env.close()
    assert episodes == [(1.5, 3), (2.0, 4), (1.0, 2), (2.5, 5)]
    assert "Episode 3 \t EpRet 2.500 \t EpLen 5" in capfd.readouterr().out
    deadline = time.monotonic() + 10
    while _players(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _players(str(tmp_path)), "the player was left running"

    assert "--len and --video are for gymnasium runs" in one_line_error(
        policy_cli(str(run_dir), "--len", "5")
    )
    shutil.rmtree(tmp_path / "build")
    assert "is not there any more" in one_line_error(policy_cli(str(run_dir)))


def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, policy_cli):
    run_dir = tmp_path / "run"
    shutil.copytree(runs["cartpole"], run_dir)
    (tmp_path / "empty").mkdir()
    assert "not a run directory" in one_line_error(policy_cli(str(tmp_path / "empty")))
    msg = one_line_error(policy_cli(str(runs["cartpole"].parent.parent)))
    assert "holds several runs" not in msg and "not a run directory" in msg  # data/: experiments, not runs
    one_seed = policy_cli(str(runs["cartpole"].parent), "--episodes", "1")  # its only run
    assert one_seed.returncode == 0 and len(printed_episodes(one_seed.stdout)) == 1, one_seed.stderr
    shutil.copytree(runs["cartpole"], tmp_path / "exp" / "cartpole_s0")
    shutil.copytree(runs["cartpole"], tmp_path / "exp" / "cartpole_s1")
    assert "holds several runs (cartpole_s0, cartpole_s1)" in one_line_error(
        policy_cli(str(tmp_path / "exp"))
    )
    msg = one_line_error(policy_cli(str(run_dir), "--itr", "99"))
    assert "no checkpoint for --itr 99" in msg and "it has --itr last, 2" in msg
    assert "--video must end in .mp4 or .gif" in one_line_error(policy_cli(str(run_dir), "--video", "x.avi"))
    msg = one_line_error(policy_cli(str(run_dir), "--render", DISPLAY="", WAYLAND_DISPLAY=""))
    assert "--render needs a display" in msg
    (run_dir / "pyt_save" / "model.pt").write_bytes(b"not a checkpoint")
    assert "cannot read checkpoint" in one_line_error(policy_cli(str(run_dir)))

    # The same errors from Python are UserErrors.
    with pytest.raises(UserError, match="does not exist"):
        load_policy_and_env(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_policy_and_env(str(run_dir))
    shutil.rmtree(run_dir / "pyt_save")
    with pytest.raises(UserError, match="no checkpoint in"):
        load_policy_and_env(str(run_dir))

    # A policy for another environment, a damaged architecture, a missing config.json.
    run_dir = tmp_path / "other"
    shutil.copytree(runs["cartpole"], run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    config["env_fn"]["env"] = "Pendulum-v1"
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"observations have shape \(3,\).*expects \(4,\)"):
        load_policy_and_env(str(run_dir))
    config["env_fn"]["env"] = "no_such_module_here:Thing-v0"  # trained with a module this machine lacks
    (run_dir / "config.json").write_text(json.dumps(config))
    assert "cannot import 'no_such_module_here' for environment" in one_line_error(policy_cli(str(run_dir)))
    payload = torch.load(run_dir / "pyt_save" / "model.pt", weights_only=True)
    payload["ctor"]["hidden_sizes"] = [7]
    torch.save(payload, run_dir / "pyt_save" / "model.pt")
    with pytest.raises(UserError, match="cannot rebuild the policy"):
        load_policy(str(run_dir))
    os.unlink(run_dir / "config.json")
    with pytest.raises(UserError, match="no config.json"):
        load_policy_and_env(str(run_dir), itr=2)


@pytest.mark.parametrize(
    "text, key",
    [
        ('{"exp_name": "c", "seed": 0, "env_fn": 3}', "env_fn is 3"),
        ('{"env_fn": {"kind": "gym", "env": "CartPole-v1", "env_kwargs": "x"}}', "env_fn.env_kwargs is 'x'"),
        ('{"env_fn": {"kind": "gym", "env": 5}}', "env_fn.env is 5"),
        ('{"env_fn": {"kind": "docker", "env": "CartPole-v1"}}', "env_fn.kind is 'docker'"),
        ('{"env_fn": {"env": "CartPole-v1"}}', "env_fn.kind is None"),
        ("[1, 2]", "holds a list"),
        ('{"env_fn": {"kind": "gym", "env": "CartPo', "cannot read"),
    ],
)
def test_damaged_config_json_is_one_line_naming_file_and_key(runs, tmp_path, text, key, policy_cli):
    run_dir = tmp_path / "run"
    shutil.copytree(runs["cartpole"], run_dir)
    config = run_dir / "config.json"
    config.write_text(text)
    with pytest.raises(UserError) as e:
        load_policy_and_env(str(run_dir))
    assert str(config) in str(e.value) and key in str(e.value) and "\n" not in str(e.value)
    msg = one_line_error(policy_cli(str(run_dir), "-n", "1"))
    assert str(config) in msg and key in msg


def test_itr_that_is_not_a_number(runs, policy_cli):
    msg = one_line_error(policy_cli(str(runs["cartpole"]), "--itr", "newest"))
    assert "--itr takes an iteration number, 'last' or 'best', not 'newest'" in msg
    # 'best' is a name, of the policy --eval_freq keeps: a run without evaluation has none.
    msg = one_line_error(policy_cli(str(runs["cartpole"]), "--itr", "best"))
    assert "no pyt_save/model_best.pt" in msg and "--eval_freq" in msg


def test_videos_follow_the_walker():
    """Gymnasium's renderer resets its free camera at every frame, so a walker leaves the video after a few
    metres; replay's frames follow the body the environment's camera config names."""
    import gymnasium as gym
    import mujoco

    env = gym.make("Walker2d-v5", render_mode="rgb_array", width=64, height=64)
    env.reset(seed=0)
    first = render_frame(env)
    sim = env.unwrapped
    sim.data.qpos[0] = 5.0  # five metres on
    mujoco.mj_forward(sim.model, sim.data)
    moved = render_frame(env)
    viewer = sim.mujoco_renderer._get_viewer("rgb_array")
    assert viewer.cam.type == mujoco.mjtCamera.mjCAMERA_TRACKING
    assert abs(viewer.cam.lookat[0] - sim.data.subtree_com[2][0]) < 1e-6

    # The walker (brown and pink: red well above green; the floor and sky are not) is in both pictures.
    def walker_pixels(frame: np.ndarray) -> int:
        return int((frame[..., 0].astype(int) - frame[..., 1] > 40).sum())

    assert walker_pixels(first) > 5 and walker_pixels(moved) > 5
    env.close()


def test_spinning_up_names_still_import_from_test_policy():
    """Spinning Up's users write ``from ...test_policy import load_policy_and_env, run_policy``; the
    command's module still gives them (and the other names it gave) from their new homes."""
    from spinppo.tools import policies, replay, test_policy, video

    assert test_policy.load_policy_and_env is policies.load_policy_and_env
    assert test_policy.run_policy is replay.run_policy and test_policy.save_video is video.save_video
    assert all(hasattr(test_policy, name) for name in test_policy.__all__)
