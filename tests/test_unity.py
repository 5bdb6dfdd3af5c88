"""The Unity adapter over the real ML-Agents protocol, against the stand-in player (tests/unity_standin).

The stand-in is launched by mlagents_envs' own UnityEnvironment, as a Unity build would be, and speaks the
gRPC protocol as a client; it checks the protocol and the adapter, not Unity's physics. Its "script" task
is deterministic: an agent observes [lineage, id] + [episode step, action], earns reward_scale * action
per physics step, and ends where the script says, so every expected value below is worked out by hand.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from spinppo.envs.unity import UnityVectorEnv, make_unity_env
from spinppo.envs.unity.slots import AgentSlots
from spinppo.utils.errors import UserError
from tests.conftest import mpirun, run
from tests.unity_standin.build import write_build
from tests.unity_standin.player import encode_agent_info, encode_output

_next_port = [15000 + (os.getpid() % 400) * 10]


def free_ports(n: int = 1) -> int:
    """A base port with n free ports from it, from a range of its own per test process."""
    while True:
        base = _next_port[0]
        _next_port[0] += n
        if all(_bindable(base + i) for i in range(n)):
            return base


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("localhost", port))
        except OSError:
            return False
    return True


def _players(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line mentions ``marker``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


@pytest.fixture(autouse=True)
def no_leftover_players(tmp_path):
    """Every player a test launched (its build lives in tmp_path) must be gone when the test ends."""
    yield
    deadline = time.monotonic() + 10
    while _players(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _players(str(tmp_path))
    for pid in left:
        os.kill(pid, 9)
    assert not left, f"stand-in players left running: {left}"


def launch(tmp_path: Path, patience: int = 100, env_kwargs=None, **config) -> UnityVectorEnv:
    exe = write_build(tmp_path, **config)
    return UnityVectorEnv(
        str(exe),
        seed=3,
        env_kwargs=env_kwargs,
        base_port=free_ports(),
        time_scale=1000,
        log_dir=str(tmp_path),
        timeout_wait=30,
        patience=patience,
    )


def player_log(tmp_path: Path) -> str:
    return (tmp_path / "unity_logs" / "rank0.log").read_text()


def check_step(result, obs, reward, terminated, truncated, final_obs):
    got_obs, got_rew, got_term, got_trunc, info = result
    np.testing.assert_array_equal(got_obs, np.array(obs, np.float32))
    np.testing.assert_array_equal(got_rew, reward)
    assert got_term.tolist() == terminated and got_trunc.tolist() == truncated
    if final_obs:
        assert info["_final_obs"].tolist() == [i in final_obs for i in range(len(obs))]
        for i, expected in final_obs.items():
            np.testing.assert_array_equal(info["final_obs"][i], np.array(expected, np.float32))
        assert info["final_obs"][[i for i in range(len(obs)) if i not in final_obs]].tolist() == [None] * (
            len(obs) - len(final_obs)
        )
    else:
        assert "final_obs" not in info


def test_terminations_interruptions_and_new_ids(tmp_path):
    """3 agents, a decision every 2 physics steps, episodes cut at 6 steps (max_step). Lineage 0's first
    episode ends after 3 steps (between two decisions), lineage 1's after 4 (at a decision: the terminal
    entry of the old id and the first decision of the new id come in one exchange); later episodes run
    into max_step, at a decision or between two. New ids are 3, 4, ... in order of creation."""
    env = launch(
        tmp_path,
        task="script",
        agents=3,
        decision_period=2,
        max_step=6,
        script={"lengths": [[3], [4]]},
        env_kwargs={"reward_scale": 2.0},
    )
    try:
        assert env.num_envs == 3
        assert env.single_observation_space.shape == (4,) and env.single_action_space.shape == (1,)
        assert env.metadata["autoreset_mode"].value == "SameStep"
        obs, info = env.reset(seed=0)
        np.testing.assert_array_equal(obs, [[0, 0, 0, 0], [1, 1, 0, 0], [2, 2, 0, 0]])
        # -2 is clipped to -1; rewards per physics step are 2 * action: 1.0, 0.5, -2.0.
        act = np.array([[0.5], [0.25], [-2.0]], np.float32)
        F, T = False, True
        # Physics 1-2: one decision period.
        check_step(
            env.step(act),
            [[0, 0, 2, 0.5], [1, 1, 2, 0.25], [2, 2, 2, -1]],
            [2, 1, -4],
            [F, F, F],
            [F, F, F],
            {},
        )
        # Physics 3: id 0 ends (exchange with only its terminal entry), id 3 starts with no action yet;
        # physics 4: id 1 ends and id 4 starts, in the decision exchange of ids 3, 4 and 2.
        check_step(
            env.step(act),
            [[0, 3, 1, 0], [1, 4, 0, 0], [2, 2, 4, -1]],
            [1, 1, -4],
            [T, T, F],
            [F, F, F],
            {0: [0, 0, 3, 0.5], 1: [1, 1, 4, 0.25]},
        )
        # Physics 5-6: id 2 reaches max_step at a decision: truncated, id 5 takes its slot.
        check_step(
            env.step(act),
            [[0, 3, 3, 0.5], [1, 4, 2, 0.25], [2, 5, 0, 0]],
            [2, 1, -4],
            [F, F, F],
            [F, F, T],
            {2: [2, 2, 6, -1]},
        )
        check_step(
            env.step(act),
            [[0, 3, 5, 0.5], [1, 4, 4, 0.25], [2, 5, 2, -1]],
            [2, 1, -4],
            [F, F, F],
            [F, F, F],
            {},
        )
        # Physics 9: id 3 reaches max_step between decisions; physics 10: id 4 at a decision.
        check_step(
            env.step(act),
            [[0, 6, 1, 0], [1, 7, 0, 0], [2, 5, 4, -1]],
            [1, 1, -4],
            [F, F, F],
            [T, T, F],
            {0: [0, 3, 6, 0.5], 1: [1, 4, 6, 0.25]},
        )
        # A later reset() resets Unity: new ids, episodes at step 0.
        obs, _ = env.reset()
        np.testing.assert_array_equal(obs, [[0, 8, 0, 0], [1, 9, 0, 0], [2, 10, 0, 0]])
    finally:
        env.close()
    assert "close received (status 400)" in player_log(tmp_path)


def test_unsynchronised_decisions_vanished_and_extra_agents(tmp_path, caplog):
    """Lineage 0 decides every physics step, lineages 1 and 2 every other step; lineage 3 appears at
    step 1, an extra agent without a slot; lineage 2 vanishes at step 5 without a terminal entry, and after
    `patience` (3) exchanges without it, its slot is truncated and given to the extra agent."""
    caplog.set_level(logging.WARNING, logger="spinppo.envs.unity")
    env = launch(
        tmp_path,
        patience=3,
        task="script",
        agents=3,
        decision_period=2,
        max_step=0,
        script={"periods": [1, 2, 2], "vanish": {"2": 5}, "spawn": [1]},
    )
    try:
        F, T = False, True
        env.reset()
        act = np.array([[0.5], [0.25], [0.75]], np.float32)
        # A step lasts until every agent asked again after getting the action: id 0 asks at physics 1,
        # gets its action again and asks at 2 with ids 1 and 2; rewards of both requests add up.
        check_step(
            env.step(act),
            [[0, 0, 2, 0.5], [1, 1, 2, 0.25], [2, 2, 2, 0.75]],
            [1, 0.5, 1.5],
            [F] * 3,
            [F] * 3,
            {},
        )
        assert "more agents than its 3 slots" in caplog.text
        check_step(
            env.step(act),
            [[0, 0, 4, 0.5], [1, 1, 4, 0.25], [2, 2, 4, 0.75]],
            [1, 0.5, 1.5],
            [F] * 3,
            [F] * 3,
            {},
        )
        # Physics 5-8: id 2 is silent for 4 exchanges (> patience): truncated with its last observation;
        # at physics 10 the extra agent (id 3, 9 steps old, zero actions so far) fills the slot, while ids
        # 0 and 1 got their actions again: 6 physics steps of reward.
        check_step(
            env.step(act),
            [[0, 0, 10, 0.5], [1, 1, 10, 0.25], [3, 3, 9, 0]],
            [3, 1.5, 0],
            [F] * 3,
            [F, F, T],
            {2: [2, 2, 4, 0.75]},
        )
        assert "agent 2 vanished" in caplog.text
        check_step(
            env.step(act),
            [[0, 0, 12, 0.5], [1, 1, 12, 0.25], [3, 3, 11, 0.75]],
            [1, 0.5, 1.5],
            [F] * 3,
            [F] * 3,
            {},
        )
    finally:
        env.close()


def test_decisions_at_different_periods(tmp_path):
    """Agent 0 decides every 4 physics steps, agent 1 every 3. An agent that was not among the last to ask
    gets the step's action only when it next asks, and the step waits until it asks once more."""
    env = launch(tmp_path, task="script", agents=2, max_step=0, script={"periods": [4, 3]})
    try:
        env.reset()
        F = False
        # Sent at 0 to both; agent 1 asks at 3 (3 x 0.25; it gets 0.25 again), agent 0 at 4 (4 x 0.5).
        check_step(
            env.step([[0.5], [0.25]]), [[0, 0, 4, 0.5], [1, 1, 3, 0.25]], [2, 0.75], [F] * 2, [F] * 2, {}
        )
        # Sent at 4 to agent 0 only. Agent 1 asks at 6 (physics 4-6 at 0.25) and gets -1; agent 0 asks at 8
        # (4 x 1.0) and gets 1 again; agent 1 asks at 9 after 3 steps at -1: the step ends there.
        check_step(env.step([[1.0], [-1.0]]), [[0, 0, 8, 1], [1, 1, 9, -1]], [4, -2.25], [F] * 2, [F] * 2, {})
    finally:
        env.close()


