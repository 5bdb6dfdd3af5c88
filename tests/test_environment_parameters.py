"""ML-Agents environment_parameters: the check, the lesson manager, and what reaches the player.

The protocol tests launch the stand-in player (tests/unity_standin) through mlagents_envs' own
UnityEnvironment, as test_unity.py does. The stand-in's "script" task earns reward_scale * action per
physics step, and its game reads every environment parameter when an episode begins, logging the values
(``episode ID behavior NAME lineage L parameters {JSON}``): the tests read what each episode used there.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from spinppo.envs.registry import EnvFactory, saved_env_spec
from spinppo.envs.unity import UnityVectorEnv
from spinppo.envs.unity.params import EnvironmentParameterManager, check_environment_parameters
from spinppo.utils.errors import UserError
from tests.test_unity import free_ports, no_leftover_players, player_log  # noqa: F401 (a fixture)
from tests.unity_standin.build import write_build

WHERE = "configs/x.yaml"


def lesson(name, value, behavior="StandIn", **criteria):
    return {"name": name, "value": value, "completion_criteria": {"behavior": behavior, **criteria}}


def launch(tmp_path, environment_parameters=None, train=None, **config):
    """The stand-in (``config``: player.DEFAULTS' keys) with these parameters, training ``train``."""
    exe = write_build(tmp_path, **{"task": "script", "agents": 2, "decision_period": 1, **config})
    return UnityVectorEnv(
        str(exe),
        seed=3,
        base_port=free_ports(),
        time_scale=1000,
        log_dir=str(tmp_path),
        timeout_wait=30,
        environment_parameters=environment_parameters,
        behavior_name=train,
        run_seed=100,
    )


def episodes(tmp_path):
    """(episode id, behavior, values) for each episode the player began, in order."""
    found = re.findall(r"episode (\d+) behavior (\S+) lineage \d+ parameters (\{.*\})", player_log(tmp_path))
    return [(int(i), b, json.loads(v)) for i, b, v in found]


# ------------------------------------------------------------------------------------------- the check


@pytest.mark.parametrize(
    "section, message",
    [
        ([1], "environment_parameters must be a mapping of parameter names, not [1]"),
        ({"g": "heavy"}, "environment_parameters.g must be a finite number, not 'heavy'"),
        ({"g": True}, "environment_parameters.g must be a finite number, not True"),
        (
            {"g": {"value": 3}},
            "environment_parameters.g is {'value': 3}: ML-Agents takes a constant as a plain number (g: 3)",
        ),
        (
            {"g": {"sampler_type": "uniform", "sampler_parameters": {}, "seed": 1}},
            "g.seed is not a key ML-Agents knows here",
        ),
        ({"g": {"sampler_parameters": {}}}, "environment_parameters.g needs a sampler_type"),
        ({"g": {"sampler_type": "normal", "sampler_parameters": {}}}, "g.sampler_type must be one of"),
        ({"g": {"sampler_type": "uniform"}}, "environment_parameters.g needs sampler_parameters"),
        (
            {"g": {"sampler_type": "uniform", "sampler_parameters": {"min": 0}}},
            "environment_parameters.g.sampler_parameters.min is not a key ML-Agents knows here",
        ),
        (
            {"g": {"sampler_type": "uniform", "sampler_parameters": {"min_value": 2, "max_value": 1}}},
            "g.sampler_parameters.min_value (2) is greater than max_value (1)",
        ),
        (
            {"g": {"sampler_type": "gaussian", "sampler_parameters": {"seed": 1.5}}},
            "g.sampler_parameters.seed must be a whole number, not 1.5",
        ),
        (
            {"g": {"sampler_type": "multirangeuniform", "sampler_parameters": {"intervals": [[1, 2, 3]]}}},
            "g.sampler_parameters.intervals[0] must be a [min, max] pair",
        ),
        ({"w": {"curriculum": []}}, "environment_parameters.w.curriculum must be a non-empty list"),
        ({"w": {"curriculum": [{"value": 1}]}}, "environment_parameters.w.curriculum[0] needs a name"),
        (
            {"w": {"curriculum": [{"name": "a", "value": 1}, {"name": "b", "value": 2}]}},
            "environment_parameters.w.curriculum[0] needs a completion_criteria",
        ),
        (
            {"w": {"curriculum": [lesson("a", 1, measure="steps"), {"name": "b", "value": 2}]}},
            "environment_parameters.w.curriculum[0].completion_criteria.measure must be reward or progress, "
            "not 'steps'",
        ),
        (
            {"w": {"curriculum": [{"name": "a", "value": 1}], "lessons": []}},
            "environment_parameters.w.lessons is not a key ML-Agents knows here",
        ),
        (
            {"w": {"curriculum": [lesson("a", 1, treshold=2), {"name": "b", "value": 2}]}},
            "w.curriculum[0].completion_criteria.treshold is not a key ML-Agents knows here",
        ),
        (
            {
                "w": {
                    "curriculum": [lesson("a", 1, measure="progress", threshold=2), {"name": "b", "value": 2}]
                }
            },
            "completion_criteria.threshold must be between 0 and 1 when the measure is progress, not 2",
        ),
        (
            {"w": {"curriculum": [lesson("a", 1, min_lesson_length=-1), {"name": "b", "value": 2}]}},
            "w.curriculum[0].completion_criteria.min_lesson_length must be at least 0, not -1",
        ),
        (
            {"w": {"curriculum": [lesson("a", 1, require_reset="yes"), {"name": "b", "value": 2}]}},
            "w.curriculum[0].completion_criteria.require_reset must be true or false, not 'yes'",
        ),
        (
            {"w": {"curriculum": [{"name": "a", "value": 1, "completion_criteria": {"threshold": 1}}]}},
            "w.curriculum[0].completion_criteria needs a behavior",
        ),
        (
            {"w": {"curriculum": [{"name": "a", "value": {"sampler_type": "uniform"}}]}},
            "environment_parameters.w.curriculum[0].value needs sampler_parameters",
        ),
    ],
)
def test_each_bad_key_is_one_line_naming_file_and_key(section, message):
    with pytest.raises(UserError) as e:
        check_environment_parameters(section, WHERE)
    text = str(e.value)
    assert text.startswith(f"{WHERE}: ") and message in text and "\n" not in text, text


ML_AGENTS_EXAMPLE = {  # ML-Agents' test_create_manager: seeds from 1337 over every lesson value in order
    "param_1": {
        "curriculum": [
            lesson(
                "Lesson1",
                1,
                behavior="fake_behavior",
                threshold=30,
                min_lesson_length=100,
                require_reset=True,
            ),
            lesson("Lesson2", 2, behavior="fake_behavior", measure="progress", threshold=0.5),
            {"name": "Lesson3", "value": {"sampler_type": "uniform", "sampler_parameters": {"max_value": 3}}},
        ]
    },
    "param_2": {"sampler_type": "gaussian", "sampler_parameters": {"mean": 4, "st_dev": 5}},
    "param_3": 20,
}


def test_normalised_form_round_trips_and_seeds_follow_ml_agents():
    normal = check_environment_parameters(ML_AGENTS_EXAMPLE, WHERE)
    assert json.loads(json.dumps(normal)) == normal and check_environment_parameters(normal, WHERE) == normal
    assert normal["param_3"] == {
        "curriculum": [
            {
                "name": "param_3",
                "value": {"sampler_type": "constant", "sampler_parameters": {"seed": -1, "value": 20.0}},
                "completion_criteria": None,
            }
        ]
    }
    assert normal["param_1"]["curriculum"][0]["completion_criteria"] == {
        "behavior": "fake_behavior",
        "measure": "reward",
        "threshold": 30.0,
        "min_lesson_length": 100,
        "signal_smoothing": True,
        "require_reset": True,
    }
    manager = EnvironmentParameterManager(normal, run_seed=1337)
    assert manager.reward_buffer_size == 100 and manager.lesson_numbers() == {
        "param_1": 0,
        "param_2": 0,
        "param_3": 0,
    }
    assert manager.current_samplers() == {
        "param_1": {"sampler_type": "constant", "sampler_parameters": {"seed": 1337, "value": 1.0}},
        "param_2": {
            "sampler_type": "gaussian",
            "sampler_parameters": {"seed": 1340, "mean": 4.0, "st_dev": 5.0},
        },
        "param_3": {"sampler_type": "constant", "sampler_parameters": {"seed": 1341, "value": 20.0}},
    }
    assert check_environment_parameters(None, WHERE) == {}
    # The last lesson's completion_criteria is ignored (ML-Agents warns), and the normalised form drops it.
    last = check_environment_parameters({"w": {"curriculum": [lesson("a", 1)]}}, WHERE)
    assert last["w"]["curriculum"][0]["completion_criteria"] is None


# ---------------------------------------------------------------------------------------- the manager


def reward_curriculum(**criteria):
    return {
        "w": {
            "curriculum": [
                lesson("low", 1.0, threshold=1.5, **criteria),
                lesson("mid", 2.0, threshold=1.5, **criteria),
                {"name": "high", "value": 3.0},
            ]
        }
    }


def test_reward_threshold_respects_min_lesson_length_and_smoothing():
    m = EnvironmentParameterManager(reward_curriculum(min_lesson_length=3), run_seed=0)
    assert m.update(0.1, [2.0, 2.0]) == (False, False)  # 2 returns < min_lesson_length 3: not measured
    assert m.state_dict()["smoothed"] == {"w": 0.0}
    assert m.update(0.2, [2.0]) == (False, False)  # smoothed 0.25 * 0 + 0.75 * 2 = 1.5, not > 1.5
    assert m.update(0.3, []) == (True, False)  # 0.25 * 1.5 + 0.75 * 2 = 1.875 > 1.5
    assert m.lesson_numbers() == {"w": 1} and m.state_dict()["reward_buffer"] == []  # emptied on a change
    assert m.current_samplers()["w"]["sampler_parameters"]["value"] == 2.0
    # The smoothed value carries over into the next lesson, as in ML-Agents; the buffer needs 3 new returns.
    assert m.update(0.4, [0.0, 0.0]) == (False, False)
    assert m.update(0.5, [0.0]) == (False, False)  # 0.25 * 1.875 + 0 = 0.469
    # Without smoothing the mean itself is compared; the buffer keeps only the latest 3 returns.
    m = EnvironmentParameterManager(
        reward_curriculum(min_lesson_length=3, signal_smoothing=False), run_seed=0
    )
    assert m.update(0.1, [9.0, 1.0, 1.0, 1.0]) == (False, False)  # mean of the latest three: 1.0
    assert m.update(0.1, [2.0, 2.0]) == (True, False)  # [1, 2, 2]: 1.667 > 1.5
    # The last lesson never completes.
    m = EnvironmentParameterManager(reward_curriculum(), run_seed=0, lessons={"w": 2})
    assert m.update(1.0, [100.0]) == (False, False) and m.lesson_numbers() == {"w": 2}


def test_progress_measure_and_require_reset():
    section = {
        "w": {
            "curriculum": [
                lesson("a", 1.0, measure="progress", threshold=0.5, require_reset=True),
                lesson("b", 2.0, measure="progress", threshold=0.5),
                {"name": "c", "value": 3.0},
            ]
        },
        "g": -9.8,
    }
    m = EnvironmentParameterManager(section, run_seed=0)
    assert m.update(0.5, []) == (False, False)  # progress must pass the threshold
    assert m.update(0.51, []) == (True, True)  # lesson a asked for a reset
    assert m.update(0.6, []) == (True, False)  # lesson b did not; one lesson per call
    assert m.lesson_numbers() == {"w": 2, "g": 0}


def test_state_dict_round_trip_gives_the_same_future():
    a = EnvironmentParameterManager(reward_curriculum(min_lesson_length=2), run_seed=5)
    a.update(0.1, [1.0, 3.0])
    saved = json.loads(json.dumps(a.state_dict()))
    b = EnvironmentParameterManager(reward_curriculum(min_lesson_length=2), run_seed=5)
    b.load_state_dict(saved)
    assert b.state_dict() == a.state_dict()
    for returns in ([1.5], [2.0, 2.0], [0.0], [5.0, 5.0]):
        assert a.update(0.2, returns) == b.update(0.2, returns)
        assert a.state_dict() == b.state_dict()
    with pytest.raises(UserError, match="lesson 7 of 'w' does not exist"):
        b.load_state_dict({**saved, "lessons": {"w": 7}})


# ------------------------------------------------------------------------------------- the protocol

SAMPLERS = {
    "reward_scale": {
        "curriculum": [
            lesson("first", 2.0, measure="progress", threshold=0.5),
            {"name": "second", "value": 5.0},
        ]
    },
    "length": 3.5,
    "mass": {"sampler_type": "uniform", "sampler_parameters": {"min_value": 1, "max_value": 2}},
    "size": {"sampler_type": "gaussian", "sampler_parameters": {"mean": 10, "st_dev": 0.1, "seed": 7}},
    "gap": {"sampler_type": "multirangeuniform", "sampler_parameters": {"intervals": [[0, 1], [5, 6]]}},
}


def test_constants_samplers_and_first_lesson_reach_the_player(tmp_path):
    env = launch(tmp_path, check_environment_parameters(SAMPLERS, WHERE), max_step=2)
    try:
        env.reset()
        for _ in range(6):
            _, reward, *_ = env.step(np.full((2, 1), 0.5))
            np.testing.assert_allclose(reward, [1.0, 1.0])  # lesson "first": reward_scale 2 x 0.5
    finally:
        env.close()
    log = player_log(tmp_path)
    # Seeds: run_seed 100 + the n-th lesson value without a seed (the curriculum's two lessons, then length).
    assert "environment parameter reward_scale=2\n" in log and "environment parameter length=3.5\n" in log
    assert 'mass sampler {"sampler_type": "uniform", "min_value": 1.0, "max_value": 2.0, "seed": 103}' in log
    assert '"sampler_type": "gaussian", "mean": 10.0, "st_dev": 0.10000000149011612, "seed": 7}' in log
    assert '"sampler_type": "multirangeuniform", "intervals": [[0.0, 1.0], [5.0, 6.0]], "seed": 104}' in log
    used = episodes(tmp_path)
    assert len(used) >= 8  # 2 at the reset, then one per agent every 2 steps
    masses = {values["mass"] for _, _, values in used}
    assert len(masses) == len(used)  # a new draw for every episode
    for _, behavior, values in used:
        assert behavior == "StandIn" and values["reward_scale"] == 2.0 and values["length"] == 3.5
        assert 1 <= values["mass"] <= 2 and 9 < values["size"] < 11
        assert 0 <= values["gap"] <= 1 or 5 <= values["gap"] <= 6


def test_a_lesson_earned_by_reward_reaches_the_player(tmp_path):
    """Episodes of 4 physics steps (max_step) at 0.5 a step: returns 2 x reward_scale. Four steps an "epoch";
    the lesson needs 3 returns and a smoothed mean above 1.5: epoch 1 has 2 returns, epoch 2's smoothed
    mean is 1.5, epoch 3's 1.875. Its new value goes to the player before epoch 4; the episodes that began
    in epoch 3's last exchange read the old value, those of epoch 5 the new one."""
    section = {
        "reward_scale": {
            "curriculum": [lesson("a", 1.0, threshold=1.5, min_lesson_length=3), {"name": "b", "value": 3.0}]
        }
    }
    env = launch(tmp_path, check_environment_parameters(section, WHERE), max_step=4)
    manager = env.parameter_manager
    returns_by_epoch, changes = [], []
    try:
        env.reset()
        running = np.zeros(2)
        for epoch in range(5):
            returns = []
            for _ in range(4):
                _, reward, terminated, truncated, _ = env.step(np.full((2, 1), 0.5))
                running += reward
                for i in np.flatnonzero(terminated | truncated):
                    returns.append(float(running[i]))
                    running[i] = 0
            returns_by_epoch.append(returns)
            changed, reset = manager.update((epoch + 1) / 5, returns)
            changes.append(changed)
            if changed:
                assert env.apply_lessons(reset) is None
    finally:
        env.close()
    assert changes == [False, False, True, False, False]
    assert returns_by_epoch == [[2.0, 2.0]] * 4 + [[6.0, 6.0]]
    assert manager.lesson_numbers() == {"reward_scale": 1}
    log = player_log(tmp_path)
    assert log.count("environment parameter reward_scale=1\n") == 1
    assert log.count("environment parameter reward_scale=3\n") == 1
    scales = [values["reward_scale"] for _, _, values in episodes(tmp_path)]
    assert scales == [1.0] * 8 + [3.0] * (len(scales) - 8)


def test_require_reset_resets_the_player_with_the_new_lesson(tmp_path):
    section = {
        "reward_scale": {
            "curriculum": [
                lesson("a", 1.0, measure="progress", threshold=0.5, require_reset=True),
                {"name": "b", "value": 4.0},
            ]
        }
    }
    env = launch(tmp_path, check_environment_parameters(section, WHERE), max_step=0)
    try:
        env.reset()
        obs, *_ = env.step(np.full((2, 1), 0.5))
        assert obs[:, 2].tolist() == [1, 1]  # episode step 1
        assert env.parameter_manager.update(0.75, []) == (True, True)
        obs, info = env.apply_lessons(True)
        # New agents (ids 2 and 3) at step 0 of new episodes, in slots 0 and 1.
        np.testing.assert_array_equal(obs, [[0, 2, 0, 0], [1, 3, 0, 0]])
        assert info == {}
        obs, reward, terminated, truncated, _ = env.step(np.full((2, 1), 0.5))
        np.testing.assert_allclose(reward, [2.0, 2.0])  # reward_scale 4 x 0.5
        assert not terminated.any() and not truncated.any() and obs[:, 1].tolist() == [2, 3]
    finally:
        env.close()
    log = player_log(tmp_path)
    assert log.count("reset: 2 agents") == 2
    assert log.index("environment parameter reward_scale=4") < log.rindex("reset: 2 agents")
    assert [(i, v["reward_scale"]) for i, _, v in episodes(tmp_path)] == [
        (0, 1.0),
        (1, 1.0),
        (2, 4.0),
        (3, 4.0),
    ]


# ------------------------------------------------------------------------------------------ behaviors


def test_behavior_name_chooses_the_behavior_and_a_wrong_one_lists_them(tmp_path):
    config = {"behavior_name": "Walker?team=0", "second_behavior": "Crawler?team=0"}
    env = launch(tmp_path / "a", train="Crawler", **config)
    try:
        assert env.behavior == "Crawler?team=0" and env.num_envs == 1
        env.reset()
        obs, *_ = env.step(np.full((1, 1), 0.5))
        assert obs[0, 2] == 1
    finally:
        env.close()
    env = launch(tmp_path / "b", train="Walker?team=0", **config)
    try:
        assert env.behavior == "Walker?team=0" and env.num_envs == 2
    finally:
        env.close()
    with pytest.raises(
        UserError, match=r"has no behavior 'Hopper'; its behaviors: Walker\?team=0, Crawler\?team=0"
    ):
        launch(tmp_path / "c", train="Hopper", **config)
    # A curriculum that measures a behavior spinppo does not train could never move on.
    section = {"w": {"curriculum": [lesson("a", 1.0, behavior="Crawler"), {"name": "b", "value": 2.0}]}}
    with pytest.raises(
        UserError,
        match=r"w.curriculum\[0\].completion_criteria.behavior is 'Crawler', but spinppo trains 'Walker'",
    ):
        launch(tmp_path / "d", check_environment_parameters(section, WHERE), **config)


# ----------------------------------------------------------------------------------- the env factory


def test_env_factory_records_parameters_and_behavior_only_when_set(tmp_path):
    with pytest.raises(UserError, match="environment_parameters need a Unity build"):
        EnvFactory("CartPole-v1", environment_parameters={"g": 1.0})
    with pytest.raises(UserError, match="behavior 'Walker' needs a Unity build"):
        EnvFactory("CartPole-v1", behavior="Walker")
    assert "environment_parameters" not in EnvFactory("CartPole-v1").to_json()
    exe = write_build(tmp_path, task="script")
    plain = EnvFactory(f"unity:{exe}")
    assert set(plain.to_json()) == {"name", "kind", "env", "env_kwargs"}  # as before: old files still read
    spec = saved_env_spec({"env_fn": plain.to_json()}, "config.json")
    assert spec["environment_parameters"] == {} and spec["behavior"] is None
    factory = EnvFactory(f"unity:{exe}", environment_parameters=SAMPLERS, behavior="StandIn", where=WHERE)
    saved = json.loads(json.dumps({"env_fn": factory.to_json()}))
    spec = saved_env_spec(saved, "config.json")
    assert spec["environment_parameters"] == check_environment_parameters(SAMPLERS, WHERE)
    assert spec["behavior"] == "StandIn"
    saved["env_fn"]["environment_parameters"]["length"]["curriculum"][0]["value"]["sampler_type"] = "beta"
    with pytest.raises(
        UserError,
        match=r"config.json \(env_fn\): environment_parameters.length.curriculum\[0\].value.sampler_type",
    ):
        saved_env_spec(saved, "config.json")
