"""TRPO and NPG (``spinppo.algos.trpo``, ``spinppo.algos.npg``): the conjugate-gradient solve against a direct
solve of the damped Fisher system, the KL constraint, the line search, NPG's full step, identical ranks under
mpirun -np 2, learning CartPole, exact resume after SIGKILL, bad values.

The Fisher matrix of the direct solve is built without the code under test: F = E_s[J_s^T M_s J_s], J_s the
Jacobian of the policy head's output at s (row by row, by autograd), M_s the Fisher matrix of the action
distribution in those outputs (a Categorical's logits: diag(p) - p p^T; a Gaussian's mean: diag(1/sigma^2)),
and for a Gaussian's log std parameters 2 I (their cross terms with the mean are zero).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from spinppo.algos.trpo import (
    LOG_KEYS,
    RankMean,
    TRPOStats,
    conjugate_gradient,
    fisher_vector_product,
    flat_grad,
    line_search,
    mean_kl,
    natural_gradient_step,
)
from spinppo.core.buffer import Batch
from spinppo.core.networks import MLPActorCritic
from tests.conftest import MPIRUN, mpirun, rows_without_timing, run
from tests.test_failures import start, wait_rows

PY = [sys.executable, "-m", "spinppo.run"]
OBS = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
SPACES = {"discrete": gym.spaces.Discrete(3), "box": gym.spaces.Box(-1, 1, (2,), np.float32)}


def small_problem(kind: str, dtype: torch.dtype = torch.float64, n: int = 24, seed: int = 0):
    """A small policy network of ``dtype``, its policy parameters and a random batch of ``n`` steps whose
    logp_old is the network's own (the update starts at theta_old)."""
    torch.manual_seed(seed)
    ac = MLPActorCritic(OBS, SPACES[kind], hidden_sizes=(4,), norm_obs=False).to(dtype)
    params = [p for name, p in ac.named_parameters() if not name.startswith("v.")]
    obs = torch.randn(n, 4, dtype=dtype)
    act = torch.randint(0, 3, (n,)) if kind == "discrete" else torch.randn(n, 2, dtype=dtype)
    with torch.no_grad():
        logp = ac.evaluate(obs, act)[0]
    adv = torch.randn(n, dtype=dtype)
    return ac, params, Batch(obs, act, adv, torch.randn(n, dtype=dtype), logp, torch.zeros(n, dtype=dtype))


def fisher_by_jacobian(
    ac: MLPActorCritic, params: list[torch.nn.Parameter], obs: torch.Tensor
) -> torch.Tensor:
    """The Fisher matrix of the policy at ``obs`` (the module docstring's construction)."""
    out = ac.evaluate(obs, torch.zeros(len(obs), *ac.act_shape), with_dist=True)[3]
    size = sum(p.numel() for p in params)
    fisher = torch.zeros(size, size, dtype=out.dtype)
    for s in range(len(obs)):
        jac = torch.stack([flat_grad(out[s, a], params, retain_graph=True) for a in range(out.shape[1])])
        if ac.discrete:
            p = torch.softmax(out[s].detach(), -1)
            m = torch.diag(p) - torch.outer(p, p)
        else:
            m = torch.diag(torch.exp(-2 * ac.log_std.detach()))
        fisher += jac.T @ m @ jac / len(obs)
    if not ac.discrete:  # log std: 2 per dimension
        at = sum(p.numel() for p in params[: [p is ac.log_std for p in params].index(True)])
        k = ac.log_std.numel()
        fisher[at : at + k, at : at + k] += 2 * torch.eye(k, dtype=out.dtype)
    return fisher


@pytest.mark.parametrize("kind", ["discrete", "box"])
def test_fisher_products_and_the_conjugate_gradient_match_a_direct_solve(kind):
    """H v from double backpropagation of the mean KL equals F v for the Jacobian-built F, and the
    conjugate gradient with as many iterations as parameters solves (F + damping I) x = g as
    torch.linalg.solve does (to a relative 1e-5: Spinning Up's EPS = 1e-8 in its step size's denominator
    leaves ~1e-6), and Spinning Up's 10 iterations already come within 1e-3 (3.5e-5 measured) on these
    32-35 parameters."""
    ac, params, batch = small_problem(kind)
    _, _, _, dist = ac.evaluate(batch.obs, batch.act, with_dist=True)
    old_log_std = None if ac.discrete else ac.log_std.detach().clone()
    kl_grad = flat_grad(mean_kl(ac, batch, dist.detach(), dist, old_log_std), params, create_graph=True)
    fisher = fisher_by_jacobian(ac, params, batch.obs)
    size, damping = len(fisher), 0.1
    v = torch.randn(size, dtype=torch.float64)
    torch.testing.assert_close(fisher_vector_product(kl_grad, params, v), fisher @ v, rtol=1e-9, atol=1e-12)

    g = torch.randn(size, dtype=torch.float64)
    direct = torch.linalg.solve(fisher + damping * torch.eye(size, dtype=torch.float64), g)
    damped = lambda x: fisher_vector_product(kl_grad, params, x) + damping * x  # noqa: E731
    for iters, within in ((size, 1e-5), (10, 1e-3)):
        error = torch.linalg.vector_norm(conjugate_gradient(damped, g, iters) - direct)
        assert error < within * torch.linalg.vector_norm(direct), (iters, error)


