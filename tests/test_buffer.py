"""GAE advantages and returns against hand-computed values."""

import numpy as np
import pytest
import torch

from spinppo.core.buffer import GAEBuffer

GAMMA, LAM = 0.9, 0.8


def hand_gae(rewards, values, bootstrap):
    """Textbook GAE for ONE trajectory: bootstrap is V after its last step (0 when terminated)."""
    vals = list(values) + [bootstrap]
    adv, gae = [], 0.0
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + GAMMA * vals[t + 1] - vals[t]
        gae = delta + GAMMA * LAM * gae
        adv.insert(0, gae)
    return np.array(adv), np.array(adv) + np.array(values)


def test_gae_terminated_truncated_and_epoch_cut():
    # One environment, 7 steps: episode A terminates at t=2, episode B is truncated at t=4
    # (its final observation has V = 5.0), episode C is cut by the epoch end (V(next obs) = 7.0).
    rew = [1.0, 2.0, 3.0, 0.5, -1.0, 2.0, 1.5]
    val = [0.3, 0.6, 0.9, 1.2, 1.5, 1.8, 2.1]
    term = [0, 0, 1, 0, 0, 0, 0]
    trunc = [0, 0, 0, 0, 1, 0, 0]
    final_v_b, last_v = 5.0, 7.0
    buf = GAEBuffer(obs_dim=2, act_shape=(1,), num_envs=1, steps=7, gamma=GAMMA, lam=LAM)
    for t in range(7):
        final_val = np.array([final_v_b if trunc[t] else np.nan], dtype=np.float32)
        buf.store(
            np.full((1, 2), t),
            np.zeros((1, 1)),
            [rew[t]],
            [val[t]],
            [0.0],
            [bool(term[t])],
            [bool(trunc[t])],
            final_val,
        )
    buf.finish(np.array([last_v]))

    adv_a, ret_a = hand_gae(rew[0:3], val[0:3], 0.0)  # terminated: nothing after
    adv_b, ret_b = hand_gae(rew[3:5], val[3:5], final_v_b)  # truncated: V(final obs)
    adv_c, ret_c = hand_gae(rew[5:7], val[5:7], last_v)  # epoch cut: V(next obs)
    np.testing.assert_allclose(buf.adv[:, 0], np.concatenate([adv_a, adv_b, adv_c]), rtol=1e-5)
    np.testing.assert_allclose(buf.ret[:, 0], np.concatenate([ret_a, ret_b, ret_c]), rtol=1e-5)

    data = buf.get(normalize_adv=True)
    adv = np.concatenate([adv_a, adv_b, adv_c])
    np.testing.assert_allclose(data.adv.numpy(), (adv - adv.mean()) / adv.std(), rtol=1e-4, atol=1e-5)
    assert data.obs.shape == (7, 2) and data.ret.shape == (7,)
    # The batch's tensors are the buffer's arrays (no copies), by the names the losses use.
    np.testing.assert_array_equal(data.ret.numpy(), buf.ret[:, 0])
    assert np.shares_memory(data.ret.numpy(), buf.ret) and np.shares_memory(data.obs.numpy(), buf.obs)
    np.testing.assert_array_equal(data.v_old.numpy(), np.float32(val))
    assert data.logp_old.dtype == torch.float32 and data.act.dtype == torch.float32
    assert data.memory is None and data.starts is None and data.mask is None


def test_environments_are_independent_columns():
    buf = GAEBuffer(obs_dim=1, act_shape=(), num_envs=2, steps=3, gamma=GAMMA, lam=LAM, discrete=True)
    rew = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 5.0]])
    val = np.array([[0.5, 0.1], [0.5, 0.2], [0.5, 0.3]])
    term = np.array([[0, 0], [1, 0], [0, 0]], dtype=bool)
    for t in range(3):
        buf.store(np.zeros((2, 1)), np.zeros(2), rew[t], val[t], np.zeros(2), term[t], np.zeros(2, bool))
    buf.finish(np.array([2.0, 3.0]))
    adv0 = np.concatenate(
        [hand_gae(rew[:2, 0], val[:2, 0], 0.0)[0], hand_gae(rew[2:, 0], val[2:, 0], 2.0)[0]]
    )
    adv1 = hand_gae(rew[:, 1], val[:, 1], 3.0)[0]
    np.testing.assert_allclose(buf.adv, np.stack([adv0, adv1], axis=1), rtol=1e-5)


