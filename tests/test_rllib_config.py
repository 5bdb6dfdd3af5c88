"""RLlib tuned examples (``rllib train -f FILE``) as --config files: the lecture notes' pong-ppo and pong-a3c
as written, each key's mapping, grid_search, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spinppo.cli.config_file import read_config_file
from spinppo.cli.flags import parse_algo_args
from spinppo.utils.errors import UserError
from tests.conftest import mpirun_commands

SEEDS = Path(__file__).parents[1] / "configs" / "rllib"  # the lecture notes' two files, as they print them


def flags_of(tmp_path: Path, doc: dict, algo: str = "ppo") -> dict:
    """The spinppo flags a file means, as parsed values (one per flag, or a list for a grid)."""
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(doc))
    grid, options = parse_algo_args(algo, ["--config", str(path)])
    values = {key.split(":")[-1]: v[0] if len(v) == 1 else v for key, v in grid.items()}
    return {
        **values,
        **{k: options[k] for k in ("cpu", "env_kwargs", "frame_size", "data_dir") if k in options},
    }


def experiment(config: dict | None = None, env: str = "CartPole-v1", run_: str = "PPO", **extra) -> dict:
    return {"exp": {"env": env, "run": run_, "config": config or {}, **extra}}


LECTURE = [("pong-ppo", "ppo"), ("pong-a3c", "a3c")]


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """This file's runs under ``mpirun -np 2``, one after the other in one job (the ranks start once):
    each one's data directory and stdout, by name (the lecture notes' files; stop-ALGO)."""
    root = tmp_path_factory.mktemp("runs")
    commands = {}
    for name, algo in LECTURE:
        # The files as the notes print them; only the epoch's size is made small from the command line.
        args = ["--config", str(SEEDS / f"{name}.yaml"), "--epochs", "2", "--steps_per_epoch", "800"]
        commands[name] = [*args, *(["--minibatch_size", "200"] if algo == "ppo" else [])]
    for algo in ("ppo", "a3c"):
        args = [algo, "--env", "CartPole-v1", "--epochs", "40", "--steps_per_epoch", "2000"]
        commands[f"stop-{algo}"] = [*args, "--stop_at_train_return", "30", "--exp_name", algo]
    for name, args in commands.items():
        args += ["--data_dir", str(root / name)]
    _, outputs = mpirun_commands(2, list(commands.values()), timeout=600)
    return {name: (root / name, out) for name, out in zip(commands, outputs, strict=True)}


@pytest.mark.parametrize("name,algo", LECTURE)
def test_the_lecture_notes_files_train_two_short_epochs_under_mpirun(two_rank_runs, name, algo):
    """The files as the notes print them; only the epoch's size is made small from the command line.
    ``python -m spinppo.run --config FILE`` takes the algorithm from the file's run:."""
    data, out = two_rank_runs[name]
    progress = next(data.rglob("progress.txt")).read_text().splitlines()
    assert len(progress) == 3, out
    assert f"{algo}-pongnoframeskip-v4" in str(next(data.rglob("progress.txt")))
    assert "42x42 grayscale" in out
    assert "ignored Ray settings that change nothing in training: framework" in out


def test_pong_ppo_means_rllibs_settings(tmp_path):
    flags = flags_of(tmp_path, yaml.safe_load((SEEDS / "pong-ppo.yaml").read_text()))
    expected = {
        "env": "PongNoFrameskip-v4",
        "lam": 0.95,
        "kl_coeff": 0.5,
        "kl_target": 0.01,  # RLlib's default
        "clip_ratio": 0.1,
        "vf_clip_param": 10.0,
        "vf_coef": 2.0,  # RLlib's vf_loss_coeff 1.0 on the whole squared error; spinppo's takes half
        "ent_coef": 0.01,
        "steps_per_epoch": 5000,
        "minibatch_size": 500,
        "update_epochs": 10,
        "num_envs": 5,
        "cpu": 32,
        "lr": 5e-5,  # RLlib's PPO default
        "anneal_lr": False,
        "anneal_ent": False,
        "norm_reward": False,
        "norm_adv": True,
        "max_grad_norm": 0.0,  # grad_clip None
        "gamma": 0.99,
        "frame_size": 42,
        "encoder": "rllib",
        "conv_filters": None,  # RLlib's default stack for 42x42
        "conv_activation": "relu",
        "hid": (),
        "shared_trunk": False,  # vf_share_layers, with no dense layers to share (as runs before it had)
        # spinppo's start, not RLlib's (unscaled pixels, Xavier layers): see docs/config.md
        "pixel_scale": None,
        "weight_init": "orthogonal",
    }
    assert {k: flags[k] for k in expected} == expected