@pytest.mark.parametrize("kind", ["discrete", "box"])
def test_the_accepted_step_keeps_the_mean_kl_within_delta_and_improves_the_surrogate(kind):
    """TRPO's step, recomputed from the parameters it left: the mean KL from the old policy is at most
    delta and equals the logged KL, and the surrogate loss went down by the logged amount."""
    ac, params, batch = small_problem(kind, torch.float32, n=256)
    delta = 0.01
    with torch.no_grad():
        _, _, _, dist_old = ac.evaluate(batch.obs, batch.act, with_dist=True)
    old_log_std = None if ac.discrete else ac.log_std.detach().clone()
    before = torch.cat([p.detach().reshape(-1) for p in params])
    counter = RankMean()
    step = natural_gradient_step(ac, params, batch, counter, delta, 0.1, 10, 10, 0.8)
    after = torch.cat([p.detach().reshape(-1) for p in params])
    assert step.fraction > 0 and not torch.equal(before, after)
    torch.testing.assert_close(after, before - step.fraction * step.full_step)
    with torch.no_grad():
        logp, _, _, dist = ac.evaluate(batch.obs, batch.act, with_dist=True)
        kl = float(mean_kl(ac, batch, dist_old, dist, old_log_std))
        loss = float(-(torch.exp(logp - batch.logp_old) * batch.adv).mean())
    assert 0 < kl <= delta and kl == pytest.approx(step.kl, rel=1e-5)
    assert loss < step.loss_pi and loss == pytest.approx(step.loss_pi_new, rel=1e-5)
    # The update's Allreduces: g, cg_iters products, x^T H x, and one per line-search evaluation.
    assert counter.count == 1 + 10 + 1 + step.backtrack_iters + 1


def test_npg_takes_the_full_natural_step_without_a_line_search():
    """NPG moves the parameters by exactly the full step sqrt(2 delta / x^T H x) x, with one evaluation
    (for the log) and BacktrackIters 0, even where TRPO's line search refuses it: on this Gaussian policy
    at delta 0.1 the full step makes the surrogate worse (measured: LossPi +0.013, KL 0.093), and TRPO
    backtracks (once, to KL 0.059)."""
    ac, params, batch = small_problem("box", torch.float32, n=256)
    state = {k: v.clone() for k, v in ac.state_dict().items()}
    before = torch.cat([p.detach().reshape(-1) for p in params])
    counter = RankMean()
    step = natural_gradient_step(ac, params, batch, counter, 0.1, 0.1, 10, 10, 0.8, line_search_on=False)
    after = torch.cat([p.detach().reshape(-1) for p in params])
    assert step.backtrack_iters == 0 and step.fraction == 1.0 and counter.count == 1 + 10 + 1 + 1
    torch.testing.assert_close(after, before - step.full_step, rtol=0, atol=1e-6)
    ac.load_state_dict(state)
    trpo_step = natural_gradient_step(ac, params, batch, RankMean(), 0.1, 0.1, 10, 10, 0.8)
    torch.testing.assert_close(trpo_step.full_step, step.full_step)
    assert step.loss_pi_new > step.loss_pi  # the full step: worse, and NPG took it
    assert trpo_step.backtrack_iters > 0 and trpo_step.loss_pi_new <= trpo_step.loss_pi


def test_line_search_takes_the_first_fraction_that_improves_within_the_radius():
    """The fractions tried are 0.8^j; the first with a lower loss and KL <= delta is taken; when none is,
    the fraction is 0 and BacktrackIters = backtrack_iters, the old loss and KL 0 reported."""
    tried = []

    def evaluate(fraction):
        tried.append(fraction)
        return (1.0 - fraction, fraction * 0.05) if fraction < 0.5 else (0.5, 0.2)  # too far above 0.5

    found = line_search(evaluate, 1.0, 0.025, 10, 0.8)
    assert tried == pytest.approx([0.8**j for j in range(5)])
    assert found.backtrack_iters == 4 and found.fraction == pytest.approx(0.8**4)
    assert found.kl == pytest.approx(0.8**4 * 0.05) and found.loss_pi == pytest.approx(1 - 0.8**4)
    never = line_search(lambda f: (2.0, 0.0), 1.0, 0.02, 3, 0.8)  # the loss never improves
    assert never == (0.0, 3, 1.0, 0.0)


