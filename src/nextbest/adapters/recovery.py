"""Noticing a table recovery that stopped making progress, and restarting its reads.

After a rebalance faust restores each newly assigned partition of the
``contexts`` table from its changelog before the worker processes events. We
have seen that restore wait forever on a partition without receiving a single
record (faust logs "No event received for active tp ... since recovery start"),
while the group considers the partition owned: its customers get no triggers
and their deadlines do not fire.

:class:`RecoveryWatch` tells which partitions are stalled: behind their
highwater with an offset that has not moved for ``stall_after`` seconds. The
worker then seeks the consumer to where that partition's restore stands, which
makes the fetcher read it again; records it had already seen are skipped by
faust's own offset check. Pure bookkeeping here: the caller passes the clock.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)


@dataclass(slots=True)
class _Progress:
    offset: int
    since: float  # when the offset last moved (or the watch started looking)


@dataclass(frozen=True, slots=True)
class Stall(Generic[P]):
    partition: P
    offset: int
    highwater: int
    seconds: float  # without progress


class RecoveryWatch(Generic[P]):
    """Which partitions under recovery have not moved for ``stall_after`` seconds."""

    def __init__(self, stall_after: float) -> None:
        if stall_after <= 0:
            raise ValueError("stall_after must be positive")
        self.stall_after = stall_after
        self._progress: dict[P, _Progress] = {}

    def stalled(self, behind: Mapping[P, tuple[int, int]], now: float) -> list[Stall[P]]:
        """``behind`` maps each partition still to restore to (offset, highwater).

        A partition that is reported stalled gets another ``stall_after``
        seconds before it is reported again. Partitions no longer behind are
        forgotten.
        """
        for gone in self._progress.keys() - behind.keys():
            del self._progress[gone]
        found: list[Stall[P]] = []
        for partition, (offset, highwater) in behind.items():
            progress = self._progress.get(partition)
            if progress is None or progress.offset != offset:
                self._progress[partition] = _Progress(offset, now)
                continue
            waited = now - progress.since
            if waited >= self.stall_after:
                found.append(Stall(partition, offset, highwater, waited))
                progress.since = now
        return found

    def clear(self) -> None:
        self._progress.clear()
