"""What a policy call returns, the same type whether or not the network has memory.

``PolicyStep`` is what ``MLPActorCritic.step`` (tensors) and ``RolloutPolicy.step`` (numpy arrays) give;
``PolicyAct`` what every ``act`` gives (the torch module's and ``OnnxPolicy``'s). ``memory`` is the next
memory of a recurrent network, None for others, so a caller unpacks one shape and passes the memory on.
They are NamedTuples: the rollout makes one per environment step, and a tuple costs the least to build
and to unpack.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class PolicyStep(NamedTuple):
    """One sampled step for a batch: ``action`` [N, *act_shape], ``value`` V(s) [N], ``logp`` the log-
    probability of ``action`` [N], and ``memory`` the next memory [N, memory_size] (None without memory)."""

    action: Any
    value: Any
    logp: Any
    memory: Any = None


class PolicyAct(NamedTuple):
    """Actions for a batch, ``action`` [N, *act_shape], and the next ``memory`` (None without memory)."""

    action: Any
    memory: Any = None
