"""Image and Dict observations end to end: PPO learns a task whose answer is only in the pixels, a control
run without the pixels' information stays at chance, uint8 storage, checkpoints, replay and ONNX export.

The task (``SideEnv``): a dark 20x20 image (the ``simple`` encoder's smallest) with a bright square on the
left or the right half, drawn anew every step; action 0 (left) or 1 (right) earns +1 when it matches the
square's side, else 0. Episodes last 10 steps, so EpRet counts correct answers out of 10: chance is 5.
The ``noise`` variant shows random pixels with the same reward rule, so nothing in the image tells the
side: a network (or a wiring that loses the image, zeroes it or shuffles it between environments) can do
no better than chance there. Thresholds: PPO reaches a mean EpRet of at least 9 in the last epoch on the
real task, and stays at most 6.5 on the noise variant (chance 5, standard error ~0.3 with ~32 episodes).
Checked by hand once: the same real-task run with the encoder fed zeroed images ended at 4.9.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from spinppo.core.buffer import GAEBuffer
from spinppo.core.encoders import ObsLayout
from spinppo.core.networks import MLPActorCritic
from tests.conftest import mpirun, rows_without_timing

SIZE = 20
EPISODE = 10


class SideEnv(gym.Env):
    """A bright square on the left or right of a 20x20x1 uint8 image; +1 for naming its side (0 left,
    1 right). ``noise``: the image is random, the side hidden. ``with_vector``: a Dict observation with the
    image and a 2-number vector (the step count, and a constant) beside it."""

    action_space = gym.spaces.Discrete(2)

    def __init__(self, noise: bool = False, with_vector: bool = False, channels_first: bool = False):
        self.noise, self.with_vector, self.channels_first = noise, with_vector, channels_first
        shape = (1, SIZE, SIZE) if channels_first else (SIZE, SIZE, 1)
        image = gym.spaces.Box(0, 255, shape, np.uint8)
        vector = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.observation_space = gym.spaces.Dict({"image": image, "vector": vector}) if with_vector else image
        self.side, self.t = 0, 0

    def _obs(self):
        if self.noise:
            img = self.np_random.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
        else:
            img = np.zeros((SIZE, SIZE), np.uint8)
            col = 2 if self.side == 0 else SIZE - 8
            row = int(self.np_random.integers(2, SIZE - 8))
            img[row : row + 6, col : col + 6] = 255
        img = img[None] if self.channels_first else img[..., None]
        if self.with_vector:
            return {"image": img, "vector": np.array([self.t / EPISODE, 1.0], np.float32)}
        return img

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.side = int(self.np_random.integers(2))
        return self._obs(), {}

    def step(self, action):
        reward = float(int(action) == self.side)
        self.t += 1
        self.side = int(self.np_random.integers(2))
        return self._obs(), reward, False, self.t >= EPISODE, {}


def train(out: str, noise: bool = False, with_vector: bool = False, epochs: int = 8, **kw):
    """PPO on SideEnv with the ``simple`` encoder into run directory ``out``; the trained actor-critic
    (used in-process and by ``mpirun ... -c 'from tests.test_pixels import train; ...'``)."""
    from spinppo.algos.ppo import ppo

    env_kwargs = kw.pop("env_kwargs", {})
    ac_kwargs = kw.pop("ac_kwargs", {"hidden_sizes": (32,), "encoder": "simple"})
    kw.setdefault("logger_kwargs", {"output_dir": out, "tensorboard": False})
    return ppo(
        lambda: SideEnv(noise=noise, with_vector=with_vector, **env_kwargs),
        ac_kwargs=ac_kwargs,
        steps_per_epoch=320,
        num_envs=4,
        epochs=epochs,
        minibatch_size=80,
        update_epochs=4,
        lr=1e-3,
        **kw,
    )


def last_epret(run_dir: Path) -> float:
    """Mean EpRet of the last row of ``progress.txt``."""
    rows = [line.split("\t") for line in (run_dir / "progress.txt").read_text().splitlines()]
    return float(rows[-1][rows[0].index("AverageEpRet")])


def mpi_train(*runs: tuple[Path, dict]) -> None:
    """``train(out, **kw)`` for each (out, kw) of ``runs``, one after the other, on two ranks under one
    real mpirun (the ranks start once)."""
    calls = "; ".join(
        f"train({str(out)!r}, {', '.join(f'{k}={v!r}' for k, v in kw.items())})" for out, kw in runs
    )
    mpirun(2, ["-c", f"from tests.test_pixels import train; {calls}"], timeout=240)


def test_ppo_learns_from_pixels_and_not_from_noise(tmp_path):
    """Two ranks, 16 epochs of 320 steps each: the real task reaches EpRet >= 9 of 10 (chance: 5); the
    same run on noise images stays <= 6.5, so the learning came through the encoder from the pixels."""
    mpi_train((tmp_path / "pixels", {"epochs": 16}), (tmp_path / "noise", {"epochs": 16, "noise": True}))
    learned, control = last_epret(tmp_path / "pixels"), last_epret(tmp_path / "noise")
    assert learned >= 9.0, (learned, control)
    assert control <= 6.5, (learned, control)
    config = json.loads((tmp_path / "pixels" / "config.json").read_text())
    assert config["ac_kwargs"]["encoder"] == "simple"


def test_image_policy_replays_and_is_exported(tmp_path):
    """A saved image policy gives the same actions after load_policy and from its ONNX graph (generic form,
    uint8 HWC images in as stored)."""
    import onnxruntime as ort

    from spinppo.tools.onnx_writer import gym_model
    from spinppo.tools.test_policy import load_policy

    ac = train(str(tmp_path / "run"), epochs=2, save_freq=1)
    env = SideEnv()
    env.reset(seed=3)
    batch = np.stack([env.step(0)[0] for _ in range(16)])  # [16, 20, 20, 1] uint8
    mine = ac.act(torch.as_tensor(batch), deterministic=True).action.numpy()
    loaded, get_action = load_policy(str(tmp_path / "run"), deterministic=True)
    assert loaded.ctor_spec["encoder"] == "simple"
    assert loaded.ctor_spec["observation"] == {"kind": "box", "shape": [SIZE, SIZE, 1], "dtype": "uint8"}
    np.testing.assert_array_equal(get_action(batch), mine)  # test_policy hands it float32: still /255
    session = ort.InferenceSession(gym_model(loaded, env.action_space).SerializeToString())
    np.testing.assert_array_equal(session.run(["deterministic_actions"], {"obs": batch})[0], mine)


def test_dict_observations_train_checkpoint_and_resume(tmp_path):
    """An image plus a vector (channels-first image): two epochs with checkpoints, the policy rebuilt
    from pyt_save/model.pt acts as the trained one, and a resume continues to a third epoch."""
    from spinppo.core.networks import build_actor_critic
    from spinppo.utils.logx import load_model_payload

    out = tmp_path / "dict"
    ac = train(str(out), with_vector=True, epochs=2, save_freq=1, env_kwargs={"channels_first": True})
    assert ac.ctor_spec["observation"]["kind"] == "dict"
    assert ac.obs_rms.mean.shape == (2,)  # statistics of the vector part only
    assert float(ac.obs_rms.count) == 2 * 320
    payload = load_model_payload(str(out / "pyt_save" / "model.pt"))
    rebuilt = build_actor_critic(payload["ctor"])
    rebuilt.load_state_dict(payload["state_dict"])
    env = SideEnv(with_vector=True, channels_first=True)
    env.reset(seed=5)
    steps = [env.step(1)[0] for _ in range(8)]
    obs = {k: torch.as_tensor(np.stack([s[k] for s in steps])) for k in ("image", "vector")}
    assert obs["image"].dtype == torch.uint8
    torch.testing.assert_close(rebuilt.evaluate(obs, torch.zeros(8))[0], ac.evaluate(obs, torch.zeros(8))[0])
    # test_policy's loader takes one Dict observation or a batch of them.
    from spinppo.tools.test_policy import load_policy

    _, get_action = load_policy(str(out), deterministic=True)
    want = ac.act(obs, deterministic=True).action.numpy()
    assert [get_action(s) for s in steps] == want.tolist()
    assert get_action({k: v.numpy() for k, v in obs.items()}).tolist() == want.tolist()
    train(
        str(out),
        with_vector=True,
        epochs=3,
        save_freq=1,
        env_kwargs={"channels_first": True},
        logger_kwargs={"output_dir": str(out), "tensorboard": False, "resume": True},
    )
    rows = (out / "progress.txt").read_text().splitlines()
    assert len(rows) == 1 + 3


class ScoredSideEnv(gym.vector.SyncVectorEnv):
    """SideEnv in a vector environment that reports its own game scores, as the Atari environment does:
    every second episode end is a real game's end, reported as 100 + the environment's number with
    length 7 (values the rollout's own sums could not give)."""

    reports_game_score = True

    def __init__(self, n: int):
        super().__init__([SideEnv] * n, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self.ends = np.zeros(n, dtype=np.int64)

    def step(self, actions):
        obs, rew, terminated, truncated, info = super().step(actions)
        done = terminated | truncated
        self.ends += done
        game_over = done & (self.ends % 2 == 0)
        if game_over.any():
            info = dict(info)
            info["game_return"] = np.where(game_over, 100.0 + np.arange(self.num_envs), 0.0)
            info["game_length"] = np.where(game_over, 7, 0)
            info["_game_return"] = game_over
        return obs, rew, terminated, truncated, info


def test_rollout_logs_the_environments_game_scores(tmp_path):
    from spinppo.core.rollout import RolloutWorker
    from spinppo.utils.logx import EpochLogger

    env = ScoredSideEnv(3)
    ac = MLPActorCritic(env.single_observation_space, env.single_action_space, encoder="simple")
    buf = GAEBuffer(ObsLayout.from_space(env.single_observation_space), (), 3, 4 * EPISODE, discrete=True)
    logger = EpochLogger(output_dir=str(tmp_path), tensorboard=False)
    RolloutWorker(env, ac, seed=0).collect(buf, logger)
    # 4 episode ends per environment, 2 of them game ends: 6 scores, the environment's, not the sums
    assert sorted(logger.epoch_dict["EpRet"]) == [100.0, 100.0, 101.0, 101.0, 102.0, 102.0]
    assert logger.epoch_dict["EpLen"] == [7] * 6
    logger.close()
    env.close()


def test_evaluation_builds_its_environments_for_scoring():
    """An env_fn with a ``training`` keyword is called with training=False by the Evaluator, which plays
    image episodes (here: noise when training, the real task when not)."""
    from spinppo.core.evaluation import Evaluator

    calls = []

    def env_fn(training: bool = True):
        calls.append(training)
        return SideEnv(noise=training)

    ac = MLPActorCritic(SideEnv().observation_space, SideEnv.action_space, encoder="simple")
    evaluator = Evaluator(env_fn, ac, episodes=3, seed=0)
    returns, lengths = evaluator.evaluate()
    evaluator.close()
    assert calls == [False] * 3 and lengths == [EPISODE] * 3 and len(returns) == 3


def test_bf16_precision_learns_resumes_exactly_and_replays_in_float32(tmp_path):
    """--precision bf16: the encoder computes in bfloat16 (its features still float32, close to the float32
    network's but not equal), PPO still learns the pixel task, a resumed run gives the uninterrupted run's
    rows, and the saved policy loads as a float32 network that acts as the trained one mostly does."""
    from spinppo.tools.test_policy import load_policy

    env = SideEnv()
    ac = MLPActorCritic(env.observation_space, env.action_space, hidden_sizes=(32,), encoder="simple")
    assert not MLPActorCritic(gym.spaces.Box(-1, 1, (3,)), env.action_space).set_precision("bf16")
    env.reset(seed=1)
    batch = torch.as_tensor(np.stack([env.step(0)[0] for _ in range(64)]))
    full = ac.encoder(batch)
    assert ac.set_precision("bf16")
    half = ac.encoder(batch)
    assert half.dtype == torch.float32
    assert not torch.equal(half, full)  # bfloat16 arithmetic really ran
    torch.testing.assert_close(half, full, rtol=0.05, atol=0.02)
    half.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in ac.encoder.parameters())

    learned = train(str(tmp_path / "learn"), epochs=12, precision="bf16")
    assert last_epret(tmp_path / "learn") >= 9.0
    assert learned.encoder.images[0].compute_dtype == torch.bfloat16
    config = json.loads((tmp_path / "learn" / "config.json").read_text())
    assert config["precision"] == "bf16"

    fixed = {"anneal_lr": False, "anneal_ent": False}  # a 2-epoch run's schedule is a 3-epoch run's
    train(str(tmp_path / "whole"), epochs=3, precision="bf16", **fixed)
    train(str(tmp_path / "split"), epochs=2, precision="bf16", save_freq=1, **fixed)
    resume = {"output_dir": str(tmp_path / "split"), "tensorboard": False, "resume": True}
    train(str(tmp_path / "split"), epochs=3, precision="bf16", logger_kwargs=resume, **fixed)
    whole = rows_without_timing(tmp_path / "whole")
    assert rows_without_timing(tmp_path / "split") == whole
    train(str(tmp_path / "fp32"), epochs=3, **fixed)
    assert rows_without_timing(tmp_path / "fp32") != whole  # the flag changed the arithmetic

    loaded, get_action = load_policy(str(tmp_path / "learn"), deterministic=True)
    assert loaded.encoder.images[0].compute_dtype is None  # replay computes in float32
    env.reset(seed=2)
    frames = np.stack([env.step(0)[0] for _ in range(200)])
    trained = learned.act(torch.as_tensor(frames), deterministic=True).action.numpy()
    assert (get_action(frames) == trained).mean() >= 0.95


def test_a_bf16_rollout_casts_the_encoders_weights_once_and_acts_as_casting_at_every_call(tmp_path):
    """RolloutWorker.collect keeps an autocast region open for the whole rollout, so that --precision
    bf16 casts the encoder's weights to bfloat16 once, not at every policy call: the same steps, actions,
    values and log-probabilities as the rollout that casts at every call, and far fewer casts."""
    from torch.profiler import profile

    from spinppo.core.rollout import RolloutWorker
    from spinppo.utils.logx import EpochLogger

    def rollout(name: str, whole: bool) -> tuple[GAEBuffer, int, int]:
        env = gym.vector.SyncVectorEnv([SideEnv] * 3, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        torch.manual_seed(0)
        ac = MLPActorCritic(env.single_observation_space, env.single_action_space, encoder="simple")
        assert ac.set_precision("bf16")
        buf = GAEBuffer(ObsLayout.from_space(env.single_observation_space), (), 3, 2 * EPISODE, discrete=True)
        logger = EpochLogger(output_dir=str(tmp_path / name), tensorboard=False)
        worker = RolloutWorker(env, ac, seed=0)
        torch.manual_seed(1)  # the torch policy's sampling
        with profile() as prof:
            if whole:
                worker.collect(buf, logger)
            else:  # the rollout without collect's region: each policy call casts the weights anew
                worker._collect(buf, logger, None)
        logger.close()
        casts = sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")
        return buf, casts, len(list(ac.encoder.parameters()))

    once, casts_once, weights = rollout("once", whole=True)
    every, casts_every, _ = rollout("every", whole=False)
    for key in ("obs", "act", "val", "logp", "rew"):
        np.testing.assert_array_equal(getattr(once, key), getattr(every, key))
    assert casts_every - casts_once >= weights * (2 * EPISODE - 1)  # every weight again at every later step
