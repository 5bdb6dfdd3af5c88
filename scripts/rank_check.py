"""Train with ``python -m spinppo.run``'s command line and check that the ranks stay identical.

    mpirun -np 4 python scripts/rank_check.py ppo --env Pong --device cuda --epochs 3
    mpirun -np 2 python scripts/rank_check.py --staged ppo --env CartPole --epochs 2   # the GPU's path

After every update, ``OnPolicyRun.after_update`` broadcasts rank 0's parameters (``sync_params``), which
would hide ranks that drifted apart. This wraps that call: before each broadcast every rank hashes its
parameters and buffers (``state_vectors``) and the hashes are compared. Rank 0 prints one line,
``rank_check: ranks identical before N of N updates``, and the exit code is 1 when any differed (else the
command's own). ``--staged`` makes every gradient buffer take the GPU's path (copy out, Allreduce on a
host buffer, copy back) on CPU tensors too.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's spinppo


def main(argv: list[str]) -> int:
    import spinppo.algos.onpolicy as onpolicy
    from spinppo.run import main as spinppo_main
    from spinppo.utils import mpi_pytorch
    from spinppo.utils.mpi_tools import allgather, proc_id

    if argv[:1] == ["--staged"]:
        argv = argv[1:]
        made = mpi_pytorch._GradientBuffer.__init__

        def staged(self, params, staged=None):  # noqa: ANN001 (the wrapped signature)
            made(self, params, staged=True)

        mpi_pytorch._GradientBuffer.__init__ = staged

    checks: list[bool] = []
    broadcast = onpolicy.sync_params
    calls = [0]

    def checked(module, root: int = 0) -> None:  # noqa: ANN001
        calls[0] += 1
        if calls[0] > 1:  # (the first is the run's start: ranks built their own initial weights)
            digest = hashlib.sha256(b"".join(v.tobytes() for v in mpi_pytorch.state_vectors(module)))
            checks.append(len(set(allgather(digest.hexdigest()))) == 1)
        broadcast(module, root)

    onpolicy.sync_params = checked
    code = spinppo_main(argv)
    if proc_id() == 0:
        print(f"rank_check: ranks identical before {sum(checks)} of {len(checks)} updates", flush=True)
    return code or (0 if all(checks) else 1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
