"""Evaluation during training (--eval_freq, --eval_episodes, --eval_deterministic, --stop_at_return), the
best policy kept, the epoch line, and --pictures (what `make run` ends with)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import torch

from spinppo.run import main
from tests.conftest import mpirun_commands, rows_without_timing
from tests.unity_standin.build import write_build

TRAIN = ["--env", "CartPole", "--epochs", "4", "--steps_per_epoch", "1024", "--minibatch_size", "256"]


def table(run_dir: Path) -> dict[str, list[float]]:
    with open(run_dir / "progress.txt", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return {k: [float(r[k]) for r in rows] for k in rows[0]}


def test_evaluation_columns_best_policy_and_training_unchanged_under_mpirun(tmp_path, cli):
    """2 ranks, 3 episodes (one rank plays two), every 2 epochs: EvalEpRet at epochs 1 and 3 only, the
    best kept, and every training column identical to the same run without evaluation, whether the
    evaluation acts deterministically or samples its actions (--eval_deterministic false: twice, the same
    returns)."""
    run = ["ppo", *TRAIN, "--data_dir", str(tmp_path)]
    evaluated = [*run, "--eval_freq", "2", "--eval_episodes", "3"]
    sampled = [*evaluated, "--eval_deterministic", "false"]
    commands = [
        [*run, "--exp_name", "off"],
        [*evaluated, "--exp_name", "on"],
        [*sampled, "--exp_name", "sampled"],
        [*sampled, "--exp_name", "again"],
    ]
    _, (_, out, _, _) = mpirun_commands(2, commands)  # one job, one after the other
    assert "Epoch 4 of 4:" in out and "left" in out  # where the run is
    off = tmp_path / "off" / "off_s0"
    rows_off = rows_without_timing(off)
    for name in ("on", "sampled", "again"):
        run_dir = tmp_path / name / f"{name}_s0"
        t = table(run_dir)
        ret, length = t["EvalEpRet"], t["EvalEpLen"]
        assert [math.isnan(v) for v in ret] == [True, False, True, False], name
        assert all(v > 0 for v in (ret[1], ret[3], length[1], length[3])), name
        rows = rows_without_timing(run_dir)
        keep = [i for i, h in enumerate(rows[0]) if h not in ("EvalEpRet", "EvalEpLen")]
        assert [[r[i] for i in keep] for r in rows] == rows_off, name
        best = torch.load(run_dir / "pyt_save" / "model_best.pt", weights_only=True)
        i = int(np.nanargmax(ret))
        assert best["epoch"] == i and best["eval_return"] == ret[i], name
    on, sampled_dir = tmp_path / "on" / "on_s0", tmp_path / "sampled" / "sampled_s0"
    assert rows_without_timing(sampled_dir) == rows_without_timing(tmp_path / "again" / "again_s0")
    # test_policy picks the best policy (and says so when a run has none).
    out = cli("test_policy", str(on), "--itr", "best", "-n", "1", "--deterministic")
    assert out.returncode == 0 and "EpRet" in out.stdout, out.stderr
    proc = cli("test_policy", str(off), "--itr", "best")
    assert proc.returncode == 2 and "no pyt_save/model_best.pt" in proc.stderr


def test_stop_at_return_stops_at_the_first_evaluation_that_reaches_it(tmp_path, cli):
    """Any return reaches -1: the run stops after epoch 1 (its first evaluation), with a checkpoint, and
    exits 0; a resume goes on training (and stops at its own first evaluation)."""
    args = [
        *TRAIN,
        "--epochs",
        "10",
        "--data_dir",
        str(tmp_path),
        "--exp_name",
        "s",
        "--tensorboard",
        "false",
    ]
    proc = cli("ppo", *args, "--eval_freq", "2", "--eval_episodes", "2", "--stop_at_return", "-1")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "reached --stop_at_return -1 after epoch 1" in out
    run_dir = tmp_path / "s" / "s_s0"
    assert table(run_dir)["Epoch"] == [0, 1]
    assert (run_dir / "checkpoints" / "ckpt-000001.pt").exists() and (
        run_dir / "pyt_save" / "model1.pt"
    ).exists()
    assert cli("ppo", "--resume", str(run_dir)).returncode == 0
    assert table(run_dir)["Epoch"] == [0, 1, 2, 3]


def test_bad_evaluation_flags_are_one_line_errors(tmp_path, capsys):
    build = write_build(tmp_path / "b", task="script", agents=2)
    for argv, message in [
        (["--eval_freq", "-1"], "--eval_freq must be 0 (off) or a number of epochs"),
        (["--eval_freq", "2", "--eval_episodes", "0"], "--eval_episodes at least 1"),
        (["--stop_at_return", "100"], "--stop_at_return needs evaluation: give --eval_freq N"),
        (["--env", f"unity:{build}", "--eval_freq", "1"], "--eval_freq needs a gymnasium environment"),
    ]:
        assert main(["ppo", *TRAIN, "--data_dir", str(tmp_path), *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
    assert not (tmp_path / "ppo-cartpole").exists()  # refused before any run directory


def test_evaluator_is_repeatable_and_leaves_the_random_generators_alone():
    from spinppo.core.evaluation import Evaluator
    from spinppo.core.networks import MLPActorCritic
    from spinppo.envs.registry import EnvFactory

    env_fn = EnvFactory("Pendulum")
    probe = env_fn()
    ac = MLPActorCritic(probe.observation_space, probe.action_space, hidden_sizes=(8,))
    probe.close()
    evaluator = Evaluator(env_fn, ac, episodes=3, seed=7)
    torch.manual_seed(0)
    np.random.seed(0)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy())
    first = evaluator.evaluate()
    second = evaluator.evaluate()
    assert torch.equal(before[0], torch.get_rng_state()) and np.array_equal(
        before[1], np.random.get_state()[1]
    )
    assert first == second and len(first[0]) == 3 and first[1] == [200, 200, 200]
    assert len(set(first[0])) == 3  # three different start states
    evaluator.close()


def test_sampled_evaluation_is_repeatable_per_draw_and_leaves_the_random_generators_alone():
    """deterministic=False on a wide Gaussian (std e): the returns are not the mean's, the same draw
    samples the same actions again, another draw others, and torch's generator is as it was."""
    from spinppo.core.evaluation import Evaluator
    from spinppo.core.networks import MLPActorCritic
    from spinppo.envs.registry import EnvFactory

    env_fn = EnvFactory("Pendulum")
    probe = env_fn()
    ac = MLPActorCritic(probe.observation_space, probe.action_space, hidden_sizes=(8,), log_std_init=1.0)
    probe.close()
    mean = Evaluator(env_fn, ac, episodes=2, seed=7)
    sampled = Evaluator(env_fn, ac, episodes=2, seed=7, deterministic=False)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first, again, other = sampled.evaluate(draw=3), sampled.evaluate(draw=3), sampled.evaluate(draw=4)
    assert torch.equal(before, torch.get_rng_state())
    assert first == again and first[1] == [200, 200]
    returns = mean.evaluate()[0]
    assert all(a != b for a, b in zip(first[0], returns)) and first[0] != other[0]
    mean.close()
    sampled.close()


