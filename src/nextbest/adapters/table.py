"""The ``contexts`` table, a partition at a time: its batch writer and its restorer.

faust keeps the table (a RocksDB database per partition, changelogged to
``<app id>-contexts-changelog``), assigns and revokes its partitions and drives
its recovery. Reading and writing go around faust's per-key path here, a batch
at a time:

* :meth:`ContextTable.stage` sends a batch's changed states to the changelog
  (one record per changed customer, plus the partition's applied source
  offsets) through the producer, and returns the pending sends;
* once they and the batch's triggers are acknowledged,
  :meth:`ContextTable.write` puts the same states, the applied offsets and the
  changelog offset faust resumes a restore from into the partition's RocksDB
  in one ``WriteBatch``: the persisted changelog offset is never ahead of the
  data it describes, and the applied offsets never ahead of the states;
* :meth:`ContextTable.restore` applies fetched changelog records to RocksDB
  in one ``WriteBatch`` per fetch, for an active partition being recovered and
  for a standby alike, and tells faust's recovery how far it got. The
  documents an active partition restores are handed to ``on_restored`` (the
  Redis mirror): a worker that died after writing a state and before mirroring
  it leaves Redis behind, and nothing else would bring it up to date before the
  customer's next event.

The applied source offsets (``APPLIED_KEY``: topic -> next offset to apply, for
the partition's events topics, rekey and ticks) travel with the states, in the
same write and the same changelog: after a crash, whoever owns the partition
next skips the records its states already hold.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import orjson
import rocksdict

from nextbest.core.state import stored_document

log = logging.getLogger(__name__)

APPLIED_KEY = b"\x00nextbest:applied"  # customer ids never hold control characters
INTERNAL_PREFIX = b"\x00"
FAUST_OFFSET_KEY = b"__faust\x00offset__"  # faust's persisted changelog offset


class Record(Protocol):
    """A fetched Kafka record (aiokafka's ConsumerRecord) as far as this reads it."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


class Sender(Protocol):
    """faust's producer: ``send`` queues a record and returns its pending acknowledgement."""

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
    ) -> Awaitable[Any]: ...


class ContextTable:
    """The ``contexts`` table's partitions, read and written a batch at a time.

    ``table`` is faust's table (its ``data`` is the RocksDB store); ``recovery()``
    gives faust's table recovery (``app.tables.recovery``), updated as restores
    go. Both are looked up when first used: faust binds them to the event loop
    that is current when they are made, which is the worker's only once it runs.
    """

    def __init__(
        self,
        table: Any,
        changelog: str,
        producer: Sender,
        recovery: Callable[[], Any] = lambda: None,
        on_restored: Callable[[str, int, bytes], None] | None = None,
    ) -> None:
        self._table = table
        self.changelog = changelog
        self._producer = producer
        self._recovery = recovery
        self._on_restored = on_restored  # (customer id, version, document)
        self._applied: dict[int, dict[str, int]] = {}

    def _db(self, partition: int) -> Any:
        return self._table.data._db_for_partition(partition)

    # --- reading ---------------------------------------------------------------------

    def get(self, partition: int, key: bytes) -> bytes | None:
        value: bytes | None = self._db(partition).get(key)
        return value

    def applied(self, partition: int) -> Mapping[str, int]:
        """topic -> the next offset of that topic's ``partition`` to apply (0: all)."""
        known = self._applied.get(partition)
        if known is None:
            raw = self._db(partition).get(APPLIED_KEY)
            known = self._applied[partition] = {} if raw is None else orjson.loads(raw)
        return known

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        """Every customer's stored state in ``partition``."""
        for key, value in self._db(partition).items():
            if not key.startswith(INTERNAL_PREFIX) and key != FAUST_OFFSET_KEY:
                yield key, value

    def forget(self) -> None:
        """Partitions moved: read the applied offsets from RocksDB again."""
        self._applied.clear()

    # --- writing a batch -------------------------------------------------------------

    async def stage(
        self, partition: int, changes: Mapping[bytes, bytes], applied: Mapping[str, int]
    ) -> list[Awaitable[Any]]:
        """Send ``changes`` and ``applied`` to the changelog; the applied offsets go last."""
        send = self._producer.send
        topic = self.changelog
        pending = [
            await send(topic, key, value, partition, None, None) for key, value in changes.items()
        ]
        pending.append(await send(topic, APPLIED_KEY, orjson.dumps(applied), partition, None, None))
        return pending

    def write(
        self,
        partition: int,
        changes: Mapping[bytes, bytes],
        applied: Mapping[str, int],
        changelog_offset: int,
    ) -> None:
        """Put ``changes`` and ``applied`` into RocksDB, with the changelog offset they reach."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in changes.items():
            batch.put(key, value)
        batch.put(APPLIED_KEY, orjson.dumps(applied))
        batch.put(FAUST_OFFSET_KEY, str(changelog_offset).encode())
        self._db(partition).write(batch)
        self._applied[partition] = dict(applied)

    # --- restoring ---------------------------------------------------------------------

    def restore(self, tp: Any, records: Sequence[Record]) -> bool:
        """Apply fetched changelog records of ``tp`` (an active partition being recovered,
        or a standby); False when the partition is neither, and nothing was written."""
        recovery = self._recovery()
        restored = self._on_restored
        if tp in recovery.active_tps:
            offsets = recovery.active_offsets
            received = recovery._active_events_received_at
        elif tp in recovery.standby_tps:
            offsets = recovery.standby_offsets
            received = recovery._standby_events_received_at
            restored = None  # another worker owns it, and mirrors it
        else:
            return False
        seen = offsets.get(tp)
        batch = rocksdict.WriteBatch(raw_mode=True)
        last = -1
        for record in records:
            if seen is not None and record.offset <= seen:
                continue  # read again after a seek
            key = record.key
            if key is None:
                continue
            if record.value is None:
                batch.delete(key)
            else:
                batch.put(key, record.value)
                if restored is not None and not key.startswith(INTERNAL_PREFIX):
                    found = stored_document(record.value)
                    if found is not None:
                        restored(key.decode(), *found)
            last = record.offset
        if last < 0:
            return True
        batch.put(FAUST_OFFSET_KEY, str(last).encode())
        self._db(tp.partition).write(batch)
        self._applied.pop(tp.partition, None)
        offsets[tp] = last
        received[tp] = time.monotonic()
        self._maybe_end_recovery()
        return True

    def _maybe_end_recovery(self) -> None:
        """What faust's own restore loop does after each record, once per batch here."""
        recovery = self._recovery()
        if recovery.in_recovery and not recovery.need_recovery():
            recovery.flush_buffers()  # faust's own buffers: empty, as nothing goes through them
            recovery._set_recovery_ended()
            recovery.signal_recovery_end.set()
        tables = recovery.tables
        if not tables.standbys_ready and not recovery.standby_remaining_total():
            tables.on_standbys_ready()
