"""One hash of a module's state (parameters and buffers), bitwise: equal hashes mean identical networks."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch


def state_hash(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every entry's name, dtype, shape and raw bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
