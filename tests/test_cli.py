"""python -m spinppo.run end to end: under mpirun, with --cpu, grids, and bad input."""

import json
import re
import sys
from typing import Any, Literal

import pytest

from tests.conftest import mpirun, rows_without_timing, run

SHORT = ["--env", "CartPole", "--epochs", "2", "--steps_per_epoch", "1024", "--minibatch_size", "256"]


def test_mpirun_and_cpu_flag_give_the_same_run(tmp_path):
    a = mpirun(2, ["-m", "spinppo.run", "ppo", *SHORT, "--data_dir", str(tmp_path / "a"), "--exp_name", "x"])
    b = run(
        [
            sys.executable,
            "-m",
            "spinppo.run",
            "ppo",
            *SHORT,
            "--cpu",
            "2",
            "--data_dir",
            str(tmp_path / "b"),
            "--exp_name",
            "x",
        ]
    )
    for proc, d in ((a, "a"), (b, "b")):
        run_dir = tmp_path / d / "x" / "x_s0"
        assert "AverageEpRet" in proc.stdout and "TotalEnvInteracts" in proc.stdout  # the epoch table
        assert f"python -m spinppo.run test_policy {run_dir}" in proc.stdout
        assert (run_dir / "pyt_save" / "model.pt").exists()
        config = json.loads((run_dir / "config.json").read_text())
        assert config["env_fn"]["env"] == "CartPole-v1" and config["steps_per_epoch"] == 1024
    rows_a = rows_without_timing(tmp_path / "a" / "x" / "x_s0")
    assert len(rows_a) == 3
    # Same seed, same rank count: the same numbers, whichever way MPI was started.
    assert rows_a == rows_without_timing(tmp_path / "b" / "x" / "x_s0")


def test_grid_of_two_seeds_and_two_hidden_sizes(tmp_path, cli):
    grid = ["--seed", "0", "10", "--hid", "[16,16]", "[8]", "--data_dir", str(tmp_path)]
    assert cli("ppo", *SHORT, "--epochs", "1", *grid).returncode == 0
    dirs = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("*/*") if p.is_dir())
    assert dirs == [
        "ppo-cartpole_hid16-16/ppo-cartpole_hid16-16_s0",
        "ppo-cartpole_hid16-16/ppo-cartpole_hid16-16_s10",
        "ppo-cartpole_hid8/ppo-cartpole_hid8_s0",
        "ppo-cartpole_hid8/ppo-cartpole_hid8_s10",
    ]
    config = json.loads((tmp_path / dirs[2] / "config.json").read_text())
    assert config["ac_kwargs"]["hidden_sizes"] == [8] and config["seed"] == 0


def test_env_kwargs_reach_the_environment_and_the_config(tmp_path, cli):
    args = ["vpg", "--env", "Walker", "--env_kwargs", "forward_reward_weight=-1", "healthy_reward=0.5"]
    args += ["--epochs", "1", "--steps_per_epoch", "200", "--data_dir", str(tmp_path), "--exp_name", "back"]
    assert cli(*args).returncode == 0
    config = json.loads((tmp_path / "back" / "back_s0" / "config.json").read_text())
    assert config["env_fn"]["env"] == "Walker2d-v5"
    assert config["env_fn"]["env_kwargs"] == {"forward_reward_weight": -1, "healthy_reward": 0.5}


