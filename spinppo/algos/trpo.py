"""Trust Region Policy Optimization and the Natural Policy Gradient (Spinning Up's TRPO and NPG), over MPI.

    L(theta) = E[ pi_theta(a|s) / pi_old(a|s) A ]         the surrogate; LossPi = -L (``surrogate_loss``)
    D(theta) = E[ KL(pi_old(.|s) || pi_theta(.|s)) ]       the mean KL, exact (``mean_kl``)
    maximise L(theta) subject to D(theta) <= delta

Taking L to first order and D to second order at theta_old (where D and its gradient are 0) gives, with
g = grad LossPi and H = the Hessian of D (the Fisher information matrix):

    x     = H^-1 g         by ``conjugate_gradient``: cg_iters iterations, each one Fisher-vector product
                           (H + damping_coeff I) v (``fisher_vector_product``: double backpropagation of D)
    step  = sqrt(2 delta / (x^T H x)) x      the step whose quadratic model of D is exactly delta
    TRPO: theta = theta_old - backtrack_coeff^j step for the first j < backtrack_iters whose LossPi is no
          higher than theta_old's and whose D <= delta (``line_search``); if none, theta_old is kept
    NPG:  theta = theta_old - step           (the full natural step, no line search)

V is fitted to the lambda-returns by ``train_v_iters`` Adam steps (``vf_lr``) on L_v = E[(V - R)^2]
(``vpg.value_loss``), each on the whole batch (Spinning Up's), or with ``vf_minibatch_size`` each a pass of
steps on shuffled minibatches (SB3-contrib's TRPO: ``n_critic_updates`` epochs of ``batch_size``). Every E
is over the batch's real steps: a recurrent batch's padded steps are left out.

Over MPI each rank computes on its own rollout, and every quantity a decision depends on is a mean over the
ranks, one Allreduce each (``RankMean``): g (with LossPi beside it), every Fisher-vector product (the
cg_iters of the solve and the one for x^T H x), and each line-search evaluation (LossPi and D together).
Every rank therefore computes the same x and accepts the same step, and the parameters stay bit-identical.
The collectives of one update, logged as ``Collectives``:

    1 (g, LossPi) + cg_iters + 1 (x^T H x) + the line search's evaluations (TRPO: BacktrackIters + 1, or
    backtrack_iters when none is accepted; NPG: 1) + the value steps' gradients (train_v_iters, times the
    minibatches of a pass with vf_minibatch_size)

that is 1 + 10 + 1 + 1 + 80 = 93 with the defaults when the full step is accepted, and cg_iters + 1 = 11
Fisher-vector products. (Beyond these, every algorithm's rollout normalises advantages over the ranks and
``after_update`` broadcasts the parameters once.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch

from spinppo.algos.onpolicy import OnPolicyRun, check_common_flags
from spinppo.algos.vpg import value_loss
from spinppo.core.buffer import Batch, real_steps
from spinppo.core.minibatches import shuffled_rows
from spinppo.core.networks import MLPActorCritic
from spinppo.utils.errors import UserError
from spinppo.utils.mpi_pytorch import mpi_avg_grads
from spinppo.utils.mpi_tools import mpi_avg, num_procs

EPS = 1e-8  # Spinning Up's: keeps the conjugate gradient's and the step size's divisions finite


def surrogate_loss(batch: Batch, logp: torch.Tensor) -> torch.Tensor:
    """TRPO's policy loss on a batch (its ``adv``, ``logp_old`` and ``mask``), given the policy's ``logp``
    at its steps (``ac.evaluate``)::

        LossPi = -E[exp(logp - logp_old) A]

    the mean over the real steps (a recurrent batch's padded steps, where ``mask`` is False, take no
    part)."""
    logp, logp_old, adv = real_steps(batch.mask, logp, batch.logp_old, batch.adv)
    return -(torch.exp(logp - logp_old) * adv).mean()


def mean_kl(
    ac: MLPActorCritic,
    batch: Batch,
    dist_old: torch.Tensor,
    dist: torch.Tensor,
    old_log_std: torch.Tensor | None,
) -> torch.Tensor:
    """``D = E[KL(pi_old || pi)]``, exact, over the batch's real steps: ``dist_old`` and ``dist`` are the
    policy head's outputs before the update and now (``evaluate(..., with_dist=True)``), ``old_log_std``
    a Gaussian's log std before the update (None for a discrete policy)."""
    (kl,) = real_steps(batch.mask, ac.kl(dist_old, dist, old_log_std))
    return kl.mean()


