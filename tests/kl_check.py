"""Run by tests/test_rllib_options.py under mpirun: PPO with the adaptive KL penalty; every rank records
each update's KL and coefficients, and rank 0 prints them once all ranks agree bit for bit.

usage: kl_check.py OUT_DIR
"""

import json
import sys

import spinppo.algos.ppo as ppo_module
from spinppo.envs.registry import EnvFactory
from spinppo.utils.mpi_tools import allgather, proc_id

seen = []
adapt = ppo_module.adapt_kl_coeff


def recording(kl_coeff: float, kl: float, kl_target: float) -> float:
    new = adapt(kl_coeff, kl, kl_target)
    seen.append((kl_coeff, kl, new))
    return new


ppo_module.adapt_kl_coeff = recording
ppo_module.ppo(
    EnvFactory("CartPole-v1"),
    ac_kwargs=dict(hidden_sizes=(16,)),
    steps_per_epoch=512,
    epochs=3,
    num_envs=2,
    update_epochs=2,
    minibatch_size=128,
    kl_coeff=0.2,
    kl_target=1e-6,  # KL well above 2e-6: the coefficient grows every update
    logger_kwargs=dict(output_dir=sys.argv[1], tensorboard=False),
)
everyone = allgather(repr(seen))
assert len(set(everyone)) == 1, everyone
if proc_id() == 0:
    print("COEFFICIENTS", json.dumps(seen), flush=True)
