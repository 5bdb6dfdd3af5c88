"""Recurrent policies on Unity builds keep one memory per agent slot, over the real ML-Agents protocol.

The stand-in player (tests/unity_standin) runs its deterministic "script" task: agent (lineage) i observes
[i, id, episode step, action] and ends its episodes where the script says (terminated) or at max_step
(truncated), each lineage at its own steps. With one decision per physics step, every lineage keeps its
slot (row) for the whole run: its new episodes' ids fill the slot its last episode left.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import torch

from spinppo.core.buffer import GAEBuffer
from spinppo.core.networks import MLPActorCritic
from spinppo.core.rollout import RolloutWorker
from spinppo.tools.test_policy import load_policy, run_policy
from spinppo.utils.logx import save_model
from tests.conftest import mpirun
from tests.test_unity import free_ports, launch, no_leftover_players  # noqa: F401 (a fixture)
from tests.unity_standin.build import write_build

MEMORY = 16

# Three lineages, one physics step per env.step, episodes cut at 6 steps. Lineage 0 terminates after 2,
# then 3 steps, lineage 1 after 4, lineage 2 only reaches max_step: no two episodes end at the same step.
# Ids from 100: no observation is all zeros (from which a fresh LSTM's state would stay zero).
SCRIPT = dict(
    task="script", agents=3, decision_period=1, max_step=6, first_id=100, script={"lengths": [[2, 3], [4]]}
)
# The steps (1-based) at which each slot's episode ends over 12 steps, and how.
TERMINATED = {2: [0], 4: [1], 5: [0]}
TRUNCATED = {6: [2], 10: [1], 11: [0], 12: [2]}


class RecordingPolicy:
    """A RolloutPolicy that records what the rollout gives it and what it returns (copies: the rollout
    zeroes the returned memory in place)."""

    def __init__(self, policy):
        self.policy = policy
        self.steps = []  # (obs, memory given, memory returned)
        self.values = []  # (obs, memory given)

    def step(self, obs, memory=None):
        out = self.policy.step(obs, memory)
        self.steps.append((np.array(obs), np.array(memory), np.array(out[3])))
        return out

    def value(self, obs, memory=None):
        self.values.append((np.array(obs), None if memory is None else np.array(memory)))
        return self.policy.value(obs, memory)


class Logger:
    def __init__(self):
        self.stored = []

    def store(self, **kw):
        self.stored.append(kw)


def test_rollout_keeps_one_memory_per_agent_slot(tmp_path):
    """A RolloutWorker with an LSTM policy over UnityVectorEnv: at every step each slot's memory goes on
    from where that slot's last step left it, and is zeroed exactly where that slot's episode ended
    (terminated or truncated), no other slot's; a truncated episode is bootstrapped with the memory it
    reached; and each slot's memory is what its own observations alone give."""
    env = launch(tmp_path, **SCRIPT)
    try:
        torch.manual_seed(0)
        ac = MLPActorCritic(
            env.single_observation_space, env.single_action_space, memory_size=MEMORY, sequence_length=4
        )
        worker = RolloutWorker(env, ac, seed=0)
        assert worker.memory.shape == (3, MEMORY) and not worker.memory.any()
        rec = RecordingPolicy(ac.rollout_policy())
        ac.rollout_policy = lambda: rec
        env_steps = []
        env_step = env.step

        def recording_step(action):
            out = env_step(action)
            env_steps.append((np.array(out[2]), np.array(out[3])))
            return out

        env.step = recording_step
        steps = 12
        buf = GAEBuffer(4, (1,), 3, steps, memory_size=MEMORY, sequence_length=4)
        logger = Logger()
        worker.collect(buf, logger)
    finally:
        env.close()

    assert len(rec.steps) == len(env_steps) == steps
    obs = np.stack([s[0] for s in rec.steps])  # [steps, slots, 4]
    given = np.stack([s[1] for s in rec.steps])  # [steps, slots, MEMORY]
    returned = np.stack([s[2] for s in rec.steps])
    terminated = np.stack([t for t, _ in env_steps])
    truncated = np.stack([t for _, t in env_steps])
    # The stand-in played the script: each slot's episodes ended at its own steps, and every slot kept its
    # lineage (its observations' first entry) throughout.
    assert {
        t + 1: np.flatnonzero(terminated[t]).tolist() for t in range(steps) if terminated[t].any()
    } == TERMINATED
    assert {
        t + 1: np.flatnonzero(truncated[t]).tolist() for t in range(steps) if truncated[t].any()
    } == TRUNCATED
    assert (obs[:, :, 0] == np.arange(3)).all()
    done = terminated | truncated
    assert sorted(e["EpLen"] for e in logger.stored if "EpLen" in e) == [2, 3, 4, 6, 6, 6, 6]

    assert not given[0].any()  # every episode starts with an empty memory
    for t in range(steps):
        # Every slot's memory moved on at every step (the LSTM's state is never left at zero).
        assert np.all(np.abs(returned[t]).sum(axis=1) > 0), t
        nxt = worker.memory if t == steps - 1 else given[t + 1]
        for i in range(3):
            if done[t, i]:
                assert not nxt[i].any(), f"step {t + 1}: slot {i}'s episode ended, its memory was kept"
            else:
                # Left untouched: exactly what this slot's last step returned.
                np.testing.assert_array_equal(nxt[i], returned[t, i], err_msg=f"step {t + 1} slot {i}")
                assert np.abs(nxt[i]).sum() > 0
        # Slots see different observations (their lineage), so their memories differ.
        for i in range(3):
            for j in range(i):
                assert not np.allclose(returned[t, i], returned[t, j]), (t, i, j)

    # The buffer keeps the memory each sequence of 4 steps started from.
    np.testing.assert_array_equal(buf.memory, given[::4])
    # A truncated episode's final value uses the memory the episode had reached, not an emptied one;
    # the rollout's last value the memory carried over (slot 2 emptied: its episode ended at step 12).
    truncation_values = rec.values[:-1]
    assert len(truncation_values) == len(TRUNCATED)
    for (final_obs, memory), (t, slots) in zip(truncation_values, sorted(TRUNCATED.items()), strict=True):
        np.testing.assert_array_equal(memory, returned[t - 1, slots])
        assert final_obs[:, 0].tolist() == slots and final_obs[:, 2].tolist() == [6] * len(slots)
    np.testing.assert_array_equal(rec.values[-1][1], worker.memory)

    # Each slot's memory is what its own observations give, one slot at a time, emptied at its own
    # episodes' ends: nothing of another slot leaks into it.
    with torch.no_grad():
        for i in range(3):
            memory = ac.initial_memory(1)
            for t in range(steps):
                np.testing.assert_allclose(given[t, i], memory[0].numpy(), rtol=1e-5, atol=1e-6)
                memory = ac.step(torch.as_tensor(obs[t, i : i + 1]), memory)[3]
                np.testing.assert_allclose(returned[t, i], memory[0].numpy(), rtol=1e-5, atol=1e-6)
                if done[t, i]:
                    memory = ac.initial_memory(1)