@pytest.mark.parametrize(
    "args, message",
    [
        (["ppx"], "unknown command 'ppx'"),
        (["ppo"], "required: --env"),
        (["ppo", "--env", "Walkr"], "unknown environment 'Walkr'; did you mean Walker"),
        (["ppo", "--env", "CartPole", "--lr", "fast"], "--lr takes a number, not 'fast'"),
        (["ppo", "--env", "CartPole", "--lr", "0"], "--lr must be positive"),
        (["ppo", "--env", "CartPole", "--epochs", "-3"], "--epochs must be positive"),
        (["ppo", "--env", "CartPole", "--anneal_lr", "maybe"], "--anneal_lr takes true or false"),
        (
            ["ppo", "--env", "CartPole", "--steps_per_epoch", "1001"],
            "--steps_per_epoch 1001 must be a positive multiple of 8",
        ),
        (["ppo", "--env", "CartPole", "--hid", "a", "b"], "--hid takes integers, e.g. --hid 64 64"),
        (["ppo", "--env", "CartPole", "--act", "sigmoidal"], "--act must be one of tanh"),
        (["ppo", "--env", "CartPole", "--nonsense", "1"], "unrecognized arguments: --nonsense"),
        (
            ["ppo", "--env", "Walker", "--env_kwargs", "gravity=3"],
            "Walker2d-v5 does not take keyword 'gravity'",
        ),
        (["ppo", "--env", "CartPole", "--env_kwargs", "{bad json"], "--env_kwargs is not valid JSON"),
        (["ppo", "--env", "CartPole", "--cpu", "0"], "--cpu must be at least 1"),
        # Checked before the run directory is made: with --overwrite the old run would already be gone.
        (["ppo", "--env", "CartPole", "--save_freq", "0"], "--save_freq must be positive"),
        (["a2c", "--env", "CartPole", "--keep_checkpoints", "0"], "--keep_checkpoints must be positive"),
        (["ppo", "--env", "CartPole", "--lr", "nan"], "--lr must be positive, not nan"),
        (["vpg", "--env", "CartPole", "--pi_lr", "inf"], "--pi_lr must be a finite number, not inf"),
        (["ppo", "--env", "Pendulum", "--log_std_init", "nan"], "--log_std_init must be a finite number"),
        (["ppo", "--env", "CartPole", "--gamma", "nan"], "--gamma must be a finite number, not nan"),
        (
            ["ppo", "--env", "CartPole", "--ent_coef", "-1"],
            "--ent_coef must be zero or a positive finite number, not -1",
        ),
        (["ppo", "--env", "CartPole", "--steps_per_epoch", "0"], "--steps_per_epoch must be positive, not 0"),
        (["ppo", "--env", "CartPole", "--hid", "-3"], "--hid takes positive layer sizes"),
        (["ppo", "--env", "CartPole", "--hid", "[64,0]", "[8]"], "--hid takes positive layer sizes"),
        (
            ["ppo", "--env", "CartPole", "--steps_per_epoch", "1024", "1026"],
            "--steps_per_epoch 1026 must be a positive multiple of 8",
        ),
        (["ppo", "--env", "CartPole", "--exp_name", "a/b"], "--exp_name must be a plain name"),
        (["a2c", "--env", "CartPole", "--precision", "fp16"], "--precision must be fp32 or bf16, not 'fp16'"),
        (["ppo", "--env", "CartPole", "--seed", "3", "3"], "two runs of this grid would share"),
        (
            ["ppo", "--env", "Hopper", "--env_kwargs", "frame_skip=0"],
            "Hopper-v5 could not be made with frame_skip=0 (ZeroDivisionError",
        ),
        (
            ["ppo", "--env", "Hopper", "--env_kwargs", "xml_file=/nonexistent.xml"],
            "could not be made with xml_file='/nonexistent.xml' (OSError",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, cli, args, message):
    proc = cli(*args, "--data_dir", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spinppo: error: "), proc.stderr
    assert message in lines[0]
    assert not list(tmp_path.iterdir()), "a refused run must not leave a directory behind"


def test_bad_input_from_a_new_interpreter_is_one_line_and_exit_2(tmp_path):
    """The cases above run in this process (``cli``); one runs as a real process, where a warning printed
    at import or an error at interpreter exit would show in its stderr."""
    args = ["ppo", "--env", "CartPole", "--lr", "0", "--data_dir", str(tmp_path)]
    proc = run([sys.executable, "-m", "spinppo.run", *args], check=False, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == ["spinppo: error: --lr must be positive, not 0.0"], proc.stderr
    assert not proc.stdout and not list(tmp_path.iterdir())


def test_bad_input_under_mpirun_exits_2_without_hanging(tmp_path):
    proc = mpirun(
        2,
        [
            "-m",
            "spinppo.run",
            "ppo",
            "--env",
            "CartPole",
            "--steps_per_epoch",
            "1002",
            "--data_dir",
            str(tmp_path),
        ],
        check=False,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("spinppo: error: --steps_per_epoch 1002") == 1  # said once, by rank 0


def test_existing_run_is_refused_then_overwritten_on_request(tmp_path, cli):
    args = ["a2c", "--env", "CartPole", "--epochs", "1", "--steps_per_epoch", "80"]
    args += ["--data_dir", str(tmp_path), "--exp_name", "keep"]
    assert cli(*args).returncode == 0
    progress = tmp_path / "keep" / "keep_s0" / "progress.txt"
    before = progress.read_text()
    proc = cli(*args)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr
    assert progress.read_text() == before
    # A bad flag with --overwrite is refused before the old run is touched.
    proc = cli(*args, "--overwrite", "--save_freq", "0")
    assert proc.returncode == 2 and "--save_freq must be positive" in proc.stderr
    assert progress.read_text() == before and (progress.parent / "pyt_save" / "model.pt").exists()
    assert list((progress.parent / "checkpoints").iterdir())
    assert cli(*args, "--overwrite").returncode == 0


def test_grid_directories_are_distinct_and_checked_before_anything_trains(tmp_path, cli):
    base = ["a2c", "--epochs", "1", "--steps_per_epoch", "80", "--data_dir", str(tmp_path)]
    # One --exp_name for two environments: each gets its own directory.
    assert cli(*base, "--env", "CartPole", "Acrobot", "--exp_name", "both").returncode == 0
    for env, gym_id in (("cartpole", "CartPole-v1"), ("acrobot", "Acrobot-v1")):
        config = json.loads((tmp_path / f"both-{env}" / f"both-{env}_s0" / "config.json").read_text())
        assert config["env_fn"]["env"] == gym_id
    # A grid whose second run would land on an existing run fails before its first run trains.
    assert cli(*base, "--env", "CartPole", "--exp_name", "x").returncode == 0
    proc = cli(*base, "--env", "CartPole", "--exp_name", "x", "--seed", "5", "0")
    assert proc.returncode == 2 and "x_s0 already holds a run" in proc.stderr, proc.stderr
    assert not (tmp_path / "x" / "x_s5").exists()


def test_an_environment_without_a_render_mode_argument_trains(tmp_path, cli):
    args = ["a2c", "--env", "tests.plain_env:NoRenderMode-v0", "--env_kwargs", "scale=0.5"]
    args += ["--epochs", "1", "--steps_per_epoch", "80", "--data_dir", str(tmp_path), "--exp_name", "p"]
    assert cli(*args).returncode == 0
    proc = cli("test_policy", str(tmp_path / "p" / "p_s0"), "-n", "1")
    assert proc.returncode == 0 and "EpLen 20" in proc.stdout, proc.stderr
    proc = cli("test_policy", str(tmp_path / "p" / "p_s0"), "--video", "v.gif")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "takes no render_mode, so it cannot be shown" in lines[-1], proc.stderr


def test_a_refused_resume_leaves_the_run_as_it_was(tmp_path, cli):
    args = [
        "a2c",
        "--env",
        "CartPole",
        "--epochs",
        "2",
        "--steps_per_epoch",
        "80",
        "--data_dir",
        str(tmp_path),
    ]
    assert cli(*args).returncode == 0
    run_dir = tmp_path / "a2c-cartpole" / "a2c-cartpole_s0"
    config = (run_dir / "config.json").read_text()
    resume = ["a2c", "--resume", str(run_dir)]
    for extra, message in [
        (
            ["--cpu", "2", "--epochs", "3"],
            "the run was made with 1 ranks; resume it with the same number (--cpu 1)",
        ),
        (["--exp_name", "other"], "--exp_name does not apply to --resume"),
        (["--env_kwargs", "sutton_barto_reward=true"], "contradicts the run's saved env_kwargs {}"),
        (["--lr", "0.5"], "--lr 0.5 contradicts the run's saved lr"),
    ]:
        proc = cli(*resume, *extra)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (extra, proc.stderr)
        assert (run_dir / "config.json").read_text() == config, extra
    # Extending the run records the new length, so that a later plain --resume goes on to it.
    assert cli(*resume, "--epochs", "3").returncode == 0
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 3
    assert len(rows_without_timing(run_dir)) == 4  # the header and epochs 0-2
    for extra in ([], ["--epochs", "1"]):  # nothing left to train: said, and config.json keeps 3
        proc = cli(*resume, *extra)
        assert proc.returncode == 0 and "Nothing to train: the run has done 3 epochs" in proc.stdout
        assert json.loads((run_dir / "config.json").read_text())["epochs"] == 3
    assert len(rows_without_timing(run_dir)) == 4  # the header and epochs 0-2
    # A run made from Python with its own env_fn cannot be resumed from the command line.
    saved = json.loads(config)
    saved["env_fn"] = "<function <lambda>>"
    (run_dir / "config.json").write_text(json.dumps(saved))
    proc = cli(*resume)
    assert proc.returncode == 2 and "does not name the run's environment" in proc.stderr, proc.stderr


def test_help_lists_every_flag_with_default(cli):
    proc = cli("ppo", "--help")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for flag in [
        "--env",
        "--env_kwargs",
        "--cpu",
        "--hid",
        "--act",
        "--clip_ratio",
        "--target_kl",
        "--num_envs",
        "--exp_name",
        "--datestamp",
        "--seed",
        "--epochs",
        "--steps_per_epoch",
    ]:
        assert flag in out
    assert "(default: 0.2)" in out  # clip_ratio


def test_cpu_flag_that_disagrees_with_the_launcher_is_refused(tmp_path):
    proc = mpirun(
        2,
        ["-m", "spinppo.run", "ppo", "--env", "CartPole", "--cpu", "3", "--data_dir", str(tmp_path)],
        check=False,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("spinppo: error: --cpu 3 does not apply under mpirun") == 1
    # A config file's cpu (the shipped ones say 2) gives way to the launcher's choice, with a note.
    config = tmp_path / "three.yaml"
    config.write_text("cpu: 3\nenv: CartPole\nepochs: 1\nsteps_per_epoch: 512\nminibatch_size: 128\n")
    proc = mpirun(
        2,
        ["-m", "spinppo.run", "ppo", "--config", str(config), "--data_dir", str(tmp_path), "--exp_name", "f"],
        timeout=120,
    )
    assert proc.stdout.count(f"spinppo: note: {config}: cpu: 3 does not apply under mpirun") == 1
    assert json.loads((tmp_path / "f" / "f_s0" / "config.json").read_text())["num_procs"] == 2


def test_a_grid_with_overwrite_checks_every_variant_before_the_first_trains(tmp_path, cli):
    """A bad value in a later variant is refused before an earlier variant replaces its old run."""
    base = ["a2c", "--env", "CartPole", "--epochs", "1"]
    base += ["--steps_per_epoch", "80", "--data_dir", str(tmp_path), "--exp_name", "G"]
    assert cli(*base, "--lr", "0.001", "0.002").returncode == 0
    first = tmp_path / "G_lr0.001" / "G_lr0.001_s0"
    before = {p.name: p.read_bytes() for p in (first / "progress.txt", first / "config.json")}
    for bad, message in [
        (["--lr", "0.001", "nan"], "--lr must be positive, not nan"),
        (["--lr", "0.001", "0.002", "--n_steps", "5", "0"], "--n_steps must be positive, not 0"),
        (["--lr", "0.001", "--num_envs", "8", "3"], "must be a multiple of ranks x num_envs x n_steps = 15"),
    ]:
        proc = cli(*base, *bad, "--overwrite")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (bad, proc.stderr)
        assert {p.name: p.read_bytes() for p in (first / "progress.txt", first / "config.json")} == before


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: "{not json", "config.json (JSONDecodeError"),
        (lambda c: "[1]", "holds a list, not a run's settings"),
        (lambda c: {**c, "seed": "abc"}, 'seed is "abc", which does not fit its type'),
        (lambda c: {**c, "lr": True}, "lr is true, which does not fit its type"),
        (lambda c: {**c, "ac_kwargs": "64,64"}, "ac_kwargs is '64,64', not an object"),
        (lambda c: {**c, "ac_kwargs": {"hidden_sizes": "64"}}, 'ac_kwargs.hidden_sizes is "64"'),
        (lambda c: {**c, "ac_kwargs": {"widths": [3]}}, "ac_kwargs has an unknown key 'widths'"),
        (lambda c: {**c, "env_fn": {**c["env_fn"], "env": 3}}, "env_fn.env is 3, not a string"),
        (lambda c: {**c, "env_fn": {**c["env_fn"], "env_kwargs": "x"}}, "env_fn.env_kwargs is 'x'"),
        (lambda c: {**c, "num_procs": "two"}, "num_procs is 'two', not a rank count"),
    ],
)
def test_a_damaged_config_json_is_a_one_line_error_on_resume(tmp_path, cli, edit, message):
    run_dir = tmp_path / "r" / "r_s0"
    run_dir.mkdir(parents=True)
    config = {
        "algo": "a2c",
        "seed": 0,
        "lr": 0.0007,
        "epochs": 2,
        "num_procs": 1,
        "ac_kwargs": {"hidden_sizes": [8], "activation": "tanh"},
        "env_fn": {"name": "CartPole", "kind": "gym", "env": "CartPole-v1", "env_kwargs": {}},
    }
    edited = edit(config)
    (run_dir / "config.json").write_text(edited if isinstance(edited, str) else json.dumps(edited))
    proc = cli("a2c", "--resume", str(run_dir))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr


@pytest.mark.parametrize("cpu", [[], ["--cpu", "2"]], ids=["one-process", "cpu-2"])
def test_output_piped_into_head_ends_quietly(tmp_path, cpu):
    """``... | head``: when the reader goes away the run ends at once, exit 141, no traceback."""
    import subprocess

    from tests.conftest import REPO, child_env

    args = [sys.executable, "-m", "spinppo.run", "a2c", "--env", "CartPole", "--epochs", "500"]
    args += ["--steps_per_epoch", "80", "--data_dir", str(tmp_path), *cpu]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    for _ in range(3):  # the reader takes a few lines (the first epoch's table), then leaves
        proc.stdout.readline()
    proc.stdout.close()
    try:
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
    stderr = proc.stderr.read().decode()
    assert code == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr and "Exception ignored" not in stderr, (
        stderr
    )


def test_a_discrete_space_that_does_not_start_at_zero_trains_and_replays(tmp_path, cli):
    """Discrete(3, start=-1): the policy's choices 0..2 reach the environment as -1..1, in training and in
    replay (the environment refuses anything else), and the policy learns to say the number shown (seed 0:
    3.3 at epoch 0, past 8 from epoch 4, 9.43 at epoch 9; 15 epochs ended at 9.84)."""
    args = ["ppo", "--env", "tests.multidiscrete_env:Shifted-v0"]
    args += ["--epochs", "10", "--steps_per_epoch", "1024", "--minibatch_size", "256", "--num_envs", "4"]
    assert cli(*args, "--data_dir", str(tmp_path), "--exp_name", "s").returncode == 0
    rows = rows_without_timing(tmp_path / "s" / "s_s0")
    ret = rows[0].index("AverageEpRet")
    first, last = float(rows[1][ret]), float(rows[-1][ret])
    assert first < 5 and last > 8, (first, last)  # chance is 10/3 a 10-step episode
    proc = cli("test_policy", str(tmp_path / "s" / "s_s0"), "-n", "3", "-d")
    assert proc.returncode == 0 and proc.stdout.count("EpLen 10") == 3, proc.stdout + proc.stderr


# ------------------------------------------------------------------------- flag types from the annotations


def _typed_algo(
    env_fn=None,
    sizes: list[int] | None = None,
    pair: tuple[int, float] = (1, 2.0),
    mode: Literal["fast", "exact"] = "fast",
    extra: dict[str, Any] | None = None,
    rate: float = 1,
    ac_kwargs=None,
    logger_kwargs=None,
):
    """A made-up algorithm whose keywords have the types the flags know.

    Args:
        sizes: several integers.
    """


def test_a_flags_type_is_its_annotation(monkeypatch, tmp_path):
    """Every keyword is parsed as its annotation says, on the command line and in a --config file: a
    list[int] is a list of ints (several bracketed: a grid), a float annotation wins over an int default."""
    from spinppo.cli import flags
    from spinppo.utils.errors import UserError

    # The algorithms' string annotations (from __future__ import annotations) are evaluated in their module.
    ppo = flags.algo_keywords(flags.algo_function("ppo"))
    assert ppo["target_kl"].type == float | None and ppo["epochs"].type is int
    monkeypatch.setattr(flags, "algo_function", lambda name: _typed_algo)
    keywords = flags.algo_keywords(_typed_algo)
    assert keywords["sizes"].type == list[int] | None and keywords["mode"].type == Literal["fast", "exact"]
    assert keywords["sizes"].help == "several integers."

    def parsed(*argv):
        return flags.parse_algo_args("typed", ["--env", "CartPole", *argv])[0]

    grid = parsed("--sizes", "8", "16", "--pair", "3", "0.5", "--mode", "exact", "--rate", "2")
    assert grid["sizes"] == [[8, 16]] and all(type(x) is int for x in grid["sizes"][0])
    assert grid["pair"] == [(3, 0.5)] and type(grid["pair"][0][1]) is float
    assert grid["mode"] == ["exact"]
    assert grid["rate"] == [2.0] and type(grid["rate"][0]) is float
    assert parsed("--sizes", "[1,2]", "[3]")["sizes"] == [[1, 2], [3]]
    assert parsed("--sizes", "none")["sizes"] == [None]
    assert parsed("--extra", "a=1", "b=x")["extra"] == [{"a": 1, "b": "x"}]
    assert parsed()["sizes"] == [None] and parsed()["rate"] == [1]  # defaults as the signature has them
    for argv, message in [
        (["--sizes", "8", "x"], "--sizes takes integers"),
        (["--sizes", "[1,2.5]"], "--sizes takes integers"),
        (["--pair", "3"], "--pair takes int, float"),
        (["--mode", "slow"], "--mode takes one of fast, exact, not 'slow'"),
    ]:
        with pytest.raises(UserError, match=re.escape(message)):
            parsed(*argv)
    config = tmp_path / "typed.yaml"
    config.write_text("env: CartPole\nsizes: [[4, 4], [2]]\npair: [5, 1]\n")
    grid = flags.parse_algo_args("typed", ["--config", str(config)])[0]
    assert grid["sizes"] == [[4, 4], [2]] and grid["pair"] == [(5, 1.0)]


def test_a_saved_value_fits_its_flags_type():
    """--resume checks config.json's values against the same types (a bool is no number)."""
    from spinppo.cli.flags import fits

    assert fits([1, 2], list[int]) and not fits([1, "2"], list[int]) and not fits([True], list[int])
    assert fits([64, 64], tuple[int, ...]) and fits(3, float) and not fits(True, float)
    assert fits(None, float | None) and not fits(None, float)
    assert fits("exact", Literal["fast", "exact"]) and not fits("slow", Literal["fast", "exact"])
    assert fits({"a": 1}, dict[str, Any]) and not fits([1], dict[str, Any])


def test_precision_bf16_on_an_mlp_says_in_one_line_that_it_does_nothing(tmp_path, cli):
    """--precision bf16 acts on image encoders: an MLP-only run says so and trains as in float32."""
    common = (
        "ppo",
        "--env",
        "CartPole",
        "--epochs",
        "1",
        "--steps_per_epoch",
        "1024",
        "--minibatch_size",
        "256",
    )
    bf16 = cli(*common, "--precision", "bf16", "--data_dir", str(tmp_path / "bf16"))
    assert bf16.returncode == 0, bf16.stderr
    assert "Note: --precision bf16 acts on image encoders only; this network has none" in bf16.stdout
    fp32 = cli(*common, "--data_dir", str(tmp_path / "fp32"))
    assert "--precision" not in fp32.stdout
    run = "ppo-cartpole/ppo-cartpole_s0"
    assert rows_without_timing(tmp_path / "bf16" / run) == rows_without_timing(tmp_path / "fp32" / run)