def test_a_slot_left_without_agent_is_an_error(tmp_path):
    env = launch(
        tmp_path, patience=2, task="script", agents=2, decision_period=1, script={"vanish": {"1": 2}}
    )
    try:
        env.reset()
        env.step(np.zeros((2, 1)))
        with pytest.raises(UserError, match="slot 1 has had no agent for 2 exchanges.*respawn"):
            env.step(np.zeros((2, 1)))
    finally:
        env.close()


def test_environment_parameters_and_time_scale_reach_the_player(tmp_path):
    exe = write_build(tmp_path, task="script", agents=2, decision_period=5, max_step=0)
    env = make_unity_env(
        str(exe),
        env_kwargs={"reward_scale": 3.0, "gravity": -4.5},
        base_port=free_ports(),
        time_scale=0.5,
        log_dir=str(tmp_path),
    )
    try:
        env.reset()
        t = time.monotonic()
        for _ in range(5):
            _, reward, *_ = env.step(np.array([[0.5], [-0.5]]))
        elapsed = time.monotonic() - t
        np.testing.assert_allclose(reward, [7.5, -7.5])  # 5 physics steps x 3 x action
    finally:
        env.close()
    log = player_log(tmp_path)
    assert "engine configuration time_scale=0.5" in log
    assert "environment parameter reward_scale=3" in log and "environment parameter gravity=-4.5" in log
    # 25 physics steps of 0.02 s at half real time take at least 1 s (at Unity's default scale, 0.5 s).
    assert elapsed >= 0.95, elapsed


