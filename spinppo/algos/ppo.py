"""Proximal Policy Optimization (clip), data-parallel over MPI ranks.

    L = -E[min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)] + c_v 0.5 E[(V(s_t) - R_t)^2] - beta E[H(pi(.|s_t))]
        (+ c_kl E[KL(pi_old(.|s_t) || pi(.|s_t))] with --kl_coeff, RLlib's adaptive KL penalty)

with r_t = pi(a_t|s_t) / pi_old(a_t|s_t), A_t the GAE-lambda advantage and R_t the lambda-return.
``ppo_loss`` below is L on one minibatch (with the value clip variants). Several epochs of minibatch SGD
per rollout; gradients are averaged over ranks after every backward. The logged LossPi, LossV, Entropy,
KL and ClipFrac (``PPOStats``) are means over the update's last pass over the batch.

With ``kl_coeff`` > 0 the penalty's coefficient c_kl adapts after every update as RLlib's PPO adapts
it (``adapt_kl_coeff``) from PolicyKL, the mean exact KL over every minibatch of the update averaged over
the ranks (identical on every rank); it is kept in the checkpoint (``run_state``), so a resumed run goes
on with the coefficient it had, and logged as KLCoeff (the coefficient the epoch's update used).

Every E is over a minibatch's real steps: a recurrent batch's padded steps are left out (``ppo_loss``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from spinppo.algos.onpolicy import OnPolicyRun, check_common_flags
from spinppo.core.buffer import Batch, real_steps
from spinppo.core.minibatches import MinibatchTable, StatSums
from spinppo.core.networks import MLPActorCritic
from spinppo.utils.errors import UserError
from spinppo.utils.mpi_pytorch import clip_grad_norm_flat, flatten_parameters, mpi_avg_grads
from spinppo.utils.mpi_tools import mpi_avg, num_procs


class PPOStats(NamedTuple):
    """One minibatch's statistics, named as they are logged (``LOG_KEYS`` and the update's sums use these)."""

    LossPi: torch.Tensor  # the clipped surrogate's loss
    LossV: torch.Tensor  # the value loss, before c_v
    Entropy: torch.Tensor  # the mean entropy H (a Gaussian's summed over its dimensions)
    KL: torch.Tensor  # the approximate KL(old || new), E[(r_t - 1) - log r_t]
    ClipFrac: torch.Tensor  # the share of steps whose ratio r_t lies outside [1 - eps, 1 + eps]


@dataclass(slots=True)
class PPOLoss:
    """``ppo_loss``'s result: ``loss`` to backpropagate, its terms, and what ``stats`` is made of."""

    loss: torch.Tensor
    loss_pi: torch.Tensor
    loss_v: torch.Tensor
    entropy: torch.Tensor
    mean_kl: torch.Tensor | None  # E[KL(old || new)], exact, when the penalty is on (else None)
    ratio: torch.Tensor  # r_t at the real steps
    log_ratio: torch.Tensor
    clip: float

    def stats(self) -> PPOStats:
        """The minibatch's statistics, without gradients. Asked for only when they are logged: on every
        minibatch of every pass they would cost ~3% of the update."""
        with torch.no_grad():
            approx_kl = ((self.ratio - 1) - self.log_ratio).mean()  # low-variance KL estimate
            clipfrac = ((self.ratio - 1).abs() > self.clip).float().mean()
        return PPOStats(
            self.loss_pi.detach(), self.loss_v.detach(), self.entropy.detach(), approx_kl, clipfrac
        )


