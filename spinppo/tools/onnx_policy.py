"""A spinppo policy as an ONNX graph (built by hand, opset 9), and an ONNX policy run with onnxruntime.

Two forms (docs/export.md lists every name, shape and dtype):

- **Unity** (``unity_model``): what ML-Agents' own exporter writes (release 20: ``model_serialization.py``
  and ``SimpleActor.forward``), so the file is a trained model for a Behavior Parameters component. Inputs
  ``obs_0``, ``obs_1``, ... (one per sensor) and ``action_masks`` (discrete actions: 1 allowed, 0 masked);
  outputs ``version_number`` (3), ``memory_size`` (0), then ``continuous_actions``,
  ``continuous_action_output_shape``, ``deterministic_continuous_actions`` or ``discrete_actions``,
  ``discrete_action_output_shape``, ``deterministic_discrete_actions``; a recurrent policy (memory) also
  takes ``recurrent_in`` [batch, 1, memory_size] and gives ``recurrent_out`` last, as ML-Agents' does.
- **Generic** (``gym_model``): input ``obs`` (raw observations; one image goes in as the environment
  stores it, uint8 or float32, CHW or HWC, through its encoder's Conv/MaxPool/Add layers), outputs
  ``actions`` (sampled) and ``deterministic_actions``, both exactly what spinppo's replay sends the
  environment (Box actions clipped to the space's bounds, Discrete actions shifted by the space's
  ``start``); a recurrent policy also takes ``memory_in`` and gives ``memory_out`` ([batch, memory_size]).

Both hold observation normalisation (``obs_rms``: standardise, clip to +-10) inside the graph, so they
take the environment's raw observations. The graph is written node by node with ``onnx.helper`` rather
than traced with ``torch.onnx``: every name, the opset and the constants are ours to choose, and only
operators that Unity's Barracuda imports are used. ``OnnxPolicy`` runs either form with onnxruntime
(``test_policy`` on an .onnx file).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from spinppo.utils.errors import UserError, first_line

OPSET = 9  # ML-Agents' SerializationSettings.onnx_opset; Barracuda and Sentis import it
IR_VERSION = 6  # a protobuf IR version every reader of opset 9 models takes (onnx 1.6's)
MLAGENTS_API_VERSION = 3  # SimpleActor.MODEL_EXPORT_VERSION: ModelApiVersion.MLAgents2_0
MASKED_LOGIT = 1e8  # ML-Agents' _mask_branch: logits * mask - 1e8 * (1 - mask)
META_FORM, META_ENV, META_CTOR, META_SOURCE = "spinppo.form", "spinppo.env", "spinppo.ctor", "spinppo.source"


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as e:
        raise UserError(f"ONNX export needs the onnx package ({first_line(e)}): pip install onnx") from None
    return onnx


class _Graph:
    """Nodes and initializers of one graph, with unique names (Barracuda names a layer by its output)."""

    def __init__(self) -> None:
        self.onnx = _onnx()
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, hint: str, value: Any, dtype: Any = np.float32) -> str:
        name = self._name(hint)
        array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def op(
        self, op_type: str, inputs: list[str], hint: str | None = None, output: str | None = None, **attrs
    ):
        out = output or self._name(hint or op_type.lower())
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def constant_output(self, name: str, value: np.ndarray) -> str:
        """A Constant node whose output is a graph output: how ML-Agents' metadata (version_number, the
        action shapes) reaches Barracuda, which keeps such constants as named Load layers."""
        tensor = self.onnx.numpy_helper.from_array(np.asarray(value, np.float32), name + "_value")
        return self.op("Constant", [], output=name, value=tensor)


# ------------------------------------------------------------------------------------------- the network


def check_network(ac: Any) -> None:
    """A UserError unless ``ac`` is a network this exporter can write: spinppo's MLPActorCritic on vectors,
    images or a Dict of them, a plain LSTM if any, and float32 weights (it walks the modules themselves,
    so a foreign layer fails there)."""
    import torch

    from spinppo.core.networks import MLPActorCritic, plain_lstm

    spec = getattr(ac, "ctor_spec", {})
    if type(ac) is not MLPActorCritic or spec.get("class") != "MLPActorCritic":
        raise UserError(f"cannot export a {type(ac).__name__}: the ONNX exporter writes MLPActorCritic")
    if ac.lstm is not None and not plain_lstm(ac.lstm):
        raise UserError("cannot export an LSTM other than one layer, one direction, with biases")
    obs = spec["observation"]
    parts = list(obs["spaces"].values()) if obs["kind"] == "dict" else [obs]
    if any(p.get("kind") != "box" or len(p["shape"]) not in (1, 3) for p in parts):
        raise UserError(
            f"cannot export a policy of {obs} observations: vectors and images (or a Dict of them) only"
        )
    if any(p.dtype != torch.float32 for p in ac.parameters()):
        raise UserError("cannot export a policy whose weights are not float32")


def _lstm(g: _Graph, lstm: Any, x: str, h0: str, c0: str) -> tuple[str, str, str]:
    """One step of ``lstm`` (torch's nn.LSTM) as ONNX's LSTM operator: input ``x`` [batch, F], states
    ``h0``, ``c0`` [1, batch, H]; returns (output [batch, H], h [1, batch, H], c [1, batch, H]).

    ONNX orders the gates i, o, f, c where torch orders them i, f, g(=c), o; the weights are reordered."""
    hidden = lstm.hidden_size
    order = [0, 3, 1, 2]  # torch's i, f, g, o blocks taken as ONNX's i, o, f, c

    def gates(t: Any) -> np.ndarray:
        blocks = t.detach().numpy().reshape(4, hidden, *t.shape[1:])
        return blocks[order].reshape(4 * hidden, *t.shape[1:])

    w = g.const("lstm_w", gates(lstm.weight_ih_l0)[None])
    r = g.const("lstm_r", gates(lstm.weight_hh_l0)[None])
    b = g.const("lstm_b", np.concatenate([gates(lstm.bias_ih_l0), gates(lstm.bias_hh_l0)])[None])
    seq = g.op("Unsqueeze", [x], "lstm_input", axes=[0])  # [1 step, batch, F]
    h, c = g._name("lstm_h"), g._name("lstm_c")
    y = g._name("lstm_y")
    g.nodes.append(
        g.onnx.helper.make_node("LSTM", [seq, w, r, b, "", h0, c0], [y, h, c], name=y, hidden_size=hidden)
    )
    return g.op("Squeeze", [h], "lstm_output", axes=[0]), h, c


def _is_image(ac: Any) -> bool:
    return len(ac.ctor_spec["observation"]["shape"]) == 3


def _linear(g: _Graph, layer: Any, x: str, rows: slice = slice(None)) -> str:
    # Gemm with transB: the weight stays [out, in] as torch keeps it; Barracuda imports it as Dense.
    w = layer.weight.detach()[rows].numpy()
    b = layer.bias.detach()[rows].numpy() if layer.bias is not None else np.zeros(w.shape[0], np.float32)
    return g.op("Gemm", [x, g.const("weight", w), g.const("bias", b)], "dense", transB=1)


def _layer_norm(g: _Graph, layer: Any, x: str) -> str:
    # LayerNormalization is opset 17; written out as ML-Agents' own LayerNorm exports (mean, variance,
    # divide), with torch's eps and the learned scale and shift.
    if len(layer.normalized_shape) != 1:
        raise UserError(f"cannot export LayerNorm over {tuple(layer.normalized_shape)}: one axis only")
    mean = g.op("ReduceMean", [x], "ln_mean", axes=[-1], keepdims=1)
    centred = g.op("Sub", [x, mean], "ln_centred")
    var = g.op("ReduceMean", [g.op("Mul", [centred, centred], "ln_square")], "ln_var", axes=[-1], keepdims=1)
    std = g.op("Sqrt", [g.op("Add", [var, g.const("ln_eps", [layer.eps])], "ln_var_eps")], "ln_std")
    y = g.op("Div", [centred, std], "ln_unit")
    if layer.weight is not None:
        y = g.op("Mul", [y, g.const("ln_scale", layer.weight.detach().numpy())], "ln_scaled")
    if layer.bias is not None:
        y = g.op("Add", [y, g.const("ln_shift", layer.bias.detach().numpy())], "ln_out")
    return y


def _activation(g: _Graph, module: Any, x: str) -> str | None:
    """The activation ``module`` applied to ``x``, or None when ``module`` is not an activation."""
    from torch import nn

    kind = type(module)
    if kind is nn.Tanh:
        return g.op("Tanh", [x])
    if kind is nn.ReLU:
        return g.op("Relu", [x])
    if kind is nn.ELU:
        return g.op("Elu", [x], alpha=float(module.alpha))
    if kind is nn.LeakyReLU:
        return g.op("LeakyRelu", [x], alpha=float(module.negative_slope))
    if kind is nn.SiLU:  # x * sigmoid(x): Swish is not an ONNX operator
        return g.op("Mul", [x, g.op("Sigmoid", [x])], "silu")
    if kind is nn.GELU:
        if module.approximate != "none":
            raise UserError(f"cannot export GELU(approximate={module.approximate!r}): exact GELU only")
        # x * 0.5 * (1 + erf(x / sqrt(2))), torch's exact GELU
        erf = g.op("Erf", [g.op("Mul", [x, g.const("inv_sqrt2", [1 / math.sqrt(2)])], "gelu_scaled")])
        half = g.op("Mul", [x, g.const("half", [0.5])], "gelu_half")
        return g.op("Mul", [half, g.op("Add", [erf, g.const("one", [1.0])], "gelu_erf1")], "gelu")
    return None


def _sequential(g: _Graph, modules: list[Any], x: str) -> str:
    from torch import nn

    from spinppo.core.encoders import _Residual

    modules = [m for m in modules if not isinstance(m, nn.Identity)]
    for i, module in enumerate(modules):
        if type(module) is nn.ZeroPad2d:  # RLlib's uneven "same" padding: the next Conv's own pads
            if i + 1 == len(modules) or type(modules[i + 1]) is not nn.Conv2d:
                raise UserError("cannot export a ZeroPad2d that does not come before a Conv2d")
            continue
        if type(module) is nn.Linear:
            x = _linear(g, module, x)
        elif type(module) is nn.LayerNorm:
            x = _layer_norm(g, module, x)
        elif type(module) is nn.Conv2d:
            before = modules[i - 1] if i else None
            x = _conv(g, module, x, before.padding if type(before) is nn.ZeroPad2d else None)
        elif type(module) is nn.MaxPool2d:
            x = _max_pool(g, module, x)
        elif type(module) is _Residual:  # x + conv1(relu(conv0(relu(x))))
            y = _conv(g, module.conv0, g.op("Relu", [x]))
            y = _conv(g, module.conv1, g.op("Relu", [y]))
            x = g.op("Add", [x, y], "residual")
        elif type(module) is nn.Flatten:
            if (module.start_dim, module.end_dim) != (1, -1):
                raise UserError(f"cannot export Flatten({module.start_dim}, {module.end_dim}): (1, -1) only")
            x = g.op("Flatten", [x], axis=1)  # [N, C, H, W] -> [N, C*H*W] in torch's (row-major) order
        else:
            y = _activation(g, module, x)
            if y is None:
                raise UserError(f"cannot export a network with a {type(module).__name__} layer")
            x = y
    return x


def _pair(value: Any) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * 2


def _conv(g: _Graph, conv: Any, x: str, zero_pad: tuple[int, int, int, int] | None = None) -> str:
    """torch's Conv2d (zero padding, NCHW) as ONNX Conv with its weights, strides, pads and dilations;
    ``zero_pad`` the (left, right, top, bottom) of a ZeroPad2d before it, added to its pads."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise UserError(f"cannot export Conv2d(padding={conv.padding!r}, padding_mode={conv.padding_mode!r})")
    pads = _pair(conv.padding) * 2  # [top, left, bottom, right]
    if zero_pad is not None:
        left, right, top, bottom = zero_pad
        if min(zero_pad) < 0:
            raise UserError(f"cannot export ZeroPad2d({zero_pad}): negative padding crops")
        pads = [pads[0] + top, pads[1] + left, pads[2] + bottom, pads[3] + right]
    inputs = [x, g.const("conv_weight", conv.weight.detach().numpy())]
    if conv.bias is not None:
        inputs.append(g.const("conv_bias", conv.bias.detach().numpy()))
    return g.op(
        "Conv",
        inputs,
        "conv",
        kernel_shape=_pair(conv.kernel_size),
        strides=_pair(conv.stride),
        pads=pads,  # [top, left, bottom, right]
        dilations=_pair(conv.dilation),
        group=int(conv.groups),
    )


def _max_pool(g: _Graph, pool: Any, x: str) -> str:
    """torch's MaxPool2d as ONNX MaxPool (opset 9 rounds output sizes down: ceil_mode=False only)."""
    if pool.ceil_mode or _pair(pool.dilation) != [1, 1] or pool.return_indices:
        raise UserError("cannot export MaxPool2d with ceil_mode, dilation or indices (opset 9 has none)")
    pads = _pair(pool.padding)
    stride = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
    return g.op(
        "MaxPool", [x], "maxpool", kernel_shape=_pair(pool.kernel_size), strides=stride, pads=pads + pads
    )


def _image_features(g: _Graph, encoder: Any, x: str, unity: bool = False) -> str:
    """``ImageEncoder.forward``: to CHW (Transpose), to float (Cast), 1/255 for uint8, the convolutions,
    Flatten, the dense layer and its activation.

    ``unity``: ``x`` is what Unity's inference feeds a visual sensor, float32 NCHW in [0, 1], which is
    already the 1/255-scaled CHW image the encoder computes from the uint8 HWC pixels spinppo's Unity
    adapter stores (round(255 v)): no Transpose, Cast or scaling (the rounding is not redone: within
    1/510 a pixel)."""
    from spinppo.core.encoders import ImageEncoder

    if type(encoder) is not ImageEncoder:
        raise UserError(f"cannot export an image encoder {type(encoder).__name__}")
    if not unity:
        if not encoder.channels_first:
            x = g.op("Transpose", [x], "to_chw", perm=[0, 3, 1, 2])
        x = g.op("Cast", [x], "as_float", to=_onnx().TensorProto.FLOAT)
        if encoder.scale is not None:
            x = g.op("Mul", [x, g.const("pixel_scale", [encoder.scale])], "scaled_pixels")
    return _sequential(g, [*encoder.convs, *encoder.dense], x)


def _observation_features(g: _Graph, ac: Any, names: list[str], unity: bool = False) -> str:
    """What the LSTM or the trunk takes (``ObservationEncoder`` after ``normalize_obs``), from one input
    per part of the observation (``names``, in ``ac.layout.parts``' order): vectors flattened, normalised
    together by ``obs_rms`` and split back; each image through its own encoder; all concatenated in the
    parts' order. ``unity``: images come as Unity feeds them (``_image_features``)."""
    if ac.encoder is None:  # one flat vector
        return _normalized(g, ac, names[0])
    parts = ac.layout.parts
    vectors = [(p, g.op("Flatten", [name], "vector", axis=1)) for p, name in zip(parts, names) if not p.image]
    normalized: dict[Any, str] = {}
    if vectors:
        x = vectors[0][1] if len(vectors) == 1 else g.op("Concat", [v for _, v in vectors], "vectors", axis=1)
        x = _normalized(g, ac, x)
        start = 0
        for p, _ in vectors:
            normalized[p.key] = g.op(
                "Slice", [x], "vector_part", axes=[1], starts=[start], ends=[start + p.size]
            )
            start += p.size
    images = iter(ac.encoder.images)
    features = [
        _image_features(g, next(images), name, unity) if p.image else normalized[p.key]
        for p, name in zip(parts, names)
    ]
    return features[0] if len(features) == 1 else g.op("Concat", features, "features", axis=1)


def _normalized(g: _Graph, ac: Any, x: str) -> str:
    """``obs_rms.normalize``: (x - mean) * rsqrt(var + eps), clipped, with the float32 copies torch uses."""
    if not ac.norm_obs:
        return x
    import torch

    rms = ac.obs_rms
    with torch.no_grad():
        mean = rms.mean.float().numpy()
        inv_std = torch.rsqrt(rms.var + rms.epsilon).float().numpy()
    x = g.op(
        "Mul", [g.op("Sub", [x, g.const("obs_mean", mean)], "obs_centred"), g.const("obs_inv_std", inv_std)]
    )
    return g.op("Clip", [x], "obs_normalized", min=-float(rms.clip), max=float(rms.clip))


def _policy_head(
    g: _Graph, ac: Any, x: str, memory: tuple[str, str] | None = None
) -> tuple[list[str], tuple[str, str] | None]:
    """The policy head's outputs for ``x``, what ``_observation_features`` made of the raw observations:
    [mean] (Box) or one logits tensor per branch, each from its own slice of the last layer's rows
    (ML-Agents gives each branch its own layer too). A recurrent network takes ``memory`` (its h and c,
    [1, batch, H] each) and also returns the next (h, c); others return None there."""
    from torch import nn

    next_memory = None
    if ac.lstm is not None:
        x, h, c = _lstm(g, ac.lstm, x, *memory)
        next_memory = (h, c)
    feat = _sequential(g, list(ac.trunk) if isinstance(ac.trunk, nn.Sequential) else [], x)
    layers = list(ac.pi)
    if not layers or type(layers[-1]) is not nn.Linear:
        raise UserError("cannot export a policy head that does not end in a Linear layer")
    hidden = _sequential(g, layers[:-1], feat)
    if not ac.discrete:
        return [_linear(g, layers[-1], hidden)], next_memory
    bounds = np.cumsum([0, *ac.branches])
    return [_linear(g, layers[-1], hidden, slice(a, b)) for a, b in zip(bounds[:-1], bounds[1:])], next_memory


def _memory_halves(g: _Graph, memory: str, axis: int, hidden: int) -> tuple[str, str]:
    """h and c from a memory input (h and c side by side on ``axis``), each [1, batch, H]."""
    h = g.op("Slice", [memory], "memory_h", axes=[axis], starts=[0], ends=[hidden])
    c = g.op("Slice", [memory], "memory_c", axes=[axis], starts=[hidden], ends=[2 * hidden])
    if axis == 1:  # [batch, H] -> [1, batch, H]
        return g.op("Unsqueeze", [h], "h0", axes=[0]), g.op("Unsqueeze", [c], "c0", axes=[0])
    # [batch, 1, H] (ML-Agents' recurrent_in) -> [1, batch, H], as its LSTM transposes when exporting
    return g.op("Transpose", [h], "h0", perm=[1, 0, 2]), g.op("Transpose", [c], "c0", perm=[1, 0, 2])


def _gaussian(g: _Graph, ac: Any, mean: str) -> str:
    """A sample of N(mean, exp(log_std)): RandomNormalLike, as torch.randn_like exports (ML-Agents')."""
    std = ac.log_std.detach().exp().numpy()
    noise = g.op("RandomNormalLike", [mean], "noise", dtype=_onnx().TensorProto.FLOAT)
    return g.op("Add", [mean, g.op("Mul", [noise, g.const("std", std)], "scaled_noise")], "sample")


def _categorical(g: _Graph, logits: list[str]) -> tuple[str, str]:
    """(sampled, most likely) actions, int64 [batch, branches], of one Categorical per logits tensor.

    Multinomial takes the logits as unnormalised log-probabilities (a -1e8 masked logit has probability
    0); ArgMax keeps the first of equal logits, as torch.argmax does.
    """
    int64 = _onnx().TensorProto.INT64
    sampled = [g.op("Multinomial", [z], "sample", dtype=int64, sample_size=1) for z in logits]
    best = [g.op("ArgMax", [z], "argmax", axis=1, keepdims=1) for z in logits]
    if len(logits) == 1:
        return sampled[0], best[0]
    return g.op("Concat", sampled, "samples", axis=1), g.op("Concat", best, "argmaxes", axis=1)


def _model(g: _Graph, inputs: list[Any], outputs: list[Any], metadata: dict[str, str], name: str) -> Any:
    onnx = g.onnx
    graph = onnx.helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.initializers)
    model = onnx.helper.make_model(
        graph, producer_name="spinppo", opset_imports=[onnx.helper.make_opsetid("", OPSET)]
    )
    model.ir_version = IR_VERSION
    onnx.helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model