def test_sampled_evaluation_is_kept_by_resume_and_reproduced_exactly(tmp_path, cli):
    """--eval_deterministic false, 3 epochs against 1 then a resume for two more: the same rows, EvalEpRet
    included (the flag comes back from config.json, each evaluation's actions from its epoch); the
    deterministic run's evaluations differ and its training rows do not."""
    job = ["ppo", "--env", "Pendulum", "--hid", "16", "--steps_per_epoch", "256", "--minibatch_size", "128",
           "--update_epochs", "2", "--eval_freq", "1", "--eval_episodes", "2", "--save_freq", "1",
           "--exp_name", "e", "--tensorboard", "false"]  # fmt: skip
    sampled = [*job, "--eval_deterministic", "false"]
    assert cli(*sampled, "--epochs", "3", "--data_dir", str(tmp_path / "whole")).returncode == 0
    assert cli(*sampled, "--epochs", "1", "--data_dir", str(tmp_path / "part")).returncode == 0
    assert cli(*job, "--epochs", "3", "--data_dir", str(tmp_path / "mean")).returncode == 0
    whole, part, mean = (tmp_path / d / "e" / "e_s0" for d in ("whole", "part", "mean"))
    assert json.loads((part / "config.json").read_text())["eval_deterministic"] is False
    proc = cli("ppo", "--resume", str(part), "--epochs", "3", "--eval_deterministic", "true")
    assert proc.returncode == 2 and "contradicts the run's saved eval_deterministic False" in proc.stderr
    assert cli("ppo", "--resume", str(part), "--epochs", "3").returncode == 0
    assert rows_without_timing(part) == rows_without_timing(whole)
    assert all(a != b for a, b in zip(table(whole)["EvalEpRet"], table(mean)["EvalEpRet"]))
    rows, rows_mean = rows_without_timing(whole), rows_without_timing(mean)
    keep = [i for i, h in enumerate(rows[0]) if h not in ("EvalEpRet", "EvalEpLen")]
    assert [[r[i] for i in keep] for r in rows] == [[r[i] for i in keep] for r in rows_mean]


def test_pictures_writes_the_curve_and_the_replay_video(tmp_path, cli):
    """`make run`'s ending, through the same flag on a short run."""
    args = [*TRAIN, "--epochs", "2", "--data_dir", str(tmp_path), "--exp_name", "p", "--tensorboard", "false"]
    proc = cli("ppo", *args, "--pictures")
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "p" / "p_s0"
    curve, video = run_dir / "curve.png", run_dir / "replay.mp4"
    assert f"learning curve: {curve}" in proc.stdout and f"replay video: {video}" in proc.stdout
    assert curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and video.stat().st_size > 1000
