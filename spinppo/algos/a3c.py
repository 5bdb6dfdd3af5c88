"""Asynchronous Advantage Actor-Critic (A3C; Mnih et al. 2016) over MPI ranks.

    L = L_pi + c_v L_v - c_reg H,   L_pi = -E[log pi(a_t|s_t) A_t],   L_v = E[(V(s_t) - R_t)^2]

A2C's loss on each rank's own n-step rollouts, but no rank waits for another: every rank sends its
gradient to rank 0, which applies it to the shared parameters with the shared RMSprop statistics as it
arrives and sends the current parameters back (``spinppo.algos.asynchronous`` tells how, and what a
resume restores). A gradient computed on parameters more than ``max_staleness`` updates old is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from spinppo.algos.a2c import a2c_loss
from spinppo.algos.asynchronous import AsyncTraining
from spinppo.algos.onpolicy import OnPolicyRun, check_common_flags
from spinppo.core.buffer import Batch
from spinppo.core.networks import MLPActorCritic
from spinppo.utils.errors import UserError
from spinppo.utils.mpi_tools import num_procs


def a3c(
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
    max_staleness: int | None = None,
    norm_adv: bool = False,
    norm_reward: bool = False,
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
    """Train a policy with A3C (at least 2 MPI ranks); returns the trained actor-critic (rank 0's
    parameters, on every rank).

    Args:
        env_fn: makes the environment: a gymnasium Env (made ``num_envs`` times per rank) or a VectorEnv.
        actor_critic: the actor-critic class, built as ``actor_critic(obs_space, act_space, **ac_kwargs)``.
        ac_kwargs: hidden_sizes, activation, layer_norm, shared_trunk, log_std_init, norm_obs, encoder,
            conv_filters, conv_activation, pixel_scale, weight_init, memory_size, sequence_length.
        seed: random seed; rank r uses seed + 10000 r. Runs are not reproducible from it: gradients
            arrive in whatever order the ranks finish.
        steps_per_epoch: environment steps per epoch over all ranks: rank 0 logs a row whenever the
            steps the ranks report add up to another steps_per_epoch (at least ranks x num_envs x n_steps).
        epochs: number of epochs.
        num_envs: environments each rank steps together with one batched policy call.
        n_steps: steps per environment between two gradients of a rank (A3C's t_max).
        gamma: discount factor.
        lam: GAE lambda; 1.0 gives n-step returns.
        lr: learning rate of the shared RMSprop.
        vf_coef: value-loss coefficient c_v.
        ent_coef: entropy regularisation coefficient c_reg.
        max_grad_norm: clip each gradient's global norm to this (0 turns it off).
        max_staleness: drop a gradient computed on parameters more than this many updates older than
            rank 0's (the Dropped column counts them); None: 4 x the number of ranks.
        norm_adv: normalise the advantages of each rollout (over that rollout only).
        norm_reward: scale rewards by the running std of the discounted return (each rank its own).
        time_horizon: cut each trajectory after this many steps and bootstrap it with V(next state), as
            ML-Agents' time_horizon does (0: only episode ends and the rollout's end cut).
        reward_scale: multiply every reward by this before any normalisation (ML-Agents'
            reward_signals.extrinsic.strength); EpRet stays the environment's own return.
        initialize_from: start from the policy of this run directory (or pyt_save/model*.pt file) instead
            of random weights (ML-Agents' initialize_from); the network must have the same shape.
        eval_freq: every this many epochs (and at the last) rank 0 plays eval_episodes episodes (see
            eval_deterministic) with the shared parameters on separate copies of the environment (the
            other ranks wait for it after their rollout in hand): EvalEpRet, EvalEpLen, and the best
            policy kept as pyt_save/model_best.pt. 0 turns evaluation off.
        eval_episodes: evaluation episodes (seeded alike at every evaluation).
        eval_deterministic: how the evaluation's episodes act: true, the policy's deterministic action
            (the Gaussian's mean, each branch's most likely action); false, actions sampled from its
            distribution as in training (Tianshou's test episodes), from random generators of the
            evaluation's own seeded by seed and the epoch (rank 0's training generators are left alone).
            The best policy is chosen by EvalEpRet either way.
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
    if max_staleness is None:
        max_staleness = 4 * num_procs()
    with OnPolicyRun(
        env_fn,
        actor_critic,
        ac_kwargs,
        seed,
        num_procs() * num_envs * n_steps,  # one rollout of n_steps on every rank, for the buffer's size
        rollouts_per_epoch=1,
        num_envs=num_envs,
        gamma=gamma,
        lam=lam,
        norm_reward=norm_reward,
        time_horizon=time_horizon,
        reward_scale=reward_scale,
        initialize_from=initialize_from,
        norm_adv=False,  # (a3c normalises each rollout's advantages itself: no collective)
        logger_kwargs=logger_kwargs,
        config=config,
        algo="a3c",
        keep_checkpoints=keep_checkpoints,
        precision=precision,
    ) as run:
        ac = run.ac

        def gradient(batch: Batch) -> dict[str, float]:
            """A2C's loss of one rollout of this rank, backpropagated into ac's gradients."""
            logp, entropy, v = ac.evaluate(batch.obs, batch.act, memory=batch.memory, starts=batch.starts)
            loss, stats = a2c_loss(batch, logp, entropy, v, vf_coef, ent_coef)
            loss.backward()
            return stats.floats()

        def shared_rmsprop(params: Any) -> torch.optim.Optimizer:
            return torch.optim.RMSprop(params, lr=lr, alpha=0.99, eps=1e-5, foreach=True)

        training = AsyncTraining(
            run,
            shared_rmsprop,
            max_grad_norm,
            max_staleness,
            norm_adv,
            env_fn,
            eval_freq,
            eval_episodes,
            stop_at_return,
            seed,
            stop_at_train_return,
            steps_per_epoch,  # a row whenever the ranks' steps add up to this
            eval_deterministic=eval_deterministic,
        )
        try:
            training.train(gradient, epochs, save_freq)
        finally:
            training.close()
    return ac


def check_flags(config: dict[str, Any]) -> None:
    """A UserError for the first bad flag of ``a3c(**config)``: at least 2 ranks, the shared checks, A3C's
    own."""
    parameters = getattr(config.get("env_fn"), "environment_parameters", None) or {}
    if any(len(p.get("curriculum", ())) > 1 for p in parameters.values() if isinstance(p, dict)):
        raise UserError(
            "a curriculum (environment parameters with lessons) needs a synchronous algorithm: train with "
            "a2c or ppo"
        )
    if num_procs() < 2:
        raise UserError(
            "a3c needs at least 2 MPI ranks (rank 0 holds the shared parameters; with one rank A3C is A2C): "
            "run it with --cpu 2 (or more) or mpirun -np 2, or train with a2c"
        )
    staleness = config.get("max_staleness")
    if staleness is not None and staleness < 0:
        raise UserError(f"--max_staleness must be 0 or more (updates), or None (4 x ranks), not {staleness}")
    shared = {k: v for k, v in config.items() if k != "env_fn"}  # (the check below replaces its rollout one)
    check_common_flags(
        shared, positive=("lr", "n_steps"), nonnegative=("vf_coef", "ent_coef", "max_grad_norm")
    )
    rollout = num_procs() * config["num_envs"] * config["n_steps"]
    if config["steps_per_epoch"] < rollout:
        raise UserError(
            f"--steps_per_epoch {config['steps_per_epoch']} must be at least one rollout of every rank, "
            f"ranks x num_envs x n_steps = {rollout}"
        )
