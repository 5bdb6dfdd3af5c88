"""``--device auto|cpu|cuda|cuda:N``: on this machine (no CUDA) the CPU runs as before, a GPU asked for
is a one-line error, and the GPU's code paths that do not need a GPU are run on CPU tensors: the staged
gradient buffer (copy out, one Allreduce on a host buffer, copy back) under a real ``mpirun -np 2``, and
checkpoints whose tensors carry another device's tag. Tests marked ``gpu`` need CUDA and skip without it
(``scripts/gpu_check.sh`` runs them on a lent GPU machine)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from spinppo.utils import device as device_module
from spinppo.utils.device import check_device, rank_device
from spinppo.utils.errors import UserError
from tests.conftest import REPO, mpirun, rows_without_timing, run

CUDA = torch.cuda.is_available()
no_cuda = pytest.mark.skipif(CUDA, reason="what a machine without CUDA does")

CARTPOLE = ["--env", "CartPole", "--steps_per_epoch", "512", "--num_envs", "2", "--minibatch_size", "128"]
CARTPOLE += ["--update_epochs", "2", "--save_freq", "1", "--tensorboard", "false"]
CUE = ["--env", "tests.memory_env:Cue-v0", "--memory_size", "16", "--sequence_length", "8", "--hid", "32"]
CUE += ["--steps_per_epoch", "512", "--num_envs", "4", "--minibatch_size", "128", "--update_epochs", "2"]
CUE += ["--tensorboard", "false"]


def train(cli, tmp_path: Path, name: str, *flags: str) -> Path:
    proc = cli("ppo", *CARTPOLE, "--data_dir", str(tmp_path), "--exp_name", name, *flags)
    assert proc.returncode == 0, proc.stderr
    return tmp_path / name / f"{name}_s0"


def one_line_error(proc) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.count("\n") == 0 and err.startswith("spinppo: error: "), proc.stderr
    return err


# ------------------------------------------------------------------------------------------ the CPU


def test_device_cpu_and_auto_give_the_rows_of_a_run_without_the_flag(tmp_path, cli):
    """A vector policy trains on the CPU under auto (with or without CUDA), and --device cpu is today's
    run: the same progress rows, bit for bit."""
    plain = rows_without_timing(train(cli, tmp_path, "plain", "--epochs", "2"))
    assert rows_without_timing(train(cli, tmp_path, "cpu", "--epochs", "2", "--device", "cpu")) == plain
    assert rows_without_timing(train(cli, tmp_path, "auto", "--epochs", "2", "--device", "auto")) == plain


@no_cuda
def test_auto_picks_the_cpu_here_for_every_network():
    assert rank_device("auto", prefers_gpu=True) == torch.device("cpu")  # images, memory: no GPU here
    assert rank_device("auto", prefers_gpu=False) == torch.device("cpu")


def test_auto_keeps_an_mlp_on_the_cpu_and_cpu_means_the_cpu():
    assert rank_device("auto", prefers_gpu=False) == torch.device("cpu")
    assert rank_device("cpu", prefers_gpu=True) == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("value", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_without_cuda_is_one_line_and_exit_2(tmp_path, cli, value):
    err = one_line_error(cli("ppo", *CARTPOLE, "--data_dir", str(tmp_path), "--device", value))
    assert f"--device {value}" in err and "use --device cpu" in err, err
    assert not any(tmp_path.iterdir()), "nothing may be written before the error"


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "cpu:1", "cuda:-1", ""])
def test_a_malformed_device_is_one_line_naming_the_choices(tmp_path, cli, value):
    err = one_line_error(cli("ppo", *CARTPOLE, "--data_dir", str(tmp_path), "--device", value))
    assert "--device must be auto, cpu, cuda or cuda:N" in err, err


def test_a_gpu_index_out_of_range_and_a_crowded_exclusive_gpu_are_refused(monkeypatch):
    """This machine has no GPU: the host's answers (one GPU, in exclusive-process compute mode, as
    nvidia-smi would report it) are set by hand; the rule that reads them is the real one."""
    monkeypatch.setattr(device_module, "cuda_count", lambda: 1)
    monkeypatch.setattr(device_module, "exclusive_gpus", lambda: [0])
    with pytest.raises(UserError, match=r"--device cuda:1: this host has 1 GPU\(s\), cuda:0 to cuda:0"):
        check_device("cuda:1")
    with pytest.raises(UserError, match="2 ranks on this host, but GPU 0 admits one process at a time"):
        check_device("cuda", ranks_on_host=2)
    check_device("cuda", ranks_on_host=1)  # one rank: fine
    monkeypatch.setattr(device_module, "exclusive_gpus", lambda: [])
    check_device("cuda", ranks_on_host=4)  # shared GPUs take ranks in turn (DD-PPO's rule)
    with pytest.raises(UserError, match="a3c trains on the CPU"):
        check_device("cuda", algo="a3c")


@no_cuda
def test_ml_agents_torch_settings_device_and_rllib_num_gpus_map_to_device(tmp_path, cli):
    from spinppo.cli.flags import parse_algo_args

    mlagents = tmp_path / "ml.yaml"
    mlagents.write_text(yaml.safe_dump({"behaviors": {"B": {"trainer_type": "ppo"}}, "torch_settings": {}}))
    for value, expected in ((None, "auto"), ("cpu", "cpu"), ("cuda:0", "cuda:0")):
        doc = {"behaviors": {"B": {"trainer_type": "ppo"}}, "torch_settings": {"device": value}}
        mlagents.write_text(yaml.safe_dump(doc))
        assert (
            parse_algo_args("ppo", ["--config", str(mlagents), "--env", "CartPole"])[1]["device"] == expected
        )
    # What the file asks for is checked like the flag, and the error names the file.
    err = one_line_error(
        cli("ppo", "--config", str(mlagents), "--env", "CartPole", "--data_dir", str(tmp_path))
    )
    assert str(mlagents) in err and "--device cuda:0" in err, err
    mlagents.write_text(yaml.safe_dump({"behaviors": {"B": {}}, "torch_settings": {"device": "mps"}}))
    err = one_line_error(cli("ppo", "--config", str(mlagents), "--env", "CartPole"))
    assert "torch_settings.device 'mps'" in err and str(mlagents) in err, err

    rllib = tmp_path / "exp.yaml"
    for gpus, expected, note in (
        (0, "cpu", None),
        (1, "auto", "no CUDA device on this host"),
        (None, "auto", None),
    ):
        config = {} if gpus is None else {"num_gpus": gpus}
        rllib.write_text(yaml.safe_dump({"exp": {"env": "CartPole-v1", "run": "PPO", "config": config}}))
        _, options = parse_algo_args("ppo", ["--config", str(rllib)])
        assert options["device"] == expected
        assert (note is None) == (not any("num_gpus" in n for n in options["notes"])), options["notes"]
        assert note is None or any(note in n for n in options["notes"])
    # The command line still decides over the file.
    rllib.write_text(yaml.safe_dump({"exp": {"env": "CartPole-v1", "run": "PPO", "config": {"num_gpus": 0}}}))
    assert parse_algo_args("ppo", ["--config", str(rllib), "--device", "auto"])[1]["device"] == "auto"


# ------------------------------------------------------------------------- the GPU's paths on CPU tensors


@pytest.fixture(scope="module")
def staged_runs(tmp_path_factory) -> dict:
    """One MPI job each: the plumbing probe, and a PPO run through the staged gradient path (checking
    the ranks before every broadcast) beside the same run on the zero-copy path."""
    tmp = tmp_path_factory.mktemp("staged")
    probe = mpirun(2, [str(REPO / "tests" / "device_probe.py")], timeout=120).stdout
    job = [*CARTPOLE, "--epochs", "2", "--data_dir", str(tmp)]
    staged = mpirun(2, [str(REPO / "scripts" / "rank_check.py"), "--staged", "ppo", *job, "--exp_name", "s"])
    plain = mpirun(2, ["-m", "spinppo.run", "ppo", *job, "--exp_name", "p"])
    return {
        "probe": json.loads(probe.strip().splitlines()[-1]),
        "staged": (tmp / "s" / "s_s0", staged.stdout),
        "plain": (tmp / "p" / "p_s0", plain.stdout),
    }


def test_the_staged_gradient_buffer_averages_exactly_and_sync_params_makes_ranks_identical(staged_runs):
    for case, checks in staged_runs["probe"].items():
        assert all(checks.values()), (case, checks)


def test_a_run_through_the_staged_path_gives_the_same_rows_with_ranks_identical_before_each_broadcast(
    staged_runs,
):
    staged_dir, out = staged_runs["staged"]
    assert "rank_check: ranks identical before 2 of 2 updates" in out, out
    assert rows_without_timing(staged_dir) == rows_without_timing(staged_runs["plain"][0])


def _retag(path: Path, tag: str, monkeypatch) -> None:
    """Rewrite a torch file as if its tensors had been saved from ``tag`` (e.g. cuda:0): torch records
    each storage's device in the file, and a plain torch.load puts it back there."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: tag)
        torch.save(payload, path)


