"""Recurrent (LSTM) policies: ``--memory_size`` and ``--sequence_length``.

The learning test uses ``tests.memory_env:Cue-v0`` (the cue is shown at the first of 4 steps and decides the
reward at the last, +1 or -1): a policy without memory cannot beat an expected return of 0, one that
remembers earns 1. Measured on 2 cores, PPO at 2 ranks with the flags of ``CUE`` below, 12 epochs, seeds
0-4: the LSTM's last-epoch AverageEpRet was 0.97-1.00 (it passed 0.9 by epoch 7 on every seed, counting from
0) and its 20 deterministic evaluation episodes all scored 1; the same runs with ``--memory_size 0`` ended
between -0.04 and 0.16. The thresholds: at least 0.8 with memory, at most 0.35 without (a memoryless
policy's last-epoch mean over ~256 episodes has a standard deviation near 0.06).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from spinppo.core.buffer import Batch, GAEBuffer
from spinppo.core.networks import MLPActorCritic
from tests.conftest import MPIRUN, mpirun, mpirun_commands, rows_without_timing, run
from tests.test_failures import start, wait_rows

PY = [sys.executable, "-m", "spinppo.run"]
CUE = [
    "--env",
    "tests.memory_env:Cue-v0",
    "--sequence_length",
    "8",
    "--steps_per_epoch",
    "1024",
    "--num_envs",
    "4",
    "--minibatch_size",
    "256",
    "--hid",
    "32",
]
OBS = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)


def last_epret(run_dir: Path) -> float:
    rows = [line.split("\t") for line in (run_dir / "progress.txt").read_text().splitlines()]
    return float(rows[-1][rows[0].index("AverageEpRet")])


def column(run_dir: Path, name: str) -> list[float]:
    rows = [line.split("\t") for line in (run_dir / "progress.txt").read_text().splitlines()]
    return [float(r[rows[0].index(name)]) for r in rows[1:]]


def test_an_lstm_solves_the_cue_task_and_the_same_run_without_memory_does_not(tmp_path, cli):
    """Under mpirun -np 2: the LSTM policy clearly solves the task, also in deterministic evaluation
    episodes and in test_policy's replay (both carry the memory; without it they would score ~0), and
    the same run with --memory_size 0 stays at chance. The ranks' parameters are identical at the end."""
    common = [
        *CUE,
        "--epochs",
        "12",
        "--data_dir",
        str(tmp_path),
        "--eval_freq",
        "12",
        "--eval_episodes",
        "20",
    ]
    runs = [["ppo", *common, "--memory_size", "32", "--exp_name", "lstm"]]
    runs.append(["ppo", *common, "--memory_size", "0", "--exp_name", "plain"])
    mpirun_commands(2, runs)  # one job, one after the other
    lstm, none = tmp_path / "lstm" / "lstm_s0", tmp_path / "plain" / "plain_s0"
    learned, control = last_epret(lstm), last_epret(none)
    assert learned >= 0.8, (learned, control)
    assert control <= 0.35, (learned, control)
    assert column(lstm, "EvalEpRet")[-1] >= 0.9
    assert column(none, "EvalEpRet")[-1] <= 0.5
    config = json.loads((lstm / "config.json").read_text())
    assert config["ac_kwargs"]["memory_size"] == 32 and config["ac_kwargs"]["sequence_length"] == 8
    replay = cli("test_policy", str(lstm), "--episodes", "20", "--deterministic")
    assert replay.returncode == 0, replay.stderr
    mean = float(replay.stdout.split("EpRet mean")[1].split()[0])
    assert mean >= 0.9, replay.stdout
    # Exported to ONNX (memory_in -> memory_out), the file replays as well: its memory is carried too.
    onnx_file = tmp_path / "lstm.onnx"
    export = cli("export", str(lstm), "--onnx", str(onnx_file))
    assert export.returncode == 0, export.stderr
    assert "memory_in ['batch', 32]" in export.stdout and "memory_out ['batch', 32]" in export.stdout
    replay = cli("test_policy", str(onnx_file), "--episodes", "20", "--deterministic")
    assert replay.returncode == 0, replay.stderr
    assert float(replay.stdout.split("EpRet mean")[1].split()[0]) >= 0.9, replay.stdout


