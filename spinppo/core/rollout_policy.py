"""The rollout's policy in numpy: ``RolloutPolicy``, built from the network's description.

A rollout calls the policy once per environment step with only a few observations, so its time goes to
per-call overhead, not arithmetic, and between two calls the simulator pushes PyTorch's dispatch code
out of the CPU caches. Measured inside a Walker2d rollout with 8 environments, ``ac.step`` took 560-730
microseconds a call and this 100-140 (docs/benchmarks.md).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import torch

from spinppo.core.network_spec import (
    Activation,
    CategoricalHead,
    GaussianHead,
    Linear,
    NetworkSpec,
    Undescribable,
    VectorInput,
)
from spinppo.core.policy_step import PolicyStep
from spinppo.utils.mpi_tools import proc_id

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)

# The activations in numpy, each with the alpha it assumes (ELU's, LeakyReLU's slope; None: none), as
# torch's modules compute them; sigmoid(x) as 0.5 (1 + tanh(x / 2)), which cannot overflow.
_NUMPY_ACTIVATIONS = {
    "tanh": (None, np.tanh),
    "relu": (None, lambda x: np.maximum(x, 0)),
    "elu": (1.0, lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0)))),
    "silu": (None, lambda x: x * (0.5 + 0.5 * np.tanh(0.5 * x))),
    "leaky_relu": (0.01, lambda x: np.where(x > 0, x, 0.01 * x)),
}

# The reasons already given in this process, so that each is said once, not at every rollout.
_warned: set[str] = set()


def numpy_verdict(spec: NetworkSpec) -> str | None:
    """Why ``RolloutPolicy`` cannot run the network ``spec`` describes in numpy (a phrase that follows
    "the network has"), or None when it can: one plain vector observation, no shared trunk, pi and v
    each Linear, activation, ..., Linear with the same activations (one of ``_NUMPY_ACTIVATIONS``) and
    at least one hidden layer, an LSTM or none, and float32 weights."""
    if not spec.flat:
        images = [i for i in spec.inputs if not isinstance(i, VectorInput)]
        return "image observations (the numpy policy has no convolutions)" if images else "a Dict observation"
    if spec.trunk:
        return "a shared trunk"
    for layer in (*spec.pi, *spec.v):
        if not isinstance(layer, (Linear, Activation)):
            return f"{type(layer).__name__} layers"
        if isinstance(layer, Linear) and layer.bias is None:
            return "Linear layers without biases"
    pi, v = _mlp_activations(spec.pi), _mlp_activations(spec.v)
    if pi is None or v is None or pi != v:
        return "policy and value layers of different structure"
    if not pi:
        return "no hidden layer"
    for act in pi:
        known = _NUMPY_ACTIVATIONS.get(act.name)
        if known is None or known[0] != act.alpha:
            shown = act.name if act.alpha is None else f"{act.name} (alpha {act.alpha})"
            return f"{shown} activations (the numpy policy has {', '.join(_NUMPY_ACTIVATIONS)})"
    if len({a.name for a in pi}) != 1:
        return "several kinds of activation"
    if any(a.dtype != np.float32 for a in spec.arrays()):
        return "weights that are not float32"
    return None


def _mlp_activations(layers: tuple[Any, ...]) -> list[Activation] | None:
    """The activations of Linear, activation, ..., Linear (None for any other pattern)."""
    if len(layers) % 2 == 0 or not all(isinstance(x, Linear) for x in layers[::2]):
        return None
    acts = list(layers[1::2])
    return acts if all(isinstance(a, Activation) for a in acts) else None


def _warn_once(reason: str) -> None:
    """One line on rank 0's stderr, the first time ``reason`` keeps a network out of numpy."""
    if reason in _warned:
        return
    _warned.add(reason)
    if proc_id() == 0:
        print(
            f"spinppo: note: the rollout runs the policy in torch (one batched call a step), not numpy: the "
            f"network has {reason}",
            file=sys.stderr,
            flush=True,
        )