def test_memory_image_and_multidiscrete_policies_take_trpo_steps(tmp_path):
    """An LSTM policy (sequences padded: 8 does not divide 36), an image policy (the simple encoder, part
    of the policy's parameters) and a MultiDiscrete one (two branches) train a short TRPO run each in this
    process: finite rows, the KL within delta."""
    import tests.memory_env  # noqa: F401  (registers Cue-v0)
    from spinppo.algos.trpo import trpo
    from tests.multidiscrete_env import Branches
    from tests.test_pixels import SideEnv

    cases = {
        "lstm": (lambda: gym.make("Cue-v0"), dict(memory_size=8, sequence_length=8), 144),
        "image": (SideEnv, dict(encoder="simple"), 160),
        "branches": (Branches, {}, 160),
    }
    for name, (env_fn, ac_kwargs, steps) in cases.items():
        trpo(
            env_fn,
            ac_kwargs=dict(hidden_sizes=(16,), **ac_kwargs),
            steps_per_epoch=steps,
            num_envs=4,
            epochs=2,
            train_v_iters=5,
            logger_kwargs=dict(output_dir=str(tmp_path / name), tensorboard=False),
        )
        rows = table(tmp_path / name)
        assert len(rows) == 2 and all(np.isfinite(r["LossV"]) for r in rows), (name, rows)
        assert all(0 <= r["KL"] <= 0.01 and r["BacktrackIters"] <= 10 for r in rows), (name, rows)


def table(run_dir: Path) -> list[dict[str, float]]:
    lines = (run_dir / "progress.txt").read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, map(float, line.split("\t")), strict=True)) for line in lines[1:]]


def test_ranks_take_identical_steps_under_mpirun(tmp_path):
    """Under mpirun -np 2, each rank on its own rollout, the parameters after every update (before the
    epoch's broadcast) are the same bits on both ranks: TRPO on Pendulum (Box), NPG on CartPole
    (Discrete, its value steps on minibatches: 4 a pass). The rows carry Spinning Up's columns; NPG never
    backtracks."""
    proc = mpirun(2, ["tests/trpo_ranks.py", str(tmp_path)], timeout=240)
    assert "DIGESTS" in proc.stdout
    trpo_rows, npg_rows = table(tmp_path / "trpo"), table(tmp_path / "npg")
    header = (tmp_path / "trpo" / "progress.txt").read_text().splitlines()[0].split("\t")
    at = header.index("LossPi")
    assert header[at : at + len(LOG_KEYS)] == LOG_KEYS == list(TRPOStats._fields)
    # 1 (g) + 10 (CG) + 1 (x^T H x) + the line search's evaluations + 5 value steps
    searches = [min(r["BacktrackIters"] + 1, 10) for r in trpo_rows]
    assert all(r["KL"] <= 0.01 for r in trpo_rows)
    assert [r["Collectives"] for r in trpo_rows] == [12 + n + 5 for n in searches], trpo_rows
    assert all(r["BacktrackIters"] == 0 and r["Collectives"] == 13 + 5 * 4 for r in npg_rows)


CARTPOLE = ["--env", "CartPole", "--hid", "32", "--num_envs", "2"]


def test_trpo_learns_cartpole_and_its_run_replays_and_exports(tmp_path, cli):
    """TRPO learns CartPole under mpirun -np 2, with Spinning Up's settings but the batch (2000 steps an
    epoch, 2 environments a rank) and --hid 32. Measured (2026-12-06, 12 epochs, seeds 0-4): epoch 0 at
    21-24 (a random policy); the mean AverageEpRet of the last two epochs 296, 321, 287, 228, 130 and the
    best epoch 500, 380, 430, 360, 238 (TRPO on CartPole rises, then drifts down). Thresholds, for seed 1:
    the last two epochs above 100 and the best epoch above 200. The run's policy replays (test_policy)
    and exports (ONNX), its evaluation columns are there, and its TensorBoard files and a plot of its
    columns; 12 s a run on 2 cores."""
    args = [*CARTPOLE, "--steps_per_epoch", "2000", "--epochs", "12", "--seed", "1"]
    args += ["--eval_freq", "12", "--eval_episodes", "4"]
    run([MPIRUN, "-np", "2", *PY, "trpo", *args, "--data_dir", str(tmp_path), "--exp_name", "c"], timeout=300)
    run_dir = tmp_path / "c" / "c_s1"
    rows = table(run_dir)
    returns = [r["AverageEpRet"] for r in rows]
    assert returns[0] < 40 and np.mean(returns[-2:]) > 100 and max(returns) > 200, returns
    assert np.isfinite(rows[-1]["EvalEpRet"])
    replay = cli("test_policy", str(run_dir), "--episodes", "2", "--deterministic")
    assert replay.returncode == 0 and "EpRet mean" in replay.stdout, replay.stderr
    export = cli("export", str(run_dir), "--onnx", str(tmp_path / "c.onnx"))
    assert export.returncode == 0, export.stderr
    assert list((run_dir / "tb").glob("events.out.tfevents*"))  # TensorBoard, on by default
    plot = cli("plot", str(run_dir), "--value", "KL", "BacktrackIters", "--out", str(tmp_path / "kl.png"))
    assert plot.returncode == 0 and (tmp_path / "kl.png").stat().st_size > 0, plot.stderr


