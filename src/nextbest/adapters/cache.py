"""Decoded customer states kept in memory between batches, newest used last out.

The ``contexts`` table holds every state as bytes; decoding one (JSON, some
thirty timestamps, frozen dataclasses) costs more than applying an event to it.
Customers come back in bursts (a session is a few events seconds apart), so the
handler keeps the states it decoded or changed most recently and reads the
table only for the others.

The cache is a copy of the table, never ahead of it: the handler puts a state
here when it writes it to the table, and :meth:`StateCache.clear` drops
everything when partitions move, since another worker may have changed a
customer this one held before.
"""

from __future__ import annotations

from collections import OrderedDict

from nextbest.core.state import CustomerState


class StateCache:
    """At most ``capacity`` states by customer key; the least recently used goes first."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be zero or more")
        self.capacity = capacity
        self._states: OrderedDict[bytes, CustomerState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def get(self, key: bytes) -> CustomerState | None:
        state = self._states.get(key)
        if state is not None:
            self._states.move_to_end(key)
        return state

    def put(self, key: bytes, state: CustomerState) -> None:
        if self.capacity == 0:
            return
        self._states[key] = state
        self._states.move_to_end(key)
        if len(self._states) > self.capacity:
            self._states.popitem(last=False)

    def discard(self, key: bytes) -> None:
        """Forget ``key`` (its state was deleted or moved)."""
        self._states.pop(key, None)

    def clear(self) -> None:
        self._states.clear()
