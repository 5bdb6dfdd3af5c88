"""--config FILE: spinppo's own YAML/JSON, a run's config.json, ML-Agents trainer configs; --print_config;
curricula reaching the stand-in Unity player over the real protocol under mpirun."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from spinppo.cli.flag_tables import ALGOS
from spinppo.run import main
from tests.conftest import REPO, mpirun, rows_without_timing
from tests.test_unity import free_ports, no_leftover_players  # noqa: F401 (a fixture)
from tests.unity_standin.build import write_build

SHORT = ["--env", "CartPole", "--epochs", "2", "--steps_per_epoch", "512", "--minibatch_size", "128"]


def printed(capsys, *argv: str) -> dict:
    """The configuration ``--print_config`` prints for ``ppo ARGV``, parsed back."""
    assert main(["ppo", *argv, "--print_config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def error_of(capsys, *argv: str) -> str:
    """The one-line error of a command that must fail with exit code 2."""
    assert main(list(argv)) == 2, argv
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("spinppo: error: "), err
    return err


def write(path: Path, doc) -> str:
    path.write_text(yaml.safe_dump(doc, sort_keys=False) if not isinstance(doc, str) else doc)
    return str(path)


# ---------------------------------------------------------------------------------------- spinppo's own


def test_a_file_sets_flags_and_grids_and_the_command_line_overrides_it(tmp_path, capsys):
    f = write(
        tmp_path / "c.yaml",
        {
            "env": "CartPole",
            "seed": [0, 10],
            "lr": 3e-4,
            "hid": [[16, 16], [32]],
            "env_kwargs": {"max_episode_steps": 50},
            "norm_reward": False,
            "act": "relu",
            "tensorboard": False,
        },
    )
    c = printed(capsys, "--config", f, "--lr", "1e-3", "--norm_obs", "false")
    assert c["env"] == "CartPole" and c["seed"] == [0, 10] and c["hid"] == [[16, 16], [32]]
    assert c["lr"] == 1e-3 and c["norm_obs"] is False  # the command line wins
    assert c["norm_reward"] is False and c["act"] == "relu" and c["tensorboard"] is False
    assert c["env_kwargs"] == {"max_episode_steps": 50}
    assert c["update_epochs"] == 10  # not in the file: the default


def test_several_files_apply_in_order_and_a_bad_value_names_its_file(tmp_path, capsys):
    """--config A --config B (or --config A B): B over A, the command line over both (a second --config
    silently replaced the first)."""
    shipped = str(REPO / "configs" / "mujoco" / "Hopper.yaml")
    mine = write(tmp_path / "mine.yaml", {"lr": 3e-4, "seed": [1, 2]})
    for argv in (["--config", shipped, "--config", mine], ["--config", shipped, mine]):
        c = printed(capsys, *argv, "--seed", "7")
        assert c["env"] == "Hopper" and c["epochs"] == 244  # from the shipped file
        assert c["lr"] == 3e-4 and c["seed"] == 7  # mine over it, the command line over both
    c = printed(capsys, "--config", mine, "--config", shipped)
    assert c["lr"] == yaml.safe_load(Path(shipped).read_text())["lr"] and c["seed"] == 0
    wrong = write(tmp_path / "wrong.yaml", {"gamma": "high"})
    err = error_of(capsys, "ppo", "--config", shipped, "--config", wrong)
    assert f"{wrong}: --gamma takes a number" in err


def test_hid_empty_means_linear_heads_in_a_file_as_on_the_command_line(tmp_path, capsys):
    """``hid: []`` (the shipped Atari configs: CleanRL's linear heads on the CNN's features) is one
    architecture without hidden layers, as ``--hid []`` is; ``[[8], []]`` a grid of two."""
    assert printed(capsys, *SHORT, "--hid", "[]")["hid"] == []
    f = write(tmp_path / "linear.yaml", {"env": "CartPole", "hid": []})
    assert printed(capsys, "--config", f)["hid"] == []
    f = write(tmp_path / "grid.yaml", {"env": "CartPole", "hid": [[8], []]})
    assert printed(capsys, "--config", f)["hid"] == [[8], []]
    import gymnasium as gym

    from spinppo.core.networks import MLPActorCritic

    env = gym.make("CartPole-v1")
    ac = MLPActorCritic(env.observation_space, env.action_space, hidden_sizes=[])
    assert [type(m).__name__ for m in ac.pi] == ["Linear"] and ac.pi[0].in_features == 4


def test_print_config_round_trips_in_yaml_and_json(tmp_path, capsys):
    first = printed(capsys, *SHORT, "--seed", "3", "7", "--hid", "8", "8", "--target_kl", "0.02")
    path = write(tmp_path / "printed.yaml", first)
    assert printed(capsys, "--config", path) == first
    (tmp_path / "printed.json").write_text(json.dumps(first))
    assert printed(capsys, "--config", str(tmp_path / "printed.json")) == first


def test_none_turns_an_optional_number_off_but_is_a_name_for_a_text_flag(capsys):
    """--target_kl none is None; --exp_name none is the experiment "none" (it was silently the default
    name); the exact None, as --print_config writes it, still means None for a text flag."""
    c = printed(capsys, *SHORT, "--target_kl", "none", "--exp_name", "none", "--initialize_from", "None")
    assert c["target_kl"] is None and c["exp_name"] == "none" and c["initialize_from"] is None


def test_a_runs_config_json_repeats_the_run(tmp_path, cli):
    first = cli(
        "ppo", *SHORT, "--seed", "5", "--hid", "16", "--data_dir", str(tmp_path / "a"), "--exp_name", "x"
    )
    assert first.returncode == 0, first.stderr
    config = tmp_path / "a" / "x" / "x_s5" / "config.json"
    proc = cli("ppo", "--config", str(config), "--data_dir", str(tmp_path / "b"))
    assert proc.returncode == 0 and "AverageEpRet" in proc.stdout, proc.stderr
    assert rows_without_timing(tmp_path / "a" / "x" / "x_s5") == rows_without_timing(
        tmp_path / "b" / "x" / "x_s5"
    )
    # The same file again, into the same place: the existing run is not replaced.
    proc = cli("ppo", "--config", str(config))
    assert proc.returncode == 2 and "already holds a run" in proc.stderr


def test_bad_files_and_values_name_the_file(tmp_path, capsys):
    assert "no such file" in error_of(capsys, "ppo", "--config", str(tmp_path / "none.yaml"))
    bad = write(tmp_path / "bad.yaml", "env: [CartPole\n")
    assert "not valid YAML or JSON" in error_of(capsys, "ppo", "--config", bad)
    typo = write(tmp_path / "typo.yaml", {"env": "CartPole", "lrr": 0.1})
    assert f"{typo}: unknown key 'lrr': not a flag of ppo; did you mean lr?" in error_of(
        capsys, "ppo", "--config", typo
    )
    wrong = write(tmp_path / "wrong.yaml", {"env": "CartPole", "lr": "fast"})
    assert f"{wrong}: --lr takes a number, not 'fast'" in error_of(capsys, "ppo", "--config", wrong)
    nested = write(tmp_path / "nested.yaml", {"env": "CartPole", "gamma": {"a": 1}})
    assert "gamma is" in error_of(capsys, "ppo", "--config", nested)


# ------------------------------------------------------------------------------------ ML-Agents configs


def test_ml_agents_walker_yaml_means_ml_agents_ppo(capsys):
    c = printed(capsys, "--config", str(REPO / "configs" / "unity" / "Walker.yaml"), "--env", "Walker")
    expected = dict(
        steps_per_epoch=20480,
        minibatch_size=2048,
        lr=3e-4,
        anneal_lr=True,
        ent_coef=0.005,
        anneal_ent=True,  # beta_schedule: learning_rate_schedule's
        clip_ratio=0.2,
        anneal_clip=True,
        lam=0.95,
        update_epochs=3,
        gamma=0.995,
        reward_scale=1.0,
        norm_obs=True,
        hid=[256, 256, 256],
        act="silu",
        shared_trunk=False,
        log_std_init=0.0,
        time_horizon=1000,
        epochs=1465,  # ceil(30M / 20480)
        keep_checkpoints=5,
        save_freq=24,  # checkpoint_interval 500000 (the default) / 20480
        vf_coef=1.0,
        clip_vloss=True,
        max_grad_norm=0.0,
        norm_reward=False,
        norm_adv=True,
        target_kl=None,
        ent_mean_over_dims=True,
        encoder="simple",
        behavior="Walker",
        no_graphics=None,  # no engine_settings: auto, graphics for a camera (docs/unity.md)
        unity_listen="localhost",
    )
    assert {k: c[k] for k in expected} == expected


FULL = {
    "default_settings": {
        "trainer_type": "ppo",
        "hyperparameters": {"batch_size": 64, "learning_rate": 1e-3, "num_epoch": 4},
        "max_steps": 2.0e5,
    },
    "behaviors": {
        "Runner": {
            "hyperparameters": {
                "buffer_size": 1280,
                "learning_rate_schedule": "constant",
                "beta": 0.01,
                "beta_schedule": "linear",
                "epsilon": 0.3,
                "epsilon_schedule": "constant",
                "lambd": 0.9,
                "shared_critic": True,
            },
            "network_settings": {
                "normalize": False,
                "hidden_units": 32,
                "num_layers": 1,
                "vis_encode_type": "simple",
                "memory": None,
                "goal_conditioning_type": "none",
                "deterministic": False,
            },
            "reward_signals": {"extrinsic": {"gamma": 0.98, "strength": 0.5}},
            "keep_checkpoints": 3,
            "checkpoint_interval": 6400,
            "time_horizon": 32,
            "summary_freq": 1000,
            "threaded": True,
            "init_path": None,
        },
        "Other": {"hyperparameters": {"batch_size": 8}},
    },
    "env_settings": {
        "env_path": "builds/Runner",
        "base_port": 6000,
        "num_envs": 2,
        "seed": 9,
        "env_args": None,
    },
    "engine_settings": {"time_scale": 5, "no_graphics": False, "width": 84, "height": 84},
    "checkpoint_settings": {"run_id": "runner1", "results_dir": "RESULTS", "force": True, "resume": False},
    "torch_settings": {"device": "cpu"},
    "debug": False,
    "environment_parameters": {"wall": 2.5},
}


def test_every_supported_key_of_an_ml_agents_config(tmp_path, capsys):
    doc = json.loads(json.dumps(FULL).replace("RESULTS", str(tmp_path)))
    f = write(tmp_path / "full.yaml", doc)
    assert "has 2 behaviors (Runner, Other): choose one with --behavior NAME" in error_of(
        capsys, "ppo", "--config", f
    )
    c = printed(capsys, "--config", f, "--behavior", "Runner")
    expected = dict(
        env="unity:builds/Runner",
        behavior="Runner",
        steps_per_epoch=1280,
        minibatch_size=64,  # from default_settings
        lr=1e-3,
        anneal_lr=False,
        ent_coef=0.01,
        anneal_ent=True,
        clip_ratio=0.3,
        anneal_clip=False,
        lam=0.9,
        update_epochs=4,
        shared_trunk=True,
        norm_obs=False,
        hid=[32],
        gamma=0.98,
        reward_scale=0.5,
        epochs=157,  # ceil(200000 / 1280)
        keep_checkpoints=3,
        save_freq=5,
        time_horizon=32,
        base_port=6000,
        cpu=2,  # two players: two ranks
        seed=9,
        time_scale=5.0,
        no_graphics=False,
        exp_name="runner1",
        data_dir=str(tmp_path),
        overwrite=True,
        environment_parameters={
            "wall": {
                "curriculum": [
                    {
                        "name": "wall",
                        "value": {
                            "sampler_type": "constant",
                            "sampler_parameters": {"seed": -1, "value": 2.5},
                        },
                        "completion_criteria": None,
                    }
                ]
            }
        },
    )
    assert {k: c[k] for k in expected} == expected
    # What --print_config wrote is a spinppo file that means the same.
    again = write(tmp_path / "printed.yaml", c)
    assert printed(capsys, "--config", again) == c
    # The other behavior: its own settings over default_settings.
    assert printed(capsys, "--config", f, "--behavior", "Other")["minibatch_size"] == 8
    # The command line still overrides.
    assert printed(capsys, "--config", f, "--behavior", "Runner", "--lr", "5e-4")["lr"] == 5e-4


def _with(path: str, value) -> dict:
    """A valid one-behavior ML-Agents config with ``value`` set at the dotted ``path``."""
    doc = {"behaviors": {"B": {"trainer_type": "ppo", "hyperparameters": {}, "network_settings": {}}}}
    keys = path.split(".")
    node = doc
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return doc


@pytest.mark.parametrize(
    "path, value, message",
    [
        (
            "behaviors.B.reward_signals",
            {"extrinsic": {}, "curiosity": {"strength": 0.02}},
            "reward_signals.curiosity",
        ),
        (
            "behaviors.B.reward_signals",
            {"extrinsic": {}, "gail": {"demo_path": "x.demo"}},
            "reward_signals.gail",
        ),
        ("behaviors.B.reward_signals", {"extrinsic": {}, "rnd": {}}, "reward_signals.rnd"),
        ("behaviors.B.self_play", {"window": 10}, "behaviors.B.self_play"),
        ("behaviors.B.behavioral_cloning", {"demo_path": "x.demo"}, "behaviors.B.behavioral_cloning"),
        ("behaviors.B.trainer_type", "sac", "trainer_type 'sac' is not supported"),
        ("behaviors.B.trainer_type", "poca", "trainer_type 'poca' is not supported"),
        (
            "behaviors.B.hyperparameters.learning_rat",
            0.1,
            "unknown key behaviors.B.hyperparameters.learning_rat",
        ),
        ("behaviors.B.network_settings.vis_encode_type", "match3", "vis_encode_type 'match3'"),
        (
            "behaviors.B.hyperparameters.num_epoch",
            "three",
            "hyperparameters.num_epoch must be a whole number",
        ),
        ("behaviors.B.hyperparameters.learning_rate_schedule", "cosine", "must be linear or constant"),
        ("behaviors.B.summary_frequency", 100, "unknown key behaviors.B.summary_frequency"),
        ("env_settings.env_args", ["--x"], "env_settings.env_args is not supported"),
        ("engine_settings.width", 640, "engine_settings.width is not supported"),
        ("checkpoint_settings.inference", True, "checkpoint_settings.inference is not supported"),
        ("torch_settings.device", "mps", "torch_settings.device 'mps'"),  # (cuda is --device cuda)
        ("curriculum", {}, "unknown top-level key 'curriculum'"),
        # ML-Agents drops framework from a trainer section only (the next test); elsewhere it refuses it.
        ("framework", "pytorch", "unknown top-level key 'framework'"),
        (
            "behaviors.B.hyperparameters.framework",
            "pytorch",
            "unknown key behaviors.B.hyperparameters.framework",
        ),
        (
            "environment_parameters.wall",
            {"sampler_type": "normal", "sampler_parameters": {}},
            "wall.sampler_type",
        ),
    ],
)
def test_what_spinppo_does_not_do_is_a_one_line_error_naming_key_and_file(
    tmp_path, capsys, path, value, message
):
    f = write(tmp_path / "ml.yaml", _with(path, value))
    err = error_of(capsys, "ppo", "--config", f, "--env", "CartPole")
    assert message in err and str(tmp_path / "ml.yaml") in err, err


def test_framework_is_ignored_with_a_note_where_ml_agents_drops_it(tmp_path, capsys):
    """ML-Agents' TrainerSettings.structure drops a trainer section's ``framework`` (any value, in a
    behavior's section or in default_settings) with a deprecation warning: spinppo accepts it there and a
    run prints one note saying that it is ignored."""
    from spinppo.cli.flags import parse_algo_args

    plain_file = write(tmp_path / "plain.yaml", _with("behaviors.B.max_steps", 1000))
    plain = printed(capsys, "--config", plain_file, "--env", "CartPole")
    for section in ("behaviors", "default_settings"):
        doc = _with("behaviors.B.max_steps", 1000)
        if section == "behaviors":
            doc["behaviors"]["B"]["framework"] = "tensorflow"
        else:
            doc["default_settings"] = {"framework": "tensorflow"}
        f = write(tmp_path / "framework.yaml", doc)
        assert printed(capsys, "--config", f, "--env", "CartPole") == plain  # nothing else changes
        _, options = parse_algo_args("ppo", ["--config", f, "--env", "CartPole"])
        assert options["notes"] == [
            "behaviors.B.framework is ignored (deprecated in ML-Agents, which trains with PyTorch only)"
        ]
    flags = ["--env", "CartPole", "--steps_per_epoch", "256", "--minibatch_size", "64", "--epochs", "1"]
    assert (
        main(["ppo", "--config", f, *flags, "--data_dir", str(tmp_path / "data"), "--tensorboard", "false"])
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("spinppo: note: behaviors.B.framework is ignored") == 1, out


def test_an_ml_agents_config_is_for_ppo(tmp_path, capsys):
    f = write(tmp_path / "ml.yaml", _with("behaviors.B.max_steps", 1000))
    assert "configures PPO: run python -m spinppo.run ppo" in error_of(capsys, "a2c", "--config", f)


def test_ml_agents_memory_is_memory_size_and_sequence_length(tmp_path, capsys):
    """network_settings.memory: recurrent policies, with ML-Agents' MemorySettings defaults (memory_size
    128, sequence_length 64) for the keys a section leaves out; null or absent: no memory."""

    def resolved(memory, *argv: str) -> tuple[int, int]:
        f = write(tmp_path / "ml.yaml", _with("behaviors.B.network_settings.memory", memory))
        c = printed(capsys, "--config", f, "--env", "CartPole", *argv)
        return c["memory_size"], c["sequence_length"]

    assert resolved({"memory_size": 32, "sequence_length": 16}) == (32, 16)
    assert resolved({"memory_size": 32}) == (32, 64)
    assert resolved({"sequence_length": 16}) == (128, 16)
    assert resolved({}) == (128, 64)
    assert resolved({"memory_size": "256"}) == (256, 64)  # text that is a number counts, as elsewhere
    assert resolved(None)[0] == 0
    assert resolved({"memory_size": 32}, "--memory_size", "0")[0] == 0  # the command line still overrides
    # default_settings' memory merges with the behavior's; --print_config's file means the same.
    doc = _with("behaviors.B.network_settings.memory", {"sequence_length": 8})
    doc["default_settings"] = {"network_settings": {"memory": {"memory_size": 16}}}
    f = write(tmp_path / "merged.yaml", doc)
    c = printed(capsys, "--config", f, "--env", "CartPole")
    assert (c["memory_size"], c["sequence_length"]) == (16, 8)
    assert printed(capsys, "--config", write(tmp_path / "printed.yaml", c)) == c


@pytest.mark.parametrize(
    "memory, message",
    [
        ({"memory_size": 33}, "memory.memory_size must be greater than 0 and divisible by 2"),
        ({"memory_size": 0}, "memory.memory_size must be greater than 0 and divisible by 2"),
        ({"memory_size": -8}, "memory.memory_size must be greater than 0 and divisible by 2"),
        ({"memory_size": "big"}, "memory.memory_size must be a whole number, not 'big'"),
        ({"memory_size": 12.5}, "memory.memory_size must be a whole number, not 12.5"),
        ({"sequence_length": 0}, "memory.sequence_length must be a whole number of at least 1, not 0"),
        ({"sequence_length": "long"}, "memory.sequence_length must be a whole number of at least 1"),
        # ML-Agents' TrainerSettings check (batch_size: its default 1024).
        (
            {"sequence_length": 2048},
            "memory.sequence_length 2048 must be at most behaviors.B.hyperparameters",
        ),
        ({"memory_units": 16}, "unknown key behaviors.B.network_settings.memory.memory_units"),
        (128, "network_settings.memory must be a mapping"),
        (False, "network_settings.memory must be a mapping"),
    ],
)
def test_bad_ml_agents_memory_is_a_one_line_error_naming_key_and_file(tmp_path, capsys, memory, message):
    f = write(tmp_path / "ml.yaml", _with("behaviors.B.network_settings.memory", memory))
    err = error_of(capsys, "ppo", "--config", f, "--env", "CartPole")
    assert message in err and f in err, err


def test_an_ml_agents_config_with_memory_trains_a_recurrent_policy(tmp_path):
    """As written: its sequence_length 8 does not divide the rollouts of 25 steps (buffer_size 200 over 8
    environments), so each environment's last sequence is padded and masked, as in ML-Agents."""
    import torch

    doc = {
        "behaviors": {
            "B": {
                "trainer_type": "ppo",
                "hyperparameters": {"buffer_size": 200, "batch_size": 64, "num_epoch": 2},
                "network_settings": {
                    "hidden_units": 16,
                    "num_layers": 1,
                    "memory": {"memory_size": 16, "sequence_length": 8},
                },
                "max_steps": 400,  # 2 epochs of 200 steps
                "time_horizon": 32,
            }
        },
        "checkpoint_settings": {"run_id": "mem", "results_dir": str(tmp_path)},
    }
    f = write(tmp_path / "ml.yaml", doc)
    assert main(["ppo", "--config", f, "--env", "CartPole", "--tensorboard", "false"]) == 0
    run_dir = tmp_path / "mem" / "mem_s0"
    assert len(rows_without_timing(run_dir)) == 1 + 2
    ac_kwargs = json.loads((run_dir / "config.json").read_text())["ac_kwargs"]
    assert (ac_kwargs["memory_size"], ac_kwargs["sequence_length"]) == (16, 8)
    payload = torch.load(run_dir / "pyt_save" / "model.pt", map_location="cpu", weights_only=True)
    assert (payload["ctor"]["memory_size"], payload["ctor"]["sequence_length"]) == (16, 8)


