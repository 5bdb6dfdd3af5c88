"""Observation kinds and the image encoders that turn pictures into features for the actor-critic.

Three kinds of observation space:

- a flat ``Box`` (one dimension): a vector, normalised with running statistics (``obs_rms``);
- an image ``Box`` (three dimensions): pixels through a convolutional encoder chosen by name;
- a gymnasium ``Dict`` of those: each part through its own encoder (vectors normalised together),
  the features concatenated in the Dict's key order.

Image layout rule: an image is channels-first (C, H, W) when its first dimension is smaller than its last,
as gymnasium's Atari frame stacks give them ((4, 84, 84)); otherwise channels-last (H, W, C), as Unity's
visual observations and rendered frames are ((84, 84, 3)). A ``uint8`` image is stored as ``uint8``
everywhere (buffer, checkpoints) and scaled by 1/255 inside the network; a float image is used as it
is. Images get no running normalisation.

Encoders, by ML-Agents' names (``vis_encode_type``), with the smallest height and width each can take:

- ``nature_cnn`` (36): Mnih et al. 2015 as in CleanRL's ppo_atari and SB3's NatureCNN: conv 32 8x8
  stride 4, conv 64 4x4 stride 2, conv 64 3x3 stride 1, ReLU, dense 512, ReLU;
- ``simple`` (20): ML-Agents' SimpleVisualEncoder: conv 16 8x8 stride 4, conv 32 4x4 stride 2,
  LeakyReLU, dense 256, LeakyReLU;
- ``resnet`` (15): the IMPALA network (ML-Agents' ResNetVisualEncoder, CleanRL's ppo_procgen): three
  stacks of conv 3x3 + max-pool 3x3 stride 2 (no padding, as ML-Agents: hence 15) + two residual
  blocks, channels 16, 32, 32, ReLU, dense 256, ReLU.

Weights start orthogonal with gain sqrt(2) and zero biases, as CleanRL's ``layer_init``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from spinppo.utils.errors import UserError

# Observations as the rollout, the buffer and the network pass them around: one array (or tensor) for a
# Box, a dict of them by key for a Dict space.
Obs = Any


def space_spec(space: gym.Space) -> dict[str, Any]:
    """A plain-values description of an observation or action space (saved in checkpoints).

    A 3-D Box (an image) also records its dtype (uint8 images are scaled by 1/255); a Dict records its
    parts by key. Vector Boxes record kind and shape only, as checkpoints always did.
    """
    if isinstance(space, gym.spaces.Discrete):
        return {"kind": "discrete", "n": int(space.n)}
    if isinstance(space, gym.spaces.MultiDiscrete) and space.nvec.ndim == 1:
        return {"kind": "multidiscrete", "nvec": [int(n) for n in space.nvec]}
    if isinstance(space, gym.spaces.Box):
        spec: dict[str, Any] = {"kind": "box", "shape": [int(s) for s in space.shape]}
        if len(space.shape) == 3:
            spec["dtype"] = "uint8" if space.dtype == np.uint8 else "float32"
        return spec
    if isinstance(space, gym.spaces.Dict):
        return {"kind": "dict", "spaces": {str(k): space_spec(s) for k, s in space.spaces.items()}}
    raise UserError(
        f"spinppo supports Box, Discrete, MultiDiscrete and Dict spaces, not {type(space).__name__} ({space})"
    )


def space_from_spec(spec: dict[str, Any]) -> gym.Space:
    """An observation space equivalent to the one ``space_spec`` described (for rebuilding a network)."""
    if spec["kind"] == "dict":  # in the spec's order (a plain dict would be sorted by gymnasium)
        return gym.spaces.Dict(OrderedDict((k, space_from_spec(s)) for k, s in spec["spaces"].items()))
    if spec.get("dtype") == "uint8":
        return gym.spaces.Box(0, 255, shape=tuple(spec["shape"]), dtype=np.uint8)
    return gym.spaces.Box(-np.inf, np.inf, shape=tuple(spec["shape"]), dtype=np.float32)


# ------------------------------------------------------------------------------------------- encoders


def _init(module: nn.Module) -> nn.Module:
    """Orthogonal weights (gain sqrt(2), for ReLU) and zero biases, as CleanRL's layer_init."""
    nn.init.orthogonal_(module.weight, gain=math.sqrt(2))
    nn.init.zeros_(module.bias)
    return module


