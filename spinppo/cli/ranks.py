"""``--cpu N``: how many ranks this host starts, and when a user's launcher has decided that instead;
``--device``: whether this host can give those ranks the device asked for.

Shared by a new run (``train``) and a resumed one (``resume``), which both start their ranks with
``mpi_fork`` after these checks.
"""

from __future__ import annotations

import os
from typing import Any

from spinppo.utils.device import check_device
from spinppo.utils.errors import UserError
from spinppo.utils.mpi_tools import local_size, num_procs, proc_id, under_mpi_launcher


def check_device_flag(options: dict[str, Any], algo: str, ranks: int | None = None) -> None:
    """A UserError when this host cannot give ``--device`` to its ranks (``device.check_device``): those
    a launcher started here, or ``ranks`` (default ``--cpu``) that mpi_fork will start."""
    on_host = local_size() if under_mpi_launcher() else (ranks or options["cpu"])
    try:
        check_device(options["device"], on_host, algo)
    except UserError as e:
        path = options.get("from_file", {}).get("device")  # (an ML-Agents or RLlib file's device)
        if path is None:
            raise
        raise UserError(f"{path}: {e}") from None


def check_cpu_flag(options: dict[str, Any]) -> None:
    """--cpu starts ranks on this host; under a user's launcher (mpirun, srun) the launcher decides."""
    cpu = options["cpu"]
    if under_mpi_launcher() and not os.environ.get("IN_MPI") and cpu > 1 and cpu != num_procs():
        path = options.get("from_file", {}).get("cpu")
        if path is not None:  # a shipped config's rank count: the user's launcher chose another
            if proc_id() == 0:
                print(
                    f"spinppo: note: {path}: cpu: {cpu} does not apply under mpirun/mpiexec/srun, which "
                    f"started {num_procs()} rank(s): running with those",
                    flush=True,
                )
            options["cpu"] = 1
            return
        raise UserError(
            f"--cpu {cpu} does not apply under mpirun/mpiexec/srun, which started {num_procs()} rank(s): "
            "drop --cpu and choose the number of ranks with the launcher"
        )