def train_and_compare(out: str, algo: str, epochs: int, sequence_length: int = 8) -> None:
    """Train ``algo`` with memory on the cue task in this MPI job; every rank writes a digest of its
    parameters (and its final return) to ``out``/rank<r>.json, for the test to compare."""
    import hashlib

    import tests.memory_env  # noqa: F401  (registers Cue-v0)
    from spinppo.algos.a2c import a2c
    from spinppo.algos.a3c import a3c
    from spinppo.algos.ppo import ppo
    from spinppo.algos.vpg import vpg
    from spinppo.utils.mpi_tools import proc_id

    kwargs = {
        "ac_kwargs": {"hidden_sizes": (32,), "memory_size": 16, "sequence_length": sequence_length},
        "steps_per_epoch": 1024,
        "num_envs": 4,
        "epochs": epochs,
        "logger_kwargs": {"output_dir": out, "tensorboard": False},
    }
    if algo in ("a2c", "a3c"):
        fn, kwargs["n_steps"] = {"a2c": a2c, "a3c": a3c}[algo], 8
    elif algo == "vpg":
        fn, kwargs["pi_lr"] = vpg, 0.01
    else:
        fn, kwargs["minibatch_size"] = ppo, 256
    ac = fn(lambda: gym.make("Cue-v0"), **kwargs)
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in ac.parameters())).hexdigest()
    with open(os.path.join(out, f"rank{proc_id()}.json"), "w") as f:
        json.dump({"digest": digest}, f)


MEMORY_RUNS = [("a2c", 14, 8), ("vpg", 20, 8), ("a3c", 14, 8), ("ppo", 10, 10), ("a2c", 14, 5)]


@pytest.fixture(scope="module")
def memory_runs(tmp_path_factory) -> Path:
    """The runs of MEMORY_RUNS (algorithm, epochs, sequence length), one after the other in one
    ``mpirun -np 2`` job (the ranks start once), each into its own directory ALGO-EPOCHS-LENGTH."""
    root = tmp_path_factory.mktemp("memory_runs")
    calls = "; ".join(
        f"train_and_compare({str(root / f'{a}-{e}-{n}')!r}, {a!r}, {e}, {n})" for a, e, n in MEMORY_RUNS
    )
    mpirun(2, ["-c", f"from tests.test_memory import train_and_compare; {calls}"], timeout=600)
    return root


@pytest.mark.parametrize(("algo", "epochs", "sequence_length"), MEMORY_RUNS)
def test_every_algorithm_learns_with_memory_and_ranks_end_identical(
    memory_runs, algo, epochs, sequence_length
):
    """A2C (n_steps 8 = one sequence per rollout) and VPG (pi_lr 0.01) with an LSTM learn the cue task too
    (trials in one process, memory 32, seed 0: A2C passed 0.9 at epoch 5 and VPG at epoch 14, counting from
    0); both ranks end with the same parameters, bit for bit. A3C as A2C, asynchronously (its rank 0 cuts
    its last rollout anywhere when another rank's gradient ends the run: not a whole sequence). And with
    sequence lengths that do not divide the rollout, so that each environment's last sequence is padded
    and masked: PPO with 10 over rollouts of 128 steps (12 sequences and 8 steps), A2C with 5 over
    n_steps 8 (5 steps and 3)."""
    out = memory_runs / f"{algo}-{epochs}-{sequence_length}"
    digests = [json.loads((out / f"rank{r}.json").read_text())["digest"] for r in range(2)]
    assert digests[0] == digests[1]
    assert last_epret(out) >= 0.8


