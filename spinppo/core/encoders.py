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
is. ``--pixel_scale`` sets that factor instead (1: the 0-255 values unscaled, as RLlib's networks take
them). Images get no running normalisation.

Encoders, by ML-Agents' names (``vis_encode_type``), with the smallest height and width each can take:

- ``nature_cnn`` (36): Mnih et al. 2015 as in CleanRL's ppo_atari and SB3's NatureCNN: conv 32 8x8
  stride 4, conv 64 4x4 stride 2, conv 64 3x3 stride 1, ReLU, dense 512, ReLU;
- ``simple`` (20): ML-Agents' SimpleVisualEncoder: conv 16 8x8 stride 4, conv 32 4x4 stride 2,
  LeakyReLU, dense 256, LeakyReLU;
- ``resnet`` (15): the IMPALA network (ML-Agents' ResNetVisualEncoder, CleanRL's ppo_procgen): three
  stacks of conv 3x3 + max-pool 3x3 stride 2 (no padding, as ML-Agents: hence 15) + two residual
  blocks, channels 16, 32, 32, ReLU, dense 256, ReLU.

And by RLlib's name for its VisionNetwork's options, ``rllib``: the convolutions of ``conv_filters``, a
list of ``[out_channels, [kernel_h, kernel_w], stride]`` layers (RLlib's ``model.conv_filters``; a stride
may be ``[stride_h, stride_w]``), each followed by ``conv_activation`` (RLlib's ``model.conv_activation``,
one of ``ACTIVATIONS``), padded as RLlib pads them: "same" (TensorFlow's: the output is ceil(size /
stride), the padding split with the odd pixel at the bottom and right) for all but the last layer, none
("valid") for the last. The last layer's output is flattened and is the features: no dense layer (RLlib's
default stacks end at 1x1 with 256 channels). Without ``conv_filters``, RLlib's defaults
(``ray.rllib.models.utils.get_filter_config``) for 84x84 images, ``[[16, [8, 8], 4], [32, [4, 4], 2],
[256, [11, 11], 1]]``, and 42x42 images, ``[[16, [4, 4], 2], [32, [4, 4], 2], [256, [11, 11], 1]]``;
other sizes need ``conv_filters``. RLlib's tuned Pong A3C stack, for instance, is four ``[32, [3, 3], 2]``
layers with ELU: 42x42 frames become 21, 11, 6 and 2 pixels a side, 128 features.

Weights start orthogonal with gain sqrt(2) and zero biases, as CleanRL's ``layer_init``; with
``--weight_init rllib`` (``MLPActorCritic._rllib_init``) as RLlib's VisionNetwork starts them.
"""

from __future__ import annotations

import json
import math
import numbers
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from spinppo.core.network_spec import (
    Activation,
    ImageInput,
    Residual,
    Undescribable,
    VectorInput,
    describe_layers,
)
from spinppo.utils.errors import UserError

# Observations as the rollout, the buffer and the network pass them around: one array (or tensor) for a
# Box, a dict of them by key for a Dict space.
Obs = Any

# Activations by the names --act and --conv_activation take (RLlib's names for the ones it has too).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


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

    def describe_layer(self) -> Residual:
        """This block as the network description's record (``core.network_spec``)."""
        relu = Activation("relu")
        conv0, conv1 = describe_layers([self.conv0, self.conv1])
        return Residual((relu, conv0, relu, conv1))


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


# ``--encoder rllib`` without --conv_filters: RLlib's default stack for the image's height and width
# (ray.rllib.models.utils.get_filter_config: Atari's 84x84 and "small (1/2) Atari" 42x42).
RLLIB_FILTERS: dict[tuple[int, int], list[list[Any]]] = {
    (84, 84): [[16, [8, 8], 4], [32, [4, 4], 2], [256, [11, 11], 1]],
    (42, 42): [[16, [4, 4], 2], [32, [4, 4], 2], [256, [11, 11], 1]],
}
# Every --encoder name: the fixed encoders, and RLlib's configurable stack.
ENCODER_NAMES = (*ENCODERS, "rllib")
_FILTERS_FORM = (
    "a list of [out_channels, [kernel_h, kernel_w], stride] layers (RLlib's form), e.g. "
    "[[16,[4,4],2],[32,[4,4],2],[256,[11,11],1]]"
)