# ------------------------------------------------------------------------------------------------ the forms


def unity_model(ac: Any, observation_shapes: list[list[int]], metadata: dict[str, str] | None = None) -> Any:
    """The policy ``ac`` (trained on a Unity behavior) as ML-Agents' exporter writes a policy.

    ``observation_shapes``: one shape per sensor, in Unity's order (config.json's ``observation_shapes``);
    their concatenation is the network's observation. Continuous actions come out clipped to [-1, 1],
    as spinppo sends them to Unity (ML-Agents' own exporter clips to [-3, 3] and divides by 3; its policy
    was trained that way, this one was not). Returns an ``onnx.ModelProto``; a UserError for a network or
    shapes it cannot write.
    """
    check_network(ac)
    onnx = _onnx()
    float32, int64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    shapes = [[int(n) for n in shape] for shape in observation_shapes]
    obs = ac.ctor_spec["observation"]
    g = _Graph()
    if obs["kind"] == "dict":  # visual sensors: one Dict part per sensor, in Unity's order
        parts = ac.layout.parts
        if [list(p.shape) for p in parts] != shapes:
            raise UserError(
                f"the run's observation_shapes {shapes} are not the policy's sensors "
                f"{[list(p.shape) for p in parts]}"
            )
        # Unity feeds a visual sensor as float32 NCHW (ML-Agents' _get_onnx_shape), a vector as [batch, n].
        inputs = [
            onnx.helper.make_tensor_value_info(
                f"obs_{i}", float32, ["batch", s[2], s[0], s[1]] if len(s) == 3 else ["batch", *s]
            )
            for i, s in enumerate(shapes)
        ]
        x = _observation_features(g, ac, [i.name for i in inputs], unity=True)
    else:
        if _is_image(ac):
            raise UserError(
                "the Unity form of a policy on one image Box cannot be written: spinppo's Unity runs give "
                "visual sensors as a Dict"
            )
        obs_dim = obs["shape"][0]
        if not shapes or any(len(s) != 1 or s[0] < 1 for s in shapes) or sum(s[0] for s in shapes) != obs_dim:
            raise UserError(
                f"the run's observation_shapes {shapes} are not vector sensors adding up to the policy's "
                f"{obs_dim} observations"
            )
        inputs = [
            onnx.helper.make_tensor_value_info(f"obs_{i}", float32, ["batch", *s])
            for i, s in enumerate(shapes)
        ]
        names = [i.name for i in inputs]
        x = _normalized(g, ac, names[0] if len(names) == 1 else g.op("Concat", names, "observation", axis=1))
    act = ac.ctor_spec["action"]
    memory_size = int(ac.memory_size)
    memory = None
    if memory_size:  # ML-Agents' recurrent_in: [batch, 1 (the sequence), memory_size]
        memory = _memory_halves(g, "recurrent_in", 2, memory_size // 2)
    heads, next_memory = _policy_head(g, ac, x, memory)
    g.constant_output("version_number", np.array([MLAGENTS_API_VERSION]))
    g.constant_output("memory_size", np.array([memory_size]))
    outputs = [
        onnx.helper.make_tensor_value_info("version_number", float32, [1]),
        onnx.helper.make_tensor_value_info("memory_size", float32, [1]),
    ]
    if act["kind"] == "box":
        if len(act["shape"]) != 1:
            raise UserError(f"a Unity policy has a flat continuous action, not shape {act['shape']}")
        n = act["shape"][0]
        g.op("Clip", [_gaussian(g, ac, heads[0])], output="continuous_actions", min=-1.0, max=1.0)
        g.constant_output("continuous_action_output_shape", np.array([n]))
        g.op("Clip", [heads[0]], output="deterministic_continuous_actions", min=-1.0, max=1.0)
        outputs += [
            onnx.helper.make_tensor_value_info("continuous_actions", float32, ["batch", n]),
            onnx.helper.make_tensor_value_info("continuous_action_output_shape", float32, [1]),
            onnx.helper.make_tensor_value_info("deterministic_continuous_actions", float32, ["batch", n]),
        ]
    else:
        branches = list(ac.branches)
        inputs.append(onnx.helper.make_tensor_value_info("action_masks", float32, ["batch", sum(branches)]))
        masked = []
        start = 0
        for logits, size in zip(heads, branches):
            # ML-Agents' _mask_branch: logits * mask - 1e8 * (-1 * mask + 1); an all-ones mask leaves the
            # logits exactly as they were.
            mask = g.op("Slice", ["action_masks"], "mask", axes=[1], starts=[start], ends=[start + size])
            blocked = g.op("Add", [g.op("Mul", [mask, g.const("minus_one", [-1.0])]), g.const("one", [1.0])])
            penalty = g.op("Mul", [blocked, g.const("masked_logit", [MASKED_LOGIT])], "penalty")
            masked.append(g.op("Sub", [g.op("Mul", [logits, mask], "allowed"), penalty], "masked_logits"))
            start += size
        sampled, best = _categorical(g, masked)
        g.op("Identity", [sampled], output="discrete_actions")
        g.constant_output("discrete_action_output_shape", np.array([branches]))
        g.op("Identity", [best], output="deterministic_discrete_actions")
        outputs += [
            onnx.helper.make_tensor_value_info("discrete_actions", int64, ["batch", len(branches)]),
            onnx.helper.make_tensor_value_info("discrete_action_output_shape", float32, [1, len(branches)]),
            onnx.helper.make_tensor_value_info(
                "deterministic_discrete_actions", int64, ["batch", len(branches)]
            ),
        ]
    if memory_size:  # after action_masks and the outputs above, as ML-Agents orders them
        inputs.append(onnx.helper.make_tensor_value_info("recurrent_in", float32, ["batch", 1, memory_size]))
        both = g.op("Concat", list(next_memory), "memory_hc", axis=2)  # [1, batch, memory_size]
        g.op("Transpose", [both], output="recurrent_out", perm=[1, 0, 2])
        outputs.append(
            onnx.helper.make_tensor_value_info("recurrent_out", float32, ["batch", 1, memory_size])
        )
    return _model(g, inputs, outputs, metadata or {}, "spinppo_unity_policy")


def gym_model(ac: Any, action_space: Any, metadata: dict[str, str] | None = None) -> Any:
    """The policy ``ac`` with input ``obs`` (raw observations: float32 [batch, obs_dim], or one image
    [batch, *shape] in the environment's layout and dtype, uint8 or float32) and outputs
    ``actions`` (sampled) and ``deterministic_actions`` (mean or most likely action), each exactly what
    spinppo's replay sends the environment with ``action_space``: Box actions clipped to its bounds
    (float32 [batch, *shape]), Discrete and MultiDiscrete actions shifted by its ``start`` (int64 [batch]
    and [batch, branches]). Returns an ``onnx.ModelProto``; a UserError for a network it cannot write.
    """
    import gymnasium as gym

    from spinppo.core.networks import space_spec

    check_network(ac)
    onnx = _onnx()
    float32, int64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    if space_spec(action_space) != ac.ctor_spec["action"]:
        raise UserError(f"the action space {action_space} does not fit the policy's {ac.ctor_spec['action']}")
    g = _Graph()
    # Images go in as stored: uint8 (or float32), in the environment's layout (CHW or HWC). A Dict: one
    # input per key, "obs.<key>", in the layout's order.
    inputs = [
        onnx.helper.make_tensor_value_info(
            "obs" if p.key is None else f"obs.{p.key}",
            onnx.TensorProto.UINT8 if p.dtype == np.uint8 else float32,
            ["batch", *p.shape],
        )
        for p in ac.layout.parts
    ]
    x = _observation_features(g, ac, [i.name for i in inputs])
    memory_size = int(ac.memory_size)
    memory = None
    if memory_size:  # spinppo's memory: [batch, memory_size], h and c side by side
        inputs.append(onnx.helper.make_tensor_value_info("memory_in", float32, ["batch", memory_size]))
        memory = _memory_halves(g, "memory_in", 1, memory_size // 2)
    heads, next_memory = _policy_head(g, ac, x, memory)
    if isinstance(action_space, gym.spaces.Box):
        shape = [int(n) for n in action_space.shape]

        def sent(action: str, name: str) -> str:
            if len(shape) != 1:
                action = g.op("Reshape", [action, g.const("shape", [-1, *shape], np.int64)], "reshaped")
            low, high = action_space.low.astype(np.float32), action_space.high.astype(np.float32)
            if np.isfinite(low).any() or np.isfinite(high).any():
                # action_for_env's np.minimum(np.maximum(a, low), high); an infinite bound clips nothing
                action = g.op("Max", [action, g.const("low", low)], "above_low")
                action = g.op("Min", [action, g.const("high", high)], "below_high")
            return g.op("Identity", [action], output=name)

        sent(_gaussian(g, ac, heads[0]), "actions")
        sent(heads[0], "deterministic_actions")
        dtype, out_shape = float32, ["batch", *shape]
    else:
        sampled, best = _categorical(g, heads)
        scalar = isinstance(action_space, gym.spaces.Discrete)
        start = np.asarray(action_space.start, np.int64).reshape(-1)

        def sent(action: str, name: str) -> str:
            if scalar:
                action = g.op("Squeeze", [action], "branch", axes=[1])
            if np.any(start != 0):
                action = g.op("Add", [action, g.const("start", start[0] if scalar else start, np.int64)])
            return g.op("Identity", [action], output=name)

        sent(sampled, "actions")
        sent(best, "deterministic_actions")
        dtype, out_shape = int64, ["batch"] if scalar else ["batch", len(ac.branches)]
    outputs = [
        onnx.helper.make_tensor_value_info("actions", dtype, out_shape),
        onnx.helper.make_tensor_value_info("deterministic_actions", dtype, out_shape),
    ]
    if memory_size:
        both = g.op("Concat", list(next_memory), "memory_hc", axis=2)  # [1, batch, memory_size]
        g.op("Squeeze", [both], output="memory_out", axes=[0])
        outputs.append(onnx.helper.make_tensor_value_info("memory_out", float32, ["batch", memory_size]))
    return _model(g, inputs, outputs, metadata or {}, "spinppo_policy")


def metadata_for(
    form: str, env_spec: dict[str, Any], ctor_spec: dict[str, Any], source: str
) -> dict[str, str]:
    """The metadata_props a spinppo export carries (Unity ignores them): the form, the environment
    (``read_env_spec``'s dict, so test_policy needs no --env), the network's ctor_spec and its source file."""
    return {
        META_FORM: form,
        META_ENV: json.dumps(env_spec, sort_keys=True),
        META_CTOR: json.dumps(ctor_spec, sort_keys=True),
        META_SOURCE: source,
    }


# --------------------------------------------------------------------------------------------- running one


class OnnxPolicy:
    """An exported policy run with onnxruntime: either form, spinppo's or (Unity form) ML-Agents' own.

    ``path`` is an .onnx file. ``form`` is "unity" (inputs obs_0, obs_1, ...) or "gym" (input obs);
    ``obs_sizes`` the width of each observation input; ``env_spec`` the environment the file names in its
    metadata (``{"kind", "env", "env_kwargs", "name"}``) or None. ``act(obs, deterministic)`` takes a batch
    of concatenated raw observations and returns the batch's actions as the graph gives them. A recurrent
    policy (``memory_size`` > 0: an input ``recurrent_in`` or ``memory_in``) takes ``memory``
    [batch, memory_size] too and returns ``(actions, next memory)``. Bad input is a UserError.
    """

    def __init__(self, path: str) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise UserError(f"running an .onnx policy needs onnxruntime ({first_line(e)})") from None
        options = ort.SessionOptions()
        options.log_severity_level = 3  # onnxruntime's warnings about unused initializers are no news
        from spinppo.utils.mpi_tools import rank_threads

        threads = rank_threads()
        if threads is not None:  # inside a rank: its share of the cores, as its other pools
            options.intra_op_num_threads = options.inter_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # a missing, damaged or foreign file: onnxruntime raises its own types
            raise UserError(f"cannot load {path} with onnxruntime ({first_line(e)})") from None
        self.path = path
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        obs_names = sorted((n for n in inputs if re.fullmatch(r"obs_\d+", n)), key=lambda n: int(n[4:]))
        if obs_names:
            self.form, self.obs_names = "unity", obs_names
            if "continuous_actions" in outputs and "discrete_actions" in outputs:
                raise UserError(f"{path} has hybrid actions (continuous and discrete): not supported")
            kind = "continuous" if "continuous_actions" in outputs else "discrete"
            self.outputs = (f"{kind}_actions", f"deterministic_{kind}_actions")
        elif "obs" in inputs and {"actions", "deterministic_actions"} <= outputs:
            self.form, self.obs_names = "gym", ["obs"]
            self.outputs = ("actions", "deterministic_actions")
        elif any(n.startswith("obs.") for n in inputs) and {"actions", "deterministic_actions"} <= outputs:
            # A Dict observation: one input per key, in the policy's order.
            self.form, self.obs_names = (
                "gym",
                [i.name for i in self.session.get_inputs() if i.name[:4] == "obs."],
            )
            self.outputs = ("actions", "deterministic_actions")
        else:
            raise UserError(
                f"{path} is neither form spinppo runs: inputs {sorted(inputs)}, outputs {sorted(outputs)} "
                "(expected obs_0, ... as ML-Agents writes, or obs with actions and deterministic_actions)"
            )
        self.obs_sizes, self.ranks = [], []
        for name in self.obs_names:
            shape = inputs[name].shape
            fixed = all(isinstance(n, int) for n in shape[1:])
            if len(shape) not in (2, 4) or not fixed:
                raise UserError(f"{path}: input {name} has shape {shape}, not [batch, n] or [batch, *image]")
            self.obs_sizes.append(math.prod(shape[1:]))
            self.ranks.append(len(shape) - 1)  # one observation's rank as the environment gives it
        # Unity's visual sensors are NCHW float32 in [0, 1]; the environment gives HxWxC (uint8 in spinppo).
        self.nchw = {n for n in self.obs_names if self.form == "unity" and len(inputs[n].shape) == 4}
        self.dtypes = [np.uint8 if inputs[n].type == "tensor(uint8)" else np.float32 for n in self.obs_names]
        # One image Box (generic form): its shape, and its element type (uint8 images go in as stored)
        first = inputs[self.obs_names[0]]
        self.image_shape = (
            list(first.shape[1:]) if self.obs_names == ["obs"] and len(first.shape) == 4 else None
        )
        self.obs_dtype = self.dtypes[0]
        # A recurrent policy's memory: (input, output, whether the graph has ML-Agents' sequence axis).
        self.memory_size, self.memory_io = 0, None
        for name, out, seq in (("recurrent_in", "recurrent_out", True), ("memory_in", "memory_out", False)):
            if name in inputs:
                if out not in outputs or not isinstance(inputs[name].shape[-1], int):
                    raise UserError(f"{path}: input {name} without output {out} (or of no fixed size)")
                self.memory_size, self.memory_io = int(inputs[name].shape[-1]), (name, out, seq)
        self.mask_size = None
        if "action_masks" in inputs:
            self.mask_size = inputs["action_masks"].shape[1]
        self.env_spec = json.loads(self.metadata[META_ENV]) if META_ENV in self.metadata else None

    def act(
        self, obs: Any, deterministic: bool = False, memory: np.ndarray | None = None
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Actions for a batch of raw observations (float32 [batch, sum(obs_sizes)], images [batch,
        *image_shape] of any dtype holding their stored values, or a dict of batches: a Dict observation,
        fed by key to ``obs.<key>`` inputs, or a Unity behavior's sensors in order, images HxWxC converted
        to Unity's NCHW in [0, 1]), all actions allowed; a recurrent policy: ``(actions, next memory)``
        from ``memory`` [batch, memory_size] (zeros start an episode)."""
        if isinstance(obs, dict):
            if self.form == "gym":
                values = [obs[name[4:]] for name in self.obs_names]
            else:  # a Unity behavior's sensors: the Dict's keys are in Unity's order
                values = list(obs.values())
            feeds = {}
            for name, value, dtype in zip(self.obs_names, values, self.dtypes, strict=True):
                value = np.asarray(value)
                if name in self.nchw:
                    scale = 1 / 255 if value.dtype == np.uint8 else 1.0
                    value = np.ascontiguousarray(value.transpose(0, 3, 1, 2), dtype=np.float32) * np.float32(
                        scale
                    )
                feeds[name] = value.astype(dtype).reshape(len(value), *value.shape[1:])
            n = len(values[0])
        elif self.image_shape is not None:
            feeds = {"obs": np.asarray(obs).astype(self.obs_dtype)}
            n = len(feeds["obs"])
        else:
            obs = np.asarray(obs, dtype=np.float32)
            feeds = dict(zip(self.obs_names, np.split(obs, np.cumsum(self.obs_sizes)[:-1], axis=1)))
            n = len(obs)
        if self.mask_size is not None:
            feeds["action_masks"] = np.ones((n, self.mask_size), np.float32)
        if not self.memory_size:
            return self.session.run([self.outputs[deterministic]], feeds)[0]
        name, out, seq = self.memory_io
        memory = np.asarray(memory, dtype=np.float32).reshape(n, self.memory_size)
        feeds[name] = memory[:, None] if seq else memory
        action, next_memory = self.session.run([self.outputs[deterministic], out], feeds)
        return action, next_memory.reshape(n, self.memory_size)