class _Residual(nn.Module):
    """IMPALA's residual block: x + conv(relu(conv(relu(x)))), 3x3 convolutions keeping the size."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = _init(nn.Conv2d(channels, channels, 3, padding=1))
        self.conv1 = _init(nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


def _nature_convs(c: int) -> tuple[list[nn.Module], int, type[nn.Module]]:
    convs = [
        _init(nn.Conv2d(c, 32, 8, stride=4)),
        nn.ReLU(),
        _init(nn.Conv2d(32, 64, 4, stride=2)),
        nn.ReLU(),
        _init(nn.Conv2d(64, 64, 3, stride=1)),
        nn.ReLU(),
    ]
    return convs, 512, nn.ReLU


def _simple_convs(c: int) -> tuple[list[nn.Module], int, type[nn.Module]]:
    convs = [
        _init(nn.Conv2d(c, 16, 8, stride=4)),
        nn.LeakyReLU(),
        _init(nn.Conv2d(16, 32, 4, stride=2)),
        nn.LeakyReLU(),
    ]
    return convs, 256, nn.LeakyReLU


def _resnet_convs(c: int) -> tuple[list[nn.Module], int, type[nn.Module]]:
    layers: list[nn.Module] = []
    for channels in (16, 32, 32):
        layers += [_init(nn.Conv2d(c, channels, 3, padding=1)), nn.MaxPool2d(3, stride=2)]
        layers += [_Residual(channels), _Residual(channels)]
        c = channels
    layers.append(nn.ReLU())
    return layers, 256, nn.ReLU


# name -> (smallest height and width, convolutional layers for C input channels: (layers, dense size,
# the dense layer's activation)).
ENCODERS: dict[str, tuple[int, Callable[[int], tuple[list[nn.Module], int, type[nn.Module]]]]] = {
    "nature_cnn": (36, _nature_convs),
    "simple": (20, _simple_convs),
    "resnet": (15, _resnet_convs),
}


def image_chw(shape: tuple[int, ...] | list[int]) -> tuple[tuple[int, int, int], bool]:
    """``((C, H, W), channels_first)`` of an image observation of ``shape`` (the layout rule above); a
    one-line UserError when ``shape`` does not have three dimensions."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        fits = ""
        if len(shape) == 2:
            fit = ", ".join(fitting_encoders(shape)) or "none"
            fits = f" (a grayscale frame as {(*shape, 1)} would fit: {fit})"
        raise UserError(
            f"observations of shape {shape} are neither vectors nor images: an image has 3 dimensions, "
            f"HxWxC or CxHxW{fits}"
        )
    if shape[0] < shape[2]:
        return (shape[0], shape[1], shape[2]), True
    return (shape[2], shape[0], shape[1]), False


def fitting_encoders(hw: tuple[int, ...]) -> list[str]:
    """The encoders whose smallest size an image of height and width ``hw[:2]`` reaches."""
    return [name for name, (least, _) in ENCODERS.items() if min(hw[:2]) >= least]


