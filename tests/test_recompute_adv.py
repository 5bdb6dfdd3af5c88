"""PPO's --recompute_adv: advantages and returns computed again from the current critic, in the buffer
(against a buffer that stored those values in the first place) and in a run (against GAE by hand from the
critic's values at the run's own observations)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spinppo.algos.onpolicy import OnPolicyRun
from spinppo.core.buffer import GAEBuffer
from spinppo.envs.registry import EnvFactory

GAMMA, LAM = 0.9, 0.8
GAMMA_RUN = 0.99  # OnPolicyRun's default gamma (its lambda: 0.95)
STEPS, ENVS = 9, 2
REW = np.random.default_rng(0).normal(size=(STEPS, ENVS)).astype(np.float32)
TERM = np.zeros((STEPS, ENVS), bool)
TRUNC = np.zeros((STEPS, ENVS), bool)
TERM[2, 0] = TERM[6, 1] = True
TRUNC[4, 0] = TRUNC[3, 1] = TRUNC[7, 1] = True
TERM[7, 1] = True  # terminated and truncated at once: terminal, nothing bootstrapped


def filled(val: np.ndarray, final: np.ndarray, last: np.ndarray, **kwargs) -> GAEBuffer:
    """A finished buffer of the steps above, with critic values ``val`` [STEPS, ENVS], ``final``
    [STEPS, ENVS] at the truncated episodes' final observations (observation t * 10 + env), ``last``."""
    scale = kwargs.pop("value_scale", 1.0)
    buf = GAEBuffer(obs_dim=1, act_shape=(), num_envs=ENVS, steps=STEPS, gamma=GAMMA, lam=LAM, **kwargs)
    buf.value_scale = scale
    for t in range(STEPS):
        boot = TRUNC[t] & ~TERM[t]
        envs = np.flatnonzero(boot)
        final_obs = np.array([[t * 10.0 + e] for e in envs], dtype=np.float32) if len(envs) else None
        buf.store(
            np.full((ENVS, 1), t, np.float32),
            np.zeros(ENVS),
            REW[t],
            val[t],
            np.zeros(ENVS),
            TERM[t],
            TRUNC[t],
            final[t] if len(envs) else None,
            final_obs=final_obs,
        )
    buf.finish(last)
    return buf


@pytest.mark.parametrize("kwargs", [{}, {"time_horizon": 3}, {"value_scale": 2.5}])
def test_recompute_gives_what_finish_gives_from_the_same_values(kwargs):
    rng = np.random.default_rng(1)
    old = rng.normal(size=(STEPS, ENVS)).astype(np.float32)
    old_final = rng.normal(size=(STEPS, ENVS)).astype(np.float32)
    old_last = rng.normal(size=ENVS).astype(np.float32)
    new = rng.normal(size=(STEPS, ENVS)).astype(np.float32)
    new_final = rng.normal(size=(STEPS, ENVS)).astype(np.float32)
    new_last = rng.normal(size=ENVS).astype(np.float32)

    buf = filled(old, old_final, old_last, **dict(kwargs))
    # The final observations kept are those of the truncated, not terminated, environments, in order.
    assert sorted(buf.final_obs) == [3, 4]
    assert [o[:, 0].tolist() for _, o in (buf.final_obs[3], buf.final_obs[4])] == [[31.0], [40.0]]
    first_adv, first_ret = buf.adv.copy(), buf.ret.copy()
    finals = {t: old_final[t, envs] for t, (envs, _) in buf.final_obs.items()}
    buf.recompute(old, old_last, finals)
    np.testing.assert_array_equal(buf.adv, first_adv)
    np.testing.assert_array_equal(buf.ret, first_ret)

    finals = {t: new_final[t, envs] for t, (envs, _) in buf.final_obs.items()}
    buf.recompute(new, new_last, finals)
    reference = filled(new, new_final, new_last, **dict(kwargs))
    assert not np.allclose(buf.adv, first_adv)
    np.testing.assert_allclose(buf.adv, reference.adv, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(buf.ret, reference.ret, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(buf.val, old)  # v_old stays the rollout's


def test_a_run_recomputes_from_its_critic_at_its_own_observations(tmp_path):
    # CartPole cut at 12 steps: most episodes end truncated, so most bootstraps come from final observations.
    run = OnPolicyRun(
        EnvFactory("CartPole-v1", env_kwargs={"max_episode_steps": 12}),
        ac_kwargs=dict(hidden_sizes=(8,)),
        steps_per_epoch=64,
        num_envs=2,
        norm_reward=False,
        norm_adv=False,
        logger_kwargs=dict(output_dir=str(tmp_path), tensorboard=False),
        config={"seed": 0},
    )
    with run:
        next(run.epochs(1, 1, {"optimizer": torch.optim.Adam(run.ac.parameters())}))
        batch = run.collect()
        buf, ac = run.buf, run.ac
        assert buf.final_obs, "no episode was truncated"
        with torch.no_grad():  # the kept final observations are those the rollout bootstrapped from
            for t, (envs, obs) in buf.final_obs.items():
                v = ac.value(torch.as_tensor(obs)).numpy()
                np.testing.assert_allclose(buf.boot[t, envs], GAMMA_RUN * v, rtol=1e-5, atol=1e-6)
            for p in ac.v.parameters():  # the critic moves, as an update moves it
                p.add_(0.3 * torch.randn_like(p))
            val = ac.value(batch.obs).numpy().reshape(buf.filled, ENVS)
            last = ac.value(torch.as_tensor(run.worker.obs)).numpy()
            finals = {t: ac.value(torch.as_tensor(obs)).numpy() for t, (_, obs) in buf.final_obs.items()}
        adv, ret = run.recompute_advantages(batch, chunk=10)

    # GAE by hand, environment by environment, from the moved critic's values.
    rew, boot = buf.rew[: buf.filled], np.zeros((buf.filled, ENVS))
    for t, (envs, _) in buf.final_obs.items():
        boot[t, envs] = GAMMA_RUN * finals[t]
    for e in range(ENVS):
        gae, next_val = 0.0, last[e]
        expect = np.zeros(buf.filled)
        for t in reversed(range(buf.filled)):
            delta = rew[t, e] + boot[t, e] + GAMMA_RUN * next_val * (1 - buf.done[t, e]) - val[t, e]
            gae = delta + GAMMA_RUN * 0.95 * (1 - buf.done[t, e]) * gae
            expect[t] = gae
            next_val = val[t, e]
        got = adv.numpy().reshape(buf.filled, ENVS)[:, e]
        np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(ret.numpy().reshape(buf.filled, ENVS)[:, e], expect + val[:, e], rtol=1e-4,
                                   atol=1e-5)  # fmt: skip


def test_recompute_adv_with_memory_is_refused_in_one_line(cli):
    proc = cli(
        "ppo", "--env", "CartPole-v1", "--memory_size", "8", "--recompute_adv", "true", "--epochs", "1"
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--recompute_adv" in proc.stderr, proc.stderr
