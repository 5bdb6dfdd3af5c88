"""Killed mid-write by tests/test_logger.py: saves a large checkpoint over and over, atomically."""

import sys

import torch

from spinppo.utils.logx import atomic_torch_save

path = sys.argv[1]
print("writing", flush=True)
i = 1
while True:
    atomic_torch_save({"i": i, "w": torch.full((8_000_000,), float(i))}, path)
    i += 1
