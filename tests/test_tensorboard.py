"""TensorBoard event files under RUN/tb/ hold the values of progress.txt (x = TotalEnvInteracts)."""

from __future__ import annotations

import csv
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from spinppo.utils.logx import ML_AGENTS_SCALE, ML_AGENTS_TAGS
from tests.conftest import run

TINY = ["--env", "CartPole", "--steps_per_epoch", "128", "--num_envs", "1", "--update_epochs", "1"]
TINY += ["--minibatch_size", "128", "--exp_name", "tb"]


def ppo(*args: str) -> None:
    run([sys.executable, "-m", "spinppo.run", "ppo", *args])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A real short run: 3 epochs, a checkpoint after each."""
    data = tmp_path_factory.mktemp("data")
    ppo(*TINY, "--epochs", "3", "--save_freq", "1", "--data_dir", str(data))
    return data


def progress(run_dir: Path) -> dict[str, np.ndarray]:
    with open(run_dir / "progress.txt", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def events(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """tag -> (steps, values) as TensorBoard itself reads them."""
    acc = event_accumulator.EventAccumulator(
        str(run_dir / "tb"), size_guidance={event_accumulator.SCALARS: 0}
    )
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        scalars = acc.Scalars(tag)
        out[tag] = (np.array([s.step for s in scalars]), np.array([s.value for s in scalars], np.float32))
    return out


def assert_events_equal_progress(run_dir: Path) -> None:
    """Every column under its own name, and under ML-Agents' tag where it has one; nothing else."""
    table, tb = progress(run_dir), events(run_dir)
    aliases = {ML_AGENTS_TAGS[c]: c for c in table if c in ML_AGENTS_TAGS}
    assert set(tb) == set(table) - {"Epoch"} | set(aliases)
    steps = table["TotalEnvInteracts"].astype(np.int64)
    for tag, column in [(c, c) for c in table if c != "Epoch"] + list(aliases.items()):
        got_steps, got = tb[tag]
        assert got_steps.tolist() == steps.tolist(), tag
        # Stored as float32: exactly the float32 rounding of the value in progress.txt.
        want = (
            table[column]
            if tag == column
            else np.array([ML_AGENTS_SCALE.get(column, float)(v) for v in table[column]])
        )
        np.testing.assert_array_equal(got, want.astype(np.float32), err_msg=tag)


def test_event_files_hold_the_progress_values(data):
    run_dir = data / "tb" / "tb_s0"
    assert len(progress(run_dir)["Epoch"]) == 3
    assert_events_equal_progress(run_dir)
    assert len(events(run_dir)["AverageEpRet"][0]) == 3


def test_ml_agents_users_find_their_tags(data):
    """Dashboards made for mlagents-learn runs read these tags (PPO logs all of them)."""
    tags = set(events(data / "tb" / "tb_s0"))
    for tag in (
        "Environment/Cumulative Reward",
        "Environment/Episode Length",
        "Losses/Policy Loss",
        "Losses/Value Loss",
        "Policy/Entropy",
        "Policy/Learning Rate",
        "Policy/Epsilon",
        "Policy/Beta",
        "Policy/Extrinsic Value Estimate",
    ):
        assert tag in tags, tag


def test_resume_replaces_the_events_of_epochs_made_again(data, tmp_path, cli):
    """A run killed after logging epoch 2 but before its checkpoint resumes from epoch 1: TensorBoard must
    then hold the new epoch 2 (its timings differ), not the lost one's."""
    run_dir = tmp_path / "tb_s0"
    shutil.copytree(data / "tb" / "tb_s0", run_dir)
    lost = progress(run_dir)
    os.unlink(run_dir / "checkpoints" / "ckpt-000002.pt")
    assert cli("ppo", "--resume", str(run_dir), "--epochs", "4").returncode == 0
    table = progress(run_dir)
    assert table["Epoch"].tolist() == [0, 1, 2, 3]
    assert table["Time"][2] != lost["Time"][2]  # epoch 2 was made again
    assert_events_equal_progress(run_dir)


def test_overwrite_leaves_only_the_new_runs_events(data, tmp_path, cli):
    shutil.copytree(data / "tb", tmp_path / "tb")
    assert (
        cli(
            "ppo", *TINY, "--epochs", "2", "--lam", "0.9", "--overwrite", "--data_dir", str(tmp_path)
        ).returncode
        == 0
    )
    assert progress(tmp_path / "tb" / "tb_s0")["Epoch"].tolist() == [0, 1]  # the run was replaced
    assert_events_equal_progress(tmp_path / "tb" / "tb_s0")
    # Nor may the replaced run's epoch-2 checkpoints stay (--resume and test_policy --itr would use them).
    assert not (tmp_path / "tb" / "tb_s0" / "pyt_save" / "model2.pt").exists()
    assert not (tmp_path / "tb" / "tb_s0" / "checkpoints" / "ckpt-000002.pt").exists()
