"""Run under mpirun by tests/test_logger.py: every rank stores its own values, rank 0 writes the table."""

import sys

from spinppo.utils.logx import EpochLogger
from spinppo.utils.mpi_tools import proc_id

out_dir = sys.argv[1]
logger = EpochLogger(output_dir=out_dir, exp_name="logtest", tensorboard=False)
logger.save_config({"lr": 3e-4, "hid": (64, 64), "env": "CartPole-v1", "seed": 7})
r = proc_id()
for epoch in range(3):
    # Rank r stores the values r*10 + epoch + k for k < r + 1; rank 0 stores no Loss in epoch 1.
    for k in range(r + 1):
        logger.store(EpRet=r * 10 + epoch + k)
    if not (r == 0 and epoch == 1):
        logger.store(Loss=float(r + epoch))
    logger.log_tabular("Epoch", epoch)
    logger.log_tabular("EpRet", with_min_and_max=True)
    logger.log_tabular("Loss", average_only=True)
    logger.dump_tabular()