def test_exact_resume_with_memory_after_sigkill(tmp_path):
    """A recurrent run killed after its checkpoint and resumed gives the rows of the uninterrupted run: the
    episodes in progress continue with the memories they had (saved in the checkpoint). Its sequences of 12
    steps do not divide the rollouts of 128: each environment's last one is padded."""
    # Episodes of 5 steps in rollouts of 128: every epoch ends with episodes in progress in every environment.
    cue = [*CUE, "--env_kwargs", "delay=4", "--sequence_length", "12"]
    job = [*PY, "ppo", *cue, "--memory_size", "16", "--epochs", "5", "--save_freq", "1", "--exp_name", "r"]
    run([MPIRUN, "-np", "2", *job, "--data_dir", str(tmp_path / "whole")], timeout=300)
    broken = tmp_path / "broken" / "r" / "r_s0"
    proc = start([MPIRUN, "-np", "2", *job, "--data_dir", str(tmp_path / "broken")])
    wait_rows(broken / "progress.txt", 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # mpirun and both ranks, with no chance to clean up
    proc.communicate()
    assert len(rows_without_timing(broken)) < 6, "the run finished before it could be killed"
    run([MPIRUN, "-np", "2", *PY, "ppo", "--resume", str(broken)], timeout=300)
    assert rows_without_timing(broken) == rows_without_timing(tmp_path / "whole" / "r" / "r_s0")
    ckpt = torch.load(sorted((broken / "checkpoints").glob("ckpt-*.pt"))[-1], weights_only=True)
    assert ckpt["epoch"] == 4


def test_a_step_after_an_episode_end_does_not_depend_on_the_episode_before():
    """Sequence masking: in a sequence where an episode ends at step 2, the log-probabilities and values of
    steps 3.. (the next episode) are the same whatever the earlier steps and the sequence's starting memory
    were, while those of steps 0..2 change. Without the start flag they would change too (checked)."""
    torch.manual_seed(0)
    ac = MLPActorCritic(
        OBS, gym.spaces.Box(-1, 1, (2,)), hidden_sizes=(16,), memory_size=8, sequence_length=6
    )
    obs = torch.randn(2, 6, 3)
    act = torch.randn(2, 6, 2)
    memory = torch.randn(2, 8)
    starts = torch.zeros(2, 6, dtype=torch.bool)
    starts[0, 3] = True  # sequence 0: a new episode begins at step 3
    other_obs, other_memory = obs.clone(), memory.clone()
    other_obs[:, :3] += 5.0  # another past in both sequences
    other_memory += 1.0
    first = ac.evaluate(obs, act, memory=memory, starts=starts)
    second = ac.evaluate(other_obs, act, memory=other_memory, starts=starts)
    assert all(x.shape == (2, 6) for x in first)
    for a, b in ((first[0], second[0]), (first[2], second[2])):  # logp and value (the entropy is constant)
        torch.testing.assert_close(a[0, 3:], b[0, 3:], rtol=0, atol=0)  # the new episode: unaffected
        assert not torch.allclose(a[0, :3], b[0, :3])  # the old episode: its past matters
        assert not torch.allclose(a[1, 3:], b[1, 3:])  # no episode start in sequence 1: the past matters
    unmasked = ac.evaluate(other_obs, act, memory=other_memory, starts=torch.zeros_like(starts))
    assert not torch.allclose(first[0][0, 3:], unmasked[0][0, 3:])


def test_sequences_match_step_by_step_rollout_computation():
    """``evaluate`` over sequences gives the log-probabilities and values of stepping the LSTM one step at a
    time with the memory zeroed at episode starts (what the rollout does), in numpy and in torch."""
    torch.manual_seed(1)
    for act_space in (gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(3)):
        ac = MLPActorCritic(OBS, act_space, hidden_sizes=(16,), memory_size=8, sequence_length=5)
        ac.obs_rms.update(np.random.default_rng(0).normal(2.0, 3.0, (50, 3)))
        policy = ac.rollout_policy()
        assert policy.in_numpy
        rng = np.random.default_rng(1)
        obs = rng.normal(size=(5, 4, 3)).astype(np.float32)  # steps x environments
        done = np.zeros((5, 4), dtype=bool)
        done[1, 0] = done[3, 2] = True
        memory = np.zeros((4, 8), np.float32)
        start_memory = memory.copy()
        acts, logps, vals = [], [], []
        for t in range(5):
            a, v, logp, next_memory = policy.step(obs[t], memory)
            t_a, t_v, t_logp, t_memory = ac.step(torch.from_numpy(obs[t]), torch.from_numpy(memory))
            np.testing.assert_allclose(next_memory, t_memory.numpy(), atol=1e-5)
            np.testing.assert_allclose(v, t_v.numpy(), atol=1e-5)
            acts.append(a)
            logps.append(logp)
            vals.append(v)
            next_memory[done[t]] = 0.0
            memory = next_memory
        starts = np.zeros_like(done)
        starts[1:] = done[:-1]
        seq = lambda x: torch.from_numpy(np.ascontiguousarray(np.swapaxes(np.asarray(x), 0, 1)))  # noqa: E731
        logp, _, value = ac.evaluate(
            seq(obs), seq(np.stack(acts)), memory=torch.from_numpy(start_memory), starts=seq(starts)
        )
        np.testing.assert_allclose(logp.detach().numpy(), seq(np.stack(logps)).numpy(), atol=1e-4)
        np.testing.assert_allclose(value.detach().numpy(), seq(np.stack(vals)).numpy(), atol=1e-5)


def test_the_buffer_hands_out_sequences_with_their_memories_and_episode_starts():
    """A rollout of 8 steps x 2 environments with sequence_length 4: 4 sequences, environment by environment;
    each with the memory stored at its first step; starts where the step before ended an episode."""
    buf = GAEBuffer(3, (), 2, 8, discrete=True, memory_size=2, sequence_length=4)
    for t in range(8):
        done = np.array([t == 5, False])
        memory = np.array([[t, 0], [t, 1]], np.float32)
        buf.store(
            np.full((2, 3), t, np.float32),
            np.array([t, t]),
            np.zeros(2),
            np.zeros(2),
            np.zeros(2),
            done,
            np.zeros(2, bool),
            None,
            memory,
        )
    buf.finish(np.zeros(2))
    batch = buf.get(normalize_adv=False)
    assert batch.obs.shape == (4, 4, 3) and batch.act.shape == (4, 4) and batch.adv.shape == (4, 4)
    assert batch.act.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3], [4, 5, 6, 7]]
    assert batch.memory.tolist() == [[0, 0], [4, 0], [0, 1], [4, 1]]
    assert batch.starts.tolist() == [[False] * 4, [False, False, True, False], [False] * 4, [False] * 4]
    assert batch.mask is None  # nothing padded


