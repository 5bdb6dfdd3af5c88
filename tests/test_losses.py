"""Each algorithm's loss against its docstring's formula computed by hand (numpy, float64) on a tiny batch,
a recurrent batch with padded steps among them, and the statistics an update logs against LOG_KEYS."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from spinppo.algos import a2c, a3c, ppo, trpo, vpg
from spinppo.algos.a2c import a2c_loss
from spinppo.algos.ppo import ppo_loss
from spinppo.algos.vpg import value_loss, vpg_loss
from spinppo.core.buffer import Batch
from tests.conftest import REPO, child_env

EPS = 0.2  # the clip range
# Six steps. Ratios exp(logp - logp_old): 1.65 with A > 0 and 0.61 with A < 0 (both clipped: no gradient),
# 1.35 with A < 0 (outside the range, but the unclipped term is the smaller: it keeps its gradient).
LOGP_OLD = np.array([-1.0, -0.5, -2.0, -1.2, -0.3, -0.8])
LOGP = LOGP_OLD + np.array([0.5, -0.5, 0.1, 0.0, 0.3, -0.05])
ADV = np.array([1.0, -2.0, 0.5, -1.0, -0.7, 2.0])
V = np.array([0.5, 1.0, -0.2, 0.3, 2.0, 0.0])
V_OLD = np.array([0.4, 1.5, -0.1, 0.3, 0.5, 0.1])
RET = np.array([1.0, 0.0, 0.0, 0.5, 1.0, -3.0])  # squared errors 0.25, 1, 0.04, 0.04, 1, 9
ENTROPY = np.array([1.2, 0.9, 1.0, 1.1, 0.8, 1.3])
KL = np.array([0.01, 0.2, 0.05, 0.0, 0.1, 0.02])


def t(x: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32, requires_grad=grad)


def flat_batch() -> Batch:
    return Batch(
        obs=t(np.zeros((6, 2))),
        act=t(np.zeros(6)),
        adv=t(ADV),
        ret=t(RET),
        logp_old=t(LOGP_OLD),
        v_old=t(V_OLD),
    )


# The same six steps as a recurrent batch: 2 sequences of 4 steps, the last two of the second padded. The
# padded steps hold NaN everywhere: any arithmetic on them before they are left out would show.
MASK = np.array([[True] * 4, [True, True, False, False]])


def padded(x: np.ndarray) -> np.ndarray:
    out = np.full(MASK.shape, np.nan)
    out[MASK] = x
    return out


def padded_batch() -> Batch:
    return Batch(
        obs=t(np.zeros((2, 4, 2))),
        act=t(np.zeros((2, 4))),
        adv=t(padded(ADV)),
        ret=t(padded(RET)),
        logp_old=t(padded(LOGP_OLD)),
        v_old=t(padded(V_OLD)),
        memory=t(np.zeros((2, 3))),
        starts=torch.zeros(2, 4, dtype=torch.bool),
        mask=torch.from_numpy(MASK),
    )


def hand_ppo(value: str, vf_clip_param: float = 0.5) -> dict[str, float]:
    """ppo_loss's docstring, in numpy: the loss terms and the statistics."""
    r = np.exp(LOGP - LOGP_OLD)
    loss_pi = -np.mean(np.minimum(r * ADV, np.clip(r, 1 - EPS, 1 + EPS) * ADV))
    err = (V - RET) ** 2
    if value == "clip_vloss":
        v_clipped = V_OLD + np.clip(V - V_OLD, -EPS, EPS)
        loss_v = 0.5 * np.mean(np.maximum(err, (v_clipped - RET) ** 2))
    elif value == "vf_clip_param":
        loss_v = 0.5 * np.mean(np.minimum(err, vf_clip_param))
    else:
        loss_v = 0.5 * np.mean(err)
    return {
        "LossPi": loss_pi,
        "LossV": loss_v,
        "Entropy": np.mean(ENTROPY),
        "KL": np.mean((r - 1) - np.log(r)),
        "ClipFrac": np.mean(np.abs(r - 1) > EPS),
    }