def test_pong_a3c_means_rllibs_settings(tmp_path):
    flags = flags_of(tmp_path, yaml.safe_load((SEEDS / "pong-a3c.yaml").read_text()), "a3c")
    expected = {
        "env": "PongNoFrameskip-v4",  # PongDeterministic-v4, which ale-py 0.12 no longer registers
        "n_steps": 20,
        "vf_coef": 0.25,  # RLlib's 0.5 on half the squared error; spinppo's A3C takes the whole
        "ent_coef": 0.01,
        "max_grad_norm": 40.0,
        "lam": 1.0,
        "lr": 0.0001,
        "cpu": 16,
        "memory_size": 512,  # use_lstm, RLlib's lstm_cell_size 256: hidden and cell state
        "sequence_length": 20,  # max_seq_len's default
        "conv_activation": "elu",
        "conv_filters": [[32, [3, 3], 2]] * 4,
        "frame_size": 42,
        "weight_init": "orthogonal",
        "pixel_scale": None,
    }
    assert {k: flags[k] for k in expected} == expected
    assert flags["steps_per_epoch"] % (20 * 16) == 0  # whole rollouts of 16 workers' fragments


@pytest.mark.parametrize(
    "config,expected",
    [
        ({"num_env_runners": 3, "num_envs_per_env_runner": 2}, {"cpu": 3, "num_envs": 2}),
        ({"num_workers": 0}, {"cpu": 1}),
        ({"minibatch_size": 64, "num_epochs": 4}, {"minibatch_size": 64, "update_epochs": 4}),
        ({"sgd_minibatch_size": 32, "num_sgd_iter": 7}, {"minibatch_size": 32, "update_epochs": 7}),
        ({"gamma": 0.9, "lambda": 0.8}, {"gamma": 0.9, "lam": 0.8}),
        ({"lr": 0.01, "lr_schedule": [[0, 0.002]]}, {"lr": 0.002, "anneal_lr": False}),
        ({"clip_param": 0.25, "vf_clip_param": 5.0}, {"clip_ratio": 0.25, "vf_clip_param": 5.0}),
        ({"vf_loss_coeff": 0.25, "entropy_coeff": 0.001}, {"vf_coef": 0.5, "ent_coef": 0.001}),
        ({"kl_coeff": 0.3, "kl_target": 0.02}, {"kl_coeff": 0.3, "kl_target": 0.02}),
        ({"use_kl_loss": False}, {"kl_coeff": 0.0}),
        ({"grad_clip": 0.5}, {"max_grad_norm": 0.5}),
        ({"observation_filter": "MeanStdFilter"}, {"norm_obs": True}),
        ({"observation_filter": "NoFilter"}, {"norm_obs": False}),
        ({"seed": 7}, {"seed": 7}),
        (
            {"model": {"fcnet_hiddens": [32, 16], "fcnet_activation": "relu", "vf_share_layers": True}},
            {"hid": (32, 16), "act": "relu", "shared_trunk": True},
        ),
        ({"model": {"fcnet_activation": "swish"}}, {"act": "silu"}),
        ({}, {"hid": (256, 256), "act": "tanh", "shared_trunk": False, "log_std_init": 0.0}),
        (
            {"model": {"use_lstm": True, "lstm_cell_size": 64, "max_seq_len": 16}},
            {"memory_size": 128, "sequence_length": 16},
        ),
        ({"env_config": {"sutton_barto_reward": True}}, {"env_kwargs": {"sutton_barto_reward": True}}),
    ],
)
def test_each_key_maps_to_its_flag(config, expected, tmp_path):
    flags = flags_of(tmp_path, experiment(config))
    assert {k: flags[k] for k in expected} == expected