@pytest.mark.parametrize(
    "config, space",
    [
        ({"task": "cartpole"}, "Discrete(2)"),
        ({"task": "cartpole", "branches": [2, 3]}, "MultiDiscrete([2 3])"),
        ({"task": "hopper"}, "Box(-1.0, 1.0, (3,), float32)"),
    ],
)
def test_action_spaces_and_real_dynamics(tmp_path, config, space):
    env = launch(tmp_path, agents=3, decision_period=1, max_step=30, **config)
    try:
        assert str(env.single_action_space) == space and env.num_envs == 3
        assert env.action_space.shape[0] == 3 and env.observation_space.shape == (3, env.obs_dim)
        obs, _ = env.reset(seed=1)
        env.action_space.seed(1)
        ends = 0
        for _ in range(40):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            assert obs.shape == (3, env.obs_dim) and obs.dtype == np.float32 and np.all(np.isfinite(reward))
            ends += int(np.sum(terminated | truncated))
            for i in np.flatnonzero(terminated | truncated):
                assert info["final_obs"][i].shape == (env.obs_dim,)
        assert ends >= 3  # 40 decisions of 3 agents with episodes of at most 30 steps
    finally:
        env.close()


def test_several_behaviors_train_the_first(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="spinppo.envs.unity")
    env = launch(tmp_path, task="script", agents=2, decision_period=1, second_behavior=True)
    try:
        assert env.behavior == "StandIn" and env.num_envs == 2
        assert "'Spectator'" in caplog.text
        env.reset()
        obs, *_ = env.step(np.full((2, 1), 0.5))
        assert obs[:, 2].tolist() == [1, 1]
    finally:
        env.close()