@pytest.mark.parametrize("recurrent", [False, True], ids=["flat", "padded"])
@pytest.mark.parametrize("value", ["plain", "clip_vloss", "vf_clip_param"])
def test_ppo_loss_is_its_formula(value, recurrent):
    """L = L_pi + vf_coef L_v - ent_coef E[H] ent_scale + kl_coeff E[kl], each value-loss variant, the
    logged statistics, and the gradient of L_pi: zero at the steps whose clipped term is the smaller."""
    vf_coef, ent_coef, ent_scale, kl_coeff = 0.5, 0.01, 0.5, 0.3
    batch = padded_batch() if recurrent else flat_batch()
    shape = padded if recurrent else (lambda x: x)
    logp = t(shape(LOGP), grad=True)
    result = ppo_loss(
        batch,
        logp,
        t(shape(ENTROPY)),
        t(shape(V)),
        clip=EPS,
        vf_coef=vf_coef,
        ent_coef=ent_coef,
        ent_scale=ent_scale,
        clip_vloss=value == "clip_vloss",
        vf_clip_param=0.5 if value == "vf_clip_param" else None,
        kl=t(shape(KL)),
        kl_coeff=kl_coeff,
    )
    hand = hand_ppo(value)
    stats = result.stats()
    assert list(stats._fields) == list(hand)
    for name, expected in hand.items():
        assert float(getattr(stats, name)) == pytest.approx(expected, rel=1e-5, abs=1e-7), name
    assert hand["ClipFrac"] == pytest.approx(3 / 6)
    expected = hand["LossPi"] + vf_coef * hand["LossV"] - ent_coef * hand["Entropy"] * ent_scale
    expected += kl_coeff * np.mean(KL)
    assert result.loss.item() == pytest.approx(expected, rel=1e-5)
    assert float(result.mean_kl) == pytest.approx(np.mean(KL), rel=1e-6)
    assert not any(s.requires_grad for s in stats)

    # dL_pi/dlogp_t = -r_t A_t / N where the unclipped term is the smaller (or they tie), else 0.
    result.loss_pi.backward()
    r = np.exp(LOGP - LOGP_OLD)
    unclipped = r * ADV <= np.clip(r, 1 - EPS, 1 + EPS) * ADV
    grad = np.where(unclipped, -r * ADV / 6, 0.0)
    assert list(unclipped) == [False, False, True, True, True, True]
    got = logp.grad[torch.from_numpy(MASK)] if recurrent else logp.grad
    np.testing.assert_allclose(got.numpy(), grad, rtol=1e-5, atol=1e-8)
    if recurrent:
        assert torch.equal(logp.grad[~torch.from_numpy(MASK)], torch.zeros(2))


def test_ppo_loss_without_the_kl_penalty_has_no_kl_term():
    result = ppo_loss(flat_batch(), t(LOGP), t(ENTROPY), t(V), clip=EPS, vf_coef=0.5, ent_coef=0.0)
    hand = hand_ppo("plain")
    assert result.mean_kl is None
    assert result.loss.item() == pytest.approx(hand["LossPi"] + 0.5 * hand["LossV"], rel=1e-5)


@pytest.mark.parametrize("recurrent", [False, True], ids=["flat", "padded"])
def test_a2c_loss_is_its_formula(recurrent):
    """L = L_pi + vf_coef L_v - ent_coef E[H], L_pi = -E[logp A], L_v = E[(V - R)^2] (no 0.5)."""
    shape = padded if recurrent else (lambda x: x)
    batch = padded_batch() if recurrent else flat_batch()
    loss, stats = a2c_loss(batch, t(shape(LOGP)), t(shape(ENTROPY)), t(shape(V)), vf_coef=0.5, ent_coef=0.01)
    loss_pi, loss_v, ent = -np.mean(LOGP * ADV), np.mean((V - RET) ** 2), np.mean(ENTROPY)
    assert float(stats.LossPi) == pytest.approx(loss_pi, rel=1e-5)
    assert float(stats.LossV) == pytest.approx(loss_v, rel=1e-5)
    assert float(stats.Entropy) == pytest.approx(ent, rel=1e-5)
    assert loss.item() == pytest.approx(loss_pi + 0.5 * loss_v - 0.01 * ent, rel=1e-5)
    assert stats.floats() == pytest.approx({"LossPi": loss_pi, "LossV": loss_v, "Entropy": ent}, rel=1e-5)