@no_cuda
def test_a_checkpoint_saved_on_a_gpu_resumes_replays_and_exports_on_the_cpu(tmp_path, cli, monkeypatch):
    """A GPU run's files (their tensors tagged cuda:0) on this machine: resume continues exactly as an
    uninterrupted run, test_policy replays the policy and export writes it."""
    fixed = ["--anneal_lr", "false", "--anneal_ent", "false"]  # (schedules that do not depend on --epochs)
    whole = train(cli, tmp_path, "whole", "--epochs", "3", *fixed)
    part = train(cli, tmp_path, "part", "--epochs", "2", *fixed)
    files = [*sorted((part / "checkpoints").glob("ckpt-*.pt")), part / "pyt_save" / "model.pt"]
    for f in files:
        _retag(f, "cuda:0", monkeypatch)
    with pytest.raises(RuntimeError, match="CUDA"):  # the files are what a GPU would have written
        torch.load(files[-1], weights_only=True)
    proc = cli("ppo", "--resume", str(part), "--epochs", "3")
    assert proc.returncode == 0, proc.stderr
    assert rows_without_timing(part) == rows_without_timing(whole)
    _retag(part / "pyt_save" / "model.pt", "cuda:0", monkeypatch)
    assert cli("test_policy", str(part), "-n", "1", "--deterministic").returncode == 0
    proc = cli("export", str(part), "--onnx", str(tmp_path / "p.onnx"))
    assert proc.returncode == 0 and (tmp_path / "p.onnx").is_file(), proc.stderr


