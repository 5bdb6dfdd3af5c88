"""Which Unity agent holds which slot (row of every batch) of the vector environment.

Unity gives every new episode a new agent id, while a gymnasium vector environment has a fixed number
of sub-environments. ``AgentSlots`` is the one place where agent ids get and give back slots: an agent
id not seen before takes the lowest free slot (so new ids fill free slots in lowest-slot-first order, in
the order the caller offers them) and keeps it until it is released (its episode ended, it vanished, or
Unity was reset). The observations and actions of the slots are the vector environment's; this object
only knows who sits where.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

_FREE = -1  # the agent id of a free slot in ``AgentSlots._agent_of_slot`` (Unity's ids are >= 0)


class AgentSlots:
    """``num_slots`` slots, each free or held by one Unity agent id.

    Both directions are kept (an array for "lowest free slot", a dict for "slot of this id") and only
    the methods below change them, so they cannot disagree.
    """

    def __init__(self, num_slots: int) -> None:
        self._agent_of_slot = np.full(num_slots, _FREE, np.int64)
        self._slot_of_agent: dict[int, int] = {}

    def __len__(self) -> int:
        """The number of slots, free or taken."""
        return len(self._agent_of_slot)

    def slot_of(self, agent_id: int) -> int | None:
        """The slot agent ``agent_id`` holds, or None when it holds none."""
        return self._slot_of_agent.get(int(agent_id))

    def slots_of(self, agent_ids: Iterable[int]) -> np.ndarray:
        """The slot of each of ``agent_ids`` as an int64 array, -1 for an agent without a slot."""
        return np.array([self._slot_of_agent.get(int(a), -1) for a in agent_ids], np.int64)

    def agent_in(self, slot: int) -> int | None:
        """The agent id holding ``slot``, or None when the slot is free."""
        agent_id = int(self._agent_of_slot[slot])
        return None if agent_id == _FREE else agent_id

    def take_free_slot(self, agent_id: int) -> int | None:
        """Give agent ``agent_id`` (which must hold no slot) the lowest free slot and return it.

        Returns None, changing nothing, when every slot is taken: the caller ignores the agent until a
        slot is free.
        """
        agent_id = int(agent_id)
        if agent_id in self._slot_of_agent:
            raise ValueError(f"Unity agent {agent_id} already holds slot {self._slot_of_agent[agent_id]}")
        free = np.flatnonzero(self._agent_of_slot == _FREE)
        if len(free) == 0:
            return None
        slot = int(free[0])
        self._slot_of_agent[agent_id] = slot
        self._agent_of_slot[slot] = agent_id
        return slot

    def release(self, agent_id: int) -> int | None:
        """Free the slot of agent ``agent_id`` and return it; None (nothing changes) when it held none."""
        slot = self._slot_of_agent.pop(int(agent_id), None)
        if slot is not None:
            self._agent_of_slot[slot] = _FREE
        return slot

    def clear(self) -> None:
        """Free every slot (after a Unity reset every agent is a new one)."""
        self._agent_of_slot[:] = _FREE
        self._slot_of_agent.clear()

    def num_taken(self) -> int:
        """How many slots an agent holds."""
        return len(self._slot_of_agent)

    def all_taken(self) -> bool:
        """Whether every slot is held (True for zero slots)."""
        return len(self._slot_of_agent) == len(self._agent_of_slot)
