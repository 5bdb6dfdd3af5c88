"""Vanilla Policy Gradient with a learned value baseline and GAE-lambda advantages (Spinning Up's VPG).

grad J(theta) = E[ grad log pi(a_t|s_t) A_t ]        one policy step per epoch, on the whole batch
    L_pi = -E[log pi(a_t|s_t) A_t] - c_ent E[H]   (``vpg_loss``; its gradient: -grad J, less the bonus's)
    L_v  = E[(V(s_t) - R_t)^2]                     (``value_loss``)
V is fitted to the lambda-returns R_t by ``train_v_iters`` steps of L_v with its own optimiser. Every E is
over the batch's real steps: a recurrent batch's padded steps are left out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from spinppo.algos.onpolicy import OnPolicyRun, check_common_flags
from spinppo.core.buffer import Batch, real_steps
from spinppo.core.networks import MLPActorCritic
from spinppo.utils.mpi_pytorch import mpi_avg_grads


def vpg_loss(
    batch: Batch, logp: torch.Tensor, entropy: torch.Tensor, ent_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """VPG's policy loss on a batch (its ``adv`` and ``mask``), given the policy's ``logp`` and ``entropy``
    at its steps (``ac.evaluate``)::

        L_pi = -E[logp A] - ent_coef E[H]

    Returns ``(L_pi, E[H])``, means over the real steps (a recurrent batch's padded steps, where ``mask`` is
    False, take no part)."""
    adv = batch.adv
    if batch.mask is not None:
        logp, entropy, adv = real_steps(batch.mask, logp, entropy, adv)
    ent = entropy.mean()
    return -(logp * adv).mean() - ent_coef * ent, ent


def value_loss(v: torch.Tensor, ret: torch.Tensor) -> torch.Tensor:
    """VPG's value loss ``L_v = E[(V - R)^2]`` of values ``v`` and returns ``ret`` at the same (real)
    steps."""
    return ((v - ret) ** 2).mean()


class VPGStats(NamedTuple):
    """An update's statistics, named as they are logged (``LOG_KEYS``)."""

    LossPi: float  # L_pi before the policy step
    LossV: float  # L_v before the first value step
    Entropy: float  # E[H] before the policy step
    KL: float  # E[logp_old - logp] after the policy step: the step's KL(old || new), estimated


LOG_KEYS = list(VPGStats._fields)


