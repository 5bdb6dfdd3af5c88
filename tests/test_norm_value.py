"""--norm_value (Tianshou's rew_norm): the critic learns lambda-returns over their running standard deviation,
merged over ranks, kept in checkpoints."""

import json
import pickle

import numpy as np
import pytest
import torch

from tests.conftest import mpirun, rows_without_timing


def test_the_value_scale_is_the_std_of_every_ranks_returns_so_far(tmp_path):
    """Under mpirun -np 2: after each update every rank holds the same scale, the standard deviation of
    all the lambda-returns both ranks have folded in so far (Pendulum's: far from 1)."""
    out = mpirun(2, ["tests/value_norm_check.py", str(tmp_path / "run")], timeout=120).stdout
    seen = json.loads(next(x for x in out.splitlines() if x.startswith("SEEN ")).split(" ", 1)[1])
    assert len(seen) == 2 and len(seen[0]) == len(seen[1]) == 3
    so_far: list[float] = []
    for update in range(3):
        assert seen[0][update]["scale"] == seen[1][update]["scale"]
        mine, theirs = seen[0][update]["returns"], seen[1][update]["returns"]
        assert len(mine) == len(theirs) == 256 and mine != theirs  # each rank's own rollout
        so_far += mine + theirs
        assert seen[0][update]["scale"] == pytest.approx(np.sqrt(np.var(so_far) + 1e-8), rel=1e-6)
    assert seen[0][-1]["scale"] > 10


JOB = ["ppo", "--env", "Pendulum-v1", "--hid", "16", "--steps_per_epoch", "512", "--num_envs", "2",
       "--minibatch_size", "128", "--update_epochs", "2", "--save_freq", "1", "--exp_name", "v",
       "--norm_reward", "false", "--anneal_lr", "false", "--anneal_ent", "false",
       "--tensorboard", "false"]  # fmt: skip


def test_norm_value_is_kept_by_resume_and_puts_the_critics_loss_in_its_units(tmp_path, cli):
    """4 epochs against 2 then a resume for two more: the same rows (the scale is in the checkpoint).
    The critic learns returns / scale: from the second update on (the first is scaled by 1, as Tianshou's:
    no returns are in yet) its loss is a few units where without --norm_value it is the squared error of
    Pendulum's returns (thousands)."""
    norm = [*JOB, "--norm_value", "true"]
    assert cli(*norm, "--epochs", "4", "--data_dir", str(tmp_path / "whole")).returncode == 0
    assert cli(*norm, "--epochs", "2", "--data_dir", str(tmp_path / "part")).returncode == 0
    whole, part = tmp_path / "whole" / "v" / "v_s0", tmp_path / "part" / "v" / "v_s0"
    ckpt = torch.load(part / "checkpoints" / "ckpt-000001.pt", weights_only=False)
    saved = pickle.loads(bytes(ckpt["ranks"][0].numpy()))["value_norm"]
    assert saved["scale"] > 10  # Pendulum's returns: hundreds
    assert cli("ppo", "--resume", str(part), "--epochs", "4").returncode == 0
    rows = rows_without_timing(whole)
    assert rows == rows_without_timing(part)
    assert cli(*JOB, "--epochs", "4", "--data_dir", str(tmp_path / "plain")).returncode == 0
    plain = rows_without_timing(tmp_path / "plain" / "v" / "v_s0")
    header = rows[0]

    def column(table, name):
        return [float(r[header.index(name)]) for r in table[1:]]

    assert all(loss < 10 for loss in column(rows, "LossV")[1:]), column(rows, "LossV")
    assert all(loss > 500 for loss in column(plain, "LossV")), column(plain, "LossV")
    # The first rollout is the same policy and critic either way (scale 1 until the first update).
    assert column(rows, "AverageVVals")[0] == column(plain, "AverageVVals")[0]
    assert column(rows, "AverageEpRet")[1:] != column(plain, "AverageEpRet")[1:]