def test_agent_slots_take_the_lowest_free_slot_and_give_it_back():
    slots = AgentSlots(3)
    assert [slots.take_free_slot(a) for a in (7, 8, 9, 10)] == [0, 1, 2, None]  # 10: no slot free
    assert slots.all_taken() and slots.num_taken() == 3 and slots.slot_of(10) is None
    assert slots.release(8) == 1 and slots.release(8) is None and slots.agent_in(1) is None
    assert slots.release(7) == 0 and slots.slots_of([9, 7, 10]).tolist() == [2, -1, -1]
    assert [slots.take_free_slot(a) for a in (11, 12)] == [0, 1]  # lowest free slot first
    assert (slots.agent_in(0), slots.agent_in(1), slots.slot_of(12)) == (11, 12, 1)
    with pytest.raises(ValueError, match="already holds slot 2"):
        slots.take_free_slot(9)
    slots.clear()
    assert slots.num_taken() == 0 and not slots.all_taken() and slots.slot_of(9) is None and len(slots) == 3


def test_standin_wire_encoding_matches_the_protobuf_classes():
    from mlagents_envs.communicator_objects.unity_message_pb2 import UnityMessageProto

    infos = {
        "B": [encode_agent_info(1.5, True, True, 300, [("s", [2], [1.0, -2.0]), ("c", [1, 1, 2], [3, 4])])]
    }
    msg = UnityMessageProto.FromString(encode_output(infos, b""))
    assert msg.header.status == 200
    info = msg.unity_output.rl_output.agentInfos["B"].value[0]
    assert (info.reward, info.done, info.max_step_reached, info.id) == (1.5, True, True, 300)
    assert [list(o.shape) for o in info.observations] == [[2], [1, 1, 2]]
    assert [list(o.float_data.data) for o in info.observations] == [[1.0, -2.0], [3.0, 4.0]]
    assert [o.name for o in info.observations] == ["s", "c"]


# ----------------------------------------------------------------------------------------------- errors


def test_missing_folder_and_non_executable_builds(tmp_path):
    with pytest.raises(UserError, match=r"Unity build .*Nothing.x86_64 not found: pass the path"):
        make_unity_env(str(tmp_path / "Nothing.x86_64"))
    with pytest.raises(UserError, match="is a folder: pass the player executable in it"):
        make_unity_env(str(tmp_path))
    plain = tmp_path / "Plain.x86_64"
    plain.write_text("not a program")
    with pytest.raises(UserError, match=f"not executable: run chmod \\+x {re.escape(str(plain))}"):
        make_unity_env(str(plain))
    exe = write_build(tmp_path, task="script")
    with pytest.raises(UserError, match="must be numbers; mode='fast' is not"):
        make_unity_env(str(exe), env_kwargs={"mode": "fast"}, base_port=free_ports())