def test_exact_resume_after_sigkill(tmp_path):
    """A TRPO run killed after a checkpoint and resumed writes the rows of the uninterrupted run (the value
    optimiser's state, the environments and the generators all come back)."""
    job = [*PY, "trpo", *CARTPOLE, "--steps_per_epoch", "800", "--epochs", "5", "--save_freq", "1"]
    job += ["--train_v_iters", "10", "--vf_minibatch_size", "200", "--exp_name", "r"]  # shuffled value steps
    run([MPIRUN, "-np", "2", *job, "--data_dir", str(tmp_path / "whole")], timeout=300)
    broken = tmp_path / "broken" / "r" / "r_s0"
    proc = start([MPIRUN, "-np", "2", *job, "--data_dir", str(tmp_path / "broken")])
    wait_rows(broken / "progress.txt", 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # mpirun and both ranks, with no chance to clean up
    proc.communicate()
    assert len(rows_without_timing(broken)) < 6, "the run finished before it could be killed"
    out = run([*PY, "trpo", "--resume", str(broken)], timeout=300).stdout
    assert "Resumed from the checkpoint of epoch" in out
    assert rows_without_timing(broken) == rows_without_timing(tmp_path / "whole" / "r" / "r_s0")
    config = json.loads((broken / "config.json").read_text())
    assert config["algo"] == "trpo" and config["delta"] == 0.01


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["trpo", "--delta", "0"], "--delta must be positive, not 0.0"),
        (["trpo", "--delta", "-0.01"], "--delta must be positive, not -0.01"),
        (["trpo", "--cg_iters", "0"], "--cg_iters must be positive, not 0"),
        (["trpo", "--backtrack_coeff", "1"], "--backtrack_coeff must be in (0, 1)"),
        (["trpo", "--backtrack_iters", "0"], "--backtrack_iters must be positive, not 0"),
        (["trpo", "--damping_coeff", "-1"], "--damping_coeff must be zero or a positive"),
        (["trpo", "--vf_minibatch_size", "-1"], "--vf_minibatch_size must be zero or a positive"),
        (["trpo", "--vf_minibatch_size", "5000"], "--vf_minibatch_size 5000 must divide among 1 ranks and"),
        (["npg", "--delta", "0"], "--delta must be positive, not 0.0"),
        (["npg", "--backtrack_iters", "3"], "--backtrack_iters"),
    ],
)
def test_bad_values_give_one_line_and_exit_2(tmp_path, cli, argv, message):
    proc = cli(*argv, "--env", "CartPole", "--data_dir", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not any(tmp_path.iterdir())  # nothing was started


def test_a_config_file_sets_trpo_flags(tmp_path, cli):
    """--config: a file's TRPO values come through the command line's typed parsing, the command line's
    flags over them."""
    path = tmp_path / "trpo.yaml"
    path.write_text("env: Hopper\ndelta: 0.02\ncg_iters: 20\nbacktrack_coeff: 0.5\n")
    proc = cli("trpo", "--config", str(path), "--cg_iters", "15", "--print_config")
    assert proc.returncode == 0, proc.stderr
    assert "delta: 0.02\n" in proc.stdout and "cg_iters: 15\n" in proc.stdout
    assert "backtrack_coeff: 0.5\n" in proc.stdout and "env: Hopper\n" in proc.stdout


def test_a_recurrent_policy_on_a_gpu_takes_its_step_without_cudnn():
    """cuDNN's LSTM has no double backward, so TRPO's step turns cuDNN off for a recurrent policy on a
    GPU, and only there (the flag's handling; tests/test_device.py trains such a policy on a real GPU)."""
    from types import SimpleNamespace

    from spinppo.algos.trpo import twice_differentiable

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    cases = [((object(), cuda), False), ((None, cuda), True), ((object(), cpu), True)]
    for (lstm, device), enabled in cases:
        with twice_differentiable(SimpleNamespace(lstm=lstm, device=device)):
            assert torch.backends.cudnn.enabled == enabled, (lstm, device)
        assert torch.backends.cudnn.enabled