class TRPOStats(NamedTuple):
    """An update's statistics, named as they are logged (``LOG_KEYS``); Spinning Up's TRPO columns and
    the update's cost."""

    LossPi: float  # LossPi before the step, averaged over ranks
    LossV: float  # L_v before the first value step
    KL: float  # D after the step: the accepted step's mean KL(old || new), averaged over ranks
    DeltaLossPi: float  # LossPi after the step minus before (negative: the surrogate improved)
    DeltaLossV: float  # L_v after the value steps minus before
    BacktrackIters: int  # j of the step taken, backtrack_coeff^j; backtrack_iters: none taken; NPG: 0
    Entropy: float  # E[H] before the step
    Collectives: int  # the update's Allreduces (the module docstring)


LOG_KEYS = list(TRPOStats._fields)


class RankMean:
    """Means over the ranks, one Allreduce each, counted: ``rank_mean(x)`` is the tensor ``x``'s
    element-wise mean over every rank (the same bits on each); ``count`` is how many were asked for. At
    one rank there is nothing to average and no call is made, but the count is the same."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.count += 1
        if num_procs() == 1:
            return x.detach()
        # Through the host: on a GPU (--device) one copy out and one back, on the CPU no copy.
        return torch.from_numpy(mpi_avg(x.detach().cpu().numpy())).to(device=x.device, dtype=x.dtype)


def flat_grad(output: torch.Tensor, params: list[torch.nn.Parameter], **kwargs: Any) -> torch.Tensor:
    """The gradient of the scalar ``output`` with respect to ``params`` as one flat vector (a parameter it
    does not depend on contributes zeros); ``kwargs`` go to ``torch.autograd.grad``."""
    grads = torch.autograd.grad(output, params, allow_unused=True, **kwargs)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params, strict=True)]
    )


def set_flat_params(params: list[torch.nn.Parameter], flat: torch.Tensor) -> None:
    """Copy the flat vector ``flat`` into ``params`` in place (so the optimiser and the checkpoint keep
    the same tensors)."""
    with torch.no_grad():
        for p, value in zip(params, flat.split([p.numel() for p in params]), strict=True):
            p.copy_(value.view_as(p))


def fisher_vector_product(
    kl_grad: torch.Tensor, params: list[torch.nn.Parameter], v: torch.Tensor
) -> torch.Tensor:
    """``H v``, H the Hessian of the mean KL D at the current parameters (the Fisher matrix there), by
    differentiating ``kl_grad . v``: ``kl_grad`` is D's flat gradient with respect to ``params``, made with
    ``create_graph=True`` (``flat_grad``); its graph is kept, so one forward pass serves every product."""
    return flat_grad(kl_grad @ v, params, retain_graph=True)


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int
) -> torch.Tensor:
    """Spinning Up's ``cg``: ``x`` with ``matvec(x)`` ~ ``b``, for a symmetric positive-definite matrix given
    only through its products ``matvec(v)``, after ``iters`` iterations from x = 0 (exact after as many
    iterations as ``b`` has entries, up to rounding)."""
    x = torch.zeros_like(b)
    r = b.clone()  # the residual b - A x, with x = 0
    p = r.clone()
    r_dot_old = r @ r
    for _ in range(iters):
        z = matvec(p)
        alpha = r_dot_old / (p @ z + EPS)
        x += alpha * p
        r -= alpha * z
        r_dot_new = r @ r
        p = r + (r_dot_new / r_dot_old) * p
        r_dot_old = r_dot_new
    return x


class LineSearch(NamedTuple):
    """``line_search``'s verdict: the fraction of the full step taken (backtrack_coeff^j, 0 for none), j
    (``BacktrackIters``), and LossPi and D there."""

    fraction: float
    backtrack_iters: int
    loss_pi: float
    kl: float


def line_search(
    evaluate: Callable[[float], tuple[float, float]],
    loss_pi_old: float,
    delta: float,
    backtrack_iters: int,
    backtrack_coeff: float,
) -> LineSearch:
    """Spinning Up's backtracking line search: for j = 0, 1, ... backtrack_iters - 1 set the parameters to
    the fraction backtrack_coeff^j of the full step, ``evaluate(fraction) -> (LossPi, D)``, and accept the
    first whose LossPi <= ``loss_pi_old`` and D <= ``delta``. None accepted: the fraction 0 (the old
    parameters, which the caller restores), with j = ``backtrack_iters``, LossPi = ``loss_pi_old`` and
    D = 0."""
    for j in range(backtrack_iters):
        fraction = backtrack_coeff**j
        loss_pi, kl = evaluate(fraction)
        if kl <= delta and loss_pi <= loss_pi_old:
            return LineSearch(fraction, j, loss_pi, kl)
    return LineSearch(0.0, backtrack_iters, loss_pi_old, 0.0)


class PolicyStep(NamedTuple):
    """``natural_gradient_step``'s result: LossPi before and after, the step's D, its BacktrackIters, the
    entropy before, the full step (the parameters moved by -fraction x ``full_step``) and the fraction."""

    loss_pi: float
    loss_pi_new: float
    kl: float
    backtrack_iters: int
    entropy: float
    full_step: torch.Tensor
    fraction: float


def natural_gradient_step(
    ac: MLPActorCritic,
    params: list[torch.nn.Parameter],
    batch: Batch,
    rank_mean: RankMean,
    delta: float,
    damping_coeff: float,
    cg_iters: int,
    backtrack_iters: int,
    backtrack_coeff: float,
    line_search_on: bool = True,
) -> PolicyStep:
    """One TRPO policy update of the policy parameters ``params`` (those of ``ac`` that are the policy's)
    on ``batch``, with every mean over ranks through ``rank_mean`` (the module docstring); without
    ``line_search_on``, NPG's: the full natural step. The parameters are left at the step taken."""
    with twice_differentiable(ac):
        return _natural_gradient_step(
            ac,
            params,
            batch,
            rank_mean,
            delta,
            damping_coeff,
            cg_iters,
            backtrack_iters,
            backtrack_coeff,
            line_search_on,
        )


@contextlib.contextmanager
def twice_differentiable(ac: MLPActorCritic) -> Iterator[None]:
    """cuDNN's LSTM has no double backward ("Double backwards is not supported for CuDNN RNNs"), which
    the Fisher-vector products need: a recurrent policy on a GPU runs the policy step with cuDNN off
    (PyTorch's own LSTM kernels, twice differentiable), as PyTorch's message advises. Elsewhere (the CPU,
    networks without an LSTM: cuDNN's convolutions have a double backward) nothing changes."""
    if getattr(ac, "lstm", None) is None or ac.device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = False
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = before


def _natural_gradient_step(
    ac: MLPActorCritic,
    params: list[torch.nn.Parameter],
    batch: Batch,
    rank_mean: RankMean,
    delta: float,
    damping_coeff: float,
    cg_iters: int,
    backtrack_iters: int,
    backtrack_coeff: float,
    line_search_on: bool,
) -> PolicyStep:
    seq = {"memory": batch.memory, "starts": batch.starts}  # None without memory
    obs = ac.normalize_obs(batch.obs)  # the observation statistics are fixed during the update
    logp, entropy, _, dist = ac.evaluate(obs, batch.act, obs_normalized=True, with_dist=True, **seq)
    dist_old = dist.detach()
    old_log_std = None if ac.discrete else ac.log_std.detach().clone()
    loss_pi = surrogate_loss(batch, logp)
    (entropy,) = real_steps(batch.mask, entropy)

    # g and LossPi, averaged over the ranks in one Allreduce.
    g_and_loss = rank_mean(torch.cat([flat_grad(loss_pi, params, retain_graph=True), loss_pi.view(1)]))
    g, loss_pi_old = g_and_loss[:-1], float(g_and_loss[-1])
    # D is 0 at theta_old, but its Hessian is the Fisher matrix: its gradient's graph serves every product.
    kl_grad = flat_grad(mean_kl(ac, batch, dist_old, dist, old_log_std), params, create_graph=True)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        return rank_mean(fisher_vector_product(kl_grad, params, v)) + damping_coeff * v

    x = conjugate_gradient(hvp, g, cg_iters)
    full_step = torch.sqrt(2 * delta / (x @ hvp(x) + EPS)) * x
    old = torch.cat([p.detach().reshape(-1) for p in params])

    def evaluate(fraction: float) -> tuple[float, float]:
        """Set the parameters to theta_old - fraction x full_step; LossPi and D there, over the ranks."""
        set_flat_params(params, old - fraction * full_step)
        with torch.no_grad():
            logp, _, _, dist = ac.evaluate(obs, batch.act, obs_normalized=True, with_dist=True, **seq)
            both = torch.stack([surrogate_loss(batch, logp), mean_kl(ac, batch, dist_old, dist, old_log_std)])
        loss_new, kl = rank_mean(both).tolist()
        return loss_new, kl

    if line_search_on:
        found = line_search(evaluate, loss_pi_old, delta, backtrack_iters, backtrack_coeff)
        if found.fraction == 0.0:
            set_flat_params(params, old)  # no step kept the constraint and improved: keep theta_old
    else:
        found = LineSearch(1.0, 0, *evaluate(1.0))
    return PolicyStep(
        loss_pi_old,
        found.loss_pi,
        found.kl,
        found.backtrack_iters,
        float(entropy.detach().mean()),
        full_step,
        found.fraction,
    )


def trpo(
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
    backtrack_iters: int = 10,
    backtrack_coeff: float = 0.8,
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
    """Train a policy with Trust Region Policy Optimization; returns the trained actor-critic.

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
        delta: the KL radius: the step's mean KL(old || new) may not exceed it (Spinning Up's delta).
        vf_lr: value-function learning rate (Adam).
        train_v_iters: value-function gradient steps per epoch, or with vf_minibatch_size passes over the
            batch.
        vf_minibatch_size: samples per value-function step over all ranks: each of the train_v_iters
            passes takes a step on each shuffled minibatch of this size (SB3-contrib's TRPO: 20 passes
            of 128). 0: one step on the whole batch (Spinning Up's).
        damping_coeff: the damping added to the Fisher matrix, H + damping_coeff I, for the conjugate
            gradient's stability.
        cg_iters: conjugate-gradient iterations (Fisher-vector products) of the natural-gradient solve.
        backtrack_iters: the line search's steps: fractions backtrack_coeff^j, j < backtrack_iters, of the
            full natural step are tried until one improves the surrogate within the KL radius.
        backtrack_coeff: how much each backtracking step shrinks the step, in (0, 1).
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
    return natural_gradient_run("trpo", config)


def natural_gradient_run(algo: str, config: dict[str, Any]) -> MLPActorCritic:
    """The run of TRPO (``algo`` "trpo") or NPG ("npg": no line search): ``config`` holds the checked
    keywords of ``trpo()`` or ``npg.npg()`` (the run's config.json). Returns the trained actor-critic."""
    c = config
    line_search_on = algo == "trpo"
    # The policy and the value function are fitted separately: they must not share a trunk.
    ac_kwargs = {"shared_trunk": False, **(c["ac_kwargs"] or {})}
    with OnPolicyRun(
        c["env_fn"],
        c["actor_critic"],
        ac_kwargs,
        c["seed"],
        c["steps_per_epoch"],
        num_envs=c["num_envs"],
        gamma=c["gamma"],
        lam=c["lam"],
        norm_reward=c["norm_reward"],
        norm_value=c["norm_value"],
        time_horizon=c["time_horizon"],
        reward_scale=c["reward_scale"],
        initialize_from=c["initialize_from"],
        eval_freq=c["eval_freq"],
        eval_episodes=c["eval_episodes"],
        eval_deterministic=c["eval_deterministic"],
        stop_at_return=c["stop_at_return"],
        stop_at_train_return=c["stop_at_train_return"],
        logger_kwargs=c["logger_kwargs"],
        config=config,
        algo=algo,
        keep_checkpoints=c["keep_checkpoints"],
        precision=c["precision"],
    ) as run:
        ac = run.ac
        # An image network's encoder, shared by both heads, is the policy's: the value steps fit only v.
        pi_params = [p for name, p in ac.named_parameters() if not name.startswith("v.")]
        vf_optimizer = torch.optim.Adam(ac.v.parameters(), lr=c["vf_lr"], fused=True)
        cg_iters, train_v_iters = c["cg_iters"], c["train_v_iters"]
        backtrack_iters = c.get("backtrack_iters", 0)
        # The value steps of a pass: one on the whole batch, or one per minibatch of each rank's share.
        local_steps = c["steps_per_epoch"] // num_procs()
        vf_minibatch = c.get("vf_minibatch_size", 0) // num_procs() or local_steps
        vf_steps = max(1, local_steps // vf_minibatch)
        run.logger.log(
            f"{algo.upper()} update: {cg_iters + 1} Fisher-vector products and {cg_iters + 2} + line search "
            f"+ {train_v_iters * vf_steps} Allreduces (the Collectives column)"
        )

        def update(batch: Batch) -> dict[str, float]:
            """The natural-gradient policy step on the whole batch, then ``train_v_iters`` value steps."""
            rank_mean = RankMean()
            step = natural_gradient_step(
                ac,
                pi_params,
                batch,
                rank_mean,
                delta=c["delta"],
                damping_coeff=c["damping_coeff"],
                cg_iters=cg_iters,
                backtrack_iters=backtrack_iters,
                backtrack_coeff=c.get("backtrack_coeff", 1.0),
                line_search_on=line_search_on,
            )
            # Value-function regression on the lambda-returns. The value steps fit only v, so what v takes
            # (normalised observations; an encoder's or LSTM's output) is computed once, not every step.
            seq = {"memory": batch.memory, "starts": batch.starts}
            (ret,) = real_steps(batch.mask, batch.ret)
            with torch.no_grad():
                (feat,) = real_steps(batch.mask, ac.features(batch.obs, **seq))
                # L_v before the value steps; on whole-batch steps the first step's own loss is that.
                loss_v_first = value_loss(ac.v(feat).squeeze(-1), ret).item() if vf_steps > 1 else None
            for _ in range(train_v_iters):
                # Every rank takes vf_steps steps (a preempted rollout's shorter batch: smaller ones).
                minibatches = (
                    [None] if vf_steps == 1 else shuffled_rows(len(ret), vf_minibatch, vf_steps, ret.device)
                )
                for rows in minibatches:
                    f, r = (feat, ret) if rows is None else (feat[rows], ret[rows])
                    loss_v = value_loss(ac.v(f).squeeze(-1), r)
                    if loss_v_first is None:
                        loss_v_first = loss_v.item()
                    vf_optimizer.zero_grad(set_to_none=False)
                    loss_v.backward()
                    mpi_avg_grads(ac.v)  # one Allreduce: the value head's gradients only
                    vf_optimizer.step()
            with torch.no_grad():
                loss_v_last = value_loss(ac.v(feat).squeeze(-1), ret).item()
            return TRPOStats(
                LossPi=step.loss_pi,
                LossV=loss_v_first,
                KL=step.kl,
                DeltaLossPi=step.loss_pi_new - step.loss_pi,
                DeltaLossV=loss_v_last - loss_v_first,
                BacktrackIters=step.backtrack_iters,
                Entropy=step.entropy,
                Collectives=rank_mean.count + train_v_iters * vf_steps,
            )._asdict()

        for epoch in run.epochs(c["epochs"], c["save_freq"], {"vf_optimizer": vf_optimizer}):
            batch = run.collect()
            stats = update(batch)
            run.after_update(stats)
            run.end_epoch(epoch, LOG_KEYS)
    return ac


def check_flags(config: dict[str, Any]) -> None:
    """A UserError for the first bad flag of ``trpo(**config)`` (or ``npg(**config)``, which has no
    line-search flags): the shared checks and TRPO's own."""
    positive = ("delta", "vf_lr", "train_v_iters", "cg_iters")
    if "backtrack_iters" in config:
        positive += ("backtrack_iters",)
    check_common_flags(config, positive=positive, nonnegative=("damping_coeff", "vf_minibatch_size"))
    vf_minibatch, steps_per_epoch = config.get("vf_minibatch_size", 0), config["steps_per_epoch"]
    if vf_minibatch and (vf_minibatch % num_procs() or vf_minibatch > steps_per_epoch):
        raise UserError(
            f"--vf_minibatch_size {vf_minibatch} must divide among {num_procs()} ranks and not exceed "
            f"--steps_per_epoch {steps_per_epoch} (or be 0: one value step on the whole batch)"
        )
    coeff = config.get("backtrack_coeff", 0.5)
    if not 0 < coeff < 1:
        raise UserError(f"--backtrack_coeff must be in (0, 1), such as 0.8 (Spinning Up's), not {coeff}")