def test_port_in_use(tmp_path):
    exe = write_build(tmp_path, task="script")
    port = free_ports(2)
    with socket.socket() as busy:
        busy.bind(("localhost", port + 1))
        busy.listen()
        with pytest.raises(UserError, match=f"port {port + 1} .*in use.*--base_port"):
            make_unity_env(str(exe), base_port=port, worker_id=1)


def _host_addresses() -> list[str]:
    """This machine's IP addresses other than loopback and link-local ones (``ip -o addr``, else the host
    name's): where a player elsewhere on the network would connect."""
    import ipaddress
    import subprocess

    found = set()
    try:
        out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, timeout=10).stdout
        found.update(re.findall(r"\binet6? ([0-9a-fA-F.:]+)/", out))
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        found.update(info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None))
    except OSError:
        pass
    keep = []
    for text in sorted(found):
        ip = ipaddress.ip_address(text.split("%")[0])
        if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified):
            keep.append(str(ip))
    return keep


def _accepts(address: str, port: int) -> bool:
    """Whether a TCP connection to ``address``:``port`` is accepted."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        try:
            s.connect((address, port))
        except OSError:
            return False
    return True


def test_the_trainer_listens_on_loopback_unless_unity_listen_says_otherwise(tmp_path):
    """The trainer's gRPC server (mlagents-envs listens on every interface) accepts connections on 127.0.0.1
    and ::1 only, and training over it works; ``listen="0.0.0.0"`` (``--unity_listen``) opens it to this
    host's other addresses too. Probed with TCP connections while the player runs."""
    exe = write_build(tmp_path, task="cartpole", agents=2, decision_period=1)
    others = _host_addresses()
    for listen, elsewhere in (("localhost", False), ("0.0.0.0", True)):
        port = free_ports()
        env = UnityVectorEnv(str(exe), base_port=port, time_scale=1000, timeout_wait=30, listen=listen)
        try:
            env.reset()
            for _ in range(3):
                env.step(np.zeros(2, np.int64))
            assert _accepts("127.0.0.1", port)
            for address in others:
                assert _accepts(address, port) == elsewhere, (listen, address)
            env.step(np.zeros(2, np.int64))  # the probes did not disturb the player's connection
        finally:
            env.close()
    if not others:
        pytest.skip("this machine has no address other than loopback to probe")


