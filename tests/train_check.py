"""Run by tests/test_learning.py under mpirun: train with the Python API, then compare every rank's
parameters and normalisation statistics byte for byte.

usage: train_check.py ALGO ENV OUT_DIR JSON_KWARGS [ALGO ENV OUT_DIR JSON_KWARGS ...]

Several runs train one after the other in the same job (the ranks start once); rank 0 prints a line
``DIGESTS d0 d1 ...`` (one digest a rank) after each, in order.
"""

import hashlib
import json
import sys

from spinppo.algos.a2c import a2c
from spinppo.algos.a3c import a3c
from spinppo.algos.ppo import ppo
from spinppo.algos.vpg import vpg
from spinppo.envs.registry import EnvFactory
from spinppo.utils.mpi_tools import allgather, proc_id

args = sys.argv[1:]
for i in range(0, len(args), 4):
    algo, env, out_dir, kwargs = args[i], args[i + 1], args[i + 2], json.loads(args[i + 3])
    fn = {"ppo": ppo, "vpg": vpg, "a2c": a2c, "a3c": a3c}[algo]
    ac = fn(EnvFactory(env), logger_kwargs=dict(output_dir=out_dir, tensorboard=False), **kwargs)
    state = b"".join(t.detach().numpy().tobytes() for t in ac.state_dict().values())
    digests = allgather(hashlib.sha256(state).hexdigest())
    if proc_id() == 0:
        print("DIGESTS", " ".join(digests), flush=True)