# ------------------------------------------------------------------------------- curricula, end to end


def test_curriculum_advances_by_reward_and_progress_under_mpirun_and_survives_resume(tmp_path):
    """Two ranks train on stand-in players (2 agents each, 4-step episodes of the "script" task) from an
    ML-Agents config. ``level`` needs a mean return above -1e6 over 1 episode: met at the first check (epoch
    0). ``hard`` is passed on progress 0.5: after epoch 3 of 6 (progress 4/6). ``never`` needs 1e6: never.
    The lessons reach both players, are columns of progress.txt, and a resume continues from them."""
    build = write_build(tmp_path / "build", task="script", agents=2, decision_period=1, max_step=4)
    lessons = {
        "level": {
            "curriculum": [
                {
                    "name": "one",
                    "value": 1.0,
                    "completion_criteria": {"behavior": "StandIn", "threshold": -1e6, "min_lesson_length": 1},
                },
                {"name": "two", "value": 2.0},
            ]
        },
        "hard": {
            "curriculum": [
                {
                    "name": "first",
                    "value": 0.0,
                    "completion_criteria": {"behavior": "StandIn", "measure": "progress", "threshold": 0.5},
                },
                {"name": "second", "value": 10.0},
            ]
        },
        "never": {
            "curriculum": [
                {"name": "a", "value": 0.0, "completion_criteria": {"behavior": "StandIn", "threshold": 1e6}},
                {"name": "b", "value": 1.0},
            ]
        },
    }
    doc = {
        "behaviors": {
            "StandIn": {
                "trainer_type": "ppo",
                "hyperparameters": {"batch_size": 32, "buffer_size": 64, "num_epoch": 1},
                "network_settings": {"hidden_units": 16, "num_layers": 1},
                "max_steps": 384,
                "time_horizon": 8,
                "checkpoint_interval": 64,
            }
        },
        "env_settings": {"env_path": str(build), "base_port": free_ports(2), "seed": 4},
        "engine_settings": {"time_scale": 1000},
        "checkpoint_settings": {"run_id": "cur", "results_dir": str(tmp_path / "results")},
        "environment_parameters": lessons,
    }
    f = write(tmp_path / "ml.yaml", doc)
    mpirun(2, ["-m", "spinppo.run", "ppo", "--config", f, "--tensorboard", "false"])
    run_dir = tmp_path / "results" / "cur" / "cur_s4"
    rows = rows_without_timing(run_dir)
    header = rows[0]
    lesson_columns = [
        [int(r[header.index(f"Lesson/{n}")]) for r in rows[1:]] for n in ("level", "hard", "never")
    ]
    assert lesson_columns == [[1] * 6, [0, 0, 0, 1, 1, 1], [0] * 6]
    assert json.loads((run_dir / "config.json").read_text())["env_fn"]["behavior"] == "StandIn"
    for rank in (0, 1):
        log = (run_dir / "unity_logs" / f"rank{rank}.log").read_text()
        used = [
            json.loads(v)
            for v in re.findall(r"episode \d+ behavior StandIn lineage \d+ parameters (\{.*\})", log)
        ]
        levels = [u["level"] for u in used]
        assert levels[0] == 1.0 and levels[-1] == 2.0 and levels == sorted(levels)
        assert used[0]["hard"] == 0.0 and used[-1]["hard"] == 10.0 and {u["never"] for u in used} == {0.0}

    # mlagents-learn --resume: the same file with resume: true and more steps.
    doc["checkpoint_settings"]["resume"] = True
    doc["behaviors"]["StandIn"]["max_steps"] = 512
    f = write(tmp_path / "ml.yaml", doc)
    before = len((run_dir / "unity_logs" / "rank0.log").read_text())
    mpirun(2, ["-m", "spinppo.run", "ppo", "--config", f])
    rows = rows_without_timing(run_dir)
    assert [int(r[header.index("Epoch")]) for r in rows[1:]] == list(range(8))
    assert [int(r[header.index("Lesson/level")]) for r in rows[1:]] == [1] * 8
    assert [int(r[header.index("Lesson/hard")]) for r in rows[1:]] == [0, 0, 0, 1, 1, 1, 1, 1]
    # The resumed run's player starts with the first lessons; loading the checkpoint resets it with the
    # saved ones before the first step, so every episode it plays reads those.
    resumed = (run_dir / "unity_logs" / "rank0.log").read_text()[before:]
    played = resumed[resumed.rindex("environment parameter hard") :]
    assert "environment parameter hard=10\nstandin: environment parameter level=2" in played
    used = [
        json.loads(v)
        for v in re.findall(r"episode \d+ behavior StandIn lineage \d+ parameters (\{.*\})", played)
    ]
    assert len(used) >= 8 and all(u["level"] == 2.0 and u["hard"] == 10.0 for u in used)

    # Replay plays the trained behavior in the lessons its policy was saved with.
    from spinppo.tools.policies import load_policy_and_env

    env, _ = load_policy_and_env(str(run_dir), base_port=free_ports())
    try:
        assert env.behavior.split("?")[0] == "StandIn"
        assert env.parameter_manager.lesson_numbers() == {"level": 1, "hard": 1, "never": 0}
    finally:
        env.close()