# A program for mpirun: the spinppo command line, and afterwards every rank's parameters' digest.
DIGESTS = """
import hashlib, sys
from spinppo.cli import train
from spinppo.utils.mpi_tools import allgather, proc_id
algo_function = train.algo_function
def digesting(algo):
    fn = algo_function(algo)
    def call(**kwargs):
        ac = fn(**kwargs)
        state = b"".join(t.detach().numpy().tobytes() for t in ac.state_dict().values())
        digests = allgather(hashlib.sha256(state).hexdigest())
        if proc_id() == 0:
            print("DIGESTS", *digests, flush=True)
        return ac
    return call
train.algo_function = digesting
from spinppo.run import main
sys.exit(main(sys.argv[1:]))
"""


def test_recurrent_ppo_under_mpirun_then_replay(tmp_path, cli):
    """PPO with --memory_size 16 --sequence_length 3 on two ranks, each with its own stand-in (3 agents
    whose episodes end at different steps; rollouts of 8 steps: sequences of 3, 3 and 2 padded): both ranks
    end with the same parameters, the saved policy is recurrent, and test_policy replays it on the build
    (the vector path, one memory per slot)."""
    exe = write_build(tmp_path, **SCRIPT)
    port = free_ports(2)
    data = tmp_path / "data"
    flags = (
        f"--env unity:{exe} --data_dir {data} --base_port {port} --memory_size {MEMORY} --sequence_length 3"
    )
    flags += " --steps_per_epoch 48 --epochs 2 --update_epochs 2 --minibatch_size 24 --time_scale 1000"
    proc = mpirun(2, ["-c", DIGESTS, "ppo", *flags.split(), "--tensorboard", "false"], timeout=120)
    digests = next(line for line in proc.stdout.splitlines() if line.startswith("DIGESTS")).split()[1:]
    assert len(digests) == 2 and digests[0] == digests[1], "ranks ended with different parameters"
    (progress,) = data.glob("*/*/progress.txt")
    run_dir = progress.parent
    rows = progress.read_text().splitlines()
    assert len(rows) == 3  # a header and 2 epochs
    header = rows[0].split("\t")
    assert all(float(r.split("\t")[header.index("EpLen")]) > 0 for r in rows[1:])

    ac, get_action = load_policy(str(run_dir), deterministic=True)
    assert ac.memory_size == MEMORY and ac.sequence_length == 3
    state = b"".join(t.detach().numpy().tobytes() for t in ac.state_dict().values())
    assert hashlib.sha256(state).hexdigest() == digests[0]  # the saved policy is the ranks' policy

    replay_flags = ["-n", "5", "--base_port", str(free_ports())]
    replay = cli("test_policy", str(run_dir), *replay_flags)
    assert replay.returncode == 0, replay.stderr
    episodes = re.findall(r"Episode (\d+) \t EpRet (\S+) \t EpLen (\d+)", replay.stdout)
    assert [int(e[0]) for e in episodes] == list(range(5)), replay.stdout
    # Over the first 6 steps the episodes end after 2 (slot 0), 4 (slot 1), 3 (slot 0) and 6 (slot 2) steps.
    assert [int(e[2]) for e in episodes[:4]] == [2, 4, 3, 6], replay.stdout


