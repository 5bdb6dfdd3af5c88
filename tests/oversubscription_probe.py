"""Prints, on every rank, the oversubscription warning (None when every rank has a core)."""

from spinppo.utils.mpi_tools import oversubscription_warning, proc_id

print(f"rank {proc_id()} warning={oversubscription_warning()}", flush=True)
