"""An exported policy (an .onnx file, spinppo's or ML-Agents' own) run with onnxruntime: ``OnnxPolicy``.

``test_policy`` replays .onnx files with it, and ``export`` checks every graph it writes against the torch
policy with it (``tools.onnx_writer`` writes them).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from spinppo.core.policy_step import PolicyAct
from spinppo.tools.onnx_writer import META_ENV
from spinppo.utils.errors import UserError, first_line


class OnnxPolicy:
    """An exported policy run with onnxruntime: either form, spinppo's or (Unity form) ML-Agents' own.

    ``path`` is an .onnx file. ``form`` is "unity" (inputs obs_0, obs_1, ...) or "gym" (input obs);
    ``obs_sizes`` the width of each observation input; ``env_spec`` the environment the file names in its
    metadata (``{"kind", "env", "env_kwargs", "name"}``) or None. ``act(obs, deterministic)`` takes a batch
    of concatenated raw observations and returns ``PolicyAct``: the batch's actions as the graph gives
    them and, for a recurrent policy (``memory_size`` > 0: an input ``recurrent_in`` or ``memory_in``),
    which takes ``memory`` [batch, memory_size] too, the next memory. Bad input is a UserError.
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

    def act(self, obs: Any, deterministic: bool = False, memory: np.ndarray | None = None) -> PolicyAct:
        """``PolicyAct(action, memory)`` for a batch of raw observations (float32 [batch, sum(obs_sizes)],
        images [batch, *image_shape] of any dtype holding their stored values, or a dict of batches: a
        Dict observation, fed by key to ``obs.<key>`` inputs, or a Unity behavior's sensors in order,
        images HxWxC converted to Unity's NCHW in [0, 1]), all actions allowed: the actions as the graph
        gives them; a recurrent policy takes ``memory`` [batch, memory_size] (zeros start an episode)
        and returns the next one (others: None)."""
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
            return PolicyAct(self.session.run([self.outputs[deterministic]], feeds)[0])
        name, out, seq = self.memory_io
        memory = np.asarray(memory, dtype=np.float32).reshape(n, self.memory_size)
        feeds[name] = memory[:, None] if seq else memory
        action, next_memory = self.session.run([self.outputs[deterministic], out], feeds)
        return PolicyAct(action, next_memory.reshape(n, self.memory_size))
