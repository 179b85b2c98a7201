"""faust's Kafka consumer, handing each fetched batch to the worker in one call.

faust's fetcher turns what aiokafka's ``getmany`` returns into one delivery
per record: a ``Message``, an ``Event``, a stream queue, a task racing the flow
stop. That is about 60 µs per record here, before any work. :class:`BatchConsumer`
keeps faust's consumer (its group membership, assignment, rebalancing, flow
control, offset commits, recovery) and replaces only the delivery: the
records of one fetch are grouped by partition number and handed to a
:class:`Sink` in one call per partition — the events topics, rekey and ticks
share a partition's customers — and the changelog records of the table being
restored go straight to its restorer.

What it keeps of faust's per-record path, batch-wise:

* nothing is handed over while the flow is stopped (a rebalance), and a fetch
  made under an older consumer generation is dropped: the partitions are read
  again from their committed offsets after the rebalance, as faust does;
  records of a paused partition are not handed over either, and the seek that
  ends a recovery takes a partition that has no committed offset back to the
  first of them (faust's seek would leave it past them);
* records below a partition's read offset (read again after a seek) are dropped;
* a partition's commit offset is the offset after the last record of its last
  handled batch, so gaps in offsets (compaction, transaction markers) never
  hold commits back, and faust never commits at or below what it committed;
* ``broker_commit_every`` records trigger a commit, as in faust;
* the monitor's inbound time and counters are updated per batch, so faust's
  livelock detector sees the partitions make progress;
* on revoke and on stop (``stream_wait_empty``), the batch in flight is waited
  for and committed before the partitions go. A batch runs shielded from the
  fetcher's cancellation, so it is never cut in the middle.

A :class:`Sink` that raises leaves its batch unacknowledged: its partitions
are read again from the batch's first offsets after a back-off.

Each batch comes with its partition's **watermark**: the time up to which
every source topic of that partition has been read (a topic read to its end
counts as read up to now; otherwise, the timestamp of its last record read).
Absence deadlines fire only up to the watermark: after an outage, a backlog
is applied before a deadline it may cancel is looked at.

A static member (``group_instance_id``) leaves the group when it stops
(:mod:`nextbest.adapters.membership`), which aiokafka does not do for one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as driver
from faust.types import TP, ConsumerT

from nextbest.adapters.membership import leave_group

log = logging.getLogger(__name__)

FETCH_TIMEOUT = 0.25  # seconds a fetch waits for records when there are none
RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)  # after a failed batch, by failures in a row
REVOKE_WAIT = 30.0  # seconds a revoke or a stop waits for the batch in flight

Batch = Sequence[tuple[TP, Sequence[Any]]]  # (topic partition, its fetched records)


class Sink(Protocol):
    """Where fetched batches go: the worker's handler and the table's restorer."""

    topics: frozenset[str]  # the topics whose batches go to ``handle``
    clocks: frozenset[str]  # of those, the ones that only carry time (not in the watermark)

    async def handle(self, partition: int, batch: Batch, watermark: float) -> None:
        """Handle one partition number's records (every topic of ``topics``); raise to retry.

        ``watermark`` (epoch seconds): every source topic of the partition has
        been read up to that time.
        """

    def restore(self, tp: TP, records: Sequence[Any]) -> bool:
        """Apply changelog records; False when ``tp`` is not being restored."""

    def restoring(self) -> Sequence[TP]:
        """The changelog partitions being restored."""

    def restored_to(self, tp: TP) -> int | None:
        """The last offset of ``tp`` restored, while short of its end; else None."""

    def read_through(self, tp: TP, position: int) -> None:
        """No record of ``tp`` lies below ``position`` beyond what was restored."""


class BatchConsumer(driver.Consumer):
    """faust's aiokafka consumer whose fetched batches go to :attr:`sink` whole."""

    sink: ClassVar[Sink | None] = None
    # exactly_once: each batch's transaction commits its offsets; the consumer never does
    offsets_in_transactions: ClassVar[bool] = False

    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handled_up_to: dict[TP, int] = {}  # next offset to commit, per handled tp
        self._read_at: dict[TP, float] = {}  # timestamp (s) of the last record read, per tp
        self._in_flight: asyncio.Task[None] | None = None
        self._rereading: dict[TP, int] = {}  # changelogs read again from an offset, to check
        self._dropped: dict[TP, int] = {}  # first offset fetched while paused, not handed over
        self._failures = 0

    # --- offsets -----------------------------------------------------------------------

    def _new_offset(self, tp: TP) -> int | None:
        offset = self._handled_up_to.pop(tp, None)
        if offset is not None:
            return offset
        result: int | None = super()._new_offset(tp)
        return result

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        if self.offsets_in_transactions:
            return True  # the batches' transactions did (or will redo) it
        done: bool = await super()._commit(offsets)
        return done

    async def perform_seek(self) -> None:
        """Seek every partition to its committed offset, as faust does; a stream
        partition with none (or 0) goes back to the first record it fetched and did
        not hand over while it was paused (a recovery pauses them).

        aiokafka seeks only to a committed offset above 0, so without this the
        records fetched during a recovery by a new group (reading its topics from
        the earliest) would be dropped and never read again.
        """
        await super().perform_seek()
        dropped, self._dropped = self._dropped, {}
        assigned = self.assignment()
        for tp, offset in dropped.items():
            committed = self._read_offset.get(tp)
            if tp in assigned and not committed:
                await self.seek(tp, 0 if committed == 0 else offset)

    def committed(self, tp: TP) -> int:
        """The group's committed offset of ``tp``: as read at assignment, or as we committed."""
        return self._committed_offset.get(tp) or 0

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        # The table's restorer ends a recovery by setting faust's "recovery ended"
        # event (adapters/table.py); faust's own restore loop clears it only when
        # it wakes up, so clear it here, before the recovery of this assignment.
        self.app.tables.recovery.signal_recovery_end.clear()  # type: ignore[attr-defined]
        await super().on_partitions_assigned(assigned, generation_id)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        await super().on_partitions_revoked(revoked)
        for tp in revoked:
            self._dropped.pop(tp, None)
            self._handled_up_to.pop(tp, None)
            self._read_at.pop(tp, None)

    async def wait_empty(self) -> None:
        """Wait for the batch in flight (at most ``REVOKE_WAIT`` s), then commit."""
        task = self._in_flight
        if task is not None and not task.done():
            done, _ = await asyncio.wait({task}, timeout=REVOKE_WAIT)
            if not done:
                log.warning("a batch still runs after %.0f s; committing without it", REVOKE_WAIT)
        await self.commit_and_end_transactions()

    # --- the fetch loop ------------------------------------------------------------------

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - needs Kafka
        sink = self.sink
        if sink is None:
            await super()._drain_messages(fetcher)
            return
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(FETCH_TIMEOUT)
                self.diag.unset_flag(CONSUMER_FETCHING)
                await asyncio.sleep(0)  # never hold the loop from fetch to fetch
                if self.should_stop:
                    continue
                if records and not self.flow_active:
                    # fetched while a rebalance stopped the flow: read again from the
                    # committed offsets once it resumes, as faust's getmany does
                    await self.perform_seek()
                    continue
                if records:
                    await self._deliver(sink, records, active)
                await self._read_through(sink, records or {})
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _read_through(self, sink: Sink, fetched: Mapping[TP, Any]) -> None:
        """Settle how far the restorer's changelogs were read, when the consumer went
        past the last restored record and the fetch returned nothing more of them.

        What lies between can be transaction markers and aborted records (a
        changelog written with ``exactly_once``), which a restore never receives;
        or records that were read and lost on the way, which it must receive. So
        the partition is read again from after the last restored record: if that
        again returns no record, the offsets were markers and the restore is done
        with them; if it returns records, they go to the restore as usual.
        """
        thread = self._thread
        if not isinstance(thread, ConsumerThread):
            return
        rereading = self._rereading
        for tp in [tp for tp in rereading if tp in fetched]:
            del rereading[tp]
            log.warning("%s[%d]: records had been read past without reaching the table "
                        "restore; read again", tp.topic, tp.partition)  # fmt: skip
        for tp in sink.restoring():
            if tp in fetched:
                continue
            restored = sink.restored_to(tp)
            position = thread.position_now(tp)
            if restored is None or position is None or position <= restored + 1:
                continue
            if rereading.get(tp) == restored + 1:
                del rereading[tp]
                sink.read_through(tp, position)  # read again, and still nothing: markers
            else:
                rereading[tp] = restored + 1
                await self.seek(tp, restored + 1)
        for tp in [tp for tp in rereading if tp not in sink.restoring()]:
            del rereading[tp]

    async def _deliver(self, sink: Sink, records: Mapping[TP, Any], active: set[TP] | None) -> None:
        app = self.app
        generation = app.consumer_generation_id
        changelogs = app.tables.changelog_topics
        monitor = app.monitor
        by_partition: dict[int, list[tuple[TP, Sequence[Any]]]] = {}
        for tp, fetched in records.items():
            if active is not None and tp not in active and tp not in self._buffered_partitions:
                if fetched and tp.topic in sink.topics:  # a paused stream partition
                    first = fetched[0].offset
                    self._dropped[tp] = min(first, self._dropped.get(tp, first))
                continue
            monitor.track_tp_end_offset(tp, self.highwater(tp))
            unread = self._unread(tp, fetched)
            if not unread:
                continue
            if tp.topic in changelogs:
                if sink.restore(tp, unread):
                    self._read_offset[tp] = unread[-1].offset + 1
            elif tp.topic in sink.topics:
                by_partition.setdefault(tp.partition, []).append((tp, unread))
            else:
                await self._deliver_each(tp, unread)
        for partition, batch in by_partition.items():
            if app.consumer_generation_id != generation or not self.flow_active:
                return  # a rebalance began: the rest is read again after it
            watermark = self._watermark(sink, partition, batch)
            task = asyncio.ensure_future(self._run(sink, partition, batch, watermark))
            self._in_flight = task
            await asyncio.shield(task)

    def _unread(self, tp: TP, fetched: Sequence[Any]) -> Sequence[Any]:
        """``fetched`` without what was read before (``_read_offset``: the next offset
        expected, as faust's seeks set it)."""
        read = self._read_offset[tp]
        if read is None or fetched[0].offset >= read:
            return fetched
        return [record for record in fetched if record.offset >= read]

    def _watermark(self, sink: Sink, partition: int, batch: Batch) -> float:
        """Up to when every source topic of ``partition`` is read, this batch included."""
        now = time.time()
        last = {tp: records[-1] for tp, records in batch}
        watermark = now
        for tp in self.assignment():
            if tp.partition != partition or tp.topic not in sink.topics or tp.topic in sink.clocks:
                continue
            record = last.get(tp)
            read = record.offset + 1 if record is not None else self._read_offset[tp]
            end = self.highwater(tp)
            if end is not None and (read or 0) >= end:
                continue  # read to its end: up to now
            read_at = record.timestamp / 1000 if record is not None else self._read_at.get(tp, 0.0)
            watermark = min(watermark, read_at)
        return watermark

    async def _run(self, sink: Sink, partition: int, batch: Batch, watermark: float) -> None:
        try:
            await sink.handle(partition, batch, watermark)
        except Exception as error:
            await self._retry_later(batch, error)
            return
        self._failures = 0
        if self._acknowledge(batch):
            self._n_acked = 0
            await self.commit()

    def _acknowledge(self, batch: Batch) -> bool:
        """Mark ``batch`` handled; True when ``broker_commit_every`` records call for a commit."""
        monitor = self.app.monitor
        now = time.monotonic()
        count = 0
        for tp, records in batch:
            last = records[-1].offset
            self._read_offset[tp] = last + 1
            self._handled_up_to[tp] = last + 1
            self._read_at[tp] = records[-1].timestamp / 1000
            self._acked[tp]
            count += len(records)
            monitor.stream_inbound_time[tp] = now
            monitor.tp_read_offsets[tp] = last
            monitor.messages_received_by_topic[tp.topic] += len(records)
        monitor.messages_received_total += count
        monitor.events_total += count
        self._n_acked += count
        commit_every = self._commit_every
        return commit_every is not None and self._n_acked >= commit_every

    async def _retry_later(self, batch: Batch, error: Exception) -> None:
        """Read the batch's partitions again from its first offsets, after a back-off."""
        delay = RETRY_DELAYS[min(self._failures, len(RETRY_DELAYS) - 1)]
        self._failures += 1
        log.warning(
            "a batch of partition %d failed (%s); reading it again in %.2f s",
            batch[0][0].partition,
            type(error).__name__,
            delay,
        )
        log.debug("traceback of the failure above", exc_info=error)
        await asyncio.sleep(delay)
        for tp, records in batch:
            if tp in self.assignment():
                await self.seek(tp, records[0].offset)

    async def _deliver_each(self, tp: TP, records: Sequence[Any]) -> None:
        """Any other topic: faust's own delivery, one record at a time."""
        for record in records:
            message = self._to_message(tp, record)
            await self.wait_first(self.callback(message), self.suspend_flow.wait())
            self._read_offset[tp] = record.offset + 1


