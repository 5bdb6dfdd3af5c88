"""Running mean and variance, merged across MPI ranks.

Statistics stay fixed while an epoch's data is collected and used for the update, so that the
observations the policy saw are exactly the ones it is trained on; between epochs every rank adds the
moments of all ranks' new data (one Allreduce), so the statistics stay identical on every rank.
"""

from __future__ import annotations

import numpy as np
import torch
from mpi4py import MPI
from torch import nn

from spinppo.utils.mpi_tools import COMM


class RunningMeanStd(nn.Module):
    """Mean and variance of everything seen so far, as module buffers (saved with the model).

    ``normalize(x)`` gives ``clip((x - mean) / sqrt(var + eps), -clip, clip)``; ``update(batch)`` merges the
    batches of all ranks (a collective: every rank must call it).
    """

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-8, clip: float = 10.0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(0.0, dtype=torch.float64))
        self.epsilon = epsilon
        self.clip = clip
        self._cache: tuple[tuple[int, int, torch.device], torch.Tensor, torch.Tensor] | None = None

    def _scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        # float32 copies made once per change of the statistics, not on every call. Tensor versions
        # count in-place writes, so loads and sync_params invalidate the copies too.
        key = (self.mean._version, self.var._version, self.mean.device)  # (.to() makes new tensors)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.mean.float(), torch.rsqrt(self.var + self.epsilon).float())
        return self._cache[1], self._cache[2]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise ``x`` with the current statistics and clip it."""
        mean, inv_std = self._scale()
        return torch.clamp((x - mean) * inv_std, -self.clip, self.clip)

    def moments(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        """``batch``'s count, sum and sum of squares, packed in one float64 array (for ``add_moments``)."""
        x = np.asarray(batch, dtype=np.float64).reshape(-1, *self.mean.shape)
        return np.concatenate([[x.shape[0]], x.sum(0).ravel(), (x**2).sum(0).ravel()])

    def update(self, batch: np.ndarray | torch.Tensor, across_ranks: bool = True) -> None:
        """Fold in ``batch`` (leading axis: samples) from every rank: one Allreduce. With
        ``across_ranks=False`` only this rank's batch, and no collective (A3C's ranks)."""
        packed = self.moments(batch)
        total = packed
        if across_ranks:
            total = np.empty_like(packed)
            COMM.Allreduce(packed, total, op=MPI.SUM)
        self.add_moments(total)

    def add_moments(self, total: np.ndarray) -> None:
        """Fold in moments packed by ``moments`` (or summed over several such arrays)."""
        n = total[0]
        if n == 0:
            return
        size = self.mean.numel()
        batch_mean = total[1 : 1 + size] / n
        batch_var = np.maximum(total[1 + size :] / n - batch_mean**2, 0.0)
        self._merge(batch_mean.reshape(self.mean.shape), batch_var.reshape(self.mean.shape), n)

    def _merge(self, batch_mean: np.ndarray, batch_var: np.ndarray, n: float) -> None:
        # Chan et al.'s parallel algorithm for combining two sets of moments.
        mean, var, count = self.mean.cpu().numpy(), self.var.cpu().numpy(), float(self.count)
        total = count + n
        delta = batch_mean - mean
        new_mean = mean + delta * n / total
        m2 = var * count + batch_var * n + delta**2 * count * n / total
        self.mean.copy_(torch.as_tensor(new_mean))
        self.var.copy_(torch.as_tensor(m2 / total))
        self.count.fill_(total)


class RewardScaler:
    """Scales rewards by the standard deviation of the discounted return (not centred), as in CleanRL,
    OpenAI baselines and SB3's VecNormalize.

    ``scale(rewards, dones)`` is called every step with per-environment arrays; the return statistics
    it gathers are merged across ranks by ``sync()`` at the end of each epoch.
    """

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, epsilon: float = 1e-8) -> None:
        self.rms = RunningMeanStd(())
        self.gamma = gamma
        self.clip = clip
        self.epsilon = epsilon
        self.returns = np.zeros(num_envs)
        self._seen: list[np.ndarray] = []
        self._std = 1.0

    def scale(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """Scaled, clipped rewards; the running discounted returns restart where ``dones``."""
        self.returns = self.returns * self.gamma + rewards
        self._seen.append(self.returns.copy())
        self.returns[dones] = 0.0
        return np.clip(rewards / self._std, -self.clip, self.clip)

    def sync(self, across_ranks: bool = True) -> None:
        """Merge this epoch's returns from all ranks into the statistics (a collective); with
        ``across_ranks=False`` this rank's only (no collective)."""
        seen = np.concatenate(self._seen) if self._seen else np.zeros(0)
        self._seen.clear()
        self.rms.update(seen, across_ranks)
        self._std = float(np.sqrt(self.rms.var.item() + self.epsilon))

    def state_dict(self) -> dict:
        """Everything needed to continue scaling after a resume."""
        return {"rms": self.rms.state_dict(), "returns": self.returns.copy(), "std": self._std}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""
        self.rms.load_state_dict(state["rms"])
        self.returns = np.array(state["returns"], dtype=np.float64)
        self._std = float(state["std"])


class ValueNormalizer:
    """Value-target normalisation, as Tianshou's ``rew_norm`` (OpenAI Baselines' value normalisation,
    without its mean): the critic learns the lambda-returns divided by their running standard deviation,
    and its outputs are multiplied back by it (``scale``) wherever a value enters a return (GAE, the
    bootstrap of a truncated episode). Rewards stay as the environment gives them.

    ``scale`` stays fixed during a rollout and its update; ``update(returns)`` then folds in the rollout's
    returns (unnormalised) from every rank (a collective) and gives the next rollout's ``scale``. The critic's
    weights are not rescaled when ``scale`` changes (no PopArt), as in Tianshou.
    """

    def __init__(self, epsilon: float = 1e-8) -> None:
        self.rms = RunningMeanStd(())
        self.epsilon = epsilon
        self.scale = 1.0

    def update(self, returns: np.ndarray, across_ranks: bool = True) -> None:
        """Fold in ``returns`` of all ranks (with ``across_ranks=False``: this rank's, no collective)."""
        self.rms.update(returns, across_ranks)
        self.scale = float(np.sqrt(self.rms.var.item() + self.epsilon))

    def state_dict(self) -> dict:
        """Everything needed to continue after a resume."""
        return {"rms": self.rms.state_dict(), "scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""
        self.rms.load_state_dict(state["rms"])
        self.scale = float(state["scale"])