def _block_diag(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros((a.shape[0] + b.shape[0], a.shape[1] + b.shape[1]), dtype=a.dtype)
    out[: a.shape[0], : a.shape[1]] = a
    out[a.shape[0] :, a.shape[1] :] = b
    return out


class RolloutPolicy:
    """``ac.step`` and ``ac.value`` on numpy arrays, for a rollout: the weights stay fixed while it runs.

    Built from ``ac.network_spec()``: it runs pi and v as ONE network in numpy (their first layers
    stacked, later layers block-diagonal; the zero blocks cost nothing at this size) and draws its noise
    from numpy's global generator, which checkpoints save. Same policy, same log-probabilities as
    ``evaluate``. A network it cannot run (``numpy_verdict``: images, LayerNorm, a shared trunk, an
    activation numpy lacks, a layer or option the description cannot hold, a subclass's own ``step``)
    runs ``ac.step`` in torch, and says why once, on stderr; ``in_numpy`` tells which. A network on a GPU
    (``--device cuda``) runs there in torch, one batched call a step: observations go to the device,
    actions, values and log-probabilities come back as numpy arrays.

    Build a new one with ``ac.rollout_policy()`` whenever the weights or observation statistics change.
    """

    def __init__(self, ac: Any) -> None:
        self.ac = ac
        first = next(ac.parameters(), None)
        self.device = torch.device("cpu") if first is None else first.device
        if self.device.type != "cpu":  # (the numpy policy would copy every weight to the host)
            self.in_numpy = False
            return
        try:
            spec = ac.network_spec()
            reason = numpy_verdict(spec)
        except Undescribable as e:
            reason = str(e)
        self.in_numpy = reason is None
        if reason is not None:
            _warn_once(reason)
            return
        self.activation = _NUMPY_ACTIVATIONS[spec.pi[1].name][1]
        pi = [x for x in spec.pi if isinstance(x, Linear)]
        v = [x for x in spec.v if isinstance(x, Linear)]
        weights = [np.concatenate([pi[0].weight, v[0].weight])]
        weights += [_block_diag(a.weight, b.weight) for a, b in zip(pi[1:], v[1:], strict=True)]
        biases = [np.concatenate([a.bias, b.bias]) for a, b in zip(pi, v, strict=True)]
        # x @ W.T + b, with W.T made contiguous once here rather than at every call
        self.layers = [(np.ascontiguousarray(w.T), b) for w, b in zip(weights, biases, strict=True)]
        norm = spec.normalize
        self.norm = None if norm is None else (norm.mean, norm.inv_std, norm.clip)
        head = spec.head
        self.act_shape = head.shape
        self.discrete = isinstance(head, CategoricalHead)
        if isinstance(head, GaussianHead):
            self.std = head.std
            # summed in torch, as the torch policy sums log_std (numpy's sum may round differently)
            log_std = torch.from_numpy(head.log_std)
            self.logp_const = float(-(log_std.sum() + log_std.numel() * _LOG_SQRT_2PI))
        else:
            self.splits = np.cumsum(head.branches)[:-1]
        self.lstm = None
        if spec.lstm is not None:  # gates = x W_ih^T + h W_hh^T + b, in torch's order i, f, g, o
            lstm = spec.lstm
            self.lstm = (
                np.ascontiguousarray(lstm.weight_ih.T),
                np.ascontiguousarray(lstm.weight_hh.T),
                lstm.bias_ih + lstm.bias_hh,
                lstm.hidden,
            )
        self.out_dim = pi[-1].weight.shape[0]

    def _memory_step(self, x: np.ndarray, memory: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One LSTM step in numpy: (output h [N, H], next memory [N, 2H]); sigmoid as 0.5 (1 + tanh(x/2))."""
        w_ih, w_hh, bias, hidden = self.lstm
        h, c = memory[:, :hidden], memory[:, hidden:]
        gates = x @ w_ih + h @ w_hh + bias
        i, f, g, o = np.split(gates, 4, axis=1)
        c = (0.5 + 0.5 * np.tanh(0.5 * f)) * c + (0.5 + 0.5 * np.tanh(0.5 * i)) * np.tanh(g)
        h = (0.5 + 0.5 * np.tanh(0.5 * o)) * np.tanh(c)
        return h, np.concatenate([h, c], axis=1)

    def _outputs(
        self, obs: np.ndarray, memory: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The policy head's output, V(s) and (a recurrent network) the next memory, for raw float32
        observations."""
        x = obs
        if self.norm is not None:
            mean, inv_std, clip = self.norm
            x = np.clip((x - mean) * inv_std, -clip, clip)
        if self.lstm is not None:
            x, memory = self._memory_step(x, memory)
        for weight, bias in self.layers[:-1]:
            x = self.activation(x @ weight + bias)
        weight, bias = self.layers[-1]
        x = x @ weight + bias
        return x[:, : self.out_dim], x[:, self.out_dim], memory

    def _torch_obs(self, obs: Any) -> Any:
        """Observations for the torch path: float32 vectors as before; images (uint8) and Dicts as stored."""
        layout = getattr(self.ac, "layout", None)
        if layout is None or layout.flat:
            return torch.from_numpy(np.asarray(obs, dtype=np.float32)).to(self.device)
        return layout.to_torch(obs, self.device)

    def _torch_args(self, obs: Any, memory: np.ndarray | None) -> tuple[Any, ...]:
        # Without memory, the call a subclass's own step(obs) takes too.
        x = self._torch_obs(obs)
        return (x,) if memory is None else (x, torch.from_numpy(memory).to(self.device))

    def step(self, obs: Any, memory: np.ndarray | None = None) -> PolicyStep:
        """``PolicyStep(action, value, logp, memory)`` for a batch of raw observations, as ``ac.step``
        gives it, in numpy arrays; a recurrent network takes the batch's ``memory`` [N, memory_size] and
        returns the next one (others: None)."""
        if not self.in_numpy:
            with torch.no_grad():  # a subclass's own step may not turn gradients off
                out = self.ac.step(*self._torch_args(obs, memory))
            return PolicyStep(*(None if t is None else t.cpu().numpy() for t in out))
        obs = np.asarray(obs, dtype=np.float32)
        out, value, memory = self._outputs(obs, memory)
        if not self.discrete:
            noise = np.random.standard_normal(out.shape).astype(np.float32)
            action = out + noise * self.std
            logp = np.einsum("ij,ij->i", noise, noise) * -0.5 + self.logp_const  # log N(action; out, std)
            return PolicyStep(action.reshape(-1, *self.act_shape), value, logp.astype(np.float32), memory)
        actions, logp = [], np.zeros(len(out), dtype=np.float32)
        rows = np.arange(len(out))
        for logits in np.split(out, self.splits, axis=1):
            z = logits - logits.max(axis=1, keepdims=True)
            logp_all = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            # Inverse-CDF sampling; the min() guards against a cumulative sum that rounds below u.
            cdf = np.cumsum(np.exp(logp_all), axis=1)
            u = np.random.random_sample((len(out), 1))
            a = np.minimum((cdf < u).sum(axis=1), logits.shape[1] - 1)
            actions.append(a)
            logp += logp_all[rows, a]
        return PolicyStep(np.stack(actions, axis=1).reshape(-1, *self.act_shape), value, logp, memory)

    def value(self, obs: Any, memory: np.ndarray | None = None) -> np.ndarray:
        """V(s) for a batch of raw observations, shape [B], in numpy (a recurrent network: with its
        ``memory``)."""
        if not self.in_numpy:
            with torch.no_grad():
                return self.ac.value(*self._torch_args(obs, memory)).cpu().numpy()
        return self._outputs(np.asarray(obs, dtype=np.float32), memory)[1]
