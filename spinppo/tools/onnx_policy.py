"""The ONNX names where they were before the writer and the runner became modules of their own:
``tools.onnx_writer`` (the graphs, from the network's description) and ``tools.onnx_runner``
(``OnnxPolicy``, onnxruntime). Kept for code that imports them from here."""

from spinppo.tools.onnx_runner import OnnxPolicy
from spinppo.tools.onnx_writer import (
    META_CTOR,
    META_ENV,
    META_FORM,
    META_SOURCE,
    check_network,
    gym_model,
    metadata_for,
    unity_model,
)

__all__ = [
    "META_CTOR",
    "META_ENV",
    "META_FORM",
    "META_SOURCE",
    "OnnxPolicy",
    "check_network",
    "gym_model",
    "metadata_for",
    "unity_model",
]
