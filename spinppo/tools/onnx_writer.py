"""A spinppo policy as an ONNX graph, written by hand from the network's description (opset 9).

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
take the environment's raw observations. The graph is written node by node with ``onnx.helper`` from
``ac.network_spec()`` (``core.network_spec``: one node or a few per layer record) rather than traced with
``torch.onnx``: every name, the opset and the constants are ours to choose, and only operators that
Unity's Barracuda imports are used. ``tools.onnx_runner.OnnxPolicy`` runs either form with onnxruntime.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from spinppo.core.encoders import space_spec
from spinppo.core.network_spec import (
    Activation,
    Conv,
    Flatten,
    GaussianHead,
    ImageInput,
    LayerNorm,
    Linear,
    Lstm,
    MaxPool,
    NetworkSpec,
    Normalize,
    Residual,
    Undescribable,
    VectorInput,
)
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


def check_network(ac: Any) -> NetworkSpec:
    """The description of ``ac`` (``ac.network_spec()``) when it is a network this exporter can write;
    a UserError naming what it cannot write (a layer or option the description cannot hold, weights
    that are not float32)."""
    describe = getattr(ac, "network_spec", None)
    if describe is None:
        raise UserError(f"cannot export a {type(ac).__name__}: the ONNX exporter writes MLPActorCritic")
    try:
        spec = describe()
    except Undescribable as e:
        raise UserError(f"cannot export a network with {e}") from None
    if any(a.dtype != np.float32 for a in spec.arrays()):
        raise UserError("cannot export a policy whose weights are not float32")
    return spec


def _lstm(g: _Graph, lstm: Lstm, x: str, h0: str, c0: str) -> tuple[str, str, str]:
    """One step of ``lstm`` as ONNX's LSTM operator: input ``x`` [batch, F], states ``h0``, ``c0``
    [1, batch, H]; returns (output [batch, H], h [1, batch, H], c [1, batch, H]).

    ONNX orders the gates i, o, f, c where torch orders them i, f, g(=c), o; the weights are reordered."""
    hidden = lstm.hidden
    order = [0, 3, 1, 2]  # torch's i, f, g, o blocks taken as ONNX's i, o, f, c

    def gates(a: np.ndarray) -> np.ndarray:
        blocks = a.reshape(4, hidden, *a.shape[1:])
        return blocks[order].reshape(4 * hidden, *a.shape[1:])

    w = g.const("lstm_w", gates(lstm.weight_ih)[None])
    r = g.const("lstm_r", gates(lstm.weight_hh)[None])
    b = g.const("lstm_b", np.concatenate([gates(lstm.bias_ih), gates(lstm.bias_hh)])[None])
    seq = g.op("Unsqueeze", [x], "lstm_input", axes=[0])  # [1 step, batch, F]
    h, c = g._name("lstm_h"), g._name("lstm_c")
    y = g._name("lstm_y")
    g.nodes.append(
        g.onnx.helper.make_node("LSTM", [seq, w, r, b, "", h0, c0], [y, h, c], name=y, hidden_size=hidden)
    )
    return g.op("Squeeze", [h], "lstm_output", axes=[0]), h, c


def _linear(g: _Graph, layer: Linear, x: str, rows: slice = slice(None)) -> str:
    # Gemm with transB: the weight stays [out, in] as torch keeps it; Barracuda imports it as Dense.
    w = layer.weight[rows]
    b = layer.bias[rows] if layer.bias is not None else np.zeros(w.shape[0], np.float32)
    return g.op("Gemm", [x, g.const("weight", w), g.const("bias", b)], "dense", transB=1)


def _layer_norm(g: _Graph, layer: LayerNorm, x: str) -> str:
    # LayerNormalization is opset 17; written out as ML-Agents' own LayerNorm exports (mean, variance,
    # divide), with torch's eps and the learned scale and shift.
    mean = g.op("ReduceMean", [x], "ln_mean", axes=[-1], keepdims=1)
    centred = g.op("Sub", [x, mean], "ln_centred")
    var = g.op("ReduceMean", [g.op("Mul", [centred, centred], "ln_square")], "ln_var", axes=[-1], keepdims=1)
    std = g.op("Sqrt", [g.op("Add", [var, g.const("ln_eps", [layer.eps])], "ln_var_eps")], "ln_std")
    y = g.op("Div", [centred, std], "ln_unit")
    if layer.weight is not None:
        y = g.op("Mul", [y, g.const("ln_scale", layer.weight)], "ln_scaled")
    if layer.bias is not None:
        y = g.op("Add", [y, g.const("ln_shift", layer.bias)], "ln_out")
    return y


def _activation(g: _Graph, act: Activation, x: str) -> str:
    name = act.name
    if name == "tanh":
        return g.op("Tanh", [x])
    if name == "relu":
        return g.op("Relu", [x])
    if name == "elu":
        return g.op("Elu", [x], alpha=float(act.alpha))
    if name == "leaky_relu":
        return g.op("LeakyRelu", [x], alpha=float(act.alpha))
    if name == "silu":  # x * sigmoid(x): Swish is not an ONNX operator
        return g.op("Mul", [x, g.op("Sigmoid", [x])], "silu")
    if name == "gelu":  # x * 0.5 * (1 + erf(x / sqrt(2))), torch's exact GELU
        erf = g.op("Erf", [g.op("Mul", [x, g.const("inv_sqrt2", [1 / math.sqrt(2)])], "gelu_scaled")])
        half = g.op("Mul", [x, g.const("half", [0.5])], "gelu_half")
        return g.op("Mul", [half, g.op("Add", [erf, g.const("one", [1.0])], "gelu_erf1")], "gelu")
    raise UserError(f"cannot export a network with a {name} activation")


def _conv(g: _Graph, conv: Conv, x: str) -> str:
    inputs = [x, g.const("conv_weight", conv.weight)]
    if conv.bias is not None:
        inputs.append(g.const("conv_bias", conv.bias))
    return g.op(
        "Conv",
        inputs,
        "conv",
        kernel_shape=[int(k) for k in conv.weight.shape[2:]],
        strides=list(conv.stride),
        pads=list(conv.pads),  # [top, left, bottom, right], as the record keeps them
        dilations=list(conv.dilation),
        group=conv.groups,
    )


def _layers(g: _Graph, layers: tuple[Any, ...], x: str) -> str:
    """The records ``layers`` applied to ``x``, one node (or a few) each."""
    for layer in layers:
        if isinstance(layer, Linear):
            x = _linear(g, layer, x)
        elif isinstance(layer, Activation):
            x = _activation(g, layer, x)
        elif isinstance(layer, LayerNorm):
            x = _layer_norm(g, layer, x)
        elif isinstance(layer, Conv):
            x = _conv(g, layer, x)
        elif isinstance(layer, MaxPool):  # opset 9 rounds output sizes down, as the record does
            x = g.op(
                "MaxPool",
                [x],
                "maxpool",
                kernel_shape=list(layer.kernel),
                strides=list(layer.stride),
                pads=list(layer.pads),
            )
        elif isinstance(layer, Residual):
            x = g.op("Add", [x, _layers(g, layer.body, x)], "residual")
        elif isinstance(layer, Flatten):
            x = g.op("Flatten", [x], axis=1)  # [N, C, H, W] -> [N, C*H*W] in torch's (row-major) order
        else:
            raise UserError(f"cannot export a network with a {type(layer).__name__} layer")
    return x


def _image_features(g: _Graph, image: ImageInput, x: str, unity: bool = False) -> str:
    """An image input's features: to CHW (Transpose), to float (Cast), times its scale, its layers.

    ``unity``: ``x`` is what Unity's inference feeds a visual sensor, float32 NCHW in [0, 1], which is
    already the 1/255-scaled CHW image the encoder computes from the uint8 HWC pixels spinppo's Unity
    adapter stores (round(255 v)): no Transpose, Cast or scaling (the rounding is not redone: within
    1/510 a pixel). A network with another ``--pixel_scale`` gets Unity's values times the factor that
    makes them what its encoder computes."""
    if not unity:
        if not image.channels_first:
            x = g.op("Transpose", [x], "to_chw", perm=[0, 3, 1, 2])
        x = g.op("Cast", [x], "as_float", to=_onnx().TensorProto.FLOAT)
        if image.scale is not None:
            x = g.op("Mul", [x, g.const("pixel_scale", [image.scale])], "scaled_pixels")
    else:  # what the encoder multiplies the stored values (round(255 v) for uint8) by, applied to v
        factor = (255.0 if image.uint8 else 1.0) * (1.0 if image.scale is None else image.scale)
        if abs(factor - 1.0) > 1e-9:
            x = g.op("Mul", [x, g.const("pixel_scale", [factor])], "scaled_pixels")
    return _layers(g, image.layers, x)


def _observation_features(g: _Graph, spec: NetworkSpec, names: list[str], unity: bool = False) -> str:
    """What the LSTM or the trunk takes, from one input per part of the observation (``names``, in
    ``spec.inputs``' order): vectors flattened, normalised together and split back; each image through
    its own layers; all concatenated in the parts' order. ``unity``: images come as Unity feeds them
    (``_image_features``)."""
    if spec.flat:  # one flat vector
        return _normalized(g, spec.normalize, names[0])
    vectors = [
        (part, g.op("Flatten", [name], "vector", axis=1))
        for part, name in zip(spec.inputs, names, strict=True)
        if isinstance(part, VectorInput)
    ]
    normalized: dict[Any, str] = {}
    if vectors:
        x = vectors[0][1] if len(vectors) == 1 else g.op("Concat", [v for _, v in vectors], "vectors", axis=1)
        x = _normalized(g, spec.normalize, x)
        start = 0
        for part, _ in vectors:
            size = math.prod(part.shape)
            normalized[part.key] = g.op(
                "Slice", [x], "vector_part", axes=[1], starts=[start], ends=[start + size]
            )
            start += size
    features = [
        _image_features(g, part, name, unity) if isinstance(part, ImageInput) else normalized[part.key]
        for part, name in zip(spec.inputs, names, strict=True)
    ]
    return features[0] if len(features) == 1 else g.op("Concat", features, "features", axis=1)


def _normalized(g: _Graph, norm: Normalize | None, x: str) -> str:
    """``norm`` applied to ``x``: (x - mean) * inv_std, clipped."""
    if norm is None:
        return x
    x = g.op(
        "Mul",
        [
            g.op("Sub", [x, g.const("obs_mean", norm.mean)], "obs_centred"),
            g.const("obs_inv_std", norm.inv_std),
        ],
    )
    return g.op("Clip", [x], "obs_normalized", min=-float(norm.clip), max=float(norm.clip))


def _policy_head(
    g: _Graph, spec: NetworkSpec, x: str, memory: tuple[str, str] | None = None
) -> tuple[list[str], tuple[str, str] | None]:
    """The policy head's outputs for ``x``, what ``_observation_features`` made of the raw observations:
    [mean] (Box) or one logits tensor per branch, each from its own slice of the last layer's rows
    (ML-Agents gives each branch its own layer too). A recurrent network takes ``memory`` (its h and c,
    [1, batch, H] each) and also returns the next (h, c); others return None there."""
    next_memory = None
    if spec.lstm is not None:
        x, h, c = _lstm(g, spec.lstm, x, *memory)
        next_memory = (h, c)
    hidden = _layers(g, spec.pi[:-1], _layers(g, spec.trunk, x))
    last = spec.pi[-1]  # a Linear: network_spec makes sure
    if isinstance(spec.head, GaussianHead):
        return [_linear(g, last, hidden)], next_memory
    bounds = np.cumsum([0, *spec.head.branches])
    return [_linear(g, last, hidden, slice(a, b)) for a, b in zip(bounds[:-1], bounds[1:])], next_memory


def _gaussian(g: _Graph, head: GaussianHead, mean: str) -> str:
    """A sample of N(mean, exp(log_std)): RandomNormalLike, as torch.randn_like exports (ML-Agents')."""
    noise = g.op("RandomNormalLike", [mean], "noise", dtype=_onnx().TensorProto.FLOAT)
    return g.op("Add", [mean, g.op("Mul", [noise, g.const("std", head.std)], "scaled_noise")], "sample")


def _memory_halves(g: _Graph, memory: str, axis: int, hidden: int) -> tuple[str, str]:
    """h and c from a memory input (h and c side by side on ``axis``), each [1, batch, H]."""
    h = g.op("Slice", [memory], "memory_h", axes=[axis], starts=[0], ends=[hidden])
    c = g.op("Slice", [memory], "memory_c", axes=[axis], starts=[hidden], ends=[2 * hidden])
    if axis == 1:  # [batch, H] -> [1, batch, H]
        return g.op("Unsqueeze", [h], "h0", axes=[0]), g.op("Unsqueeze", [c], "c0", axes=[0])
    # [batch, 1, H] (ML-Agents' recurrent_in) -> [1, batch, H], as its LSTM transposes when exporting
    return g.op("Transpose", [h], "h0", perm=[1, 0, 2]), g.op("Transpose", [c], "c0", perm=[1, 0, 2])


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
    spec = check_network(ac)
    onnx = _onnx()
    float32, int64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    shapes = [[int(n) for n in shape] for shape in observation_shapes]
    g = _Graph()
    if spec.is_dict:  # visual sensors: one Dict part per sensor, in Unity's order
        sensors = [list(part.shape) for part in spec.inputs]
        if sensors != shapes:
            raise UserError(f"the run's observation_shapes {shapes} are not the policy's sensors {sensors}")
        # Unity feeds a visual sensor as float32 NCHW (ML-Agents' _get_onnx_shape), a vector as [batch, n].
        inputs = [
            onnx.helper.make_tensor_value_info(
                f"obs_{i}", float32, ["batch", s[2], s[0], s[1]] if len(s) == 3 else ["batch", *s]
            )
            for i, s in enumerate(shapes)
        ]
        x = _observation_features(g, spec, [i.name for i in inputs], unity=True)
    else:
        if isinstance(spec.inputs[0], ImageInput):
            raise UserError(
                "the Unity form of a policy on one image Box cannot be written: spinppo's Unity runs give "
                "visual sensors as a Dict"
            )
        obs_dim = spec.inputs[0].shape[0]
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
        x = _normalized(
            g, spec.normalize, names[0] if len(names) == 1 else g.op("Concat", names, "observation", axis=1)
        )
    head, memory_size = spec.head, spec.memory_size
    memory = None
    if memory_size:  # ML-Agents' recurrent_in: [batch, 1 (the sequence), memory_size]
        memory = _memory_halves(g, "recurrent_in", 2, memory_size // 2)
    heads, next_memory = _policy_head(g, spec, x, memory)
    g.constant_output("version_number", np.array([MLAGENTS_API_VERSION]))
    g.constant_output("memory_size", np.array([memory_size]))
    outputs = [
        onnx.helper.make_tensor_value_info("version_number", float32, [1]),
        onnx.helper.make_tensor_value_info("memory_size", float32, [1]),
    ]
    if isinstance(head, GaussianHead):
        if len(head.shape) != 1:
            raise UserError(f"a Unity policy has a flat continuous action, not shape {list(head.shape)}")
        n = head.shape[0]
        g.op("Clip", [_gaussian(g, head, heads[0])], output="continuous_actions", min=-1.0, max=1.0)
        g.constant_output("continuous_action_output_shape", np.array([n]))
        g.op("Clip", [heads[0]], output="deterministic_continuous_actions", min=-1.0, max=1.0)
        outputs += [
            onnx.helper.make_tensor_value_info("continuous_actions", float32, ["batch", n]),
            onnx.helper.make_tensor_value_info("continuous_action_output_shape", float32, [1]),
            onnx.helper.make_tensor_value_info("deterministic_continuous_actions", float32, ["batch", n]),
        ]
    else:
        branches = list(head.branches)
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

    spec = check_network(ac)
    onnx = _onnx()
    float32, int64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    if space_spec(action_space) != ac.ctor_spec["action"]:
        raise UserError(f"the action space {action_space} does not fit the policy's {ac.ctor_spec['action']}")
    g = _Graph()
    # Images go in as stored: uint8 (or float32), in the environment's layout (CHW or HWC). A Dict: one
    # input per key, "obs.<key>", in the layout's order.
    inputs = [
        onnx.helper.make_tensor_value_info(
            "obs" if part.key is None else f"obs.{part.key}",
            onnx.TensorProto.UINT8 if isinstance(part, ImageInput) and part.uint8 else float32,
            ["batch", *part.shape],
        )
        for part in spec.inputs
    ]
    x = _observation_features(g, spec, [i.name for i in inputs])
    memory_size = spec.memory_size
    memory = None
    if memory_size:  # spinppo's memory: [batch, memory_size], h and c side by side
        inputs.append(onnx.helper.make_tensor_value_info("memory_in", float32, ["batch", memory_size]))
        memory = _memory_halves(g, "memory_in", 1, memory_size // 2)
    heads, next_memory = _policy_head(g, spec, x, memory)
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

        sent(_gaussian(g, spec.head, heads[0]), "actions")
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
        dtype, out_shape = int64, ["batch"] if scalar else ["batch", len(spec.head.branches)]
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