def ppo_loss(
    mb: Batch,
    logp: torch.Tensor,
    entropy: torch.Tensor,
    v: torch.Tensor,
    clip: float,
    vf_coef: float,
    ent_coef: float,
    ent_scale: float = 1.0,
    clip_vloss: bool = False,
    vf_clip_param: float | None = None,
    kl: torch.Tensor | None = None,
    kl_coeff: float = 0.0,
) -> PPOLoss:
    """PPO's loss on a minibatch ``mb`` (its ``adv``, ``ret``, ``logp_old``, ``v_old`` and ``mask``), given
    the current policy's ``logp``, ``entropy`` and value ``v`` at its steps (``ac.evaluate``)::

        r_t  = exp(logp - logp_old)
        L_pi = -E[min(r_t A_t, clip(r_t, 1 - clip, 1 + clip) A_t)]
        L_v  = 0.5 E[(V - R)^2]
               clip_vloss:    0.5 E[max((V - R)^2, (V_old + clip(V - V_old, -clip, clip) - R)^2)]
               vf_clip_param: 0.5 E[min((V - R)^2, vf_clip_param)]            (RLlib's)
        loss = L_pi + vf_coef L_v - ent_coef E[H] ent_scale  (+ kl_coeff E[kl] when ``kl`` is given)

    ``ent_scale``: 1 / action dimensions for ML-Agents' per-dimension entropy bonus, else 1. ``kl``: each
    step's exact KL(old || new) (``ac.kl``), for RLlib's penalty. Every E is over the real steps: a recurrent
    minibatch's padded steps, where ``mask`` is False, take no part."""
    adv, ret, logp_old, v_old = mb.adv, mb.ret, mb.logp_old, mb.v_old
    if mb.mask is not None:
        logp, entropy, v, adv, ret, logp_old, v_old = real_steps(
            mb.mask, logp, entropy, v, adv, ret, logp_old, v_old
        )
    log_ratio = logp - logp_old
    ratio = log_ratio.exp()  # r_t = pi(a|s) / pi_old(a|s)
    clipped_ratio = torch.clamp(ratio, 1 - clip, 1 + clip)
    loss_pi = -torch.min(ratio * adv, clipped_ratio * adv).mean()
    if clip_vloss:
        v_clipped = v_old + torch.clamp(v - v_old, -clip, clip)
        loss_v = 0.5 * torch.max((v - ret) ** 2, (v_clipped - ret) ** 2).mean()
    elif vf_clip_param is not None:  # RLlib's: the squared error itself capped
        loss_v = 0.5 * torch.clamp((v - ret) ** 2, max=vf_clip_param).mean()
    else:
        loss_v = 0.5 * ((v - ret) ** 2).mean()
    ent = entropy.mean()
    loss = loss_pi + vf_coef * loss_v - ent_coef * ent * ent_scale
    mean_kl = None
    if kl is not None:  # RLlib's: kl_coeff x the mean KL(old || new), beside the clipped surrogate
        (kl_steps,) = real_steps(mb.mask, kl)
        mean_kl = kl_steps.mean()
        loss = loss + kl_coeff * mean_kl
    return PPOLoss(loss, loss_pi, loss_v, ent, mean_kl, ratio, log_ratio, clip)


# The loss's statistics (the last pass's means; KL averaged over ranks), then the update's own values.
LOG_KEYS = [*PPOStats._fields, "StopIter", "LR", "ClipRange", "EntCoef"]
KL_PENALTY_KEYS = ["PolicyKL", "KLCoeff"]  # logged too when --kl_coeff is on


def adapt_kl_coeff(kl_coeff: float, kl: float, kl_target: float) -> float:
    """RLlib's PPO ``update_kl``: the next coefficient of the KL penalty after an update whose mean KL
    was ``kl``: x1.5 when it passed 2 x ``kl_target``, x0.5 when it fell under ``kl_target`` / 2, else the
    same."""
    if kl > 2.0 * kl_target:
        return kl_coeff * 1.5
    if kl < 0.5 * kl_target:
        return kl_coeff * 0.5
    return kl_coeff


