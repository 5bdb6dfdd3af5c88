"""Actor-critic networks: MLP trunks with a Gaussian (Box actions) or Categorical (Discrete) policy head,
behind a convolutional encoder for image (and Dict) observations (``core.encoders``).

``step()`` samples actions for a batch of observations with plain tensor arithmetic rather than building
``torch.distributions`` objects, which cost as much as a MuJoCo step when made per observation.
``evaluate()`` is the update's path: log-probabilities, entropies and values for a minibatch, with gradients.
``network_spec()`` describes the layers in plain records (``core.network_spec``) for the other executors
of the policy: the rollout's numpy ``RolloutPolicy`` (``ac.rollout_policy()``, ``core.rollout_policy``)
and the ONNX writer.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from spinppo.core.encoders import (
    ACTIVATIONS,
    ENCODER_NAMES,
    ImageEncoder,
    ObservationEncoder,
    ObsLayout,
    check_conv_filters,
    check_image_fits,
    pixel_factor,
    space_from_spec,
    space_spec,
)
from spinppo.core.network_spec import (
    CategoricalHead,
    GaussianHead,
    Linear,
    NetworkSpec,
    Normalize,
    Undescribable,
    VectorInput,
    array,
    describe_layers,
    describe_lstm,
)
from spinppo.core.normalize import RunningMeanStd
from spinppo.core.policy_step import PolicyAct, PolicyStep
from spinppo.core.rollout_policy import RolloutPolicy
from spinppo.utils.device import PRECISIONS
from spinppo.utils.errors import UserError

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def mlp(
    sizes: list[int], activation: str, layer_norm: bool = False, output_gain: float = 1.0
) -> nn.Sequential:
    """Linear layers of ``sizes`` with ``activation`` (and LayerNorm, ML-Agents style) between them.

    Orthogonal initialisation: gain sqrt(2) for hidden layers, ``output_gain`` for the last; zero biases.
    """
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, gain=output_gain if last else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            if layer_norm:
                layers.append(nn.LayerNorm(sizes[i + 1]))
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


# --weight_init: spinppo's (orthogonal, CleanRL's layer_init) or RLlib's (``MLPActorCritic._rllib_init``).
WEIGHT_INITS = ("orthogonal", "rllib")


def _normc_(weight: torch.Tensor, std: float) -> None:
    """RLlib's ``normc_initializer(std)``: Gaussian weights, each output unit's row scaled to norm ``std``."""
    with torch.no_grad():
        w = torch.randn_like(weight)
        weight.copy_(w * (std / w.pow(2).sum(1, keepdim=True).sqrt()))


def _whole(x: Any, least: int) -> bool:
    """Whether ``x`` is a whole number of any type (numpy's, 64.0) at least ``least``; not a bool."""
    return (
        isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) and x == int(x) >= least
    )