def vpg(
    env_fn: Callable[[], Any],
    actor_critic: type[MLPActorCritic] = MLPActorCritic,
    ac_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    steps_per_epoch: int = 4000,
    epochs: int = 50,
    num_envs: int = 1,
    gamma: float = 0.99,
    lam: float = 0.97,
    pi_lr: float = 3e-4,
    vf_lr: float = 1e-3,
    train_v_iters: int = 80,
    ent_coef: float = 0.0,
    norm_reward: bool = False,
    norm_value: bool = False,
    time_horizon: int = 0,
    reward_scale: float = 1.0,
    initialize_from: str | None = None,
    eval_freq: int = 0,
    eval_episodes: int = 10,
    eval_deterministic: bool = True,
    precision: str = "fp32",
    stop_at_return: float | None = None,
    stop_at_train_return: float | None = None,
    logger_kwargs: dict[str, Any] | None = None,
    save_freq: int = 10,
    keep_checkpoints: int = 5,
) -> MLPActorCritic:
    """Train a policy with vanilla policy gradient; returns the trained actor-critic.

    Args:
        env_fn: makes the environment: a gymnasium Env (made ``num_envs`` times per rank) or a VectorEnv.
        actor_critic: the actor-critic class, built as ``actor_critic(obs_space, act_space, **ac_kwargs)``.
        ac_kwargs: hidden_sizes, activation, layer_norm, shared_trunk, log_std_init, norm_obs, encoder,
            conv_filters, conv_activation, pixel_scale, weight_init, memory_size, sequence_length.
        seed: random seed; rank r uses seed + 10000 r.
        steps_per_epoch: environment steps per epoch over all ranks and environments.
        epochs: number of epochs (rollout + update) to run.
        num_envs: environments each rank steps together with one batched policy call.
        gamma: discount factor.
        lam: GAE lambda.
        pi_lr: policy learning rate (Adam).
        vf_lr: value-function learning rate (Adam).
        train_v_iters: value-function gradient steps per epoch.
        ent_coef: entropy bonus coefficient.
        norm_reward: scale rewards by the running std of the discounted return.
        norm_value: the critic learns the lambda-returns divided by their running standard deviation
            and its outputs are scaled back wherever they enter a return (Tianshou's rew_norm); rewards
            stay unscaled, so it is meant with norm_reward false.
        time_horizon: cut each trajectory after this many steps and bootstrap it with V(next state), as
            ML-Agents' time_horizon does (0: only episode ends and the rollout's end cut).
        reward_scale: multiply every reward by this before any normalisation (ML-Agents'
            reward_signals.extrinsic.strength); EpRet stays the environment's own return.
        initialize_from: start from the policy of this run directory (or pyt_save/model*.pt file) instead
            of random weights (ML-Agents' initialize_from); the network must have the same shape.
        eval_freq: every this many epochs (and at the last) play eval_episodes episodes (see
            eval_deterministic) on separate copies of the environment: EvalEpRet, EvalEpLen, and the
            best policy kept as pyt_save/model_best.pt (test_policy --itr best). 0 turns evaluation off.
        eval_episodes: evaluation episodes, split over the ranks (seeded alike at every evaluation).
        eval_deterministic: how the evaluation's episodes act: true, the policy's deterministic action
            (the Gaussian's mean, each branch's most likely action); false, actions sampled from its
            distribution as in training (Tianshou's test episodes), from random generators of the
            evaluation's own seeded by seed and the epoch: the training rows are unchanged and a rerun or
            resume samples the same. The best policy is chosen by EvalEpRet either way.
        stop_at_return: end the run, with a checkpoint, once EvalEpRet reaches this (needs eval_freq).
        stop_at_train_return: end the run, with a checkpoint, once the mean return of the last 100
            training episodes (over all ranks) reaches this (RLlib's stop: episode_reward_mean).
        precision: the arithmetic of the image encoders' layers: fp32, or bf16 (bfloat16 under
            autocast, for CPUs with AVX-512 BF16 or AMX and for GPUs: about half the update's time on
            pixels; the features, heads, losses and optimiser stay float32). A training setting, not
            saved with the network: a replayed or exported policy computes in float32.
        logger_kwargs: EpochLogger arguments (output_dir, exp_name, ...).
        save_freq: save a checkpoint every this many epochs (and at the end).
        keep_checkpoints: how many of the latest checkpoints to keep (ML-Agents' name).
    """
    config = dict(locals())
    check_flags(config)
    # The policy and the value function are fitted by separate optimisers: they must not share a trunk.
    ac_kwargs = {"shared_trunk": False, **(ac_kwargs or {})}
    with OnPolicyRun(
        env_fn,
        actor_critic,
        ac_kwargs,
        seed,
        steps_per_epoch,
        num_envs=num_envs,
        gamma=gamma,
        lam=lam,
        norm_reward=norm_reward,
        norm_value=norm_value,
        time_horizon=time_horizon,
        reward_scale=reward_scale,
        initialize_from=initialize_from,
        eval_freq=eval_freq,
        eval_episodes=eval_episodes,
        eval_deterministic=eval_deterministic,
        stop_at_return=stop_at_return,
        stop_at_train_return=stop_at_train_return,
        logger_kwargs=logger_kwargs,
        config=config,
        algo="vpg",
        keep_checkpoints=keep_checkpoints,
        precision=precision,
    ) as run:
        ac = run.ac
        # An image network's encoder, shared by both heads, is the policy's: the value steps fit only v.
        v_params = list(ac.v.parameters())
        pi_params = [p for name, p in ac.named_parameters() if not name.startswith("v.")]
        pi_optimizer = torch.optim.Adam(pi_params, lr=pi_lr, fused=True)
        vf_optimizer = torch.optim.Adam(v_params, lr=vf_lr, fused=True)

        def update(batch: Batch) -> dict[str, float]:
            """One policy-gradient step on the whole batch, then ``train_v_iters`` value steps."""
            obs, act, mask = batch.obs, batch.act, batch.mask  # (mask: a recurrent batch's real steps)
            seq = {"memory": batch.memory, "starts": batch.starts}  # None without memory
            logp, entropy, _ = ac.evaluate(obs, act, **seq)
            loss_pi, ent = vpg_loss(batch, logp, entropy, ent_coef)
            pi_optimizer.zero_grad(set_to_none=False)
            loss_pi.backward()
            mpi_avg_grads(ac)  # every rank now holds the mean gradient
            pi_optimizer.step()
            ret, logp_old = real_steps(mask, batch.ret, batch.logp_old)
            with torch.no_grad():
                kl = float((logp_old - real_steps(mask, ac.evaluate(obs, act, **seq)[0])[0]).mean())
            # Value-function regression on the lambda-returns. The value steps fit only v, so what v takes
            # (normalised observations; an encoder's or LSTM's output) is computed once, not every step.
            with torch.no_grad():
                (feat,) = real_steps(mask, ac.features(obs, **seq))
            loss_v_first = None
            for _ in range(train_v_iters):
                loss_v = value_loss(ac.v(feat).squeeze(-1), ret)
                vf_optimizer.zero_grad(set_to_none=False)
                loss_v.backward()
                mpi_avg_grads(ac)
                vf_optimizer.step()
                loss_v_first = loss_v.item() if loss_v_first is None else loss_v_first
            return VPGStats(loss_pi.item(), loss_v_first, ent.item(), kl)._asdict()

        optimizers = {"pi_optimizer": pi_optimizer, "vf_optimizer": vf_optimizer}
        for epoch in run.epochs(epochs, save_freq, optimizers):
            batch = run.collect()
            stats = update(batch)
            run.after_update(stats)
            run.end_epoch(epoch, LOG_KEYS)
    return ac


def check_flags(config: dict[str, Any]) -> None:
    """A UserError for the first bad flag of ``vpg(**config)``: the shared checks and VPG's own."""
    check_common_flags(config, positive=("pi_lr", "vf_lr", "train_v_iters"), nonnegative=("ent_coef",))
