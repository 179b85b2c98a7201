"""Which customers' deadlines are due: an index by due time, per partition.

Finding the due deadlines costs O(due · log n), not a scan of every customer.
Each partition has a heap of ``(due, key)`` and a map of each key's current due
time; rescheduling a key pushes a new entry and leaves the old one to be
skipped when it surfaces (lazy deletion), and the heap is compacted when stale
entries outnumber live ones. The index is memory only: the worker rebuilds it
from its table whenever partitions are assigned (entries of partitions that
moved away stay until then: no tick comes for them, so they never fire here).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from datetime import datetime


class DueIndex:
    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[datetime, bytes]]] = {}
        self._due: dict[int, dict[bytes, datetime]] = {}

    def __len__(self) -> int:
        """How many customers have a deadline pending."""
        return sum(len(due) for due in self._due.values())

    def schedule(self, partition: int, key: bytes, due: datetime | None) -> None:
        """Set (or, with None, cancel) the one wake-up time of ``key``."""
        current = self._due.setdefault(partition, {})
        if due is None:
            current.pop(key, None)
            return
        if current.get(key) == due:
            return
        current[key] = due
        heap = self._heaps.setdefault(partition, [])
        heapq.heappush(heap, (due, key))
        if len(heap) > 64 and len(heap) > 2 * len(current):
            self._compact(partition)

    def pop_due(self, partition: int, now: datetime) -> list[bytes]:
        """The keys of ``partition`` due at ``now``, removed from the index."""
        heap = self._heaps.get(partition)
        current = self._due.get(partition)
        found: list[bytes] = []
        while heap and current is not None and heap[0][0] <= now:
            due, key = heapq.heappop(heap)
            if current.get(key) == due:
                del current[key]
                found.append(key)
        return found

    def next_due(self, partition: int) -> datetime | None:
        heap = self._heaps.get(partition)
        current = self._due.get(partition, {})
        while heap and current.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def replace(
        self, partitions: Iterable[int], entries: Iterable[tuple[int, bytes, datetime]]
    ) -> None:
        """Forget everything; keep only ``partitions`` and schedule ``entries`` in them."""
        keep = set(partitions)
        self._heaps = {p: [] for p in keep}
        self._due = {p: {} for p in keep}
        for partition, key, due in entries:
            if partition in keep:
                self._due[partition][key] = due
        for partition, current in self._due.items():
            self._heaps[partition] = [(due, key) for key, due in current.items()]
            heapq.heapify(self._heaps[partition])

    def pending(self, partitions: Iterable[int]) -> int:
        """How many customers of ``partitions`` have a deadline pending."""
        return sum(len(self._due.get(p, ())) for p in set(partitions))

    def _compact(self, partition: int) -> None:
        heap = [(due, key) for key, due in self._due[partition].items()]
        heapq.heapify(heap)
        self._heaps[partition] = heap