def ppo(
    env_fn: Callable[[], Any],
    actor_critic: type[MLPActorCritic] = MLPActorCritic,
    ac_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    steps_per_epoch: int = 4096,
    epochs: int = 50,
    num_envs: int = 8,
    gamma: float = 0.99,
    lam: float = 0.95,
    clip_ratio: float = 0.2,
    lr: float = 1e-3,
    anneal_lr: bool = True,
    update_epochs: int = 10,
    minibatch_size: int = 512,
    vf_coef: float = 0.5,
    ent_coef: float = 0.01,
    anneal_ent: bool = True,
    anneal_clip: bool = False,
    ent_mean_over_dims: bool = False,
    clip_vloss: bool = False,
    vf_clip_param: float | None = None,
    max_grad_norm: float = 0.5,
    target_kl: float | None = None,
    kl_coeff: float = 0.0,
    kl_target: float = 0.01,
    norm_adv: bool = True,
    norm_reward: bool = True,
    norm_value: bool = False,
    recompute_adv: bool = False,
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
    """Train a policy with PPO-clip; returns the trained actor-critic.

    Args:
        env_fn: makes the environment: a gymnasium Env (made ``num_envs`` times per rank) or a VectorEnv.
        actor_critic: the actor-critic class, built as ``actor_critic(obs_space, act_space, **ac_kwargs)``.
        ac_kwargs: hidden_sizes, activation, layer_norm, shared_trunk, log_std_init, norm_obs, encoder,
            conv_filters, conv_activation, pixel_scale, weight_init, memory_size, sequence_length.
        seed: random seed; rank r uses seed + 10000 r for its environments and sampling.
        steps_per_epoch: environment steps per epoch over all ranks and environments (the batch).
        epochs: number of epochs (rollout + update) to run.
        num_envs: environments each rank steps together with one batched policy call.
        gamma: discount factor.
        lam: GAE lambda (ML-Agents' lambd).
        clip_ratio: PPO's clip range epsilon.
        lr: Adam learning rate.
        anneal_lr: decay the learning rate linearly to 0 over the epochs.
        update_epochs: passes over the batch per update (ML-Agents' num_epoch). 10, as in CleanRL: on
            Walker2d it learned more steadily than 20 (no seed stuck near 1000) at half the update's cost.
        minibatch_size: samples per gradient step over all ranks (ML-Agents' batch_size).
        vf_coef: value-loss coefficient c_v.
        ent_coef: entropy bonus coefficient (ML-Agents' beta); it keeps the policy from turning
            deterministic early (Hopper's 1000-point plateau).
        anneal_ent: decay the entropy bonus linearly to 0 over the epochs (ML-Agents' beta_schedule),
            so that the policy explores early and can settle late.
        anneal_clip: decay the clip range linearly from clip_ratio to 0.1 over the epochs (ML-Agents'
            epsilon_schedule: linear; a clip_ratio below 0.1 stays constant). The value clip follows it.
        ent_mean_over_dims: a Gaussian policy's entropy bonus takes the mean of its action dimensions'
            entropies instead of their sum, as ML-Agents' beta does (the logged Entropy stays the sum).
        clip_vloss: clip the value function's change like the policy's (usually no help).
        vf_clip_param: cap each sample's squared value error at this (RLlib's vf_clip_param, 10 in its
            tuned examples): errors beyond it give no gradient. None: no cap.
        max_grad_norm: clip the global gradient norm to this (0 turns it off).
        target_kl: stop an update early when the approximate KL, averaged over ranks, passes 1.5 x this.
        kl_coeff: RLlib's adaptive KL penalty beside the clip (its kl_coeff; 0.5 in its tuned Pong PPO):
            the loss adds this x the mean exact KL(old || new) of the policy's action distributions, and
            after each update the coefficient grows x1.5 when that KL, averaged over ranks, passed 2 x
            kl_target, halves when it fell under kl_target / 2. 0: off.
        kl_target: the KL the adaptive penalty aims at (RLlib's kl_target).
        norm_adv: normalise advantages over the batch (over all ranks).
        norm_reward: scale rewards by the running std of the discounted return.
        norm_value: the critic learns the lambda-returns divided by their running standard deviation
            and its outputs are scaled back wherever they enter a return (Tianshou's rew_norm); rewards
            stay unscaled, so it is meant with norm_reward false.
        recompute_adv: before each pass over the batch after the first, compute the advantages and
            lambda-returns again with the critic as the update has left it (Tianshou's recompute_adv;
            "What Matters in On-Policy RL", section 3.5); the ratio's old log-probabilities and the
            value clip's old values stay the rollout's. Feed-forward networks only.
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
        preempt: DD-PPO's preemption: once this fraction of the ranks (e.g. 0.6) has collected its share
            of an epoch, the others stop collecting (after at least a quarter of theirs) and the update
            uses what was collected. None: off, and a run is reproducible from its seed; with it, not.
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
        norm_adv=norm_adv,
        time_horizon=time_horizon,
        reward_scale=reward_scale,
        initialize_from=initialize_from,
        eval_freq=eval_freq,
        eval_episodes=eval_episodes,
        eval_deterministic=eval_deterministic,
        stop_at_return=stop_at_return,
        stop_at_train_return=stop_at_train_return,
        preempt=preempt,
        logger_kwargs=logger_kwargs,
        config=config,
        algo="ppo",
        keep_checkpoints=keep_checkpoints,
        precision=precision,
    ) as run:
        ac = run.ac
        local_minibatch = minibatch_size // num_procs()  # each rank's share of a minibatch
        # The speed trick: every weight in one tensor, so that Adam, clipping and zeroing are one operation
        # each per step instead of one per layer (per-operation overhead is most of a small network's step).
        params = flatten_parameters(ac)
        optimizer = torch.optim.Adam([params], lr=lr, eps=1e-5, fused=True)

        # ML-Agents' beta weighs the Gaussian's entropy per action dimension (ent_mean_over_dims).
        ent_scale = 1.0 / math.prod(ac.act_shape) if ent_mean_over_dims and not ac.discrete else 1.0

        def old_distributions(obs: Any, batch: Batch, rows: int, chunk: int) -> torch.Tensor:
            """The policy head's outputs for the batch before the update, [rows, A] (a recurrent batch:
            [rows, L, A]), in chunks of ``chunk`` rows (no gradients): what the KL penalty compares with."""
            layout, outs = ac.layout, []
            memory, starts = batch.memory, batch.starts
            with torch.no_grad():
                for a in range(0, rows, chunk):
                    rows_here = slice(a, a + chunk)
                    outs.append(
                        ac.evaluate(
                            layout.take(obs, rows_here),
                            batch.act[rows_here],
                            obs_normalized=True,
                            memory=None if memory is None else memory[rows_here],
                            starts=None if starts is None else starts[rows_here],
                            with_dist=True,
                        )[3]
                    )
            return torch.cat(outs)

        def update(batch: Batch, ent_weight: float, clip: float, kl_weight: float) -> dict[str, float]:
            """``update_epochs`` passes of minibatch SGD on ``ppo_loss`` (with the KL penalty weighed
            ``kl_weight`` when --kl_coeff is on); the statistics to log."""
            # A row of the batch is one step, or with memory one sequence of sequence_length steps (each
            # environment's last one padded when it does not divide the rollout). Every rank takes as many
            # gradient steps as a whole rollout makes (a preempted one: smaller ones).
            per_row = run.buf.sequence_length
            minibatch_rows = max(1, local_minibatch // per_row)
            rows = run.buf.rows
            # Observation statistics are fixed during the update: normalise the batch once.
            obs = ac.normalize_obs(batch.obs)
            penalty = kl_coeff > 0
            with_dist = {"with_dist": True} if penalty else {}  # evaluate's 4th result: the distributions
            dist_old, old_log_std = None, None
            if penalty:  # the old policy's distributions, and a Gaussian's log std, before any step
                old_log_std = None if ac.discrete else ac.log_std.detach().clone()
                rows_now = ac.layout.batch_size(obs)  # (fewer than rows after a preemption)
                dist_old = old_distributions(obs, batch, rows_now, minibatch_rows)
            table = MinibatchTable(batch, obs=obs, dist_old=dist_old)
            stats = StatSums(*PPOStats._fields, device=run.device)
            passes = max(1, rows // minibatch_rows)  # minibatches per pass over the batch
            stop_iter, kl = update_epochs, 0.0
            policy_kl, steps = torch.zeros((), device=run.device), 0  # the exact KL summed, minibatches
            for i in range(update_epochs):
                # Statistics of the last pass only (and of every pass when target_kl needs its KL).
                track = target_kl is not None or i == update_epochs - 1
                stats.zero()
                if recompute_adv and i > 0:  # the critic has moved: A_t and R_t from its values now
                    adv, ret = run.recompute_advantages(batch)
                    table.replace("adv", adv)
                    table.replace("ret", ret)
                for mb in table.shuffled(minibatch_rows, passes):
                    logp, entropy, v, *dist = ac.evaluate(
                        mb.obs, mb.act, obs_normalized=True, memory=mb.memory, starts=mb.starts, **with_dist
                    )
                    step_kl = ac.kl(mb.dist_old, dist[0], old_log_std) if penalty else None
                    result = ppo_loss(
                        mb,
                        logp,
                        entropy,
                        v,
                        clip=clip,
                        vf_coef=vf_coef,
                        ent_coef=ent_weight,
                        ent_scale=ent_scale,
                        clip_vloss=clip_vloss,
                        vf_clip_param=vf_clip_param,
                        kl=step_kl,
                        kl_coeff=kl_weight,
                    )
                    if penalty:
                        policy_kl += result.mean_kl.detach()
                        steps += 1

                    params.grad.zero_()
                    result.loss.backward()
                    mpi_avg_grads(ac)  # every rank now holds the mean gradient
                    if max_grad_norm:
                        clip_grad_norm_flat(params, max_grad_norm)
                    optimizer.step()

                    if track:
                        stats.add(**result.stats()._asdict())
                if track:
                    kl = mpi_avg(stats.mean("KL", passes))
                    if target_kl is not None and kl > 1.5 * target_kl:
                        stop_iter = i + 1
                        break
            lr_now = optimizer.param_groups[0]["lr"]
            out = {
                **stats.means(passes),
                "KL": kl,
                "StopIter": stop_iter,
                "LR": lr_now,
                "ClipRange": clip,
                "EntCoef": ent_weight,
            }
            if penalty:  # every rank takes as many steps: the mean over the ranks is the same everywhere
                out.update(PolicyKL=mpi_avg(float(policy_kl) / steps), KLCoeff=kl_weight)
            return out

        log_keys = LOG_KEYS + (KL_PENALTY_KEYS if kl_coeff > 0 else [])

        for epoch in run.epochs(epochs, save_freq, optimizers={"optimizer": optimizer}):
            remaining = 1.0 - epoch / epochs  # linear decay of the learning rate, entropy bonus, clip range
            if anneal_lr:
                for group in optimizer.param_groups:
                    group["lr"] = lr * remaining
            ent_weight = ent_coef * remaining if anneal_ent else ent_coef
            clip_floor = min(clip_ratio, 0.1)  # ML-Agents' floor for a decaying epsilon
            clip = clip_floor + (clip_ratio - clip_floor) * remaining if anneal_clip else clip_ratio

            # The KL penalty's coefficient: the checkpoint's after a resume, kept in run_state for the next.
            state = run.checkpointer.run_state
            kl_weight = float(state.setdefault("kl_coeff", kl_coeff)) if kl_coeff > 0 else 0.0

            batch = run.collect()
            stats = update(batch, ent_weight, clip, kl_weight)
            run.after_update(stats)
            if kl_coeff > 0:
                state["kl_coeff"] = adapt_kl_coeff(kl_weight, stats["PolicyKL"], kl_target)
            run.end_epoch(epoch, log_keys)
    return ac


def check_flags(config: dict[str, Any]) -> None:
    """A UserError for the first bad flag of ``ppo(**config)``: the shared checks and PPO's own."""
    check_common_flags(
        config,
        positive=("lr", "update_epochs", "minibatch_size", "clip_ratio", "kl_target"),
        nonnegative=("vf_coef", "ent_coef", "max_grad_norm", "kl_coeff"),
    )
    if config["target_kl"] is not None and not config["target_kl"] > 0:
        raise UserError(f"--target_kl must be positive (or None to turn it off), not {config['target_kl']}")
    if config.get("recompute_adv") and (config["ac_kwargs"] or {}).get("memory_size"):
        raise UserError(
            "--recompute_adv evaluates the critic at single observations, without a recurrent policy's "
            "memory (--memory_size): drop one of them"
        )
    vf_clip = config.get("vf_clip_param")
    if vf_clip is not None and not vf_clip > 0:
        raise UserError(f"--vf_clip_param must be positive (or None to turn it off), not {vf_clip}")
    if vf_clip is not None and config["clip_vloss"]:
        raise UserError(
            "--vf_clip_param and --clip_vloss are two ways of clipping the value loss: choose one"
        )
    minibatch_size, steps_per_epoch = config["minibatch_size"], config["steps_per_epoch"]
    if minibatch_size % num_procs() or minibatch_size > steps_per_epoch:
        raise UserError(
            f"--minibatch_size {minibatch_size} must divide among {num_procs()} ranks and not exceed "
            f"--steps_per_epoch {steps_per_epoch}"
        )