def test_ale_env_config_and_stop_and_experiment_keys(tmp_path):
    doc = experiment(
        {
            "env_config": {"frameskip": 1, "full_action_space": False, "repeat_action_probability": 0.0},
            "train_batch_size": 1000,
            "sgd_minibatch_size": 250,
            "lr_schedule": [[0, 0.001], [20000, 0.0]],
            "model": {"dim": 84, "vf_share_layers": True, "conv_filters": [[16, [8, 8], 4], [32, [4, 4], 2]]},
        },
        env="ALE/Breakout-v5",
        stop={"timesteps_total": 20000, "env_runners/episode_return_mean": 18},
        checkpoint_freq=3,
        storage_path=str(tmp_path / "runs"),
    )
    flags = flags_of(tmp_path, doc)
    assert flags["env_kwargs"] == {"full_action_space": False, "repeat_action_probability": 0.0}
    assert (flags["frame_size"], flags["epochs"], flags["save_freq"]) == (84, 20, 3)
    assert flags["stop_at_train_return"] == 18.0
    assert (flags["lr"], flags["anneal_lr"]) == (0.001, True)
    assert flags["conv_filters"] == [[16, [8, 8], 4], [32, [4, 4], 2]]
    assert flags["data_dir"] == str(tmp_path / "runs")


def test_other_algorithms_map_too(tmp_path):
    a2c = flags_of(tmp_path, experiment({"num_workers": 2, "train_batch_size": 400}, run_="A2C"), "a2c")
    assert (a2c["n_steps"], a2c["vf_coef"], a2c["max_grad_norm"], a2c["lr"]) == (200, 0.25, 40.0, 0.0001)
    pg = flags_of(tmp_path, experiment({"lr": 0.01}, run_="PG"), "vpg")
    assert (pg["pi_lr"], pg["steps_per_epoch"], pg["cpu"]) == (0.01, 200, 1)
    # RLlib's PG has no value function to share layers with: VPG's value function keeps its own trunk
    shared = flags_of(tmp_path, experiment({"model": {"vf_share_layers": True}}, run_="PG"), "vpg")
    assert shared["shared_trunk"] is False


def test_grid_search_anywhere_makes_a_grid(tmp_path):
    doc = experiment(
        {
            "lr": {"grid_search": [0.001, 0.0001]},
            "model": {"fcnet_hiddens": {"grid_search": [[32], [64, 64]]}},
        }
    )
    flags = flags_of(tmp_path, doc)
    assert flags["lr"] == [0.001, 0.0001]
    assert flags["hid"] == [(32,), (64, 64)]
    # A grid over a key that moves two flags together cannot be spinppo's product of flags.
    doc = experiment({"train_batch_size": {"grid_search": [1000, 2000]}}, stop={"timesteps_total": 8000})
    with pytest.raises(UserError, match="changes several spinppo flags together"):
        flags_of(tmp_path, doc)