def test_replay_empties_each_slots_memory_at_its_episodes_end(tmp_path):
    """run_policy's vector path with a recurrent get_action (load_policy) on the stand-in: every action is
    the one a policy gives with each slot's own memory, emptied where that slot's episode ended."""
    torch.manual_seed(1)
    env = launch(tmp_path, **SCRIPT)
    try:
        ac = MLPActorCritic(
            env.single_observation_space, env.single_action_space, memory_size=MEMORY, sequence_length=4
        )
        model = tmp_path / "pyt_save" / "model.pt"
        model.parent.mkdir()
        save_model(ac, str(model))
        _, get_action = load_policy(str(model), deterministic=True)
        calls, ends, env_steps = [], [], []

        def recording_get_action(obs):
            action = get_action(obs)
            calls.append((np.array(obs), np.array(action)))
            return action

        def recording_ended(mask=None):
            ends.append(None if mask is None else np.array(mask))
            get_action.episodes_ended(mask)

        recording_get_action.episodes_ended = recording_ended
        env_step = env.step

        def recording_step(action):
            out = env_step(action)
            env_steps.append(np.array(out[2]) | np.array(out[3]))
            return out

        env.step = recording_step
        episodes = run_policy(env, recording_get_action, num_episodes=7, seed=0, verbose=False)
    finally:
        env.close()
    assert sorted(e.length for e in episodes) == [2, 3, 4, 6, 6, 6, 6]
    assert len(calls) == len(env_steps) == 12
    # Every step's episode ends reached the policy (after the first reset: all of them).
    assert ends[0] is None and all((m == d).all() for m, d in zip(ends[1:], env_steps, strict=True))
    memory = ac.initial_memory(3)
    for t, (obs, action) in enumerate(calls):
        expected, memory = ac.act(torch.as_tensor(obs), deterministic=True, memory=memory)
        np.testing.assert_array_equal(action, expected.numpy(), err_msg=f"step {t + 1}")
        memory[torch.as_tensor(env_steps[t])] = 0.0
