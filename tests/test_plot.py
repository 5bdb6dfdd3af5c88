"""``python -m spinppo.run plot``: the plotted series equal the statistics over seeds; files and errors."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spinppo.tools.plot import curves, load_runs, make_plot, smooth_values
from spinppo.utils.errors import UserError
from tests.conftest import REPO, child_env, run

TINY = ["--env", "CartPole", "--steps_per_epoch", "128", "--num_envs", "1", "--update_epochs", "1"]
TINY += ["--minibatch_size", "128"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Real short runs: two seeds of experiment cart-a (3 epochs), one seed of cart-b (2 epochs)."""
    data = tmp_path_factory.mktemp("data")
    commands = [
        ["--epochs", "3", "--seed", "0", "10", "--exp_name", "cart-a"],
        ["--epochs", "2", "--seed", "3", "--exp_name", "cart-b", "--lam", "0.9"],
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "spinppo.run", "ppo", *TINY, *args, "--data_dir", str(data)],
            cwd=REPO,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for args in commands
    ]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    return data


def progress(run_dir: Path) -> dict[str, np.ndarray]:
    """progress.txt read independently of spinppo.tools.plot."""
    with open(run_dir / "progress.txt", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


@pytest.fixture
def plot_cli(cli, monkeypatch):
    """``plot_cli(*ARGS, **ENV)``: ``python -m spinppo.run plot ARGS`` (in this process) with ENV set."""

    def call(*args: str, **env: str) -> subprocess.CompletedProcess:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return cli("plot", *args)

    return call


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spinppo: error: "), proc.stderr
    return lines[0]


def test_curves_are_the_mean_and_std_over_seeds(root):
    runs = load_runs([str(root)])
    assert sorted(Path(r.path).name for r in runs) == ["cart-a_s0", "cart-a_s10", "cart-b_s3"]
    a0, a10, b3 = (
        progress(root / exp / name)
        for exp, name in [("cart-a", "cart-a_s0"), ("cart-a", "cart-a_s10"), ("cart-b", "cart-b_s3")]
    )
    assert np.array_equal(a0["TotalEnvInteracts"], a10["TotalEnvInteracts"])
    for value in ("AverageEpRet", "LossV"):
        got = {c.label: c for c in curves(runs, "TotalEnvInteracts", value)}
        assert list(got) == ["cart-a", "cart-b"]
        a, b = got["cart-a"], got["cart-b"]
        ys = np.stack([a0[value], a10[value]])
        np.testing.assert_array_equal(a.x, a0["TotalEnvInteracts"])
        np.testing.assert_allclose(a.mean, ys.mean(0), rtol=1e-12)
        np.testing.assert_allclose(a.std, np.abs(ys[0] - ys[1]) / np.sqrt(2), rtol=1e-9, atol=1e-12)
        assert a.n.tolist() == [2, 2, 2] and len(a.runs) == 2
        np.testing.assert_array_equal(b.x, b3["TotalEnvInteracts"])
        np.testing.assert_array_equal(b.mean, b3[value])
        assert b.std.tolist() == [0.0, 0.0] and b.n.tolist() == [1, 1]
    assert not np.all(a.std == 0)  # the seeds differ: the spread is really computed

    # Smoothing (Spinning Up's): each run's mean over a centred window of 3 epochs, then over seeds.
    def by_hand(y):
        return np.array([y[max(0, i - 1) : i + 2].mean() for i in range(len(y))])

    (a_s, _) = curves(runs, "Epoch", "AverageEpRet", smooth=3)
    ys = np.stack([by_hand(a0["AverageEpRet"]), by_hand(a10["AverageEpRet"])])
    np.testing.assert_array_equal(a_s.x, [0, 1, 2])
    np.testing.assert_allclose(a_s.mean, ys.mean(0), rtol=1e-12)
    np.testing.assert_allclose(a_s.std, ys.std(0, ddof=1), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(smooth_values(np.array([1.0, np.nan, 3.0, 5.0]), 3), [1, 2, 4, 4])


def test_the_figure_draws_those_curves(root):
    runs = load_runs([str(root)])
    fig = make_plot(runs, values=["AverageEpRet", "LossV"], size=(6, 4), dpi=50)
    assert len(fig.axes) == 2
    for ax, value in zip(fig.axes, ["AverageEpRet", "LossV"], strict=True):
        drawn = curves(runs, "TotalEnvInteracts", value)
        assert fig.spinppo_curves[value][0].label == "cart-a"
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cart-a", "cart-b"]
        assert ax.get_xlabel() == "TotalEnvInteracts" and ax.get_ylabel() == value
        for line, c in zip(ax.get_lines(), drawn, strict=True):
            np.testing.assert_array_equal(line.get_xdata(), c.x)
            np.testing.assert_array_equal(line.get_ydata(), c.mean)
        # One band (cart-a, two seeds); cart-b has one run and no band. Its edge is mean +- std.
        (band,) = ax.collections
        ys = band.get_paths()[0].vertices[:, 1]
        a = drawn[0]
        assert np.allclose(np.sort(np.unique(ys)), np.sort(np.unique(np.r_[a.mean - a.std, a.mean + a.std])))


def test_cli_writes_a_png_of_the_requested_size_beside_the_data(root, plot_cli):
    import matplotlib.image as mpimg

    # A real process (matplotlib picks its backend when it starts); the others run in this one.
    plot = [sys.executable, "-m", "spinppo.run", "plot", str(root), "--size", "6", "4", "--dpi", "50"]
    proc = run(plot, check=False, DISPLAY="", WAYLAND_DISPLAY="")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.strip().splitlines()
    path = Path(line.removeprefix("Plot saved to "))
    assert path == root / "plot_AverageEpRet_vs_TotalEnvInteracts.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert mpimg.imread(path).shape[:2] == (200, 300)  # 4 x 50 by 6 x 50 pixels

    out = root / "figs" / "two.png"
    proc = plot_cli(str(root / "cart-a"), "-y", "AverageEpRet", "Entropy", "--out", str(out), "--smooth", "2")
    assert proc.returncode == 0 and proc.stdout.strip() == f"Plot saved to {out}", proc.stderr
    assert mpimg.imread(out).shape[:2] == (440, 1280)  # default: two panels side by side, 100 dpi

    for suffix, magic in ((".svg", b"<?xml"), (".pdf", b"%PDF")):
        proc = plot_cli(str(root), "--out", str(root / f"p{suffix}"), "--xaxis", "Epoch")
        assert proc.returncode == 0, proc.stderr
        assert (root / f"p{suffix}").read_bytes().startswith(magic)

    # --show without a display says so and writes the image instead.
    proc = plot_cli(str(root), "--show", "--dpi", "20", DISPLAY="", WAYLAND_DISPLAY="")
    assert proc.returncode == 0 and "needs a display" in proc.stderr
    assert Path(proc.stdout.strip().removeprefix("Plot saved to ")).is_file()


def test_select_exclude_count_legend_and_prefixes(root, plot_cli):
    def names(runs):
        return sorted(Path(r.path).name for r in runs)

    assert names(load_runs([str(root)], select=["cart-a"])) == ["cart-a_s0", "cart-a_s10"]
    assert names(load_runs([str(root)], select=["cart", "s1"])) == ["cart-a_s10"]
    assert names(load_runs([str(root)], exclude=["s10", "b_"])) == ["cart-a_s0"]
    # A path that does not exist is a prefix (Spinning Up): data/cart- means data/cart-a and data/cart-b.
    assert names(load_runs([str(root / "cart-")])) == ["cart-a_s0", "cart-a_s10", "cart-b_s3"]
    assert names(load_runs([str(root / "cart-b")])) == ["cart-b_s3"]

    runs = load_runs([str(root)])
    per_run = curves(runs, count=True)
    assert [c.label for c in per_run] == ["cart-a-s0", "cart-a-s10", "cart-b-s3"]
    for c in per_run:
        data = progress(Path(c.runs[0].path))
        np.testing.assert_array_equal(c.mean, data["AverageEpRet"])
        assert np.all(c.std == 0)

    # --legend names the runs of each directory given; one name for both merges them into one curve,
    # averaged at each x over the runs that reached it (cart-b has 2 epochs, cart-a 3).
    named = curves(load_runs([str(root / "cart-a"), str(root / "cart-b")], legend=["A", "B"]))
    assert [c.label for c in named] == ["A", "B"]
    (merged,) = curves(load_runs([str(root / "cart-a"), str(root / "cart-b")], legend=["all", "all"]))
    assert merged.n.tolist() == [3, 3, 2]
    a0, a10 = progress(root / "cart-a" / "cart-a_s0"), progress(root / "cart-a" / "cart-a_s10")
    b3 = progress(root / "cart-b" / "cart-b_s3")
    np.testing.assert_allclose(
        merged.mean[:2], (a0["AverageEpRet"][:2] + a10["AverageEpRet"][:2] + b3["AverageEpRet"]) / 3
    )
    np.testing.assert_allclose(merged.mean[2], (a0["AverageEpRet"][2] + a10["AverageEpRet"][2]) / 2)

    with pytest.raises(UserError, match="one name per directory"):
        load_runs([str(root)], legend=["x", "y"])
    with pytest.raises(UserError, match="none of the 3 runs"):
        load_runs([str(root)], select=["cart-c"])

    proc = plot_cli(str(root), "--count", "--exclude", "s10", "--out", str(root / "count.png"))
    assert proc.returncode == 0 and (root / "count.png").is_file(), proc.stderr


def test_runs_in_progress_and_of_one_epoch(root, plot_cli, tmp_path):
    src = root / "cart-a" / "cart-a_s0"
    lines = (src / "progress.txt").read_text().splitlines(keepends=True)
    live = tmp_path / "live" / "live_s0"
    shutil.copytree(src, live)
    (live / "config.json").write_text('{"exp_name": "live", "seed": 0}')

    (live / "progress.txt").write_text("")  # the logger has just started
    assert "no epoch logged yet" in one_line_error(plot_cli(str(live)))
    (live / "progress.txt").write_text(lines[0])  # header only
    assert "no epoch logged yet" in one_line_error(plot_cli(str(live)))

    # One epoch, and a second row half written: the row is left out, with a note.
    (live / "progress.txt").write_text(lines[0] + lines[1] + lines[2][:20])
    out = tmp_path / "one.png"
    proc = plot_cli(str(live), "--out", str(out))
    assert proc.returncode == 0 and out.is_file(), proc.stderr
    assert "line 3 has" in proc.stderr
    (c,) = curves(load_runs([str(live)]))
    assert c.x.tolist() == [128.0] and c.mean.tolist() == [progress(src)["AverageEpRet"][0]]

    # A directory above a finished run and a run without rows: the empty one is skipped with a note.
    (live / "progress.txt").write_text(lines[0])
    shutil.copytree(src, tmp_path / "done_s1")
    proc = plot_cli(str(tmp_path), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "skipped" in proc.stderr and "live_s0" in proc.stderr


def test_bad_input_is_one_line_and_exit_2(root, plot_cli, tmp_path):
    assert "does not exist" in one_line_error(plot_cli(str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    assert "no progress.txt" in one_line_error(plot_cli(str(tmp_path / "empty")))
    (tmp_path / "file.txt").write_text("x")
    assert "is a file" in one_line_error(plot_cli(str(tmp_path / "file.txt")))
    msg = one_line_error(plot_cli(str(root), "--xaxis", "Steps"))
    assert "'Steps'" in msg and "TotalEnvInteracts" in msg and "AverageEpRet" in msg
    assert "unknown --value 'Return'" in one_line_error(plot_cli(str(root), "--value", "Return"))
    assert "--out must end in" in one_line_error(plot_cli(str(root), "--out", str(tmp_path / "p.jpg")))
    assert "one name per directory" in one_line_error(plot_cli(str(root), "--legend", "a", "b"))
    assert "--smooth" in one_line_error(plot_cli(str(root), "--smooth", "x"))
    assert "--smooth must be at least 1" in one_line_error(plot_cli(str(root), "--smooth", "0"))


def test_epochs_without_a_finished_episode_do_not_break_the_line(root, tmp_path):
    # Long episodes and short epochs: some epochs log AverageEpRet as nan. The line joins the others.
    src = next(root.glob("cart-a/*_s0"))
    run_dir = tmp_path / "gaps" / "gaps_s0"
    shutil.copytree(src, run_dir)
    lines = (run_dir / "progress.txt").read_text().splitlines()
    header = lines[0].split("\t")
    col = header.index("AverageEpRet")
    rows = [line.split("\t") for line in lines[1:]]
    rows[1][col] = "nan"
    (run_dir / "progress.txt").write_text(
        "\n".join(["\t".join(header)] + ["\t".join(r) for r in rows]) + "\n"
    )
    fig = make_plot(load_runs([str(tmp_path / "gaps")]))
    drawn = fig.axes[0].lines[0].get_ydata()
    assert len(drawn) == len(rows) - 1 and np.all(np.isfinite(drawn))


def test_config_json_is_optional_but_checked(root, plot_cli, tmp_path):
    """A run without config.json plots under its directory's name; a damaged one is one line naming it."""
    run_dir = tmp_path / "bare" / "bare_s7"
    shutil.copytree(root / "cart-a" / "cart-a_s0", run_dir)
    config = run_dir / "config.json"
    text = config.read_text()
    config.unlink()
    (run,) = load_runs([str(run_dir)])
    assert (run.name, run.seed, run.config) == ("bare", None, {})
    out = tmp_path / "bare.png"
    proc = plot_cli(str(run_dir), "--out", str(out))
    assert proc.returncode == 0 and out.is_file(), proc.stderr

    damaged = {
        text[: len(text) // 2]: "cannot read",  # truncated JSON
        "[1, 2]": "holds a list",
        '{"exp_name": 3, "seed": 0}': "exp_name is 3",
        '{"exp_name": ["a"], "seed": 0}': "exp_name is ['a']",
        '{"exp_name": "x", "seed": "zero"}': "seed is 'zero'",
        '{"exp_name": "x", "seed": true}': "seed is True",
    }
    for content, key in damaged.items():
        config.write_text(content)
        with pytest.raises(UserError) as e:
            load_runs([str(tmp_path / "bare")])
        assert str(config) in str(e.value) and key in str(e.value) and "\n" not in str(e.value)
    for content in list(damaged)[:3]:
        config.write_text(content)
        msg = one_line_error(plot_cli(str(tmp_path), "--out", str(out)))
        assert str(config) in msg and damaged[content] in msg

    # exp_name and seed may be null: as if absent.
    config.write_text('{"exp_name": null, "seed": null}')
    (run,) = load_runs([str(run_dir)])
    assert (run.name, run.seed) == ("bare", None)