# ------------------------------------------------------------------------- ML-Agents' meanings as flags


def test_initialize_from_starts_from_a_saved_policy_and_anneal_clip_decays(tmp_path):
    from spinppo.algos.ppo import ppo
    from spinppo.envs.registry import EnvFactory
    from spinppo.utils.errors import UserError

    common = dict(
        steps_per_epoch=256, num_envs=2, minibatch_size=128, update_epochs=1, ac_kwargs={"hidden_sizes": (8,)}
    )
    first = ppo(
        EnvFactory("CartPole"), epochs=1, logger_kwargs=dict(output_dir=str(tmp_path / "a")), **common
    )
    # A learning rate so small that the one update cannot move the weights visibly.
    second = ppo(
        EnvFactory("CartPole"),
        epochs=2,
        lr=1e-12,
        anneal_clip=True,
        initialize_from=str(tmp_path / "a"),
        logger_kwargs=dict(output_dir=str(tmp_path / "b"), tensorboard=False),
        **common,
    )
    for (name, a), b in zip(first.named_parameters(), second.parameters(), strict=True):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), atol=1e-6, err_msg=name)
    # The observation statistics came along too (then this run's 512 observations were added).
    assert float(second.obs_rms.count) == pytest.approx(float(first.obs_rms.count) + 512)
    rows = rows_without_timing(tmp_path / "b")
    clip = [float(r[rows[0].index("ClipRange")]) for r in rows[1:]]
    assert clip == pytest.approx([0.2, 0.15])  # halfway from 0.2 to ML-Agents' floor 0.1
    with pytest.raises(UserError, match="the saved network has activation 'tanh' \\(this run: 'relu'\\)"):
        ppo(
            EnvFactory("CartPole"),
            epochs=1,
            initialize_from=str(tmp_path / "a"),
            logger_kwargs=dict(output_dir=str(tmp_path / "c")),
            **{**common, "ac_kwargs": {"hidden_sizes": (8,), "activation": "relu"}},
        )
    with pytest.raises(UserError, match="its network does not fit"):
        ppo(
            EnvFactory("Pendulum"),
            epochs=1,
            initialize_from=str(tmp_path / "a"),
            logger_kwargs=dict(output_dir=str(tmp_path / "c")),
            **common,
        )
    assert not (tmp_path / "c").exists()  # refused before the run directory was made


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path, capsys):
    if "rllib" in path.parts:  # RLlib's tuned examples name their algorithm (run:)
        assert main(["--config", str(path), "--print_config"]) == 0
        config = yaml.safe_load(capsys.readouterr().out)
    elif path.parent.name in ALGOS:  # configs/mujoco/<algo>/<Env>.yaml
        assert main([path.parent.name, "--config", str(path), "--print_config"]) == 0
        config = yaml.safe_load(capsys.readouterr().out)
    else:
        extra = ["--env", "CartPole"] if "unity" in path.parts else []
        config = printed(capsys, "--config", str(path), *extra)
    assert config["steps_per_epoch"] > 0


