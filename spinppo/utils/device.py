"""Where a rank's tensors live: ``--device auto|cpu|cuda|cuda:N``, one GPU per rank as DD-PPO does.

``check_device(spec, ranks_on_host)`` is the flag's check (a UserError, one line, for a device this host
cannot give); ``rank_device(spec, prefers_gpu)`` is the device one rank trains on:

- ``cpu``: the CPU, as spinppo has always run;
- ``cuda``: GPU ``local_rank() % device_count()``: the ranks of a host share its GPUs in turn (DD-PPO's
  rule); ``cuda:N``: GPU N for every rank of the host;
- ``auto``: a GPU (as ``cuda``) for networks that prefer one (``prefers_gpu``: image and recurrent
  policies) when CUDA is present, the CPU otherwise. Spinning Up's maintainers found little gain on a GPU
  for small MLPs (openai/spinningup#208), and spinppo's MLP rollout runs in numpy on the CPU; the rule has
  not been measured on a GPU yet (docs/benchmarks.md says when it is).

The choice a command line made is the process's ``requested_device()`` while it runs (``requested``, a
context manager); a Python caller of ``ppo(...)`` may use the same context manager.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Iterator

import torch

from spinppo.utils.errors import UserError
from spinppo.utils.mpi_tools import local_rank

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_requested = "auto"


def parse_device(spec: str) -> tuple[str, int | None]:
    """``("auto" | "cpu" | "cuda", index or None)`` for a ``--device`` value; a UserError for others."""
    text = str(spec).strip().lower()
    m = re.fullmatch(r"(auto|cpu|cuda)(?::(\d+))?", text)
    if m is None or (m[2] is not None and m[1] != "cuda"):
        raise UserError(f"--device must be {DEVICE_CHOICES} (e.g. cuda:0), not {spec!r}")
    return m[1], None if m[2] is None else int(m[2])


def cuda_count() -> int:
    """The CUDA devices this process sees (0 without CUDA: a CPU build of torch, no driver, no GPU)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def exclusive_gpus() -> list[int] | None:
    """The indices of this host's GPUs whose compute mode admits one process at a time (exclusive
    process) or none (prohibited), as nvidia-smi reports them; None when nvidia-smi cannot tell."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index,compute_mode", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = []
    for line in out.splitlines():
        index, _, mode = line.partition(",")
        if index.strip().isdigit() and mode.strip().lower().startswith(("exclusive", "prohibited")):
            found.append(int(index))
    return found


def check_device(spec: str, ranks_on_host: int = 1, algo: str = "ppo") -> None:
    """A UserError (one line: the problem and the fix) when ``--device spec`` cannot be given to
    ``ranks_on_host`` ranks of ``algo`` on this host: a malformed value, cuda without CUDA, a GPU index
    out of range, more ranks than GPUs that take one process each (exclusive compute mode), A3C on a GPU."""
    kind, index = parse_device(spec)
    if kind != "cuda":
        return
    if algo == "a3c":
        raise UserError(
            f"--device {spec}: a3c trains on the CPU (its ranks exchange numpy gradients with rank 0); drop "
            "--device, or train on a GPU with ppo or a2c"
        )
    count = cuda_count()
    if count == 0:
        why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise UserError(f"--device {spec}: {why} on this host; use --device cpu (or auto)")
    if index is not None and index >= count:
        raise UserError(
            f"--device {spec}: this host has {count} GPU(s), cuda:0 to cuda:{count - 1}; pick one of them "
            "(or --device cuda for one per rank in turn)"
        )
    exclusive = set(exclusive_gpus() or [])
    if exclusive:
        # Ranks take the GPUs in turn (or all take cuda:N); a GPU in exclusive-process mode admits one.
        gpus = list(range(count)) if index is None else [index]
        crowded = [
            g for i, g in enumerate(gpus) if g in exclusive and len(range(i, ranks_on_host, len(gpus))) > 1
        ]
        if crowded:
            raise UserError(
                f"--device {spec}: {ranks_on_host} ranks on this host, but GPU {crowded[0]} admits one "
                f"process at a time (exclusive compute mode); start at most {len(gpus)} rank(s) a host, or "
                "use --device cpu"
            )


def rank_device(spec: str, prefers_gpu: bool) -> torch.device:
    """The device this rank trains on for ``--device spec`` (checked by ``check_device``);
    ``prefers_gpu``: the network gains from a GPU (images, memory), which ``auto`` asks."""
    kind, index = parse_device(spec)
    if kind == "cpu" or (kind == "auto" and (not prefers_gpu or cuda_count() == 0)):
        return torch.device("cpu")
    check_device(spec)
    return torch.device("cuda", local_rank() % cuda_count() if index is None else index)


def requested_device() -> str:
    """The ``--device`` value of the command running in this process ("auto" when none is)."""
    return _requested


@contextlib.contextmanager
def requested(spec: str) -> Iterator[None]:
    """``requested_device()`` is ``spec`` inside the block (the command line's ``--device``)."""
    global _requested
    parse_device(spec)
    before, _requested = _requested, str(spec).strip().lower()
    try:
        yield
    finally:
        _requested = before


def use_device(device: torch.device) -> None:
    """Make ``device`` this rank's current CUDA device and cuDNN deterministic (a run that resumes on the
    same GPU continues as it would have, as CleanRL's ``torch_deterministic``); nothing on the CPU."""
    if device.type != "cuda":
        return
    try:
        torch.cuda.set_device(device)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.zeros(1, device=device)  # the CUDA context: an exclusive or full GPU refuses here
    except RuntimeError as e:
        raise UserError(
            f"{device} refused this rank ({str(e).splitlines()[0][:120]}): start fewer ranks a host, or use "
            "--device cpu"
        ) from None


# --precision: the arithmetic of the image encoders (``MLPActorCritic.set_precision``).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


def check_precision(value: str) -> None:
    """A UserError (one line) for a ``--precision`` that is not one of ``PRECISIONS``."""
    if value not in PRECISIONS:
        raise UserError(f"--precision must be {' or '.join(PRECISIONS)}, not {value!r}")


def bf16_is_native(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: a CPU with AVX-512 BF16 or AMX (oneDNN's kernels),
    or a GPU that supports it. Elsewhere bfloat16 is emulated, and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False