def _positive_pair(x: Any) -> list[int] | None:
    """``[a, b]`` from a positive whole number or a pair of them; None for anything else."""
    pair = x if isinstance(x, (list, tuple)) else [x, x]
    if len(pair) != 2 or not all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v == int(v) >= 1
        for v in pair
    ):
        return None
    return [int(v) for v in pair]


def check_conv_filters(conv_filters: Any) -> list[list[Any]]:
    """``conv_filters`` (RLlib's form: ``[[out_channels, [kernel_h, kernel_w], stride], ...]``, a kernel
    or a stride may also be one number for both sides) in the form a ctor_spec keeps: a list of
    ``[out_channels, [kh, kw], stride]`` with ``stride`` a number, or ``[sh, sw]`` when they differ. A
    one-line UserError naming the first bad layer."""
    if not isinstance(conv_filters, (list, tuple)) or not conv_filters:
        raise UserError(f"--conv_filters takes {_FILTERS_FORM}, not {json.dumps(conv_filters, default=str)}")
    out = []
    for i, layer in enumerate(conv_filters, 1):
        ok = isinstance(layer, (list, tuple)) and len(layer) == 3
        channels, kernel, stride = layer if ok else (None, None, None)
        kernel, stride = _positive_pair(kernel), _positive_pair(stride)
        if not ok or kernel is None or stride is None or _positive_pair(channels) is None:
            shown = json.dumps(layer, default=str)
            raise UserError(f"--conv_filters takes {_FILTERS_FORM}; its layer {i} is {shown}")
        out.append([int(channels), kernel, stride[0] if stride[0] == stride[1] else stride])
    return out


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """(output size, padding before, padding after) of TensorFlow's "same" padding along one axis, as
    RLlib's ``same_padding`` computes it (never negative, as TensorFlow's)."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + kernel - size)
    return out, total // 2, total - total // 2


def conv_stack_sizes(hw: tuple[int, int], conv_filters: list[list[Any]]) -> list[tuple[int, int]]:
    """The height and width after each layer of ``conv_filters`` (``check_conv_filters``' form) for
    images of height and width ``hw``: "same" padding for all but the last layer, none for the last (its
    size may be 0 or less: too small an image)."""
    (h, w), sizes = hw, []
    for i, (_, (kh, kw), stride) in enumerate(conv_filters):
        sh, sw = _positive_pair(stride)
        if i < len(conv_filters) - 1:
            h, w = _same_padding(h, kh, sh)[0], _same_padding(w, kw, sw)[0]
        else:
            h, w = (h - kh) // sh + 1, (w - kw) // sw + 1
        sizes.append((h, w))
    return sizes


def rllib_filters(shape: tuple[int, ...] | list[int], conv_filters: Any = None) -> list[list[Any]]:
    """The layers ``--encoder rllib`` builds for images of ``shape``: ``conv_filters`` (checked) or RLlib's
    default for the image's size; a one-line UserError when there is no default for the size or the
    stack would shrink the image below one pixel."""
    (_, h, w), _ = image_chw(shape)
    if conv_filters is None:
        if (h, w) not in RLLIB_FILTERS:
            sizes = " and ".join(f"{a}x{b}" for a, b in RLLIB_FILTERS)
            raise UserError(
                f"--encoder rllib has RLlib's default conv_filters for {sizes} images only, not images of "
                f"shape {tuple(shape)}: give --conv_filters (or --frame_size 42 or 84 for an Atari game)"
            )
        return check_conv_filters(RLLIB_FILTERS[(h, w)])  # a copy
    filters = check_conv_filters(conv_filters)
    sizes = [(h, w), *conv_stack_sizes((h, w), filters)]
    if min(sizes[-1]) < 1:
        last_in = sizes[-2]
        _, (kh, kw), stride = filters[-1]
        raise UserError(
            f"--conv_filters {json.dumps(filters)} shrink images of shape {tuple(shape)} ({h}x{w} pixels) "
            f"below one pixel: the last layer (kernel {kh}x{kw}, stride {stride}, no padding, as RLlib's "
            f"last) gets {last_in[0]}x{last_in[1]}"
        )
    return filters


def _rllib_convs(c: int, hw: tuple[int, int], filters: list[list[Any]], activation: str) -> list[nn.Module]:
    """RLlib's VisionNetwork convolutions: Conv2d (with a ZeroPad2d before it where "same" padding is
    uneven, as RLlib's SlimConv2d) and the activation after each."""
    (h, w), layers = hw, []
    for i, (channels, (kh, kw), stride) in enumerate(filters):
        sh, sw = _positive_pair(stride)
        padding: tuple[int, int] = (0, 0)
        if i < len(filters) - 1:
            h, top, bottom = _same_padding(h, kh, sh)
            w, left, right = _same_padding(w, kw, sw)
            if (top, left) == (bottom, right):
                padding = (top, left)
            else:  # the odd pixel at the bottom and right (TensorFlow's, RLlib's)
                layers.append(nn.ZeroPad2d((left, right, top, bottom)))
        layers += [_init(nn.Conv2d(c, channels, (kh, kw), stride=(sh, sw), padding=padding))]
        layers.append(ACTIVATIONS[activation]())
        c = channels
    return layers


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
    """The encoders whose smallest size an image of height and width ``hw[:2]`` reaches (``rllib`` for the
    sizes RLlib has a default stack for)."""
    fits = [name for name, (least, _) in ENCODERS.items() if min(hw[:2]) >= least]
    return fits + ["rllib"] if tuple(hw[:2]) in RLLIB_FILTERS else fits


def check_image_fits(
    shape: tuple[int, ...] | list[int], name: str, conv_filters: Any = None
) -> list[list[Any]] | None:
    """A one-line UserError when ``--encoder name`` cannot take images of ``shape``: the wrong number of
    dimensions, too small for the encoder (naming the encoders that fit), or for ``rllib`` no default stack
    for the size or a stack that shrinks it below one pixel. Returns ``rllib``'s layers (None for others)."""
    if name not in ENCODER_NAMES:
        raise UserError(f"--encoder must be one of {', '.join(ENCODER_NAMES)}, not {name!r}")
    (_, h, w), _ = image_chw(shape)
    if name == "rllib":
        return rllib_filters(shape, conv_filters)
    least = ENCODERS[name][0]
    if min(h, w) < least:
        fits = fitting_encoders((h, w))
        raise UserError(
            f"images of shape {tuple(shape)} ({h}x{w} pixels) are too small for --encoder {name} (at "
            f"least {least}x{least}); encoders that fit: {', '.join(fits) or 'none'}"
        )
    return None


def pixel_factor(uint8: bool, pixel_scale: float | None = None) -> float:
    """What an image's stored values are multiplied by before the encoder's layers: ``pixel_scale``
    (``--pixel_scale``) when given, else 1/255 for uint8 pixels and 1 for float ones."""
    if pixel_scale is not None:
        return float(pixel_scale)
    return 1.0 / 255.0 if uint8 else 1.0


def weights_cast_once(device_type: str) -> torch.autocast:
    """An autocast region to hold open while a network's weights stay fixed (a rollout, an evaluation):
    within it a ``--precision bf16`` encoder casts its weights to bfloat16 once, at its first call, not at
    every call (leaving the outermost autocast region empties autocast's cache of casts; each encoder
    call opens and leaves its own). It turns autocast off, so nothing computes differently; the casts
    are dropped when it closes. ``device_type``: the network's ("cpu", "cuda")."""
    return torch.autocast(device_type, enabled=False)


class ImageEncoder(nn.Module):
    """One image observation to features: ``forward(images)`` takes a batch [B, *shape] as stored (uint8
    or float, channels-first or -last) and returns [B, ``out_dim``] float32 features.

    ``shape`` is the observation's shape, ``name`` one of ``ENCODER_NAMES``; a UserError (one line naming
    the shape and the encoders that fit) when the image is too small for it or has the wrong dimensions.
    ``rllib`` takes ``conv_filters`` (RLlib's form; None: RLlib's default for the image's size) and
    ``conv_activation`` (a name in ``ACTIVATIONS``); the other encoders have their own layers.
    ``pixel_scale``: what the pixels are multiplied by first (None: 1/255 for uint8 images, 1 for float).
    """

    # Channels-last (NHWC) pixels make oneDNN's CPU convolutions faster: a PPO update step of the Nature
    # CNN took 1.06 instead of 1.49 ms a sample (docs/benchmarks.md, "Atari"; scripts/bench_cnn_update.py
    # turns this off to compare). The conversion is made on the uint8 pixels, the cheap copy, and is none
    # for HWC images, whose permuted view is NHWC already.
    channels_last = True
    # --precision bf16 (``MLPActorCritic.set_precision``): the layers run in bfloat16 under autocast (oneDNN's
    # AMX / AVX-512 BF16 kernels on a CPU, tensor cores on a GPU), which halves an Atari update's time here
    # (docs/benchmarks.md, "Mixed precision"); the features come back float32, so everything after the
    # encoder (heads, losses, Adam's state) stays float32. None: float32 throughout.
    compute_dtype: torch.dtype | None = None

    def __init__(
        self,
        shape: tuple[int, ...] | list[int],
        name: str,
        uint8: bool,
        conv_filters: list[list[Any]] | None = None,
        conv_activation: str = "relu",
        pixel_scale: float | None = None,
    ) -> None:
        super().__init__()
        filters = check_image_fits(shape, name, conv_filters)
        (c, h, w), self.channels_first = image_chw(shape)
        scale = pixel_factor(uint8, pixel_scale)
        self.scale = None if scale == 1.0 else scale  # None: the pixels are used as they are
        if name == "rllib":
            if conv_activation not in ACTIVATIONS:
                raise UserError(
                    f"--conv_activation must be one of {', '.join(ACTIVATIONS)}, not {conv_activation!r}"
                )
            self.convs = nn.Sequential(*_rllib_convs(c, (h, w), filters, conv_activation))
            self.dense = nn.Sequential(nn.Flatten())  # RLlib's features: the last layer's output, flat
            height, width = conv_stack_sizes((h, w), filters)[-1]
            self.out_dim = filters[-1][0] * height * width
            return
        convs, self.out_dim, dense_act = ENCODERS[name][1](c)
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
        if self.compute_dtype is None:
            return self.dense(self.convs(x))
        with torch.autocast(x.device.type, dtype=self.compute_dtype):
            return self.dense(self.convs(x)).float()

    def describe(self, part: ObsPart) -> ImageInput:
        """This encoder, for the image ``part`` it takes, as the network description's record."""
        if type(self) is not ImageEncoder:  # its forward may not be this one
            raise Undescribable(f"an image encoder {type(self).__name__}")
        layers = describe_layers([*self.convs, *self.dense])
        return ImageInput(
            part.key, part.shape, part.dtype == np.uint8, self.channels_first, self.scale, layers
        )


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

    def to_torch(self, obs: Obs, device: torch.device | None = None) -> Obs:
        """Numpy observations as tensors (sharing memory where the dtype already fits), on ``device`` (one
        copy there) when given."""
        return self.map(lambda p, x: torch.as_tensor(np.asarray(x, dtype=p.dtype), device=device), obs)

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
    (``name``, and for ``rllib`` its ``conv_filters`` and ``conv_activation``; ``pixel_scale``), vector
    parts as they come
    (already normalised), concatenated in the layout's order.

    ``forward(obs)`` takes a tensor (an image Box) or a dict of tensors and returns [B, ``out_dim``].
    """

    def __init__(
        self,
        layout: ObsLayout,
        name: str,
        conv_filters: list[list[Any]] | None = None,
        conv_activation: str = "relu",
        pixel_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.layout = layout
        # By position among the image parts (a Dict's keys may hold characters a module name cannot).
        self.images = nn.ModuleList(
            ImageEncoder(p.shape, name, p.dtype == np.uint8, conv_filters, conv_activation, pixel_scale)
            for p in layout.parts
            if p.image
        )
        self.out_dim = sum(e.out_dim for e in self.images) + layout.vector_dim

    def describe(self) -> tuple[VectorInput | ImageInput, ...]:
        """The network description's inputs (``core.network_spec``): one per part, in the layout's order."""
        images = iter(self.images)
        return tuple(
            next(images).describe(p) if p.image else VectorInput(p.key, p.shape) for p in self.layout.parts
        )

    def forward(self, obs: Obs) -> torch.Tensor:
        if not self.layout.is_dict:
            return self.images[0](obs)
        n, features, images = self.layout.batch_size(obs), [], iter(self.images)
        for p in self.layout.parts:
            features.append(next(images)(obs[p.key]) if p.image else obs[p.key].reshape(n, p.size).float())
        return torch.cat(features, dim=1)
