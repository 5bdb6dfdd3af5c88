"""EpochLogger and checkpoint files: real ranks, real files."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from spinppo.utils.errors import UserError
from spinppo.utils.logx import Logger, atomic_torch_save, load_model_payload, save_model, setup_logger_kwargs
from tests.conftest import REPO, child_env, mpirun


def test_progress_rows_equal_statistics_over_ranks(tmp_path):
    n = 3
    mpirun(n, ["tests/logger_checks.py", str(tmp_path / "run")])
    lines = (tmp_path / "run" / "progress.txt").read_text().splitlines()
    header = lines[0].split("\t")
    assert header == ["Epoch", "AverageEpRet", "StdEpRet", "MaxEpRet", "MinEpRet", "Loss"]
    assert len(lines) == 4
    for epoch, line in enumerate(lines[1:]):
        row = dict(zip(header, map(float, line.split("\t")), strict=True))
        rets = np.array([r * 10 + epoch + k for r in range(n) for k in range(r + 1)], dtype=float)
        losses = np.array([r + epoch for r in range(n) if not (r == 0 and epoch == 1)], dtype=float)
        assert row["Epoch"] == epoch
        np.testing.assert_allclose(
            [row["AverageEpRet"], row["StdEpRet"], row["MaxEpRet"], row["MinEpRet"], row["Loss"]],
            [rets.mean(), rets.std(), rets.max(), rets.min(), losses.mean()],
        )
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config == {"lr": 3e-4, "hid": [64, 64], "env": "CartPole-v1", "seed": 7, "exp_name": "logtest"}


def test_existing_run_is_not_overwritten_silently(tmp_path):
    out = tmp_path / "run"
    logger = Logger(output_dir=str(out), tensorboard=False)
    logger.log_tabular("Epoch", 0)
    logger.dump_tabular()
    with pytest.raises(UserError, match="already holds a run.*--overwrite"):
        Logger(output_dir=str(out), tensorboard=False)
    assert (out / "progress.txt").read_text() == "Epoch\n0\n"
    Logger(output_dir=str(out), tensorboard=False, overwrite=True)  # asked for: allowed


def test_setup_logger_kwargs_layout(tmp_path):
    kw = setup_logger_kwargs("ppo-walker", seed=3, data_dir=str(tmp_path))
    assert kw["output_dir"] == str(tmp_path / "ppo-walker" / "ppo-walker_s3")
    stamped = setup_logger_kwargs("ppo-walker", seed=3, data_dir=str(tmp_path), datestamp=True)
    parent, leaf = os.path.split(stamped["output_dir"])
    assert os.path.basename(parent).endswith("_ppo-walker") and leaf.endswith("-ppo-walker_s3")


class Tiny(torch.nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.ctor_spec = {"hidden": hidden}
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, hidden), torch.nn.LayerNorm(hidden), torch.nn.Linear(hidden, 2)
        )


def test_saved_model_reloads_weights_only_with_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = Tiny(8)
    path = str(tmp_path / "pyt_save" / "model.pt")
    save_model(model, path)
    payload = torch.load(path, weights_only=True)  # must not need pickled classes
    rebuilt = Tiny(**payload["ctor"])
    rebuilt.load_state_dict(payload["state_dict"])
    x = torch.randn(10, 4)
    assert torch.equal(model.net(x), rebuilt.net(x))
    assert load_model_payload(path)["ctor"] == {"hidden": 8}
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # readable by others who plot shared runs


def test_killed_writer_leaves_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"i": 0, "w": torch.zeros(3)}, str(path))
    proc = subprocess.Popen(
        [sys.executable, "tests/atomic_writer.py", str(path)],
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
    )
    assert proc.stdout.readline().strip() == b"writing"
    time.sleep(1.5)  # several 32 MB writes in, most likely mid-write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    payload = torch.load(path, weights_only=True)
    assert torch.all(payload["w"] == float(payload["i"]))  # a whole file, never a torn one
    assert not [p for p in os.listdir(tmp_path) if p != "ckpt.pt" and not p.endswith(".tmp")]


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"\x80\x02 not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_model_payload(str(bad))
    with pytest.raises(UserError, match="no checkpoint"):
        load_model_payload(str(tmp_path / "missing.pt"))