def test_a_bad_unity_listen_address_is_a_one_line_error(tmp_path, capsys):
    from spinppo.envs.unity.launch import check_listen_address, listen_host
    from spinppo.run import main

    assert [listen_host(a) for a in ("localhost", "127.0.0.1", "::1", "[::1]", "0.0.0.0", "::")] == [
        "localhost",
        "127.0.0.1",
        "[::1]",
        "[::1]",
        "0.0.0.0",
        "[::]",
    ]
    exe = write_build(tmp_path, task="cartpole", agents=2)
    flags = [
        "ppo",
        "--env",
        f"unity:{exe}",
        "--data_dir",
        str(tmp_path / "data"),
        "--base_port",
        str(free_ports()),
    ]
    for value, message in (
        ("my-laptop", "--unity_listen takes localhost (the default: a player on this host), an IP address"),
        ("203.0.113.7", "--unity_listen 203.0.113.7: no network interface of this host has that address"),
    ):
        assert main([*flags, "--unity_listen", value]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
    with pytest.raises(UserError, match="no network interface"):
        check_listen_address("203.0.113.7", free_ports())


def test_communication_version_mismatch(tmp_path):
    env = None
    with pytest.raises(UserError, match=r"speaks ML-Agents communication version 2\.0\.0 .* 1\.5\.0"):
        env = launch(tmp_path, task="script", communication_version="2.0.0")
    assert env is None


def test_player_that_never_connects_times_out_pointing_at_its_log(tmp_path, monkeypatch):
    exe = write_build(tmp_path, task="script", hang="init")
    monkeypatch.setenv("SPINPPO_UNITY_TIMEOUT", "2")
    log = tmp_path / "unity_logs" / "rank0.log"
    with pytest.raises(
        UserError, match=f"did not connect on port .* within 2 s: see the player's log {re.escape(str(log))}"
    ):
        make_unity_env(str(exe), base_port=free_ports(), log_dir=str(tmp_path))
    assert "hanging: before the handshake" in log.read_text()


def test_player_that_stops_answering_or_crashes(tmp_path):
    exe = write_build(tmp_path, task="script", hang=3)
    env = UnityVectorEnv(
        str(exe), base_port=free_ports(), log_dir=str(tmp_path), timeout_wait=2, time_scale=1000
    )
    try:
        env.reset()
        with pytest.raises(UserError, match=r"stopped answering for 2 s: see the player's log .*rank0.log"):
            for _ in range(5):
                env.step(np.zeros((4, 1)))
    finally:
        env.close()
    crash = tmp_path / "Crash.x86_64"
    crash.write_text("#!/bin/sh\necho 'no graphics device' >&2\nexit 3\n")
    crash.chmod(0o755)
    with pytest.raises(UserError, match="failed to start .*return code 3"):
        UnityVectorEnv(str(crash), base_port=free_ports(), timeout_wait=2)


def test_unsupported_actions(tmp_path):
    with pytest.raises(
        UserError, match=r"hybrid actions \(1 continuous and 1 discrete branches\): not supported yet"
    ):
        launch(tmp_path, task="cartpole", hybrid=True)


# ----------------------------------------------------------------------------------------------- training


def test_ppo_under_mpirun_trains_through_the_protocol(tmp_path):
    """Two ranks, each with its own stand-in (4 CartPole agents) on its own port, learn to balance."""
    exe = write_build(tmp_path, task="cartpole", agents=4, decision_period=1, max_step=500)
    port = free_ports(2)
    data = tmp_path / "data"
    mpirun(
        2,
        [
            "-m",
            "spinppo.run",
            "ppo",
            "--env",
            f"unity:{exe}",
            "--data_dir",
            str(data),
            "--base_port",
            str(port),
        ]
        + ["--steps_per_epoch", "2048", "--epochs", "6", "--update_epochs", "4", "--minibatch_size", "256"]
        + ["--lr", "0.001", "--time_scale", "1000", "--tensorboard", "false"],
        timeout=240,
    )
    (progress,) = data.glob("*/*/progress.txt")
    rows = [line.split("\t") for line in progress.read_text().splitlines()]
    ret = [float(r[rows[0].index("AverageEpRet")]) for r in rows[1:]]
    assert len(ret) == 6
    assert ret[-1] > 2 * ret[0] and ret[-1] > 60, ret
    logs = {p.name: p.read_text() for p in (progress.parent / "unity_logs").glob("rank*.log")}
    assert sorted(logs) == ["rank0.log", "rank1.log"]
    ports = sorted(int(re.search(r"port (\d+)", text)[1]) for text in logs.values())
    assert ports == [port, port + 1]


# ----------------------------------------------------------------------------------------------- real Unity


@pytest.mark.skipif(
    not os.environ.get("SPINPPO_UNITY_FILE"), reason="SPINPPO_UNITY_FILE (a Unity build) not set"
)
def test_a_real_unity_build(tmp_path):
    env = make_unity_env(os.environ["SPINPPO_UNITY_FILE"], base_port=free_ports(), log_dir=str(tmp_path))
    try:
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)  # a flat Box, or a Dict with visual sensors
        env.action_space.seed(0)
        for _ in range(20):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            parts = obs.values() if isinstance(obs, dict) else [obs]
            assert env.observation_space.contains(obs) and all(np.all(np.isfinite(p)) for p in parts)
    finally:
        env.close()


def test_spinppo_imports_without_touching_mlagents():
    code = "import sys, spinppo.envs.unity; print(any('mlagents' in m for m in sys.modules))"
    assert run([sys.executable, "-c", code]).stdout.strip() == "False"