class ImageEncoder(nn.Module):
    """One image observation to features: ``forward(images)`` takes a batch [B, *shape] as stored (uint8
    or float, channels-first or -last) and returns [B, ``out_dim``] float32 features.

    ``shape`` is the observation's shape, ``name`` one of ``ENCODERS``; a UserError (one line naming the
    shape and the encoders that fit) when the image is too small for it or has the wrong dimensions.
    """

    # Channels-last (NHWC) pixels make oneDNN's CPU convolutions faster: a PPO update step of the Nature
    # CNN took 1.06 instead of 1.49 ms a sample (docs/benchmarks.md, "Atari"; scripts/bench_cnn_update.py
    # turns this off to compare). The conversion is made on the uint8 pixels, the cheap copy, and is none
    # for HWC images, whose permuted view is NHWC already.
    channels_last = True

    def __init__(self, shape: tuple[int, ...] | list[int], name: str, uint8: bool) -> None:
        super().__init__()
        if name not in ENCODERS:
            raise UserError(f"--encoder must be one of {', '.join(ENCODERS)}, not {name!r}")
        (c, h, w), self.channels_first = image_chw(shape)
        least, make = ENCODERS[name]
        if min(h, w) < least:
            fits = fitting_encoders((h, w))
            raise UserError(
                f"images of shape {tuple(shape)} ({h}x{w} pixels) are too small for --encoder {name} (at "
                f"least {least}x{least}); encoders that fit: {', '.join(fits) or 'none'}"
            )
        self.scale = 1.0 / 255.0 if uint8 else None
        convs, self.out_dim, dense_act = make(c)
        self.convs = nn.Sequential(*convs)
        with torch.no_grad():  # the flattened size, from the layers themselves (draws no random numbers)
            flat = self.convs(torch.zeros(1, c, h, w)).numel()
        self.dense = nn.Sequential(nn.Flatten(), _init(nn.Linear(flat, self.out_dim)), dense_act())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images if self.channels_first else images.permute(0, 3, 1, 2)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = x.float()
        if self.scale is not None:
            x = x * self.scale
        return self.dense(self.convs(x))


# ------------------------------------------------------------------------------------ observation layout


@dataclass(frozen=True)
class ObsPart:
    """One part of an observation: ``key`` in the Dict (None for a plain Box), its ``shape`` as the
    environment gives it, whether it is an ``image``, and the numpy ``dtype`` it is stored in."""

    key: str | None
    shape: tuple[int, ...]
    image: bool
    dtype: type

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class ObsLayout:
    """How observations of one space are stored and batched: a vector, an image, or a Dict of those.

    Build it with ``ObsLayout.from_space(space)`` or ``from_spec(space_spec(space))``; ``vector(n)`` is
    the flat layout of n numbers. Its methods take and give observations as the rollout holds them
    (an array, or a dict of arrays by key) in numpy or torch alike, batched along the leading axes.
    Unsupported spaces (a 2-D Box, a Dict of Discrete, nested Dicts) are a one-line UserError.
    """

    def __init__(self, parts: list[ObsPart], is_dict: bool) -> None:
        self.parts, self.is_dict = parts, is_dict
        # The plain vector case, which every path keeps exactly as it was before images existed.
        self.flat = not is_dict and not parts[0].image
        self.vector_parts = [p for p in parts if not p.image]
        self.vector_dim = sum(p.size for p in self.vector_parts)
        self.has_images = any(p.image for p in parts)

    @classmethod
    def vector(cls, dim: int) -> ObsLayout:
        return cls([ObsPart(None, (int(dim),), False, np.float32)], False)

    @classmethod
    def from_space(cls, space: gym.Space) -> ObsLayout:
        return cls.from_spec(space_spec(space))

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> ObsLayout:
        if spec["kind"] == "dict":
            parts = [_part(key, sub) for key, sub in spec["spaces"].items()]
            if not parts:
                raise UserError("a Dict observation space needs at least one part")
            return cls(parts, True)
        return cls([_part(None, spec)], False)

    # Every method below maps over the parts: f(part, *the part's arrays of each argument).
    def map(self, fn: Callable[..., Any], *obs: Obs) -> Obs:
        if self.is_dict:
            return {p.key: fn(p, *(o[p.key] for o in obs)) for p in self.parts}
        return fn(self.parts[0], *obs)

    def batch(self, obs: Obs) -> Obs:
        """A vector environment's batch of observations as stored: float32 vectors, images in their dtype."""
        if self.flat:  # the rollout's every step: no detour
            return np.asarray(obs, dtype=np.float32)
        return self.map(lambda p, x: np.asarray(x, dtype=p.dtype), obs)

    def stack(self, single: list[Obs]) -> Obs:
        """Single observations (each as one environment gives it) stacked into a batch."""
        if self.is_dict:
            return {p.key: np.stack([o[p.key] for o in single]).astype(p.dtype) for p in self.parts}
        return np.stack(single).astype(self.parts[0].dtype)

    def zeros(self, lead: tuple[int, ...]) -> Obs:
        """Zeroed storage for ``lead`` (e.g. steps, environments) observations."""
        return self.map(lambda p: np.zeros((*lead, *p.shape), dtype=p.dtype))

    def assign(self, dest: Obs, index: Any, obs: Obs) -> None:
        """``dest[index] = obs`` for every part."""
        self.map(lambda p, d, o: d.__setitem__(index, o), dest, obs)

    def take(self, obs: Obs, index: Any) -> Obs:
        """``obs[index]`` for every part."""
        return self.map(lambda p, x: x[index], obs)

    def rows(self, obs: Obs, n: int) -> Obs:
        """Stored observations reshaped to ``n`` rows of single observations ([n, *shape] per part)."""
        return self.map(lambda p, x: x.reshape(n, *p.shape), obs)

    def to_torch(self, obs: Obs) -> Obs:
        """Numpy observations as tensors (sharing memory where the dtype already fits)."""
        return self.map(lambda p, x: torch.as_tensor(np.asarray(x, dtype=p.dtype)), obs)

    def batch_size(self, obs: Obs) -> int:
        """The number of observations in a batch (the leading axis)."""
        return int((obs[self.parts[0].key] if self.is_dict else obs).shape[0])

    def vectors(self, obs: Obs) -> np.ndarray:
        """The vector parts of stored observations side by side, [N, vector_dim] (what ``obs_rms`` sees)."""
        if self.flat:
            return obs.reshape(-1, self.vector_dim)
        first = obs[self.parts[0].key] if self.is_dict else obs
        n = math.prod(first.shape[: first.ndim - len(self.parts[0].shape)])
        if not self.vector_parts:
            return np.zeros((n, 0), dtype=np.float32)
        return np.concatenate([obs[p.key].reshape(n, p.size) for p in self.vector_parts], axis=1)

    def normalize_vectors(self, obs: Obs, normalize: Callable[[torch.Tensor], torch.Tensor]) -> Obs:
        """``obs`` (tensors) with its vector parts, side by side, passed through ``normalize``."""
        if self.flat:
            return normalize(obs)
        if not self.vector_parts:
            return obs
        # Any leading axes: [N] for a batch, [sequences, steps] for a recurrent network's batch.
        first = obs[self.parts[0].key]
        lead = tuple(first.shape[: first.ndim - len(self.parts[0].shape)])
        n = math.prod(lead)
        x = normalize(torch.cat([obs[p.key].reshape(n, p.size).float() for p in self.vector_parts], 1))
        out = dict(obs)
        for p, part in zip(self.vector_parts, x.split([q.size for q in self.vector_parts], 1), strict=True):
            out[p.key] = part.reshape(*lead, *p.shape)
        return out


