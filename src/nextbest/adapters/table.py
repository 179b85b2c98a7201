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
  customer's next event. A worker can also die after a batch's RocksDB write and
  before the mirror's flush, with nothing left to restore: each write also
  records (``MIRROR_KEY``, in RocksDB only) the keys of that batch and the one
  before, and :meth:`ContextTable.remirror` hands their documents to the mirror
  again once the partition is owned anew.

The applied source offsets (``APPLIED_KEY``: topic -> next offset to apply, for
the partition's events topics, rekey and ticks) travel with the states, in the
same write and the same changelog: after a crash, whoever owns the partition
next skips the records its states already hold.

**Zombies.** A worker that stops answering (a long pause, a frozen VM) loses its
partitions to another, then may wake up and finish the batch it was in the
middle of, writing the changelog of a partition it no longer owns. So a worker
*claims* a partition before its first write (``OWNER_KEY``: a fresh token, in the
changelog and in RocksDB) and stamps every changelog record with its token; a
restore, a standby's included, skips the records of any token but the latest
claim's. The live owner never reads its own changelog, so a zombie can only
ever reach a restore — and is fenced there.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import orjson
import rocksdict

from nextbest.core.state import stored_document

log = logging.getLogger(__name__)

APPLIED_KEY = b"\x00nextbest:applied"  # customer ids never hold control characters
OWNER_KEY = b"\x00nextbest:owner"  # the token of the partition's latest claim
OWNER_HEADER = "nextbest.owner"
INTERNAL_PREFIX = b"\x00"
MIRROR_KEY = b"\x00nextbest:mirror"  # keys of the last two batches written, "\n" apart
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
        self._claims: dict[int, bytes] = {}  # this worker's token, per partition it wrote
        self._fences: dict[Any, bytes | None] = {}  # the latest claim seen, per restored tp
        self._written: dict[int, list[bytes]] = {}  # keys of the last batch written

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

    def scan(self, partition: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The entries of ``partition`` whose key starts with ``prefix``, in key order."""
        for key, value in self._db(partition).items(from_key=prefix):
            if not key.startswith(prefix):
                return
            yield key, value

    def forget(self) -> None:
        """Partitions moved: read the applied offsets again, and claim before writing."""
        self._applied.clear()
        self._claims.clear()
        self._fences.clear()
        self._written.clear()

    # --- writing a batch -------------------------------------------------------------

    async def claim(self, partition: int) -> bytes:
        """Make this worker the writer of ``partition``'s changelog (see "Zombies")."""
        token = self._claims.get(partition)
        if token is not None:
            return token
        token = uuid.uuid4().hex.encode()
        sent = await self._producer.send(self.changelog, OWNER_KEY, token, partition, None, None)
        acked = await sent
        batch = rocksdict.WriteBatch(raw_mode=True)
        batch.put(OWNER_KEY, token)
        batch.put(FAUST_OFFSET_KEY, str(acked.offset).encode())
        self._db(partition).write(batch)
        self._claims[partition] = token
        return token

    async def stage(
        self,
        partition: int,
        changes: Mapping[bytes, bytes | None],
        applied: Mapping[str, int],
        sender: Sender | None = None,
    ) -> list[Awaitable[Any]]:
        """Send ``changes`` (None: a tombstone) and ``applied`` to the changelog
        (through ``sender``, the batch's output, else the producer); the applied
        offsets go last."""
        headers = [(OWNER_HEADER, await self.claim(partition))]
        send = (sender or self._producer).send
        topic = self.changelog
        pending = [
            await send(topic, key, value, partition, None, headers)
            for key, value in changes.items()
        ]
        applied_record = orjson.dumps(applied)
        pending.append(await send(topic, APPLIED_KEY, applied_record, partition, None, headers))
        return pending

    def write(
        self,
        partition: int,
        changes: Mapping[bytes, bytes | None],
        applied: Mapping[str, int],
        changelog_offset: int,
    ) -> None:
        """Put ``changes`` (None: delete) and ``applied`` into RocksDB, with the changelog
        offset they reach."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        written: list[bytes] = []  # the states (not internal entries) this batch writes
        for key, value in changes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
                if not key.startswith(INTERNAL_PREFIX):
                    written.append(key)
        batch.put(APPLIED_KEY, orjson.dumps(applied))
        batch.put(FAUST_OFFSET_KEY, str(changelog_offset).encode())
        recent = dict.fromkeys([*self._written.get(partition, ()), *written])
        batch.put(MIRROR_KEY, b"\n".join(recent))  # ids hold no control characters
        self._db(partition).write(batch)
        self._applied[partition] = dict(applied)
        self._written[partition] = written

    def remirror(self, partition: int) -> int:
        """Hand the stored documents of the last two batches written to ``on_restored``
        again (the mirror may not have had them in Redis when the last owner died;
        it never writes an older version over a newer); how many were handed."""
        restored = self._on_restored
        db = self._db(partition)
        raw: bytes | None = db.get(MIRROR_KEY)
        if restored is None or not raw:
            return 0
        handed = 0
        for key in raw.split(b"\n"):
            value = db.get(key)
            found = None if value is None else stored_document(value)
            if found is not None:
                restored(key.decode(), *found)
                handed += 1
        return handed

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
        fence = self._fence(tp)
        batch = rocksdict.WriteBatch(raw_mode=True)
        last = -1
        skipped = 0
        for record in records:
            if seen is not None and record.offset <= seen:
                continue  # read again after a seek
            last = record.offset
            key = record.key
            if key is None:
                continue
            if key == OWNER_KEY:
                fence = record.value
            elif fence is not None and _owner(record) not in (None, fence):
                skipped += 1  # a zombie's write, after another worker claimed the partition
                continue
            if record.value is None:
                batch.delete(key)
            else:
                batch.put(key, record.value)
                if restored is not None and not key.startswith(INTERNAL_PREFIX):
                    found = stored_document(record.value)
                    if found is not None:
                        restored(key.decode(), *found)
        if last < 0:
            return True
        self._fences[tp] = fence
        if skipped:
            log.warning(
                "skipped %d changelog records of %s[%d] written after another worker "
                "claimed it (a paused worker that woke up)",
                skipped,
                tp.topic,
                tp.partition,
            )
        batch.put(FAUST_OFFSET_KEY, str(last).encode())
        self._db(tp.partition).write(batch)
        self._applied.pop(tp.partition, None)
        offsets[tp] = last
        received[tp] = time.monotonic()
        self._maybe_end_recovery()
        return True

    def restoring(self) -> list[Any]:
        """The changelog partitions being restored (active ones in a recovery, standbys)."""
        recovery = self._recovery()
        active = list(recovery.active_tps) if recovery.in_recovery else []
        return [*active, *recovery.standby_tps]

    def restored_to(self, tp: Any) -> int | None:
        """The last offset of ``tp`` restored, while short of its end; else None."""
        offsets, highwaters = self._progress(tp)
        seen, highwater = offsets.get(tp), highwaters.get(tp)
        if seen is None or highwater is None or seen >= highwater:
            return None
        return int(seen)

    def read_through(self, tp: Any, position: int) -> None:
        """No record of ``tp`` lies below ``position`` beyond what was restored.

        A changelog written in transactions (``exactly_once``) ends with a commit
        marker, an offset without a record: faust's recovery waits for the end
        offset minus one, which no record ever reaches.
        """
        offsets, highwaters = self._progress(tp)
        seen, highwater = offsets.get(tp), highwaters.get(tp)
        if seen is None or highwater is None or seen >= highwater or position - 1 <= seen:
            return
        offsets[tp] = min(position - 1, highwater)
        self._maybe_end_recovery()

    def _progress(self, tp: Any) -> tuple[Any, Any]:
        """faust's offsets and highwaters of ``tp``'s restore (empty if not restored)."""
        recovery = self._recovery()
        if tp in recovery.active_tps:
            return recovery.active_offsets, recovery.active_highwaters
        if tp in recovery.standby_tps:
            return recovery.standby_offsets, recovery.standby_highwaters
        return {}, {}

    def _fence(self, tp: Any) -> bytes | None:
        """The token of ``tp``'s latest claim, as far as this restore has read."""
        if tp not in self._fences:
            token: bytes | None = self._db(tp.partition).get(OWNER_KEY)
            self._fences[tp] = token
        return self._fences[tp]

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


def _owner(record: Record) -> bytes | None:
    for name, value in record.headers or ():
        if name == OWNER_HEADER:
            return bytes(value)
    return None
