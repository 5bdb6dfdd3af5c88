"""Run by tests/test_trpo.py under mpirun: TRPO on a Box task and NPG on a Discrete one (its value steps
on minibatches), recording a digest of every rank's parameters after each update and before
``after_update``'s ``sync_params`` (which would make them identical anyway); rank 0 prints the records
once every rank's agree bit for bit.

usage: trpo_ranks.py OUT_DIR
"""

import hashlib
import json
import sys

import spinppo.algos.onpolicy as onpolicy
from spinppo.algos.npg import npg
from spinppo.algos.trpo import trpo
from spinppo.envs.registry import EnvFactory
from spinppo.utils.mpi_tools import allgather, proc_id

seen: list[str] = []
sync = onpolicy.sync_params


def recording(module, root=0):
    weights = b"".join(p.detach().numpy().tobytes() for p in module.parameters())
    seen.append(hashlib.sha256(weights).hexdigest())
    sync(module, root)


onpolicy.sync_params = recording
small = dict(ac_kwargs=dict(hidden_sizes=(16,)), steps_per_epoch=512, num_envs=2, train_v_iters=5)
trpo(EnvFactory("Pendulum-v1"), epochs=3, logger_kwargs=dict(output_dir=f"{sys.argv[1]}/trpo"), **small)
# NPG's value steps on minibatches: 128 over the ranks, 64 of each rank's 256 steps, 4 steps a pass.
npg_out = dict(output_dir=f"{sys.argv[1]}/npg")
npg(EnvFactory("CartPole-v1"), epochs=2, vf_minibatch_size=128, logger_kwargs=npg_out, **small)
# The first call of each run is OnPolicyRun's, before training: the ranks' random initialisations differ.
updates = seen[1:4] + seen[5:]
everyone = allgather(updates)
assert len(updates) == 5 and all(u == updates for u in everyone), everyone
if proc_id() == 0:
    print("DIGESTS", json.dumps(updates), flush=True)