@pytest.mark.parametrize("recurrent", [False, True], ids=["flat", "padded"])
def test_vpg_losses_are_their_formulas(recurrent):
    """L_pi = -E[logp A] - ent_coef E[H]; L_v = E[(V - R)^2]."""
    shape = padded if recurrent else (lambda x: x)
    batch = padded_batch() if recurrent else flat_batch()
    loss_pi, ent = vpg_loss(batch, t(shape(LOGP)), t(shape(ENTROPY)), ent_coef=0.1)
    assert float(ent) == pytest.approx(np.mean(ENTROPY), rel=1e-6)
    assert loss_pi.item() == pytest.approx(-np.mean(LOGP * ADV) - 0.1 * np.mean(ENTROPY), rel=1e-5)
    assert float(value_loss(t(V), t(RET))) == pytest.approx(np.mean((V - RET) ** 2), rel=1e-6)


@pytest.mark.parametrize("recurrent", [False, True], ids=["flat", "padded"])
def test_trpo_surrogate_is_its_formula(recurrent):
    """LossPi = -E[exp(logp - logp_old) A], and its gradient in logp -exp(logp - logp_old) A / n at the real
    steps (0 at padded ones)."""
    shape = padded if recurrent else (lambda x: x)
    batch = padded_batch() if recurrent else flat_batch()
    logp = t(shape(LOGP), grad=True)
    loss = trpo.surrogate_loss(batch, logp)
    ratio = np.exp(LOGP - LOGP_OLD)
    assert loss.item() == pytest.approx(-np.mean(ratio * ADV), rel=1e-5)
    loss.backward()
    grad = logp.grad[torch.from_numpy(MASK)] if recurrent else logp.grad
    assert grad.numpy() == pytest.approx(-ratio * ADV / 6, rel=1e-5)
    if recurrent:
        assert not logp.grad[~torch.from_numpy(MASK)].any()


def test_a3c_takes_a2cs_loss():
    assert a3c.a2c_loss is a2c.a2c_loss


# Tiny runs of each synchronous algorithm in a child process (the run sets thread counts and signal
# handlers): the names of the statistics every update hands to the logger, and progress.txt's header.
RECORD = """
import json, sys
import spinppo.utils.logx as logx
from spinppo.algos.a2c import a2c
from spinppo.algos.ppo import ppo
from spinppo.algos.vpg import vpg
from spinppo.envs.registry import EnvFactory

stored, store = [], logx.EpochLogger.store
def recording(self, **kv):
    if "LossPi" in kv:
        stored.append(list(kv))
    return store(self, **kv)
logx.EpochLogger.store = recording

tiny = dict(ac_kwargs=dict(hidden_sizes=(8,)), steps_per_epoch=64, epochs=1, num_envs=2)
runs = {
    "ppo": (ppo, dict(update_epochs=2, minibatch_size=32)),
    "ppo_kl": (ppo, dict(update_epochs=2, minibatch_size=32, kl_coeff=0.2)),
    "a2c": (a2c, dict(n_steps=4)),
    "vpg": (vpg, dict(train_v_iters=2)),
}
out = {}
for name, (algo, kwargs) in runs.items():
    stored.clear()
    path = f"{sys.argv[1]}/{name}"
    algo(EnvFactory("CartPole-v1"), **tiny, **kwargs, logger_kwargs=dict(output_dir=path, tensorboard=False))
    with open(f"{path}/progress.txt") as f:
        header = f.readline().rstrip("\\n").split("\\t")
    out[name] = {"stored": stored[:], "header": header}
print("RESULT", json.dumps(out))
"""


def test_log_keys_are_the_keys_every_update_logs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", RECORD, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env(),
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    expected = {
        "ppo": ppo.LOG_KEYS,
        "ppo_kl": ppo.LOG_KEYS + ppo.KL_PENALTY_KEYS,
        "a2c": a2c.LOG_KEYS,
        "vpg": vpg.LOG_KEYS,
    }
    assert ppo.LOG_KEYS[:5] == list(ppo.PPOStats._fields)
    for name, keys in expected.items():
        stored, header = result[name]["stored"], result[name]["header"]
        assert stored and all(s == keys for s in stored), (name, stored, keys)
        at = header.index(keys[0])
        assert header[at : at + len(keys)] == keys, (name, header)
    assert len(result["a2c"]["stored"]) == 64 // (2 * 4)  # A2C: one update per n-step rollout
