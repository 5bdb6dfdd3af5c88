"""The Natural Policy Gradient (Spinning Up's ``trpo(algo='npg')``): TRPO without the line search.

Each update takes the full natural step theta_old - sqrt(2 delta / (x^T H x)) x, x = H^-1 g by conjugate
gradient, whatever the surrogate and the KL turn out to be there (BacktrackIters is always 0). The math, the
MPI averaging and the epoch loop are TRPO's: ``spinppo.algos.trpo``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spinppo.algos.trpo import check_flags, natural_gradient_run
from spinppo.core.networks import MLPActorCritic

__all__ = ["check_flags", "npg"]


def npg(
    env_fn: Callable[[], Any],
    actor_critic: type[MLPActorCritic] = MLPActorCritic,
    ac_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    steps_per_epoch: int = 4000,
    epochs: int = 50,
    num_envs: int = 1,
    gamma: float = 0.99,
    lam: float = 0.97,
    delta: float = 0.01,
    vf_lr: float = 1e-3,
    train_v_iters: int = 80,
    vf_minibatch_size: int = 0,
    damping_coeff: float = 0.1,
    cg_iters: int = 10,
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
    """Train a policy with the Natural Policy Gradient (TRPO's full natural step, no line search); returns
    the trained actor-critic.

    Args:
        env_fn: makes the environment: a gymnasium Env (made ``num_envs`` times per rank) or a VectorEnv.
        actor_critic: the actor-critic class, built as ``actor_critic(obs_space, act_space, **ac_kwargs)``.
        ac_kwargs: hidden_sizes, activation, layer_norm, log_std_init, norm_obs, encoder, conv_filters,
            conv_activation, pixel_scale, weight_init, memory_size, sequence_length.
        seed: random seed; rank r uses seed + 10000 r.
        steps_per_epoch: environment steps per epoch over all ranks and environments.
        epochs: number of epochs (rollout + update) to run.
        num_envs: environments each rank steps together with one batched policy call.
        gamma: discount factor.
        lam: GAE lambda.
        delta: the KL radius: each step is scaled so that its quadratic model of the mean KL(old || new)
            is delta (Spinning Up's delta; no line search checks the true KL).
        vf_lr: value-function learning rate (Adam).
        train_v_iters: value-function gradient steps per epoch, or with vf_minibatch_size passes over the
            batch.
        vf_minibatch_size: samples per value-function step over all ranks: each of the train_v_iters
            passes takes a step on each shuffled minibatch of this size (SB3-contrib's TRPO: 20 passes
            of 128). 0: one step on the whole batch (Spinning Up's).
        damping_coeff: the damping added to the Fisher matrix, H + damping_coeff I, for the conjugate
            gradient's stability.
        cg_iters: conjugate-gradient iterations (Fisher-vector products) of the natural-gradient solve.
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
    return natural_gradient_run("npg", config)