@pytest.mark.parametrize(
    "doc,algo,message",
    [
        (experiment(run_="DQN"), "ppo", "run: DQN: spinppo trains PPO, A2C, A3C, PG"),
        (experiment(run_="A3C"), "ppo", "trains A3C: run it with python -m spinppo.run a3c --config"),
        (experiment({"num_atoms": 51}), "ppo", "config.num_atoms: not an RLlib PPO setting"),
        (experiment({"model": {"custom_model": "mine"}}), "ppo", "model.custom_model"),
        (experiment({"batch_mode": "complete_episodes"}), "ppo", "batch_mode: complete_episodes"),
        (experiment({"clip_rewards": True}), "ppo", "clips the rewards of Atari games only"),
        (experiment({"lr_schedule": [[0, 0.1], [100, 0.05]]}), "ppo", "lr_schedule"),
        (experiment(env="ALE/Pong-v5"), "ppo", "model.vf_share_layers: false"),
        (
            experiment({"model": {"dim": 64, "vf_share_layers": True}}, env="ALE/Pong-v5"),
            "ppo",
            "model.dim 64",
        ),
        (experiment(stop={"episode_len_mean": 20}), "ppo", "stop.episode_len_mean"),
        ({"a": experiment()["exp"], "b": experiment()["exp"]}, "ppo", "holds 2 experiments"),
    ],
)
def test_what_spinppo_cannot_follow_is_a_one_line_error(doc, algo, message, tmp_path, cli):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_config_file(algo, str(path), [])
    proc = cli(algo, "--config", str(path))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, (
        proc.stderr
    )


def test_command_line_flags_override_the_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(experiment({"lr": 0.003, "num_sgd_iter": 3})))
    grid, _ = parse_algo_args("ppo", ["--config", str(path), "--lr", "0.01"])
    assert grid["lr"] == [0.01] and grid["update_epochs"] == [3]


def test_vf_clip_param_caps_each_squared_value_error(tmp_path, cli):
    """PPO's --vf_clip_param (RLlib's): every sample's squared error is capped, so the logged value loss
    (half the mean) stays under half the cap; without it, CartPole's first returns give far more."""

    def loss_v(*flags: str) -> float:
        args = ["ppo", "--env", "CartPole-v1", "--epochs", "1"]
        args += ["--steps_per_epoch", "512", "--minibatch_size", "128", "--norm_reward", "false"]
        args += ["--data_dir", str(tmp_path), "--exp_name", f"v{len(flags)}", *flags]
        assert cli(*args).returncode == 0
        lines = next((tmp_path / f"v{len(flags)}").rglob("progress.txt")).read_text().splitlines()
        return float(lines[1].split("\t")[lines[0].split("\t").index("LossV")])

    assert loss_v() > 1.0
    assert loss_v("--vf_clip_param", "0.01") <= 0.005
    for flags, message in (
        (["--vf_clip_param", "0"], "--vf_clip_param must be positive"),
        (["--vf_clip_param", "1", "--clip_vloss", "true"], "choose one"),
    ):
        proc = cli("ppo", "--env", "CartPole-v1", *flags)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_the_training_return_window_is_rllibs_last_100_episodes():
    from spinppo.algos.onpolicy import train_return_reached

    state: dict = {}
    assert train_return_reached(state, [10.0] * 150, 10.5) is None
    assert len(state["train_returns"]) == 100  # only the last 100 count
    assert train_return_reached(state, [], 10.0) is not None  # an epoch without episodes keeps the window
    assert train_return_reached(state, [60.0] * 10, 15.0) is not None  # (90 x 10 + 10 x 60) / 100 = 15
    assert train_return_reached({}, [], -1e9) is None  # no episode yet: nothing to compare


@pytest.mark.parametrize("algo", ["ppo", "a3c"])
def test_stop_at_train_return_ends_the_run_with_a_checkpoint(two_rank_runs, algo):
    """CartPole's random policy averages about 22: a run asked to stop at 30 stops within a few epochs,
    on every rank, saying why, with the window in its checkpoint."""
    import torch

    data, out = two_rank_runs[f"stop-{algo}"]
    assert (
        "training episodes" in out and "reached --stop_at_train_return 30: stopped with a checkpoint" in out
    )
    run_dir = data / algo / f"{algo}_s0"
    rows = (run_dir / "progress.txt").read_text().splitlines()[1:]
    assert 1 <= len(rows) < 40, out
    last = max(run_dir.glob("checkpoints/ckpt-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    assert int(last.stem.split("-")[1]) == len(rows) - 1
    window = torch.load(last, map_location="cpu", weights_only=False)["run_state"]["train_returns"]
    assert 0 < len(window) <= 100 and sum(window) / len(window) >= 30