def test_truncation_without_value_is_refused():
    buf = GAEBuffer(obs_dim=1, act_shape=(), num_envs=1, steps=2, discrete=True)
    with pytest.raises(ValueError, match="final_val"):
        buf.store(np.zeros((1, 1)), np.zeros(1), [1.0], [0.0], [0.0], [False], [True], None)


def test_time_horizon_cuts_trajectories_and_bootstraps_them():
    """ML-Agents' time_horizon 3 on one environment of 8 steps with a termination at t=4: trajectories
    t=0..2 (cut, bootstrapped with V(s_3)), t=3..4 (terminated), t=5..7 (cut by the horizon at t=7, which is
    also the rollout's end: V(next obs)). Each is textbook GAE on its own."""
    rew = [1.0, -2.0, 0.5, 3.0, 1.0, 0.25, 2.0, -1.0]
    val = [0.1, 0.4, 0.2, 0.9, 0.3, 0.5, 0.7, 0.6]
    term = [0, 0, 0, 0, 1, 0, 0, 0]
    last_v = 4.0
    buf = GAEBuffer(obs_dim=1, act_shape=(1,), num_envs=1, steps=8, gamma=GAMMA, lam=LAM, time_horizon=3)
    for t in range(8):
        buf.store(np.zeros((1, 1)), np.zeros((1, 1)), [rew[t]], [val[t]], [0.0], [bool(term[t])], [False])
    buf.finish(np.array([last_v], dtype=np.float32))
    a1, r1 = hand_gae(rew[0:3], val[0:3], val[3])
    a2, r2 = hand_gae(rew[3:5], val[3:5], 0.0)
    a3, r3 = hand_gae(rew[5:8], val[5:8], last_v)
    np.testing.assert_allclose(buf.adv[:, 0], np.concatenate([a1, a2, a3]), rtol=1e-5)
    np.testing.assert_allclose(buf.ret[:, 0], np.concatenate([r1, r2, r3]), rtol=1e-5)
    # Without a horizon the same data gives one lambda-return through t=0..4: different advantages.
    plain = GAEBuffer(obs_dim=1, act_shape=(1,), num_envs=1, steps=8, gamma=GAMMA, lam=LAM)
    for t in range(8):
        plain.store(np.zeros((1, 1)), np.zeros((1, 1)), [rew[t]], [val[t]], [0.0], [bool(term[t])], [False])
    plain.finish(np.array([last_v], dtype=np.float32))
    assert not np.allclose(plain.adv[:3, 0], a1)


def test_scaled_values_give_the_same_advantages_and_returns_in_the_critics_units():
    """--norm_value: the buffer holds the critic's outputs (values / s); GAE must see values in the
    rewards' units (the truncation's V(final obs) and the epoch cut's V(next obs) too), and the returns
    it gives back are the critic's targets, lambda-returns / s."""
    rew = [1.0, 2.0, 3.0, 0.5, -1.0, 2.0, 1.5]
    val = [0.3, 0.6, 0.9, 1.2, 1.5, 1.8, 2.1]
    term = [0, 0, 1, 0, 0, 0, 0]
    trunc = [0, 0, 0, 0, 1, 0, 0]
    final_v_b, last_v, s = 5.0, 7.0, 4.0
    buf = GAEBuffer(obs_dim=2, act_shape=(1,), num_envs=1, steps=7, gamma=GAMMA, lam=LAM)
    buf.value_scale = s
    for t in range(7):
        final_val = np.array([final_v_b / s if trunc[t] else np.nan], dtype=np.float32)
        buf.store(np.zeros((1, 2)), np.zeros((1, 1)), [rew[t]], [val[t] / s], [0.0], [bool(term[t])],
                  [bool(trunc[t])], final_val)  # fmt: skip
    buf.finish(np.array([last_v / s]))
    adv_a, ret_a = hand_gae(rew[0:3], val[0:3], 0.0)
    adv_b, ret_b = hand_gae(rew[3:5], val[3:5], final_v_b)
    adv_c, ret_c = hand_gae(rew[5:7], val[5:7], last_v)
    np.testing.assert_allclose(buf.adv[:, 0], np.concatenate([adv_a, adv_b, adv_c]), rtol=1e-5)
    np.testing.assert_allclose(buf.ret[:, 0], np.concatenate([ret_a, ret_b, ret_c]) / s, rtol=1e-5)
    data = buf.get(normalize_adv=False)
    np.testing.assert_allclose(data.v_old.numpy(), np.float32(val) / s)  # the critic's own outputs
