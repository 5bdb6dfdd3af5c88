"""One description of a network: the layers an ``MLPActorCritic`` computes, as plain typed records.

The torch module exports it (``ac.network_spec()``); the other executors of a policy read it instead of
walking torch modules each in their own way: the numpy ``RolloutPolicy`` (``core.rollout_policy``) and
the ONNX writer (``tools.onnx_writer``). Weights are numpy views of the module's parameters, not copies
(an executor copies what it keeps); the observation statistics are float32 copies, as the module uses
them.

What a network computes, in this order::

    inputs          the observation's parts, in the layout's order:
                    vector parts side by side, through ``normalize`` (when not None), split back;
                    each image part to CHW, to float, times ``scale`` (when not None), through its layers;
                    then all of them concatenated in the parts' order
    lstm            one step (when not None); the memory is its h and c side by side, [N, 2 * hidden]
    trunk           layers both heads share
    pi              layers ending in a Linear: the Gaussian's mean, or each branch's logits in turn (head)
    v               layers ending in a Linear with one output: V(s)

A new network option that builds layers of the kinds below needs nothing here. A new kind of layer is a
record here, a case in ``describe_layers`` (the torch module it comes from) and a primitive in each
executor that runs it; an executor that lacks it says so (the rollout then runs in torch).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


class Undescribable(ValueError):
    """A network the description cannot hold. The message is a phrase that follows "a network with",
    e.g. "a Softplus layer"."""


# ------------------------------------------------------------------------------------------------ layers
# Records compare by identity (eq=False) where they hold arrays: they are values to read, not keys.


@dataclass(frozen=True, slots=True, eq=False)
class Linear:
    """``x @ weight.T + bias``: ``weight`` [out, in], ``bias`` [out] or None."""

    weight: np.ndarray
    bias: np.ndarray | None


@dataclass(frozen=True, slots=True, eq=False)
class LayerNorm:
    """Over the last axis: ``(x - mean) / sqrt(var + eps)``, times ``weight`` and plus ``bias`` when
    learned (None when not); [features] each."""

    eps: float
    weight: np.ndarray | None
    bias: np.ndarray | None


@dataclass(frozen=True, slots=True)
class Activation:
    """An element-wise activation by its ``--act`` name: tanh, relu, elu, gelu (exact, erf), silu or
    leaky_relu. ``alpha``: ELU's alpha or LeakyReLU's negative slope; None for the others."""

    name: str
    alpha: float | None = None


@dataclass(frozen=True, slots=True, eq=False)
class Conv:
    """A 2-D convolution on [N, C, H, W]: ``weight`` [out, in / groups, kh, kw], ``bias`` [out] or None,
    ``stride`` (sh, sw), ``pads`` the zeros added (top, left, bottom, right), ``dilation`` (dh, dw)."""

    weight: np.ndarray
    bias: np.ndarray | None
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilation: tuple[int, int]
    groups: int


@dataclass(frozen=True, slots=True)
class MaxPool:
    """Max pooling on [N, C, H, W]: ``kernel`` and ``stride`` (h, w), ``pads`` (top, left, bottom, right);
    output sizes rounded down."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class Flatten:
    """[N, C, H, W] to [N, C * H * W], in row-major (torch's) order."""


@dataclass(frozen=True, slots=True)
class Residual:
    """``x + body(x)``, ``body`` keeping the shape (IMPALA's block)."""

    body: tuple[Layer, ...]


Layer = Linear | LayerNorm | Activation | Conv | MaxPool | Flatten | Residual


@dataclass(frozen=True, slots=True, eq=False)
class Lstm:
    """One step of a one-layer, one-direction LSTM with torch's gate order (i, f, g, o): ``weight_ih``
    [4H, F], ``weight_hh`` [4H, H], ``bias_ih`` and ``bias_hh`` [4H], ``hidden`` H."""

    weight_ih: np.ndarray
    weight_hh: np.ndarray
    bias_ih: np.ndarray
    bias_hh: np.ndarray
    hidden: int


@dataclass(frozen=True, slots=True, eq=False)
class Normalize:
    """``clip((x - mean) * inv_std, -clip, clip)``: float32 ``mean`` and ``inv_std`` (rsqrt(var + eps),
    as the module computes it), [vector features]; ``clip`` a Python float."""

    mean: np.ndarray
    inv_std: np.ndarray
    clip: float