def _part(key: str | None, spec: dict[str, Any]) -> ObsPart:
    where = f"the Dict part {key!r}" if key is not None else "an observation space"
    if spec["kind"] != "box":
        raise UserError(f"{where} must be a Box (a vector or an image), not {spec['kind']}: not supported")
    shape = tuple(spec["shape"])
    if len(shape) == 1:
        return ObsPart(key, shape, False, np.float32)
    image_chw(shape)  # the UserError for other dimensions
    return ObsPart(key, shape, True, np.uint8 if spec.get("dtype") == "uint8" else np.float32)


class ObservationEncoder(nn.Module):
    """Non-flat observations to one feature vector: each image part through its own ``ImageEncoder``
    (``name``), vector parts as they come (already normalised), concatenated in the layout's order.

    ``forward(obs)`` takes a tensor (an image Box) or a dict of tensors and returns [B, ``out_dim``].
    """

    def __init__(self, layout: ObsLayout, name: str) -> None:
        super().__init__()
        self.layout = layout
        # By position among the image parts (a Dict's keys may hold characters a module name cannot).
        self.images = nn.ModuleList(
            ImageEncoder(p.shape, name, p.dtype == np.uint8) for p in layout.parts if p.image
        )
        self.out_dim = sum(e.out_dim for e in self.images) + layout.vector_dim

    def forward(self, obs: Obs) -> torch.Tensor:
        if not self.layout.is_dict:
            return self.images[0](obs)
        n, features, images = self.layout.batch_size(obs), [], iter(self.images)
        for p in self.layout.parts:
            features.append(next(images)(obs[p.key]) if p.image else obs[p.key].reshape(n, p.size).float())
        return torch.cat(features, dim=1)
