"""Run by tests/test_norm_value.py under mpirun: PPO with --norm_value on Pendulum. Every rank records,
at each update of the value scale, the lambda-returns it folds in (in the rewards' units) and the scale
after it; rank 0 prints them all once the run is done.

usage: value_norm_check.py OUT_DIR
"""

import json
import sys

import numpy as np

from spinppo.algos.ppo import ppo
from spinppo.core import normalize
from spinppo.envs.registry import EnvFactory
from spinppo.utils.mpi_tools import allgather, proc_id

seen = []
update = normalize.ValueNormalizer.update


def recording(self, returns, across_ranks=True):
    update(self, returns, across_ranks)
    seen.append({"returns": [float(r) for r in np.ravel(returns)], "scale": self.scale})


normalize.ValueNormalizer.update = recording
ppo(
    EnvFactory("Pendulum-v1"),
    ac_kwargs=dict(hidden_sizes=(16,)),
    steps_per_epoch=512,
    epochs=3,
    num_envs=2,
    minibatch_size=128,
    update_epochs=2,
    norm_reward=False,
    norm_value=True,
    logger_kwargs=dict(output_dir=sys.argv[1]),
)
everyone = allgather(seen)
if proc_id() == 0:
    print("SEEN " + json.dumps(everyone))
