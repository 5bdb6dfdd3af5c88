"""Trajectory storage for N environments x T steps, with GAE-lambda advantages and returns.

Gymnasium's two ways an episode ends are kept apart:
- terminated: the state is terminal, its future is worth 0, so nothing is bootstrapped;
- truncated (time limit): the episode was cut, so the return is bootstrapped with V(final observation),
  folded into the last reward as ``r + gamma * V(s_final)``;
- the epoch cut: every unfinished trajectory is bootstrapped with V(next observation) (``finish``);
- ML-Agents' time horizon (``time_horizon`` > 0): a trajectory is also cut, and bootstrapped with
  V(next observation), once it is that many steps long (counted from its episode's start, its last cut or
  the rollout's start): the lambda-return stops there, as it does in ML-Agents' trainer.

A recurrent policy's buffer (``memory_size`` > 0) also keeps each environment's memory at every
sequence start (every ``sequence_length`` steps of the rollout) and hands the batch out as sequences.
When ``sequence_length`` does not divide the rollout, each environment's last sequence is shorter: it is
padded to ``sequence_length`` (its last step repeated) and the batch's ``mask`` marks the real steps, as
ML-Agents and RLlib pad and mask; the losses take their means over the real steps only (``real_steps``).
A ``sequence_length`` longer than the rollout makes each environment's rollout one sequence, unpadded.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from spinppo.core.encoders import ObsLayout
from spinppo.utils.mpi_tools import mpi_statistics_scalar


@dataclass(slots=True)
class Batch:
    """One rank's rollout as training data, in torch tensors (``GAEBuffer.get``).

    Feed-forward: every field [n, ...], n = steps x environments, sharing the buffer's arrays (but ``adv``
    when normalised). A recurrent policy's batch is sequences instead: every step field [S, L, ...]
    (S sequences of L = ``sequence_length`` steps of one environment). The losses read these names.
    """

    obs: Any  # [n, obs_dim] vectors; an image in its stored dtype (uint8); a Dict space: a dict of those
    act: torch.Tensor  # the actions taken (int64 for a discrete space)
    adv: torch.Tensor  # GAE-lambda advantages (normalised when get() was asked to)
    ret: torch.Tensor  # lambda-returns, the value function's targets
    logp_old: torch.Tensor  # log pi_old(a|s): the log-probability of each action under the rollout's policy
    v_old: torch.Tensor  # V_old(s): the rollout's value estimates
    memory: torch.Tensor | None = None  # recurrent: [S, memory_size], the memory before each sequence
    starts: torch.Tensor | None = None  # recurrent: [S, L] bool, True where a step begins an episode
    mask: torch.Tensor | None = None  # recurrent and padded: [S, L] bool, True at the real steps

    def to(self, device: torch.device) -> Batch:
        """This batch with every tensor on ``device``: one copy each, once per rollout (itself when it is
        there already: the CPU's)."""
        if device.type == "cpu":
            return self

        def move(x: Any) -> Any:
            if isinstance(x, dict):
                return {k: v.to(device) for k, v in x.items()}
            return None if x is None else x.to(device)

        return Batch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})