def fill(buf: GAEBuffer, steps: int, envs: int, seed: int = 0) -> None:
    """``steps`` steps of ``envs`` environments: obs and action = the step, episode ends at steps 1 and 4 of
    environment 0, the memory [step, env], random rewards and values; then finish."""
    rng = np.random.default_rng(seed)
    for t in range(steps):
        done = np.array([t in (1, 4)] + [False] * (envs - 1))
        buf.store(
            np.full((envs, 3), t, np.float32),
            np.full(envs, t),
            rng.normal(size=envs),
            rng.normal(size=envs),
            rng.normal(size=envs),
            done,
            np.zeros(envs, bool),
            None,
            np.array([[t, e] for e in range(envs)], np.float32),
        )
    buf.finish(rng.normal(size=envs))


def test_a_sequence_length_that_does_not_divide_the_rollout_pads_the_last_sequence_and_masks_it():
    """7 steps x 2 environments with sequence_length 3: sequences of steps 0-2, 3-5 and 6 (padded with two
    copies of step 6) per environment, the memory of each sequence's first step, starts False at padding,
    a mask of the real steps, and the advantages normalised over the real steps only. A sequence_length
    longer than the rollout makes one unpadded sequence of each environment's rollout."""
    buf = GAEBuffer(3, (), 2, 7, discrete=True, memory_size=2, sequence_length=3)
    assert buf.rows == 6
    fill(buf, 7, 2)
    adv = buf.adv.copy()
    batch = buf.get(normalize_adv=True)
    assert batch.obs.shape == (6, 3, 3) and batch.adv.shape == (6, 3) and batch.mask.shape == (6, 3)
    assert batch.act.tolist() == [[0, 1, 2], [3, 4, 5], [6, 6, 6]] * 2
    assert batch.memory.tolist() == [[0, 0], [3, 0], [6, 0], [0, 1], [3, 1], [6, 1]]
    assert batch.mask.tolist() == [[True] * 3, [True] * 3, [True, False, False]] * 2
    assert (
        batch.starts.tolist() == [[False, False, True], [False, False, True], [False] * 3] + [[False] * 3] * 3
    )
    real = batch.adv[batch.mask]
    assert len(real) == 14
    torch.testing.assert_close(real.mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    expected = (adv - adv.mean()) / (adv.std() + 1e-8)  # [steps, envs], the real steps only
    torch.testing.assert_close(real, torch.from_numpy(expected.T.reshape(-1).astype(np.float32)))

    long = GAEBuffer(3, (), 2, 7, discrete=True, memory_size=2, sequence_length=10)
    assert long.sequence_length == 7 and long.rows == 2
    fill(long, 7, 2)
    batch = long.get(normalize_adv=False)
    assert batch.act.tolist() == [list(range(7))] * 2 and batch.mask is None
    assert batch.memory.tolist() == [[0, 0], [0, 1]]


def padded_batch(ac: MLPActorCritic, steps: int = 10, envs: int = 3, seed: int = 0) -> Batch:
    """A recurrent batch of ``steps`` x ``envs`` (episode ends in environment 0) cut into ac's sequences,
    with random observations, actions, returns and old log-probabilities."""
    rng = np.random.default_rng(seed)
    buf = GAEBuffer(
        3, ac.act_shape, envs, steps, memory_size=ac.memory_size, sequence_length=ac.sequence_length
    )
    for t in range(steps):
        buf.store(
            rng.normal(size=(envs, 3)).astype(np.float32),
            rng.normal(size=(envs, *ac.act_shape)).astype(np.float32),
            rng.normal(size=envs),
            rng.normal(size=envs),
            rng.normal(-2.0, 0.5, size=envs),
            np.array([t == 5] + [False] * (envs - 1)),
            np.zeros(envs, bool),
            None,
            rng.normal(size=(envs, ac.memory_size)).astype(np.float32),
        )
    buf.finish(rng.normal(size=envs))
    return buf.get(normalize_adv=True)


def _gradient(ac: MLPActorCritic, loss: torch.Tensor) -> torch.Tensor:
    ac.zero_grad(set_to_none=False)
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in ac.parameters()]).clone()


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_padded_steps_change_no_gradient(algo):
    """PPO's and A2C's (and A3C's) losses on a batch whose last sequences are padded (10 steps in sequences
    of 4: 4 + 4 + 2 real): the gradient equals the one computed from the real steps alone (the full and the
    short sequences evaluated separately, unpadded), and whatever the padded steps hold (observations,
    actions, advantages, returns, old log-probabilities and values), the gradient is the same, bit for bit.
    """
    from spinppo.algos.a2c import a2c_loss
    from spinppo.algos.ppo import ppo_loss

    torch.manual_seed(0)
    ac = MLPActorCritic(
        OBS, gym.spaces.Box(-1, 1, (2,)), hidden_sizes=(16,), memory_size=8, sequence_length=4
    )
    ac.obs_rms.update(np.random.default_rng(1).normal(size=(20, 3)))
    batch = padded_batch(ac)
    mask = batch.mask
    assert mask.shape == (9, 4) and int(mask.sum()) == 30

    def loss_of(logp, entropy, v, fields: Batch) -> torch.Tensor:
        if algo == "ppo":
            coefs = {"clip": 0.2, "vf_coef": 0.5, "ent_coef": 0.01, "clip_vloss": True}
            return ppo_loss(fields, logp, entropy, v, **coefs).loss
        return a2c_loss(fields, logp, entropy, v, vf_coef=0.5, ent_coef=0.01)[0]

    def padded_gradient(fields: Batch) -> torch.Tensor:
        out = ac.evaluate(fields.obs, fields.act, memory=fields.memory, starts=fields.starts)
        return _gradient(ac, loss_of(*out, fields))

    padded = padded_gradient(batch)
    # The real steps alone: whole sequences and the short last ones (2 steps), each evaluated unpadded.
    full, short = mask.all(1), ~mask.all(1)
    parts = []
    for rows, length in ((full, 4), (short, 2)):
        out = ac.evaluate(
            batch.obs[rows, :length],
            batch.act[rows, :length],
            memory=batch.memory[rows],
            starts=batch.starts[rows, :length],
        )
        parts.append([x.reshape(-1) for x in out])
    logp, entropy, v = (torch.cat([a, b]) for a, b in zip(*parts, strict=True))
    flat = {
        key: torch.cat([getattr(batch, key)[full].reshape(-1), getattr(batch, key)[short][:, :2].reshape(-1)])
        for key in ("adv", "ret", "logp_old", "v_old")
    }
    alone = _gradient(ac, loss_of(logp, entropy, v, dataclasses.replace(batch, **flat, mask=None)))
    assert padded.abs().sum() > 0
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-7)

    changed = dataclasses.replace(batch)
    rng = torch.Generator().manual_seed(2)
    for key in ("obs", "act", "adv", "ret", "logp_old", "v_old"):
        field = getattr(batch, key)
        noise = 10 * torch.randn(field.shape, generator=rng)
        where = ~mask.view(*mask.shape, *([1] * (field.dim() - 2)))
        setattr(changed, key, torch.where(where, noise, field))
    assert not torch.equal(changed.obs, batch.obs)
    assert torch.equal(padded_gradient(changed), padded)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--memory_size", "33"], "--memory_size must be 0 (no memory) or an even number"),
        (["--memory_size", "-2"], "--memory_size must be 0 (no memory) or an even number"),
        (["--memory_size", "16", "--sequence_length", "0"], "--sequence_length must be a positive number"),
    ],
)
def test_bad_memory_flags_are_one_line_errors(tmp_path, cli, flags, message):
    proc = cli("ppo", *CUE, *flags, "--data_dir", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not list(tmp_path.iterdir())  # refused before any run directory was made


def test_initialize_from_refuses_another_memory(tmp_path, cli):
    recurrent = cli(
        "ppo", *CUE, "--memory_size", "16", "--epochs", "1", "--data_dir", str(tmp_path), "--exp_name", "x"
    )
    assert recurrent.returncode == 0, recurrent.stderr
    # A feed-forward run cannot start from a recurrent policy: the one line names the option.
    proc = cli(
        "ppo", *CUE, "--initialize_from", str(tmp_path / "x" / "x_s0"), "--data_dir", str(tmp_path / "y")
    )
    assert proc.returncode == 2 and "memory_size 16 (this run: None)" in proc.stderr, proc.stderr


@pytest.mark.parametrize("with_vector", [False, True])
def test_an_lstm_after_an_image_encoder_trains_and_its_sequences_match_its_steps(tmp_path, with_vector):
    """Pixels meet memory: an image (or Dict: image + vector) policy with an LSTM after the encoder trains
    for two epochs, and evaluate over its stored sequences gives the values its rollout steps gave."""
    from tests.test_pixels import SideEnv, train

    ac = train(
        str(tmp_path / "run"),
        with_vector=with_vector,
        epochs=2,
        ac_kwargs={"hidden_sizes": (16,), "encoder": "simple", "memory_size": 8, "sequence_length": 5},
    )
    assert ac.memory_size == 8
    env = gym.vector.SyncVectorEnv([lambda: SideEnv(with_vector=with_vector)] * 2)
    obs, _ = env.reset(seed=0)
    layout = ac.layout
    memory = ac.initial_memory(2)
    steps, values = [], []
    for _ in range(5):
        steps.append(layout.batch(obs))
        _, value, _, memory = ac.step(layout.to_torch(layout.batch(obs)), memory)
        values.append(value)
        obs = env.step(np.array([0, 1]))[0]
    env.close()
    stacked = layout.map(lambda p, *xs: torch.from_numpy(np.stack(xs, axis=1)), *steps)  # [envs, steps, ...]
    value = ac.value(stacked, ac.initial_memory(2), torch.zeros(2, 5, dtype=torch.bool))
    torch.testing.assert_close(value, torch.stack(values, dim=1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "act_space", [gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(3), gym.spaces.MultiDiscrete([2, 3])]
)
def test_recurrent_policies_export_to_onnx_in_both_forms(act_space):
    """The Unity form takes ML-Agents' recurrent_in [batch, 1, M] and gives recurrent_out last with
    memory_size M; the generic form memory_in -> memory_out [batch, M]. Over several steps, with the memory
    carried, onnxruntime gives the torch policy's deterministic actions and memories."""
    import onnxruntime as ort

    from spinppo.tools.onnx_writer import gym_model, unity_model

    torch.manual_seed(3)
    ac = MLPActorCritic(OBS, act_space, hidden_sizes=(16,), memory_size=8, sequence_length=4)
    ac.obs_rms.update(np.random.default_rng(0).normal(1.0, 2.0, (40, 3)))
    unity = ort.InferenceSession(unity_model(ac, [[1], [2]]).SerializeToString())
    names = [o.name for o in unity.get_outputs()]
    assert names[0:2] == ["version_number", "memory_size"] and names[-1] == "recurrent_out"
    assert [i.name for i in unity.get_inputs()][-1] == "recurrent_in"
    assert unity.get_inputs()[-1].shape == ["batch", 1, 8]
    generic = ort.InferenceSession(gym_model(ac, act_space).SerializeToString())
    rng = np.random.default_rng(1)
    mine = ac.initial_memory(5)
    unity_memory, generic_memory = np.zeros((5, 1, 8), np.float32), np.zeros((5, 8), np.float32)
    kind = "continuous" if isinstance(act_space, gym.spaces.Box) else "discrete"
    for _ in range(4):
        obs = rng.normal(1.0, 2.0, (5, 3)).astype(np.float32)
        want, mine = ac.act(torch.from_numpy(obs), deterministic=True, memory=mine)
        feeds = {"obs_0": obs[:, :1], "obs_1": obs[:, 1:], "recurrent_in": unity_memory}
        if kind == "discrete":
            feeds["action_masks"] = np.ones((5, int(np.sum(ac.branches))), np.float32)
        out = dict(zip(names, unity.run(names, feeds), strict=True))
        assert out["memory_size"].tolist() == [8.0]
        unity_memory = out["recurrent_out"]
        got_unity = out[f"deterministic_{kind}_actions"]
        got, generic_memory = generic.run(
            ["deterministic_actions", "memory_out"], {"obs": obs, "memory_in": generic_memory}
        )
        np.testing.assert_allclose(unity_memory[:, 0], mine.numpy(), atol=1e-5)
        np.testing.assert_allclose(generic_memory, mine.numpy(), atol=1e-5)
        if kind == "continuous":
            np.testing.assert_allclose(got_unity, np.clip(want.numpy(), -1, 1), atol=1e-5)
            np.testing.assert_allclose(got, np.clip(want.numpy(), -1, 1), atol=1e-5)
        else:
            assert got_unity.tolist() == want.numpy().reshape(5, -1).tolist()
            assert got.tolist() == want.numpy().tolist()


def test_a_run_refused_after_its_environments_exist_closes_them(tmp_path):
    """Bad input found once the environments exist (here a --steps_per_epoch that does not divide among
    the environment's 4 copies, which only the environment knows) closes them before the error reaches the
    user: a Unity player would otherwise keep running."""
    import tests.memory_env  # noqa: F401  (registers Cue-v0)
    from spinppo.algos.ppo import ppo
    from spinppo.utils.errors import UserError

    closed = []

    class Recording(gym.Wrapper):
        def close(self):
            closed.append(True)
            super().close()

    with pytest.raises(UserError, match="--steps_per_epoch 1022 must be a positive multiple of 4"):
        ppo(
            lambda: Recording(gym.make("Cue-v0")),
            ac_kwargs={"memory_size": 8, "sequence_length": 100},
            steps_per_epoch=1022,
            num_envs=4,
            logger_kwargs={"output_dir": str(tmp_path / "run")},
        )
    assert len(closed) == 4
    assert not (tmp_path / "run").exists()