# ---------------------------------------------------------------------------- on a GPU (skipped here)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_auto_puts_image_and_recurrent_networks_on_a_gpu_and_an_index_out_of_range_is_refused(tmp_path, cli):
    assert rank_device("auto", prefers_gpu=True).type == "cuda"
    assert rank_device("auto", prefers_gpu=False).type == "cpu"
    count = torch.cuda.device_count()
    err = one_line_error(cli("ppo", *CARTPOLE, "--data_dir", str(tmp_path), "--device", f"cuda:{count}"))
    assert f"this host has {count} GPU(s)" in err, err


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_a_recurrent_run_on_cuda_keeps_ranks_identical_resumes_exactly_and_continues_on_the_cpu(tmp_path):
    """Under mpirun -np 2 on the GPU (an LSTM: the rollout runs there too, sampling from CUDA's
    generator): ranks identical before every broadcast; 2 epochs + a resume to 3 give the rows of 3
    epochs; the checkpoint holds host tensors (a process that sees no GPU loads it plainly); and the run
    goes on with --device cpu."""
    check = [str(REPO / "scripts" / "rank_check.py"), "ppo", *CUE, "--device", "cuda", "--save_freq", "1"]
    check += ["--anneal_lr", "false", "--anneal_ent", "false"]
    whole = mpirun(2, [*check, "--epochs", "3", "--data_dir", str(tmp_path), "--exp_name", "w"], timeout=240)
    assert "ranks identical before 3 of 3 updates" in whole.stdout, whole.stdout
    mpirun(2, [*check, "--epochs", "2", "--data_dir", str(tmp_path), "--exp_name", "p"], timeout=240)
    part = tmp_path / "p" / "p_s0"
    resume = ["-m", "spinppo.run", "ppo", "--resume", str(part), "--epochs", "3", "--device", "cuda"]
    mpirun(2, resume, timeout=240)
    assert rows_without_timing(part) == rows_without_timing(tmp_path / "w" / "w_s0")
    last = sorted((part / "checkpoints").glob("ckpt-*.pt"))[-1]
    plain_load = f"import torch; torch.load({str(last)!r}, weights_only=True); print('loaded')"
    assert "loaded" in run([sys.executable, "-c", plain_load], CUDA_VISIBLE_DEVICES="").stdout
    on_cpu = ["-m", "spinppo.run", "ppo", "--resume", str(part), "--epochs", "4", "--device", "cpu"]
    mpirun(2, on_cpu, timeout=240)
    assert len(rows_without_timing(part)) == 5  # the header and 4 epochs