def test_ml_agents_steps_keep_their_meaning_under_command_line_overrides(tmp_path, capsys):
    """max_steps and checkpoint_interval count steps: typing --steps_per_epoch over buffer_size keeps them;
    checkpoint_settings.resume finds the run of the seed typed on the command line; numbers written as
    text (PyYAML reads 3e-4 so) count, as ML-Agents takes them."""
    walker = str(REPO / "configs" / "unity" / "Walker.yaml")
    c = printed(capsys, "--config", walker, "--env", "Walker", "--steps_per_epoch", "2048")
    assert (c["steps_per_epoch"], c["epochs"], c["save_freq"]) == (2048, 14649, 244)
    doc = _with("behaviors.B.hyperparameters.learning_rate", "3e-4")
    doc["checkpoint_settings"] = {"run_id": "r1", "results_dir": "~/results", "resume": True}
    f = write(tmp_path / "ml.yaml", doc)
    c = printed(capsys, "--config", f, "--env", "CartPole", "--seed", "5")
    assert c["resume"] == str(Path("~/results/r1/r1_s5").expanduser())
    assert c["lr"] == 3e-4 and c["seed"] == 5
    # A spinppo file after the ML-Agents one counts as typed over it (several --config files).
    mine = write(tmp_path / "mine.yaml", {"steps_per_epoch": 2048})
    c = printed(capsys, "--config", walker, mine, "--env", "Walker")
    assert (c["steps_per_epoch"], c["epochs"], c["save_freq"]) == (2048, 14649, 244)
    fixed = write(tmp_path / "fixed.yaml", {"epochs": 5, "save_freq": 1, "resume": "None"})
    c = printed(capsys, "--config", walker, fixed, "--env", "Walker", "--steps_per_epoch", "2048")
    assert (c["epochs"], c["save_freq"]) == (5, 1)
    again = write(tmp_path / "again.yaml", {"resume": str(tmp_path / "x")})
    assert printed(capsys, "--config", f, again, "--env", "CartPole")["resume"] == str(tmp_path / "x")
    bad = write(tmp_path / "bad.yaml", _with("behaviors.B.max_steps", "abc"))
    assert "behaviors.B.max_steps must be a number of at least 1, not 'abc'" in error_of(
        capsys, "ppo", "--config", bad, "--env", "CartPole"
    )


def test_print_config_of_a_resume_reads_back(tmp_path, capsys):
    run_dir = tmp_path / "x" / "x_s0"
    printed_resume = printed(capsys, "--resume", str(run_dir), "--epochs", "9")
    assert printed_resume == {"resume": str(run_dir), "epochs": 9}
    f = write(tmp_path / "r.yaml", printed_resume)
    assert printed(capsys, "--config", f) == printed_resume


def test_spinppo_files_check_what_the_command_line_cannot_say(tmp_path, capsys):
    for doc, message in [
        ({"env": "CartPole", "environment_parameters": 3}, "environment_parameters must be a mapping"),
        ({"env": "CartPole", "hid": [[8], "x"]}, "hid is [8]"),  # a grid is lists only
    ]:
        f = write(tmp_path / "c.yaml", doc)
        assert message in error_of(capsys, "ppo", "--config", f)
    f = write(tmp_path / "home.yaml", {"env": "CartPole", "data_dir": "~/runs"})
    assert printed(capsys, "--config", f)["data_dir"] == str(Path("~/runs").expanduser())