# ------------------------------------------------------------------------------------ inputs and heads


@dataclass(frozen=True, slots=True)
class VectorInput:
    """A vector part of the observation: its Dict ``key`` (None for a plain Box) and ``shape``."""

    key: str | None
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True, eq=False)
class ImageInput:
    """An image part: ``key`` (None for a plain Box), ``shape`` as stored, ``uint8`` pixels (else
    float32), ``channels_first`` (CHW, else HWC), ``scale`` (what the pixels are multiplied by: by
    default 1/255 for uint8, else None, meaning 1; or ``--pixel_scale``), and ``layers`` from the CHW
    float image to its features."""

    key: str | None
    shape: tuple[int, ...]
    uint8: bool
    channels_first: bool
    scale: float | None
    layers: tuple[Layer, ...]


@dataclass(frozen=True, slots=True, eq=False)
class GaussianHead:
    """A Gaussian around pi's output (the mean) with a state-independent ``log_std`` [A] and ``std``, its
    float32 exp as torch computes it (numpy's exp may differ in the last bit); actions of ``shape``."""

    log_std: np.ndarray
    std: np.ndarray
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CategoricalHead:
    """One Categorical per branch, each over its own consecutive slice of pi's output (logits);
    ``shape`` () for a Discrete action, (branches,) for a MultiDiscrete one."""

    branches: tuple[int, ...]
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True, eq=False)
class NetworkSpec:
    """A whole actor-critic, in the order the module docstring gives: ``inputs`` (``is_dict``: a Dict
    observation, one input per key), ``normalize``, ``lstm``, ``trunk``, ``pi``, ``v`` and ``head``."""

    inputs: tuple[VectorInput | ImageInput, ...]
    is_dict: bool
    normalize: Normalize | None
    lstm: Lstm | None
    trunk: tuple[Layer, ...]
    pi: tuple[Layer, ...]
    v: tuple[Layer, ...]
    head: GaussianHead | CategoricalHead

    @property
    def memory_size(self) -> int:
        """Floats of memory per environment (0: no memory)."""
        return 0 if self.lstm is None else 2 * self.lstm.hidden

    @property
    def flat(self) -> bool:
        """One plain vector observation (no Dict, no image)."""
        return not self.is_dict and isinstance(self.inputs[0], VectorInput)

    def arrays(self) -> Iterator[np.ndarray]:
        """Every weight array (parameters only: not the observation statistics)."""
        for inp in self.inputs:
            if isinstance(inp, ImageInput):
                yield from _layer_arrays(inp.layers)
        if self.lstm is not None:
            yield from (self.lstm.weight_ih, self.lstm.weight_hh, self.lstm.bias_ih, self.lstm.bias_hh)
        yield from _layer_arrays((*self.trunk, *self.pi, *self.v))
        if isinstance(self.head, GaussianHead):
            yield self.head.log_std


def _layer_arrays(layers: Iterable[Layer]) -> Iterator[np.ndarray]:
    for layer in layers:
        if isinstance(layer, Residual):
            yield from _layer_arrays(layer.body)
        elif isinstance(layer, (Linear, LayerNorm, Conv)):
            yield from (a for a in (layer.weight, layer.bias) if a is not None)


# ------------------------------------------------------------------------------- from torch modules


def array(t: torch.Tensor) -> np.ndarray:
    """A parameter as a numpy view of its memory (no copy; a copy of one on a GPU)."""
    return t.detach().cpu().numpy()


_ACTIVATION_NAMES: dict[type[nn.Module], str] = {
    nn.Tanh: "tanh",
    nn.ReLU: "relu",
    nn.ELU: "elu",
    nn.GELU: "gelu",
    nn.SiLU: "silu",
    nn.LeakyReLU: "leaky_relu",
}


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value),) * 2


def _modules(modules: Iterable[nn.Module]) -> Iterator[nn.Module]:
    """Nested Sequentials flattened, Identity dropped."""
    for m in modules:
        if type(m) is nn.Sequential:
            yield from _modules(m)
        elif type(m) is not nn.Identity:
            yield m


