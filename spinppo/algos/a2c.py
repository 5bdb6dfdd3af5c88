"""Synchronous Advantage Actor-Critic (A2C), data-parallel over MPI ranks.

    L = L_pi + c_v L_v - c_reg H,   L_pi = -E[log pi(a_t|s_t) A_t],   L_v = E[(V(s_t) - R_t)^2]

Every rank steps ``num_envs`` environments for ``n_steps`` steps, then all ranks take ONE gradient step
together. With ``lam=1`` the advantages are n-step returns bootstrapped with V; with ``lam<1``, GAE.
Every E is over the batch's real steps: a recurrent batch's padded steps are left out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from spinppo.algos.onpolicy import OnPolicyRun, check_common_flags
from spinppo.core.buffer import Batch, real_steps
from spinppo.core.networks import MLPActorCritic
from spinppo.utils.errors import UserError
from spinppo.utils.mpi_pytorch import mpi_avg_grads
from spinppo.utils.mpi_tools import num_procs


class A2CStats(NamedTuple):
    """``a2c_loss``'s statistics, named as they are logged (``LOG_KEYS``)."""

    LossPi: torch.Tensor  # L_pi
    LossV: torch.Tensor  # L_v, before c_v
    Entropy: torch.Tensor  # E[H] (a Gaussian's summed over its dimensions)

    def floats(self) -> dict[str, float]:
        """The statistics as the logger takes them: Python floats by name."""
        return {name: value.item() for name, value in self._asdict().items()}


def a2c_loss(
    batch: Batch, logp: torch.Tensor, entropy: torch.Tensor, v: torch.Tensor, vf_coef: float, ent_coef: float
) -> tuple[torch.Tensor, A2CStats]:
    """A2C's (and A3C's) loss of a batch (its ``adv``, ``ret`` and ``mask``), given the policy's ``logp``,
    ``entropy`` and value ``v`` at its steps (``ac.evaluate``)::

        loss = L_pi + vf_coef L_v - ent_coef E[H],   L_pi = -E[logp A],   L_v = E[(V - R)^2]

    Returns ``(loss, A2CStats(L_pi, L_v, E[H]))``. Every E is over the real steps: a recurrent batch's
    padded steps, where ``mask`` is False, take no part."""
    adv, ret = batch.adv, batch.ret
    if batch.mask is not None:
        logp, entropy, v, adv, ret = real_steps(batch.mask, logp, entropy, v, adv, ret)
    loss_pi = -(logp * adv).mean()
    loss_v = ((v - ret) ** 2).mean()
    ent = entropy.mean()
    loss = loss_pi + vf_coef * loss_v - ent_coef * ent
    return loss, A2CStats(loss_pi, loss_v, ent)


LOG_KEYS = list(A2CStats._fields)


def a2c(
    env_fn: Callable[[], Any],
    actor_critic: type[MLPActorCritic] = MLPActorCritic,
    ac_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    steps_per_epoch: int = 4000,
    epochs: int = 50,
    num_envs: int = 8,
    n_steps: int = 5,
    gamma: float = 0.99,
    lam: float = 1.0,
    lr: float = 7e-4,
    vf_coef: float = 0.5,
    ent_coef: float = 0.0,
    max_grad_norm: float = 0.5,
    norm_adv: bool = False,
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
    preempt: float | None = None,
    logger_kwargs: dict[str, Any] | None = None,
    save_freq: int = 10,
    keep_checkpoints: int = 5,
) -> MLPActorCritic:
    """Train a policy with A2C; returns the trained actor-critic.

    Args:
        env_fn: makes the environment: a gymnasium Env (made ``num_envs`` times per rank) or a VectorEnv.
        actor_critic: the actor-critic class, built as ``actor_critic(obs_space, act_space, **ac_kwargs)``.
        ac_kwargs: hidden_sizes, activation, layer_norm, shared_trunk, log_std_init, norm_obs, encoder,
            conv_filters, conv_activation, pixel_scale, weight_init, memory_size, sequence_length.
        seed: random seed; rank r uses seed + 10000 r.
        steps_per_epoch: environment steps per epoch over all ranks (a whole number of rollouts).
        epochs: number of epochs; each holds steps_per_epoch / (ranks x num_envs x n_steps) updates.
        num_envs: environments each rank steps together with one batched policy call.
        n_steps: steps per environment between gradient steps.
        gamma: discount factor.
        lam: GAE lambda; 1.0 gives n-step returns.
        lr: RMSprop learning rate.
        vf_coef: value-loss coefficient c_v.
        ent_coef: entropy regularisation coefficient c_reg.
        max_grad_norm: clip the global gradient norm to this (0 turns it off).
        norm_adv: normalise advantages over each rollout (over all ranks).
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
        preempt: DD-PPO's preemption for each n-step rollout: once this fraction of the ranks (e.g. 0.6)
            has collected its n steps, the others stop (after at least a quarter of theirs) and the
            gradient step uses what was collected. None: off, and a run is reproducible from its seed.
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
    rollout = num_procs() * num_envs * n_steps  # steps over all ranks between two gradient steps
    with OnPolicyRun(
        env_fn,
        actor_critic,
        ac_kwargs,
        seed,
        steps_per_epoch,
        rollouts_per_epoch=steps_per_epoch // rollout,
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
        preempt=preempt,
        norm_adv=norm_adv,
        logger_kwargs=logger_kwargs,
        config=config,
        algo="a2c",
        keep_checkpoints=keep_checkpoints,
        precision=precision,
    ) as run:
        ac = run.ac
        optimizer = torch.optim.RMSprop(ac.parameters(), lr=lr, alpha=0.99, eps=1e-5, foreach=True)

        def update(batch: Batch) -> dict[str, float]:
            """One gradient step on the n-step batch of every rank."""
            logp, entropy, v = ac.evaluate(batch.obs, batch.act, memory=batch.memory, starts=batch.starts)
            loss, stats = a2c_loss(batch, logp, entropy, v, vf_coef, ent_coef)
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            mpi_avg_grads(ac)  # every rank now holds the mean gradient
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_(ac.parameters(), max_grad_norm)
            optimizer.step()
            return stats.floats()

        for epoch in run.epochs(epochs, save_freq, optimizers={"optimizer": optimizer}):
            for _ in range(run.rollouts_per_epoch):
                batch = run.collect()
                stats = update(batch)
                run.after_update(stats)
            run.end_epoch(epoch, LOG_KEYS)
    return ac


def check_flags(config: dict[str, Any]) -> None:
    """A UserError for the first bad flag of ``a2c(**config)``: the shared checks and A2C's own."""
    # Without env_fn: A2C's own check of --steps_per_epoch below is the stricter one, in A2C's words.
    shared = {k: v for k, v in config.items() if k != "env_fn"}
    check_common_flags(
        shared, positive=("lr", "n_steps"), nonnegative=("vf_coef", "ent_coef", "max_grad_norm")
    )
    rollout = num_procs() * config["num_envs"] * config["n_steps"]
    if config["steps_per_epoch"] % rollout:
        raise UserError(
            f"--steps_per_epoch {config['steps_per_epoch']} must be a multiple of ranks x num_envs x n_steps "
            f"= {rollout}, e.g. {max(1, round(config['steps_per_epoch'] / rollout)) * rollout}"
        )