class GAEBuffer:
    """Stores one rank's rollout of ``steps`` steps of ``num_envs`` environments.

    Call ``store`` once per step with per-environment arrays, ``finish(last_val)`` after the last step,
    then ``get()`` for the training ``Batch``. Advantages are normalised over all ranks.

    ``obs_dim`` is the length of vector observations, or an ``ObsLayout`` (``ObsLayout.from_space``) for
    images and Dicts: images are stored in their own dtype (uint8 pixels stay uint8, a quarter of float32),
    a Dict as a dict of arrays by key (``self.obs``, and the batch's ``obs``).

    With ``memory_size`` > 0 (a recurrent policy) ``store`` takes the memory the policy was given at that
    step, kept at the steps that start a sequence of ``sequence_length`` (at most ``steps``: a longer one
    is cut to the rollout); a last, shorter sequence is padded in ``get`` (the module doc).
    """

    def __init__(
        self,
        obs_dim: int | ObsLayout,
        act_shape: tuple[int, ...],
        num_envs: int,
        steps: int,
        gamma: float = 0.99,
        lam: float = 0.95,
        discrete: bool = False,
        time_horizon: int = 0,
        memory_size: int = 0,
        sequence_length: int = 1,
    ) -> None:
        self.layout = obs_dim if isinstance(obs_dim, ObsLayout) else ObsLayout.vector(obs_dim)
        self.obs: Any = self.layout.zeros((steps, num_envs))
        self.act = np.zeros((steps, num_envs, *act_shape), dtype=np.int64 if discrete else np.float32)
        self.rew = np.zeros((steps, num_envs), dtype=np.float32)
        # gamma V(final observation) where a truncated episode is bootstrapped (0 elsewhere), kept apart
        # from the reward so that ``recompute`` can put the current critic's value in its place; and the
        # final observations themselves, by step: (environments, their observations).
        self.boot = np.zeros((steps, num_envs), dtype=np.float32)
        self.final_obs: dict[int, tuple[np.ndarray, Any]] = {}
        self.val = np.zeros((steps, num_envs), dtype=np.float32)
        self.logp = np.zeros((steps, num_envs), dtype=np.float32)
        self.done = np.zeros((steps, num_envs), dtype=bool)
        self.adv = np.zeros((steps, num_envs), dtype=np.float32)
        self.ret = np.zeros((steps, num_envs), dtype=np.float32)
        self.gamma, self.lam = gamma, lam
        self.time_horizon = time_horizon
        self.steps, self.num_envs = steps, num_envs
        self.memory_size = memory_size
        # Steps in one row of the batch: a sequence (no longer than the rollout), or one step.
        self.sequence_length = min(sequence_length, steps) if memory_size else 1
        # The memory before each sequence's first step: [sequences per environment, envs, memory_size].
        self.memory = (
            np.zeros((-(-steps // self.sequence_length), num_envs, memory_size), dtype=np.float32)
            if memory_size
            else None
        )
        self.ptr = 0
        self.filled = 0  # steps in the batch at the last finish()
        # Stored values are the critic's outputs; times value_scale they are in the rewards' units
        # (--norm_value: the critic learns returns / value_scale; 1.0 otherwise).
        self.value_scale = 1.0

    @property
    def rows(self) -> int:
        """Rows of a whole rollout's batch: steps x environments, or with memory its sequences (every
        environment's last one counted whole, padded or not)."""
        return self.num_envs * -(-self.steps // self.sequence_length)

    def store(
        self,
        obs: Any,
        act: np.ndarray,
        rew: np.ndarray,
        val: np.ndarray,
        logp: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        final_val: np.ndarray | None = None,
        memory: np.ndarray | None = None,
        final_obs: Any = None,
    ) -> None:
        """Record one step of every environment.

        ``final_val`` is V(final observation) for environments whose episode was truncated at this step
        (other entries are ignored); it is required when any entry of ``truncated`` is set. ``memory``:
        a recurrent policy's memory before this step, [envs, memory_size] (required then). ``final_obs``:
        the final observations of those truncated (not terminated) environments, stacked in their order,
        kept for ``recompute`` (optional).
        """
        t = self.ptr
        assert t < self.steps, "buffer full: call finish() and get() before storing more"
        if t == 0:  # a new rollout: no bootstraps yet
            self.final_obs = {}
            self.boot.fill(0.0)
        if self.memory is not None and t % self.sequence_length == 0:
            if memory is None:
                raise ValueError("a recurrent policy's buffer needs the memory at every sequence start")
            self.memory[t // self.sequence_length] = memory
        if self.layout.flat:
            self.obs[t] = obs
        else:
            self.layout.assign(self.obs, t, obs)
        self.act[t] = act
        self.val[t] = val
        self.logp[t] = logp
        self.rew[t] = np.asarray(rew, dtype=np.float32)
        bootstrap = np.logical_and(truncated, np.logical_not(terminated))
        if bootstrap.any():
            if final_val is None:
                raise ValueError("a truncated episode needs final_val, V(final observation), to bootstrap")
            final_val = np.where(bootstrap, final_val, 0.0).astype(np.float32) * self.value_scale
            self.boot[t] = self.gamma * final_val
            if final_obs is not None:
                self.final_obs[t] = (np.flatnonzero(bootstrap), final_obs)
        self.done[t] = np.logical_or(terminated, truncated)
        self.ptr += 1

    def finish(self, last_val: np.ndarray) -> None:
        """Compute GAE advantages and lambda-returns; ``last_val`` is V(next observation) per environment.

        Normally after all ``steps`` steps; a rollout cut short (DD-PPO's preemption) may finish after
        fewer: the batch then holds the ``filled`` steps stored, every trajectory bootstrapped where it
        stopped, as at the end of a full rollout.

        With ``value_scale`` (``--norm_value``) the advantages are computed from the values times it and
        ``ret`` holds the lambda-returns divided by it: the critic's targets in its own units."""
        assert 0 < self.ptr <= self.steps, f"buffer holds {self.ptr} of {self.steps} steps"
        self.filled = self.ptr
        self._gae(self.val[: self.filled], last_val, self.rew[: self.filled] + self.boot[: self.filled])

    def recompute(self, val: np.ndarray, last_val: np.ndarray, final_val: dict[int, np.ndarray]) -> None:
        """GAE advantages and lambda-returns again (into ``adv`` and ``ret``) from values of the current
        critic: ``val`` [filled, envs] at the stored observations, ``last_val`` [envs] at the observations
        after the rollout, and ``final_val`` {step: values} at the truncated episodes' ``final_obs``, in
        their order; all in the critic's own units, as ``store`` and ``finish`` take them. PPO's
        ``--recompute_adv`` calls it before each pass over the batch after the first (Tianshou's
        recompute_adv). The stored ``val`` (the batch's ``v_old``) stays the rollout's."""
        boot = self.boot[: self.filled].copy()
        for t, (envs, _) in self.final_obs.items():
            boot[t, envs] = self.gamma * (np.asarray(final_val[t], dtype=np.float32) * self.value_scale)
        self._gae(np.asarray(val, dtype=np.float32), last_val, self.rew[: self.filled] + boot)

    def _gae(self, val: np.ndarray, last_val: np.ndarray, rew: np.ndarray) -> None:
        """``adv`` and ``ret`` of the ``filled`` steps from the critic's values ``val`` [filled, envs],
        ``last_val`` [envs] and the rewards with their truncation bootstraps ``rew`` [filled, envs]."""
        # Values in the rewards' units; the returns, the critic's targets, in its own (value_scale).
        scale = self.value_scale
        val = val * scale
        next_val = np.asarray(last_val, dtype=np.float32) * scale
        gae = np.zeros(self.num_envs, dtype=np.float32)
        discount = self.gamma * self.lam
        # Where the lambda-return stops after step t: an episode end, and with a time horizon a cut.
        stop = self.done if not self.time_horizon else self.done | self._horizon_cuts()
        for t in reversed(range(self.filled)):
            not_done = 1.0 - self.done[t]
            delta = rew[t] + self.gamma * next_val * not_done - val[t]
            gae = delta + discount * (1.0 - stop[t]) * gae
            self.adv[t] = gae
            next_val = val[t]
        self.ret[: self.filled] = (self.adv[: self.filled] + val) / scale

    def _horizon_cuts(self) -> np.ndarray:
        """[steps, envs] True after the step that makes a trajectory ``time_horizon`` steps long."""
        cuts = np.zeros_like(self.done)
        length = np.zeros(self.num_envs, dtype=np.int64)
        for t in range(self.filled):
            length += 1
            cuts[t] = (length >= self.time_horizon) & ~self.done[t]
            length[cuts[t] | self.done[t]] = 0
        return cuts

    def get(self, normalize_adv: bool = True) -> Batch:
        """The rollout as a ``Batch`` of flat tensors; resets the buffer for the next epoch.

        ``obs`` is [n, obs_dim] for vectors, [n, *shape] in the stored dtype for an image, a dict of those
        for a Dict space (tensors that share the buffer's memory). ``memory``, ``starts`` and ``mask`` are
        None.

        A recurrent policy's batch is sequences instead: every field [S, L, ...] (S sequences of
        L = ``sequence_length`` consecutive steps of one environment), ``memory`` [S, memory_size] (before
        each sequence) and ``starts`` [S, L] (True where a step begins an episode). When L does not divide
        the steps, each environment's last sequence is padded to L with copies of its last step and
        ``mask`` [S, L] is True at the real steps (None when nothing is padded): every mean of a loss or
        statistic must leave the padded steps out (``real_steps``).

        Advantage normalisation uses the mean and standard deviation over all ranks, of the real steps
        (``mpi_statistics_scalar``: three small collectives).
        """
        assert self.ptr == self.filled, "call finish() before get()"
        self.ptr = 0
        steps = self.filled
        adv = self.advantages(normalize_adv)
        if self.memory is not None:
            return self._sequences(adv.reshape(steps, self.num_envs))
        n = steps * self.num_envs
        return Batch(
            obs=(
                torch.from_numpy(self.obs[:steps].reshape(n, -1))
                if self.layout.flat
                else self.layout.to_torch(self.layout.rows(self.layout.take(self.obs, slice(0, steps)), n))
            ),
            act=torch.from_numpy(self.act[:steps].reshape(n, *self.act.shape[2:])),
            ret=torch.from_numpy(self.ret[:steps].reshape(n)),
            adv=torch.from_numpy(np.ascontiguousarray(adv, dtype=np.float32)),
            logp_old=torch.from_numpy(self.logp[:steps].reshape(n)),
            v_old=torch.from_numpy(self.val[:steps].reshape(n)),
        )

    def advantages(self, normalize: bool) -> np.ndarray:
        """The ``filled`` steps' advantages, flat [steps x envs]; with ``normalize``, standardised with the
        mean and standard deviation over all ranks (``mpi_statistics_scalar``: three small collectives,
        so every rank must ask)."""
        adv = self.adv[: self.filled].reshape(-1)
        if normalize:
            mean, std = mpi_statistics_scalar(adv)
            adv = (adv - mean) / (std + 1e-8)
        return adv

    def _sequences(self, adv: np.ndarray) -> Batch:
        """The batch as S = envs x ceil(steps / L) sequences of L steps, environment by environment; each
        environment's last sequence padded when L does not divide the steps (``mask``)."""
        length, steps = self.sequence_length, self.filled
        per_env = -(-steps // length)  # sequences of each environment
        seqs, padded = self.num_envs * per_env, per_env * length
        # The padding repeats each environment's last step: values the network has seen, so that nothing
        # computed at a padded step overflows (a zero gradient times an infinity would still be NaN).
        index = None if padded == steps else np.minimum(np.arange(padded), steps - 1)

        def seq(x: np.ndarray, pad: bool = True) -> torch.Tensor:
            """[steps, envs, ...] (or already [padded, envs, ...]) -> [S, L, ...], each env's in order."""
            if pad:
                x = x[:steps] if index is None else x[index]
            x = np.ascontiguousarray(np.swapaxes(x, 0, 1))
            return torch.from_numpy(x.reshape(seqs, length, *x.shape[2:]))

        starts = np.zeros((padded, self.num_envs), dtype=bool)
        starts[1:steps] = self.done[: steps - 1]  # a step after an episode's end begins the next episode
        mask = None
        if index is not None:
            real = np.arange(padded) < steps
            mask = seq(np.repeat(real[:, None], self.num_envs, axis=1), pad=False)
        memory = np.swapaxes(self.memory[:per_env], 0, 1).reshape(seqs, self.memory_size)
        return Batch(
            obs=seq(self.obs) if self.layout.flat else self.layout.map(lambda p, x: seq(x), self.obs),
            act=seq(self.act),
            ret=seq(self.ret),
            adv=seq(np.asarray(adv, dtype=np.float32)),
            logp_old=seq(self.logp),
            v_old=seq(self.val),
            memory=torch.from_numpy(np.ascontiguousarray(memory)),
            starts=seq(starts, pad=False),
            mask=mask,
        )


def real_steps(mask: torch.Tensor | None, *fields: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``fields`` ([S, L] each, a recurrent batch's) at the real steps only, flat: where ``mask`` is True.

    Select before any arithmetic, so that a padded step takes no part in a loss, a mean or a gradient
    (the gradient at a padded step is exactly zero). ``mask`` None (nothing padded): the fields as they
    are."""
    if mask is None:
        return fields
    return tuple(f[mask] for f in fields)