class ConsumerThread(driver.AIOKafkaConsumerThread):
    """faust's thread running the aiokafka consumer: it reads committed records only, and a
    static member leaves the group on close.

    ``read_committed``: a producer's aborted transaction never reaches a customer's
    context (faust reads them too unless it runs its own transactions). The end of
    a partition is then its last stable offset, which ``highwater`` gives.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._isolation_level = "read_committed"  # read by the fetcher it starts
        return consumer

    def highwater(self, tp: TP) -> int:
        offset: int = self._ensure_consumer().last_stable_offset(tp)
        return offset

    def position_now(self, tp: TP) -> int | None:
        """The next offset the consumer returns for ``tp`` (past any transaction markers
        it read), or None when unknown; read without waiting."""
        subscription = self._ensure_consumer()._subscription.subscription
        assignment = None if subscription is None else subscription.assignment
        state = None if assignment is None else assignment.state_value(tp)
        if state is None or not state.has_valid_position:
            return None
        position: int = state.position
        return position

    async def on_start(self) -> None:
        await super().on_start()
        consumer = self._consumer
        if consumer is None or consumer._coordinator._group_instance_id is None:
            return
        coordinator = consumer._coordinator

        async def leave_on_close() -> None:  # aiokafka calls this last as it closes
            try:
                await leave_group(consumer)
            except Exception as error:  # a best effort: the session timeout is the fallback
                log.warning("could not leave the consumer group (%s)", type(error).__name__)
            coordinator.reset_generation()

        coordinator._maybe_leave_group = leave_on_close


class Transport(driver.Transport):
    """faust's aiokafka transport, with a :class:`BatchConsumer`."""

    Consumer: ClassVar[type[ConsumerT]] = BatchConsumer


def use_batch_consumer(app: faust.App, sink: Sink, *, transactions: bool = False) -> None:
    """Give ``app`` a consumer handing its batches to ``sink``.

    Call before anything touches ``app.transport``. ``stream_wait_empty`` makes
    faust wait for the batch in flight on revoke and on stop. ``transactions``:
    the sink commits the offsets in its own transactions (``exactly_once``).
    """

    attributes = {"sink": sink, "offsets_in_transactions": transactions}
    bound = type("BoundBatchConsumer", (BatchConsumer,), attributes)
    transport = type("BoundTransport", (Transport,), {"Consumer": bound})

    app.conf.stream_wait_empty = True
    app.transport = transport(app.conf.broker_consumer, app)