def check_ac_kwargs(
    hidden_sizes: Any = (64, 64),
    activation: Any = "tanh",
    encoder: Any = "nature_cnn",
    memory_size: Any = 0,
    sequence_length: Any = 64,
    conv_filters: Any = None,
    conv_activation: Any = "relu",
    image_shape: tuple[int, ...] | None = None,
    pixel_scale: Any = None,
    weight_init: Any = "orthogonal",
    **_: Any,
) -> None:
    """A UserError for actor-critic options that cannot build a network (``--hid``, ``--act``,
    ``--encoder``, ``--memory_size``, ``--sequence_length``, ``--conv_filters``, ``--conv_activation``,
    ``--pixel_scale``, ``--weight_init``):
    the one check, used by the network itself and, for every variant of a grid, before anything trains.
    ``image_shape``: the observations' shape when it is an image known in advance (an Atari game's
    frames), checked against the encoder too (too small, a stack that shrinks it below one pixel)."""
    if not _whole(memory_size, 0) or int(memory_size) % 2:
        # ML-Agents' own rule: the memory is the LSTM's hidden and cell states side by side.
        raise UserError(
            f"--memory_size must be 0 (no memory) or an even number such as 128 (the LSTM's hidden and cell "
            f"states, half each, as in ML-Agents), not {memory_size!r}"
        )
    if not _whole(sequence_length, 1):
        raise UserError(
            f"--sequence_length must be a positive number of steps such as 64, not {sequence_length!r}"
        )
    if encoder not in ENCODER_NAMES:
        raise UserError(f"--encoder must be one of {', '.join(ENCODER_NAMES)}, not {encoder!r}")
    if conv_activation not in ACTIVATIONS:
        raise UserError(f"--conv_activation must be one of {', '.join(ACTIVATIONS)}, not {conv_activation!r}")
    if encoder != "rllib" and (conv_filters is not None or conv_activation != "relu"):
        flag = "--conv_filters" if conv_filters is not None else f"--conv_activation {conv_activation}"
        raise UserError(
            f"{flag} sets the layers of --encoder rllib (RLlib's conv stack); --encoder {encoder} has its "
            "own: add --encoder rllib"
        )
    if conv_filters is not None:
        check_conv_filters(conv_filters)
    if pixel_scale is not None and not (
        isinstance(pixel_scale, numbers.Real)
        and not isinstance(pixel_scale, bool)
        and math.isfinite(pixel_scale)
        and pixel_scale > 0
    ):
        raise UserError(
            f"--pixel_scale must be a positive number such as 1 (RLlib's unscaled pixels; uint8 images "
            f"default to 1/255), not {pixel_scale!r}"
        )
    if weight_init not in WEIGHT_INITS:
        raise UserError(f"--weight_init must be one of {', '.join(WEIGHT_INITS)}, not {weight_init!r}")
    if weight_init == "rllib" and encoder != "rllib":
        raise UserError(
            f"--weight_init rllib starts RLlib's VisionNetwork as RLlib does; --encoder {encoder} is not "
            "RLlib's: add --encoder rllib (or drop --weight_init)"
        )
    if image_shape is not None:
        check_image_fits(image_shape, encoder, conv_filters)
    if activation not in ACTIVATIONS:
        raise UserError(f"--act must be one of {', '.join(ACTIVATIONS)}, not {activation!r}")
    sizes = list(hidden_sizes) if isinstance(hidden_sizes, (list, tuple)) else [hidden_sizes]
    # Whole numbers of any type (numpy's, 64.0) pass, as int() takes them; bools and fractions do not.
    if not all(_whole(h, 1) for h in sizes):
        shown = " ".join(str(h) for h in sizes)
        raise UserError(f"--hid takes positive layer sizes such as '64 64', not {shown!r}")


