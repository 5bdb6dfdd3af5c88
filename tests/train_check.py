"""Run by tests/test_learning.py under mpirun: train with the Python API, then compare every rank's
parameters and normalisation statistics byte for byte.

usage: train_check.py ALGO ENV OUT_DIR JSON_KWARGS
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

algo, env, out_dir, kwargs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
fn = {"ppo": ppo, "vpg": vpg, "a2c": a2c, "a3c": a3c}[algo]
ac = fn(EnvFactory(env), logger_kwargs=dict(output_dir=out_dir, tensorboard=False), **kwargs)
digest = hashlib.sha256(b"".join(t.detach().numpy().tobytes() for t in ac.state_dict().values())).hexdigest()
digests = allgather(digest)
if proc_id() == 0:
    print("DIGESTS", " ".join(digests), flush=True)