def describe_layers(modules: Iterable[nn.Module]) -> tuple[Layer, ...]:
    """Torch modules, in order, as records: Sequentials flattened, Identity dropped, a ZeroPad2d made
    part of the next Conv2d's pads, and a module of spinppo's own describing itself (its
    ``describe_layer()``). Undescribable for any other module or option."""
    layers: list[Layer] = []
    zero_pad = None  # a ZeroPad2d's (left, right, top, bottom), waiting for its Conv2d
    for m in _modules(modules):
        kind = type(m)
        if zero_pad is not None and kind is not nn.Conv2d:
            raise Undescribable("a ZeroPad2d that does not come before a Conv2d")
        if kind is nn.ZeroPad2d:
            zero_pad = tuple(int(p) for p in m.padding)
            if min(zero_pad) < 0:
                raise Undescribable(f"a ZeroPad2d{zero_pad} (negative padding crops)")
        elif kind is nn.Linear:
            layers.append(Linear(array(m.weight), None if m.bias is None else array(m.bias)))
        elif kind is nn.Conv2d:
            layers.append(_conv(m, zero_pad))
            zero_pad = None
        elif kind is nn.LayerNorm:
            if len(m.normalized_shape) != 1:
                raise Undescribable(f"a LayerNorm over {tuple(m.normalized_shape)} (one axis only)")
            weight = None if m.weight is None else array(m.weight)
            layers.append(LayerNorm(float(m.eps), weight, None if m.bias is None else array(m.bias)))
        elif kind is nn.MaxPool2d:
            if m.ceil_mode or _pair(m.dilation) != (1, 1) or m.return_indices:
                raise Undescribable("a MaxPool2d with ceil_mode, dilation or indices")
            pads = _pair(m.padding)
            stride = _pair(m.stride if m.stride is not None else m.kernel_size)
            layers.append(MaxPool(_pair(m.kernel_size), stride, (*pads, *pads)))
        elif kind is nn.Flatten:
            if (m.start_dim, m.end_dim) != (1, -1):
                raise Undescribable(f"a Flatten({m.start_dim}, {m.end_dim}) layer ((1, -1) only)")
            layers.append(Flatten())
        elif kind in _ACTIVATION_NAMES:
            layers.append(_activation(m))
        elif callable(getattr(m, "describe_layer", None)):
            layers.append(m.describe_layer())
        else:
            raise Undescribable(f"a {kind.__name__} layer")
    if zero_pad is not None:
        raise Undescribable("a ZeroPad2d that does not come before a Conv2d")
    return tuple(layers)


def _activation(m: nn.Module) -> Activation:
    name = _ACTIVATION_NAMES[type(m)]
    if name == "gelu" and m.approximate != "none":
        raise Undescribable(f"a GELU(approximate={m.approximate!r}) layer (exact GELU only)")
    if name == "elu":
        return Activation(name, float(m.alpha))
    if name == "leaky_relu":
        return Activation(name, float(m.negative_slope))
    return Activation(name)


def _conv(conv: nn.Conv2d, zero_pad: tuple[int, ...] | None) -> Conv:
    """A Conv2d (zero padding), with the (left, right, top, bottom) of a ZeroPad2d before it in its pads."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise Undescribable(f"a Conv2d(padding={conv.padding!r}, padding_mode={conv.padding_mode!r})")
    top, left = _pair(conv.padding)
    pads = (top, left, top, left)
    if zero_pad is not None:
        z_left, z_right, z_top, z_bottom = zero_pad
        pads = (top + z_top, left + z_left, top + z_bottom, left + z_right)
    return Conv(
        array(conv.weight),
        None if conv.bias is None else array(conv.bias),
        _pair(conv.stride),
        pads,
        _pair(conv.dilation),
        int(conv.groups),
    )


def describe_lstm(lstm: nn.Module) -> Lstm:
    """An nn.LSTM as an ``Lstm`` record; Undescribable unless it is one layer, one direction, with biases,
    batch-first and without projection (what ``MLPActorCritic`` builds)."""
    plain = (
        type(lstm) is nn.LSTM
        and lstm.num_layers == 1
        and not lstm.bidirectional
        and lstm.bias
        and lstm.proj_size == 0
        and lstm.batch_first
    )
    if not plain:
        raise Undescribable("an LSTM other than one layer, one direction, with biases")
    return Lstm(
        array(lstm.weight_ih_l0),
        array(lstm.weight_hh_l0),
        array(lstm.bias_ih_l0),
        array(lstm.bias_hh_l0),
        int(lstm.hidden_size),
    )