class MLPActorCritic(nn.Module):
    """Policy ``pi`` and value function ``v`` for vector, image and Dict observations.

    Pass the environment's single observation and action spaces. Box actions get a Gaussian policy with a
    state-independent log standard deviation; Discrete actions a Categorical one, MultiDiscrete actions
    (Unity's branches) one Categorical per branch. ``shared_trunk`` puts
    policy and value heads on one trunk (ML-Agents' default is separate trunks, as here).
    Observations are normalised inside the module by ``obs_rms`` (running statistics the algorithm
    updates between epochs, saved with the weights), so a saved policy takes raw observations.

    Image observations (a 3-D Box, uint8 or float; see ``core.encoders`` for the layout rule) go through
    the convolutional ``encoder`` (nature_cnn, simple or resnet: ML-Agents' vis_encode_type; or rllib:
    RLlib's VisionNetwork convolutions, ``conv_filters`` as RLlib's ``[[out_channels, [kh, kw], stride],
    ...]`` or None for RLlib's default for 42x42 and 84x84 images, each followed by ``conv_activation``),
    then the MLP trunk and heads as above; policy and value share the encoder (as CleanRL's and SB3's image
    policies do). A gymnasium Dict puts each image part through its own encoder and its vector parts,
    normalised together by ``obs_rms``, beside them. Such networks take a tensor or a dict of tensors by
    key wherever a method takes ``obs``; ``layout`` (an ``ObsLayout``) says how to batch them. Vector
    networks have no encoder and are built exactly as before it existed (the same weights for a seed).

    Memory (``memory_size`` > 0, ML-Agents' network_settings.memory): an LSTM after the encoder (or the
    normalised vector observation), before the MLP trunk and heads; policy and value share it. Its state,
    the *memory*, is the hidden and cell states side by side, ``memory_size`` floats per environment
    (``memory_size / 2`` LSTM units, as in ML-Agents). Recurrent networks take the memory wherever a method
    takes ``obs`` and return the next one (see ``step``, ``act``, ``value``, ``evaluate``); a zero memory
    (``initial_memory``) starts an episode. ``sequence_length`` is how many steps an update backpropagates
    through (the rollout is cut into sequences of that length).
    """

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        hidden_sizes: tuple[int, ...] | list[int] = (64, 64),
        activation: str = "tanh",
        layer_norm: bool = False,
        shared_trunk: bool = False,
        log_std_init: float = -0.5,
        norm_obs: bool = True,
        encoder: str = "nature_cnn",
        memory_size: int = 0,
        sequence_length: int = 64,
        conv_filters: list[list[Any]] | None = None,
        conv_activation: str = "relu",
        pixel_scale: float | None = None,
        weight_init: str = "orthogonal",
    ) -> None:
        super().__init__()
        check_ac_kwargs(
            hidden_sizes,
            activation,
            encoder,
            memory_size,
            sequence_length,
            conv_filters,
            conv_activation,
            pixel_scale=pixel_scale,
            weight_init=weight_init,
        )
        obs_spec, act_spec = space_spec(observation_space), space_spec(action_space)
        self.layout = ObsLayout.from_spec(obs_spec)  # a UserError for observations it cannot take
        hidden = [int(h) for h in hidden_sizes]
        # Everything needed to rebuild this module from a checkpoint, in plain values.
        self.ctor_spec = {
            "class": "MLPActorCritic",
            "observation": obs_spec,
            "action": act_spec,
            "hidden_sizes": hidden,
            "activation": activation,
            "layer_norm": bool(layer_norm),
            "shared_trunk": bool(shared_trunk),
            "log_std_init": float(log_std_init),
            "norm_obs": bool(norm_obs),
        }
        if self.layout.flat:
            # No encoder: vector networks keep their old ctor_spec (checkpoints, the numpy rollout path).
            self.encoder = None
            obs_dim = self.layout.vector_dim
        else:
            self.ctor_spec["encoder"] = encoder
            if encoder == "rllib":  # only its networks have these keys: others keep their old ctor_spec
                conv_filters = None if conv_filters is None else check_conv_filters(conv_filters)
                self.ctor_spec["conv_filters"] = conv_filters
                self.ctor_spec["conv_activation"] = conv_activation
            defaults = [pixel_factor(p.dtype == np.uint8) for p in self.layout.parts if p.image]
            # Only a scale other than the default is kept: other networks keep the ctor_spec they had.
            if pixel_scale is not None and any(float(pixel_scale) != d for d in defaults):
                self.ctor_spec["pixel_scale"] = float(pixel_scale)
            self.encoder = ObservationEncoder(
                self.layout, encoder, conv_filters, conv_activation, pixel_scale
            )
            obs_dim = self.encoder.out_dim  # what the MLP after the encoder takes
        self.memory_size = int(memory_size)
        self.sequence_length = int(sequence_length) if memory_size else 1  # steps in one row of an update
        self.lstm: nn.LSTM | None = None
        if self.memory_size:
            # Only recurrent networks have these keys: others keep the ctor_spec they had before memory.
            self.ctor_spec["memory_size"] = self.memory_size
            self.ctor_spec["sequence_length"] = self.sequence_length
            self.lstm = nn.LSTM(obs_dim, self.memory_size // 2, batch_first=True)
            for name, param in self.lstm.named_parameters():  # CleanRL's ppo_atari_lstm initialisation
                if name.startswith("weight"):
                    nn.init.orthogonal_(param, 1.0)
                else:
                    nn.init.zeros_(param)
            obs_dim = self.memory_size // 2  # the MLP takes the LSTM's output
        self.discrete = act_spec["kind"] in ("discrete", "multidiscrete")
        # Branches of a (Multi)Discrete action: one Categorical each over a slice of the logits.
        self.branches = act_spec.get("nvec", [act_spec.get("n", 0)])
        if act_spec["kind"] == "box":
            act_dim, self.act_shape = int(np.prod(act_spec["shape"])), tuple(act_spec["shape"])
        else:
            act_dim = sum(self.branches)
            self.act_shape = () if act_spec["kind"] == "discrete" else (len(self.branches),)
        self.norm_obs = norm_obs
        self.obs_rms = RunningMeanStd((self.layout.vector_dim,))  # the vector parts only
        self.shared_trunk = shared_trunk
        if shared_trunk and hidden:
            self.trunk = mlp([obs_dim, *hidden], activation, layer_norm, output_gain=math.sqrt(2))
            self.trunk.append(ACTIVATIONS[activation]())
            feat = hidden[-1]
            # A small policy output layer keeps the initial policy near uniform / near zero mean.
            self.pi = mlp([feat, act_dim], activation, output_gain=0.01)
            self.v = mlp([feat, 1], activation, output_gain=1.0)
        else:
            self.trunk = nn.Identity()
            self.pi = mlp([obs_dim, *hidden, act_dim], activation, layer_norm, output_gain=0.01)
            self.v = mlp([obs_dim, *hidden, 1], activation, layer_norm, output_gain=1.0)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((act_dim,), float(log_std_init)))
        if weight_init == "rllib":
            if not self.layout.has_images:
                raise UserError(
                    "--weight_init rllib starts RLlib's VisionNetwork, for image observations; these are "
                    "vectors: drop --weight_init"
                )
            self._rllib_init()

    def _rllib_init(self) -> None:
        """``--weight_init rllib``: the weights as RLlib's TensorFlow VisionNetwork and LSTM wrapper start
        them (the tuned examples' ``framework: tf``), drawn again after spinppo's: convolutions and the
        policy logits Xavier-uniform (Keras' default), the value head ``normc(0.01)``, biases zero. Dense
        layers after the convolutions (``--hid``, RLlib's post_fcnet_hiddens): the first Xavier-uniform
        (a 1x1 convolution in RLlib), the rest and then the logits ``normc(1.0)``. With an LSTM, as RLlib's
        LSTM wrapper: Keras' LSTM (Xavier-uniform input weights, orthogonal recurrent weights, forget-gate
        bias 1), logits and value head Xavier-uniform (RLlib puts post_fcnet_hiddens before the LSTM,
        spinppo's ``--hid`` comes after it). Not part of ``ctor_spec``: it sets the initial weights only."""
        for module in self.encoder.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        trunk = [m for m in self.trunk.modules() if isinstance(m, nn.Linear)]
        pi = [m for m in self.pi.modules() if isinstance(m, nn.Linear)]
        v = [m for m in self.v.modules() if isinstance(m, nn.Linear)]
        for layers in (trunk, pi[:-1], v[:-1]):  # one shared stack, or one each for policy and value
            for i, linear in enumerate(layers):
                if i == 0:
                    nn.init.xavier_uniform_(linear.weight)
                else:
                    _normc_(linear.weight, 1.0)
        if (trunk or pi[:-1]) and self.lstm is None:
            _normc_(pi[-1].weight, 1.0)
        else:
            nn.init.xavier_uniform_(pi[-1].weight)
        if self.lstm is None:
            _normc_(v[-1].weight, 0.01)
        else:  # RLlib's LSTM wrapper has its own value layer, Keras' default
            nn.init.xavier_uniform_(v[-1].weight)
        for linear in (*trunk, *pi, *v):
            nn.init.zeros_(linear.bias)
        if self.lstm is not None:
            hidden = self.lstm.hidden_size
            nn.init.xavier_uniform_(self.lstm.weight_ih_l0)
            nn.init.orthogonal_(self.lstm.weight_hh_l0)
            nn.init.zeros_(self.lstm.bias_ih_l0)
            nn.init.zeros_(self.lstm.bias_hh_l0)
            with torch.no_grad():  # torch's gate order is input, forget, cell, output
                self.lstm.bias_ih_l0[hidden : 2 * hidden] = 1.0

    # ----------------------------------------------------------------------------------------- helpers

    @property
    def device(self) -> torch.device:
        """Where the parameters are (``ac.to(device)`` moves them, and the observation statistics)."""
        return next(self.parameters()).device

    def set_precision(self, precision: str) -> bool:
        """``--precision``: "bf16" runs the image encoders' layers in bfloat16 (autocast; their features, the
        heads and the losses stay float32), "fp32" (the default) in float32. Returns whether the network
        has an image encoder for it to act on (an MLP's layers always compute in float32). A training
        setting, not part of ``ctor_spec``: a loaded or exported policy computes in float32."""
        dtype = PRECISIONS[precision]
        encoders = [m for m in self.modules() if isinstance(m, ImageEncoder)]
        for encoder in encoders:
            encoder.compute_dtype = dtype
        return bool(encoders)

    @property
    def prefers_gpu(self) -> bool:
        """Whether ``--device auto`` puts this network on a GPU when there is one: image encoders and
        LSTMs do enough arithmetic per call; a small MLP does not (Spinning Up #208), and its rollout runs
        in numpy on the CPU."""
        return self.encoder is not None or self.lstm is not None

    def normalize_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """Raw observations as the networks see them (standardised by ``obs_rms`` when ``norm_obs``).

        Only vector parts are normalised: images come back as they are (uint8 stays uint8, so that an
        update can normalise a whole batch once without making a float copy of its pixels).
        """
        if not self.norm_obs:
            return obs
        if self.encoder is None:
            return self.obs_rms.normalize(obs)
        return self.layout.normalize_vectors(obs, self.obs_rms.normalize)

    def _inputs(self, obs: Any, obs_normalized: bool = False) -> torch.Tensor:
        """What the trunk (or the LSTM) takes: [N, features] from a batch of observations."""
        x = obs if obs_normalized else self.normalize_obs(obs)
        return x if self.encoder is None else self.encoder(x)

    def _features(self, obs: torch.Tensor, obs_normalized: bool = False) -> torch.Tensor:
        return self.trunk(self._inputs(obs, obs_normalized))

    # ------------------------------------------------------------------------------------------ memory

    def initial_memory(self, n: int) -> torch.Tensor:
        """The memory at an episode's start for ``n`` environments: zeros, [n, memory_size], on the
        module's device."""
        return torch.zeros(n, self.memory_size, device=self.device)

    def _memory_step(self, obs: Any, memory: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the LSTM for a batch: (trunk features [N, F], next memory [N, memory_size])."""
        if memory is None:
            raise ValueError("a recurrent network needs the memory: pass memory=ac.initial_memory(n)")
        half = self.memory_size // 2
        x = self._inputs(obs)
        h, c = memory[:, :half].unsqueeze(0).contiguous(), memory[:, half:].unsqueeze(0).contiguous()
        out, (h, c) = self.lstm(x.unsqueeze(1), (h, c))
        return self.trunk(out[:, 0]), torch.cat([h[0], c[0]], dim=1)

    def _sequence_features(
        self, obs: Any, memory: torch.Tensor, starts: torch.Tensor, obs_normalized: bool
    ) -> torch.Tensor:
        """Trunk features [B * L, F] of B sequences of L steps (observations [B, L, ...]).

        ``memory`` [B, memory_size] is each sequence's memory before its first step; ``starts`` [B, L]
        marks steps that begin an episode: there the memory is zeroed, so that no step of an episode
        depends on the episode before it (the first step's ``starts`` is ignored: its memory is given).
        The LSTM runs over the stretches between such steps in one call each (not step by step).
        """
        b, steps = starts.shape
        flat = self.layout.map(lambda p, x: x.reshape(b * steps, *x.shape[2:]), obs)
        x = self._inputs(flat, obs_normalized).view(b, steps, -1)
        half = self.memory_size // 2
        h, c = memory[:, :half].unsqueeze(0).contiguous(), memory[:, half:].unsqueeze(0).contiguous()
        restarts = (torch.nonzero(starts[:, 1:].any(0)).flatten() + 1).tolist()
        outs = []
        for a, z in zip([0, *restarts], [*restarts, steps], strict=True):
            if a:
                keep = (~starts[:, a]).to(h.dtype).view(1, b, 1)
                h, c = h * keep, c * keep
            out, (h, c) = self.lstm(x[:, a:z], (h, c))
            outs.append(out)
        return self.trunk(torch.cat(outs, dim=1).reshape(b * steps, half))

    # ------------------------------------------------------------------------------------------- heads

    def _sample(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(action, logp) sampled from the policy head's output."""
        if self.discrete:
            actions, logp = [], 0.0
            for logits in out.split(self.branches, dim=-1):
                logp_all = torch.log_softmax(logits, dim=-1)
                a = torch.multinomial(logp_all.exp(), 1)
                actions.append(a)
                logp = logp + logp_all.gather(-1, a).squeeze(-1)
            return torch.cat(actions, dim=-1).view(-1, *self.act_shape), logp
        noise = torch.randn_like(out)
        action = out + noise * self.log_std.exp()
        logp = -(0.5 * noise.pow(2) + self.log_std + _LOG_SQRT_2PI).sum(-1)
        return action.view(-1, *self.act_shape), logp

    def _mode(self, out: torch.Tensor) -> torch.Tensor:
        """The deterministic action: the mean (Box) or each branch's most likely action (Discrete)."""
        if self.discrete:
            best = [logits.argmax(-1, keepdim=True) for logits in out.split(self.branches, dim=-1)]
            return torch.cat(best, dim=-1).view(-1, *self.act_shape)
        return out.view(-1, *self.act_shape)

    def _logp_entropy(self, out: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probability of ``act``, entropy) under the policy head's output ``out``."""
        if self.discrete:
            act = act.long().view(act.shape[0], -1)
            logp, entropy = 0.0, 0.0
            for i, logits in enumerate(out.split(self.branches, dim=-1)):
                logp_all = torch.log_softmax(logits, dim=-1)
                logp = logp + logp_all.gather(-1, act[:, i : i + 1]).squeeze(-1)
                entropy = entropy - (logp_all.exp() * logp_all).sum(-1)
            return logp, entropy
        act = act.reshape(act.shape[0], -1)
        z = (act - out) * torch.exp(-self.log_std)
        logp = -(0.5 * z.pow(2) + self.log_std + _LOG_SQRT_2PI).sum(-1)
        return logp, (0.5 + _LOG_SQRT_2PI + self.log_std).sum().expand(out.shape[0])

    # ------------------------------------------------------------------------------------------ public

    def features(
        self, obs: Any, memory: torch.Tensor | None = None, starts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """What the policy and value heads (``pi``, ``v``) take, for a batch of raw observations: [B, F],
        or for a recurrent network's sequences (``memory`` and ``starts`` as in ``evaluate``) [B, L, F]."""
        if not self.memory_size:
            return self._features(obs)
        if starts is None:
            return self._memory_step(obs, memory)[0]
        return self._sequence_features(obs, memory, starts, False).view(*starts.shape, -1)

    def value(
        self, obs: Any, memory: torch.Tensor | None = None, starts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """V(s) for a batch of raw observations, shape [B].

        A recurrent network takes ``memory`` too: for one step of B environments (the value after this
        step, without the next memory), or with ``starts`` for B sequences as in ``evaluate`` ([B, L]).
        """
        if not self.memory_size:
            return self.v(self._features(obs)).squeeze(-1)
        if starts is None:
            return self.v(self._memory_step(obs, memory)[0]).squeeze(-1)
        return self.v(self._sequence_features(obs, memory, starts, False)).view(starts.shape)

    @torch.no_grad()
    def step(self, obs: Any, memory: torch.Tensor | None = None) -> PolicyStep:
        """Sample actions for a batch of raw observations: ``PolicyStep(action, value, logp, memory)``,
        no gradients. A recurrent network takes the batch's ``memory`` and returns the next one; others
        return None there."""
        if self.memory_size:
            feat, memory = self._memory_step(obs, memory)
        else:
            feat, memory = self._features(obs), None
        action, logp = self._sample(self.pi(feat))
        return PolicyStep(action, self.v(feat).squeeze(-1), logp, memory)

    def rollout_policy(self) -> RolloutPolicy:
        """A ``RolloutPolicy``: this policy's ``step`` and ``value`` in numpy, for the current weights.

        A network it cannot run in numpy (see ``network_spec``) gets one that calls this module's own
        methods, and a warning saying why, once.
        """
        return RolloutPolicy(self)

    def network_spec(self) -> NetworkSpec:
        """This network's layers as plain records (``core.network_spec``), as the numpy rollout policy and
        the ONNX writer run them. Weights are views of the parameters (in-place updates show in them);
        the observation statistics are copies of the current ones. Undescribable when this network is
        not what the description holds: an option it does not know, a module of another kind, a
        subclass's own sampling or forward methods."""
        cls = type(self)
        own = [name for name in _DESCRIBED_METHODS if getattr(cls, name) is not getattr(MLPActorCritic, name)]
        if own:
            raise Undescribable(f"its own {', '.join(own)} ({cls.__name__})")
        _check_described(self.ctor_spec)
        if self.encoder is None:
            inputs: tuple[Any, ...] = (VectorInput(None, self.layout.parts[0].shape),)
        elif type(self.encoder) is not ObservationEncoder:
            raise Undescribable(f"an encoder {type(self.encoder).__name__}")
        else:
            inputs = self.encoder.describe()
        normalize = None
        if self.norm_obs:
            rms = self.obs_rms
            with torch.no_grad():  # float32, as normalize_obs computes them
                mean = rms.mean.float().cpu().numpy()
                inv_std = torch.rsqrt(rms.var + rms.epsilon).float().cpu().numpy()
            normalize = Normalize(mean, inv_std, rms.clip)
        pi, v = describe_layers([self.pi]), describe_layers([self.v])
        if not pi or not isinstance(pi[-1], Linear) or not v or not isinstance(v[-1], Linear):
            raise Undescribable("a policy or value head that does not end in a Linear layer")
        if self.discrete:
            head: Any = CategoricalHead(tuple(int(n) for n in self.branches), self.act_shape)
        else:
            with torch.no_grad():
                head = GaussianHead(array(self.log_std), self.log_std.exp().cpu().numpy(), self.act_shape)
        return NetworkSpec(
            inputs=inputs,
            is_dict=self.layout.is_dict,
            normalize=normalize,
            lstm=None if self.lstm is None else describe_lstm(self.lstm),
            trunk=describe_layers([self.trunk]),
            pi=pi,
            v=v,
            head=head,
        )

    @torch.no_grad()
    def act(self, obs: Any, deterministic: bool = False, memory: torch.Tensor | None = None) -> PolicyAct:
        """``PolicyAct(action, memory)`` for a batch of raw observations; ``deterministic`` takes the mean
        (Box) or the most likely action (Discrete). A recurrent network takes the batch's ``memory`` and
        returns the next one; others return None there."""
        if self.memory_size:
            feat, memory = self._memory_step(obs, memory)
            out = self.pi(feat)
            return PolicyAct(self._mode(out) if deterministic else self._sample(out)[0], memory)
        if not deterministic:
            return PolicyAct(self.step(obs)[0])
        return PolicyAct(self._mode(self.pi(self._features(obs))))

    def evaluate(
        self,
        obs: Any,
        act: torch.Tensor,
        obs_normalized: bool = False,
        memory: torch.Tensor | None = None,
        starts: torch.Tensor | None = None,
        with_dist: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """``(logp, entropy, value)`` of actions ``act`` taken at raw observations ``obs``, with gradients.

        ``obs_normalized``: ``obs`` already went through ``normalize_obs`` (an update normalises its batch
        once rather than every minibatch). ``with_dist``: a fourth result, the policy head's output (the
        distribution's parameters: logits, or the Gaussian's mean), [N, A], for ``kl``.

        A recurrent network takes B sequences of L steps: ``obs`` and ``act`` [B, L, ...], ``memory``
        [B, memory_size] (before each sequence's first step) and ``starts`` [B, L] (True where a step
        begins an episode: the memory is zeroed there); the results are [B, L] ([B, L, A]).
        """
        if self.memory_size:
            if memory is None or starts is None:
                raise ValueError("a recurrent network evaluates sequences: pass memory and starts")
            feat = self._sequence_features(obs, memory, starts, obs_normalized)
            act = act.reshape(feat.shape[0], *act.shape[2:])
        else:
            feat = self._features(obs, obs_normalized)
        out = self.pi(feat)
        logp, entropy = self._logp_entropy(out, act)
        value = self.v(feat).squeeze(-1)
        if self.memory_size:
            logp, entropy = logp.view(starts.shape), entropy.reshape(starts.shape)
            value, out = value.view(starts.shape), out.view(*starts.shape, -1)
        return (logp, entropy, value, out) if with_dist else (logp, entropy, value)

    def kl(
        self, old: torch.Tensor, new: torch.Tensor, old_log_std: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The exact KL(pi_old || pi_new) of each row's action distributions, [...] for policy head outputs
        ``old`` and ``new`` [..., A] (``evaluate(..., with_dist=True)``'s last result): summed over a
        Categorical's branches or a Gaussian's dimensions. A Gaussian's new log std is ``log_std`` (with
        its gradient), its old one ``old_log_std`` (a copy taken before the update; None: the same)."""
        if self.discrete:
            total = torch.zeros((), dtype=new.dtype)
            for a, b in zip(old.split(self.branches, -1), new.split(self.branches, -1), strict=True):
                logp_old, logp_new = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
                total = total + (logp_old.exp() * (logp_old - logp_new)).sum(-1)
            return total
        log_std = self.log_std
        log_std_old = log_std.detach() if old_log_std is None else old_log_std
        ratio = torch.exp(2 * (log_std_old - log_std))  # var_old / var_new
        z = (old - new) * torch.exp(-log_std)
        return (log_std - log_std_old + 0.5 * (ratio + z.pow(2)) - 0.5).sum(-1)


def build_actor_critic(ctor_spec: dict[str, Any]) -> MLPActorCritic:
    """Rebuild an actor-critic from the ``ctor_spec`` saved in a checkpoint (one saved before encoders
    existed has no ``encoder`` key: it is a vector network, which has none)."""
    spec = dict(ctor_spec)
    if spec.pop("class", "MLPActorCritic") != "MLPActorCritic":
        raise ValueError(f"unknown actor-critic class in checkpoint: {ctor_spec.get('class')}")
    obs, act = spec.pop("observation"), spec.pop("action")
    obs_space = space_from_spec(obs)
    if act["kind"] == "discrete":
        act_space: gym.Space = gym.spaces.Discrete(act["n"])
    elif act["kind"] == "multidiscrete":
        act_space = gym.spaces.MultiDiscrete(act["nvec"])
    else:
        act_space = gym.spaces.Box(-np.inf, np.inf, shape=tuple(act["shape"]), dtype=np.float32)
    return MLPActorCritic(obs_space, act_space, **spec)


# The methods whose computation ``network_spec`` states: a subclass that overrides any of them computes
# something the description does not say, so its rollouts run in torch and the ONNX writer refuses it.
_DESCRIBED_METHODS = (
    "step",
    "act",
    "value",
    "features",
    "normalize_obs",
    "_inputs",
    "_features",
    "_memory_step",
    "_sample",
    "_mode",
)
# Every ctor_spec option MLPActorCritic builds. Each shows in the modules network_spec walks, except
# log_std_init (the initial log_std only) and sequence_length (the update's, not a step's). A new
# option goes here once network_spec describes what it builds; an option not here (a subclass's, a
# newer version's) makes network_spec refuse: a rollout then runs in torch, never a wrong policy.
_DESCRIBED_OPTIONS = frozenset(
    {
        "class",
        "observation",
        "action",
        "hidden_sizes",
        "activation",
        "layer_norm",
        "shared_trunk",
        "log_std_init",
        "norm_obs",
        "encoder",
        "conv_filters",
        "conv_activation",
        "pixel_scale",
        "memory_size",
        "sequence_length",
    }
)
# The keys of a space's spec (``space_spec``) the description knows, by kind.
_SPACE_KEYS = {
    "box": {"kind", "shape", "dtype"},
    "discrete": {"kind", "n"},
    "multidiscrete": {"kind", "nvec"},
    "dict": {"kind", "spaces"},
}


def _known_space(spec: Any) -> bool:
    keys = _SPACE_KEYS.get(spec.get("kind")) if isinstance(spec, dict) else None
    if keys is None or not set(spec) <= keys:
        return False
    return spec["kind"] != "dict" or all(_known_space(s) for s in spec["spaces"].values())


def _check_described(ctor_spec: dict[str, Any]) -> None:
    """Undescribable unless every option in ``ctor_spec`` is one ``network_spec`` describes."""
    if ctor_spec.get("class") != "MLPActorCritic":
        raise Undescribable(f"a class {ctor_spec.get('class')!r} in its ctor_spec")
    unknown = sorted(set(ctor_spec) - _DESCRIBED_OPTIONS)
    if unknown:
        raise Undescribable(f"options the description does not hold: {', '.join(unknown)}")
    for key in ("observation", "action"):
        if not _known_space(ctor_spec[key]):
            raise Undescribable(f"an {key} space the description does not hold: {ctor_spec[key]}")