def train_every_algorithm(tmp_path: Path, device: str) -> dict[str, list[dict[str, float]]]:
    """Short in-process runs of every synchronous algorithm under ``--device device``, each with a network
    that takes another path there: an LSTM (PPO, A2C, TRPO, NPG: the natural gradient's double backward),
    images through the simple and rllib encoders beside a normalised vector (PPO, VPG, TRPO), an MLP with
    RLlib's KL penalty; evaluation and a checkpoint every epoch. Returns each run's progress rows."""
    import gymnasium as gym

    import tests.memory_env  # noqa: F401  (registers Cue-v0)
    from spinppo.algos.a2c import a2c
    from spinppo.algos.npg import npg
    from spinppo.algos.ppo import ppo
    from spinppo.algos.trpo import trpo
    from spinppo.algos.vpg import vpg
    from spinppo.utils.device import requested
    from tests.test_pixels import SideEnv

    cue = (lambda: gym.make("Cue-v0"), dict(memory_size=8, sequence_length=8))
    pixels = (lambda: SideEnv(with_vector=True), dict(encoder="simple"))
    rllib = (SideEnv, dict(encoder="rllib", conv_filters=[[8, [4, 4], 2], [16, [10, 10], 1]]))
    mlp = (lambda: gym.make("CartPole-v1"), {})
    small = dict(steps_per_epoch=128, num_envs=4, epochs=2, eval_freq=1, eval_episodes=2, save_freq=1)
    runs = {
        "ppo-lstm": (ppo, cue, dict(minibatch_size=64, update_epochs=2)),
        "ppo-pixels": (ppo, pixels, dict(minibatch_size=64, update_epochs=2)),
        "ppo-mlp-kl": (ppo, mlp, dict(minibatch_size=64, update_epochs=2, kl_coeff=0.2)),
        "a2c-lstm": (a2c, cue, dict(n_steps=8)),
        "vpg-rllib": (vpg, rllib, dict(train_v_iters=3)),
        "trpo-lstm": (trpo, cue, dict(train_v_iters=3)),
        "trpo-pixels": (trpo, pixels, dict(train_v_iters=3)),
        "npg-lstm": (npg, cue, dict(train_v_iters=3)),
    }
    rows = {}
    for name, (algo, (env_fn, ac_kwargs), flags) in runs.items():
        out = tmp_path / name
        with requested(device):
            ac = algo(
                env_fn,
                ac_kwargs=dict(hidden_sizes=(16,), **ac_kwargs),
                logger_kwargs=dict(output_dir=str(out), tensorboard=False),
                **small,
                **flags,
            )
        assert next(ac.parameters()).device.type == torch.device(device).type, name
        lines = (out / "progress.txt").read_text().splitlines()
        rows[name] = [dict(zip(lines[0].split("\t"), map(float, line.split("\t")))) for line in lines[1:]]
        assert len(rows[name]) == 2, name
        assert (out / "pyt_save" / "model_best.pt").is_file(), name
    return rows


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_every_algorithm_trains_on_cuda_with_lstm_image_and_mlp_policies(tmp_path):
    import math

    for name, rows in train_every_algorithm(tmp_path, "cuda").items():
        assert all(math.isfinite(r["LossV"]) for r in rows), (name, rows)
