"""The worker's handler: one partition's fetched batch in, decisions and state out.

:meth:`EventHandler.handle` gets every record of one partition number that a
fetch returned (its events topics, rekey and ticks) and does, once per batch:

1. skip what the partition's states already hold (records below the applied
   offsets stored with them: read again after a crash or a rebalance);
2. parse each record (:func:`~nextbest.core.envelope.parse`); a record that
   is not an event is dead-lettered, one not keyed to this partition is
   forwarded to ``<app id>-rekey`` on its customer's partition;
3. load the states the batch touches (from memory, else the ``contexts``
   table), and let the core apply the events in ``time`` order and fire the
   deadlines a tick found due (:meth:`Engine.process_batch`, :meth:`Engine.expire_batch`);
4. send the triggers, dead letters, forwards and the changed states' changelog
   records, and wait for every acknowledgement;
5. only then write the changed states and the applied offsets to RocksDB in
   one batch (:class:`~nextbest.adapters.table.ContextTable`), hand the new
   documents to the Redis mirror, and count.

If anything in 4 or 5 fails, the batch raises and the consumer reads it again
later; nothing of it was written, and its triggers go out again with the same
ids. Every decision is in :mod:`nextbest.core`.

Absence timers ride the same batches: each worker sends a tick to ``<app id>-ticks``
for every partition it owns a few times a second; the tick, handled with that
partition's events, fires what the :class:`~nextbest.core.schedule.DueIndex`
says is due.

Identities (contract v0.2) ride them too (:mod:`nextbest.adapters.identity`): a
customer's plain event takes the path above, untouched; an event of another
kind of identifier is looked up in the directory and may be sent on to its
profile's partition; identity commands on the rekey topic are carried out after
the batch's events, in offset order, and the events they were waiting for
after them; all of it is written in the same single write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from nextbest.adapters.cache import StateCache
from nextbest.adapters.coordinator import Coordinator
from nextbest.adapters.identity import (
    COORDINATOR,
    OPERATIONS,
    Desk,
    IdentityConfig,
    Work,
    command_kind,
)
from nextbest.adapters.outputs import BatchOutput, Outputs
from nextbest.adapters.projection import RedisMirror
from nextbest.adapters.table import ContextTable, Record
from nextbest.adapters.topics import TopicNames, partition_for
from nextbest.core import state as states
from nextbest.core import triggers as trigger_codec
from nextbest.core.engine import Engine, Outcome
from nextbest.core.envelope import Event, Reason, Rejected, parse
from nextbest.core.identity import CUSTOMER
from nextbest.core.schedule import DueIndex
from nextbest.core.state import CustomerState
from nextbest.failures import log_failure
from nextbest.metrics import Metrics

log = logging.getLogger(__name__)

# a stored state that cannot be decoded (see EventHandler._load)
_UNREADABLE: Any = CustomerState.new("\x00unreadable")

# Records a partition may handle without a state change before their offsets are
# stored anyway: ticks and repeats change nothing, and reading them again after a
# crash is harmless, but never more than this many.
UNRECORDED_MAX = 1000

CHANNEL_HEADER = "nextbest.channel"
ORIGIN_HEADERS = ("nextbest.origin.topic", "nextbest.origin.partition", "nextbest.origin.offset")

Clock = Callable[[], datetime]
Batch = Sequence[tuple[Any, Sequence[Record]]]  # (topic partition, its records)


def _moment(outcome: Outcome) -> float:
    """When a trigger's signal happened (a deadline, or an event's time): its latency
    counts from then."""
    trigger = outcome.trigger
    return trigger.moment.timestamp() if trigger is not None else 0.0


def _headers(record: Record) -> list[tuple[str, bytes]]:
    return [(str(k), bytes(v) if v is not None else b"") for k, v in record.headers or ()]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record first came from: its channel and its place on ``events.<channel>``."""

    channel: str
    topic: str
    partition: int
    offset: int

    @classmethod
    def of(
        cls, record: Record, headers: Iterable[tuple[str, bytes]], rekey_topic: str
    ) -> Origin | None:
        if record.topic != rekey_topic:
            channel = record.topic.removeprefix("events.")
            return cls(channel, record.topic, record.partition, record.offset)
        found = dict(headers)
        try:
            return cls(
                found[CHANNEL_HEADER].decode(),
                found[ORIGIN_HEADERS[0]].decode(),
                int(found[ORIGIN_HEADERS[1]]),
                int(found[ORIGIN_HEADERS[2]]),
            )
        except (KeyError, ValueError, UnicodeDecodeError):
            return None

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            (CHANNEL_HEADER, self.channel.encode()),
            (ORIGIN_HEADERS[0], self.topic.encode()),
            (ORIGIN_HEADERS[1], str(self.partition).encode()),
            (ORIGIN_HEADERS[2], str(self.offset).encode()),
        ]


class _Source:
    """An event's record: what the worker needs of it after the core has decided."""

    __slots__ = ("headers", "origin", "record")

    def __init__(self, record: Record, headers: list[tuple[str, bytes]], origin: Origin) -> None:
        self.record = record
        self.headers = headers
        self.origin = origin


@dataclass(slots=True)
class _Read:
    """What the records of one batch turned into, before the core sees them."""

    output: BatchOutput  # where the batch's records go (see adapters/outputs.py)
    consumed: dict[str, int] = field(default_factory=dict)  # topic -> next offset
    events: list[tuple[Event, _Source]] = field(default_factory=list)
    sends: list[Awaitable[Any]] = field(default_factory=list)  # dead letters, forwards
    commands: list[tuple[Record, str]] = field(default_factory=list)  # identity protocol
    tick: bool = False
    skipped: int = 0


class EventHandler:
    """The body of the worker: a partition's batch at a time (see the module doc)."""

    def __init__(
        self,
        *,
        engine: Engine,
        table: ContextTable,
        outputs: Outputs,
        names: TopicNames,
        index: DueIndex,
        mirror: RedisMirror,
        metrics: Metrics,
        partitions: int,
        clock: Clock,
        cache: StateCache | None = None,
        identity: IdentityConfig | None = None,
    ) -> None:
        self._engine = engine
        self._table = table
        self._outputs = outputs
        self._names = names
        self._rekey = names.rekey
        self._ticks = names.ticks
        self.topics = frozenset(names.sources)
        self.clocks = frozenset({names.ticks})
        self._index = index
        self._mirror = mirror
        self._metrics = metrics
        self._partitions = partitions
        self._clock = clock
        self._cache = cache if cache is not None else StateCache(0)
        config = identity or IdentityConfig(
            types=engine.config.subject_types,
            max_per_type=5,
            suppress=timedelta(days=30),
            secret=names.app_id.encode(),
            partitions=partitions,
        )
        self._desk = Desk(
            engine=engine, table=table, names=names, metrics=metrics,
            mirror=mirror, config=config,
        )  # fmt: skip
        self._coordinator = Coordinator(self._desk, metrics)

    # --- a batch ----------------------------------------------------------------------

    async def handle(self, partition: int, batch: Batch, watermark: float | None = None) -> None:
        """Handle one partition's records; raises (nothing written) when an output fails.

        Deadlines fire up to ``watermark`` (epoch seconds; default: now), the time up
        to which every source topic of the partition has been read.
        """
        now = self._clock()
        applied = self._table.applied(partition)
        next_applied = dict(applied)
        read = _Read(self._outputs.open(partition))
        changed: dict[str, CustomerState] = {}
        work = Work(partition, now, changed, lambda key: self._one(partition, key), read.output)
        for tp, records in batch:
            topic = tp.topic
            read.consumed[topic] = records[-1].offset + 1
            start = applied.get(topic, 0)
            for record in records:
                if record.offset < start:
                    read.skipped += 1
                    continue
                if topic == self._ticks:
                    read.tick = True
                elif topic == self._rekey and (kind := command_kind(record)) is not None:
                    read.commands.append((record, kind))
                else:
                    await self._read(record, partition, now, read, work)
            next_applied[topic] = max(start, records[-1].offset + 1)
        if read.skipped:
            self._metrics.skipped.inc(read.skipped)
        self._desk.confirm(work)
        read.events.sort(key=lambda item: item[0].time)  # fewer late arrivals to place
        loaded = self._load(partition, {e.profile or e.subject for e, _ in read.events})
        unreadable = {subject for subject, state in loaded.items() if state is _UNREADABLE}
        if unreadable:
            read.events = await self._set_aside(read, unreadable)
        kept = self._desk.admit(work, read.events, loaded)
        batch_result = self._engine.process_batch(loaded, (e for e, _ in kept), now)
        changed.update(batch_result.states)
        outcomes = list(zip(kept, batch_result.outcomes, strict=True))
        if read.commands:
            await self._commands(work, read.commands)
        if work.deferred:  # waited for this batch's commands
            ready = await self._desk.settle(work)
            if ready:
                view = {k: work.state(k) for k in {e.profile or e.subject for e, _ in ready}}
                more = self._engine.process_batch(view, (e for e, _ in ready), now)
                changed.update(more.states)
                outcomes += zip(ready, more.outcomes, strict=True)
        due: list[bytes] = []
        expired: list[Outcome] = []
        if read.tick:
            until = now
            if watermark is not None and watermark < now.timestamp():
                until = datetime.fromtimestamp(watermark, now.tzinfo)
            due = self._index.pop_due(partition, until)
            entries = [key for key in due if key.startswith(b"\x00")]  # identity entries
            if entries:
                self._desk.expire(work, entries)
                due = [key for key in due if not key.startswith(b"\x00")]
            try:
                expired = self._expire(partition, due, changed, now, until)
            except Exception:
                self._reschedule(partition, due, changed)
                raise
        try:
            await self._write(partition, read, outcomes, expired, changed, now, next_applied,
                              work)  # fmt: skip
        except BaseException:
            self._reschedule(partition, due, {})  # the deadlines stay pending
            for key, at in work.expiring:
                self._index.schedule(partition, key, at)
            await read.output.abort()
            raise

    async def _commands(self, work: Work, commands: list[tuple[Record, str]]) -> None:
        """The identity commands of the batch, in offset order."""
        for record, kind in commands:
            try:
                if kind in ("op", "done"):
                    if work.partition != COORDINATOR:
                        log.error("a coordinator command on partition %d: ignored",
                                  work.partition)  # fmt: skip
                        continue
                    command = orjson.loads(record.value or b"{}")
                    await self._coordinator.handle(work, kind, command)
                else:
                    await self._desk.command(work, record, kind)
            except Exception as error:  # a bug: reported, the partition goes on
                log_failure(log, error, "identity command %s at %s[%d]@%d failed", kind,
                            record.topic, record.partition, record.offset)  # fmt: skip

    async def _read(
        self, record: Record, partition: int, now: datetime, read: _Read, work: Work
    ) -> None:
        headers = _headers(record)
        origin = Origin.of(record, headers, self._rekey)
        if origin is None:
            log.error(
                "dropping a rekeyed record without origin headers at offset %d", record.offset
            )
            return
        config = self._engine.config
        try:
            event = parse(
                record.value,
                headers,
                origin.channel,
                now=now,
                max_bytes=config.max_event_bytes,
                max_clock_skew=config.max_clock_skew,
                subject_types=config.subject_types,
            )
        except Rejected as rejection:
            read.sends.append(
                await self._dead_letter(
                    read.output, record, headers, origin, rejection.reason, rejection.message
                )
            )
            return
        except Exception as error:  # a bug in the parser: reported, never a stuck partition
            read.sends.append(await self._internal(read.output, record, headers, origin, error))
            return
        key = event.subject.encode()  # the subject's id: where its identifier lives
        home = partition_for(key, self._partitions)
        if home != partition and record.topic != self._rekey:
            self._metrics.rekeyed.labels(origin.channel).inc()
            read.sends.append(
                await read.output.send(
                    self._rekey, key, record.value, home, record.timestamp / 1000,
                    [*headers, *origin.headers()],
                )
            )  # fmt: skip
            return
        if event.subjecttype == CUSTOMER and event.type not in OPERATIONS:  # the plain path
            read.events.append((event, _Source(record, headers, origin)))
            return
        await self._desk.read(event, _Source(record, headers, origin), read.events, work)

    def _one(self, partition: int, key: str) -> CustomerState | None:
        """One state, for the identity protocol (None also for an unreadable one)."""
        state = self._load(partition, [key])[key]
        return None if state is _UNREADABLE else state

    def _load(self, partition: int, subjects: Iterable[str]) -> dict[str, CustomerState | None]:
        """The states of ``subjects``: None for a new customer, ``_UNREADABLE`` for a
        stored state that cannot be decoded."""
        loaded: dict[str, CustomerState | None] = {}
        cache, metrics = self._cache, self._metrics
        for subject in subjects:
            key = subject.encode()
            state = cache.get(key)
            if state is None:
                metrics.state_cache_misses.inc()
                raw = self._table.get(partition, key)
                if raw is not None:
                    try:
                        state = states.decode(raw)
                    except Exception as error:
                        log_failure(log, error, "a stored state of partition %d is unreadable",
                                    partition)  # fmt: skip
                        state = _UNREADABLE
            else:
                metrics.state_cache_hits.inc()
            loaded[subject] = state
        return loaded

    async def _set_aside(self, read: _Read, unreadable: set[str]) -> list[tuple[Event, _Source]]:
        """Dead-letter (``internal``) the events of customers whose stored state is
        unreadable: their state stays as it is, for an operator to look at."""
        kept = []
        for event, source in read.events:
            if (event.profile or event.subject) in unreadable:
                read.sends.append(
                    await self._dead_letter(
                        read.output, source.record, source.headers, source.origin, Reason.INTERNAL,
                        "the customer's stored state could not be read",
                    )
                )  # fmt: skip
            else:
                kept.append((event, source))
        return kept

    def _expire(
        self,
        partition: int,
        due: list[bytes],
        changed: dict[str, CustomerState],
        now: datetime,
        until: datetime,
    ) -> list[Outcome]:
        if not due:
            return []
        subjects = [key.decode() for key in due]
        current: dict[str, CustomerState] = {}
        missing = [s for s in subjects if s not in changed]
        for subject, state in self._load(partition, missing).items():
            if state is not None and state is not _UNREADABLE:
                current[subject] = state
        for subject in subjects:
            if subject in changed:
                current[subject] = changed[subject]
        result = self._engine.expire_batch(current, now, until)
        changed.update(result.states)
        for subject, state in current.items():
            if subject not in result.states:  # nothing was due after all: look again later
                self._index.schedule(partition, subject.encode(), self._engine.next_wakeup(state))
        return result.outcomes

    def _reschedule(
        self, partition: int, due: list[bytes], changed: Mapping[str, CustomerState]
    ) -> None:
        for key in due:
            state = changed.get(key.decode())
            if state is None:
                state = self._load(partition, [key.decode()]).get(key.decode())
            if state is not None and state is not _UNREADABLE:
                self._index.schedule(partition, key, self._engine.next_wakeup(state))

    async def _write(
        self,
        partition: int,
        read: _Read,
        outcomes: list[tuple[tuple[Event, _Source], Outcome]],
        expired: list[Outcome],
        changed: dict[str, CustomerState],
        now: datetime,
        next_applied: Mapping[str, int],
        work: Work,
    ) -> None:
        metrics = self._metrics
        sends = read.sends
        sends.extend(work.sends)
        for (_, source), outcome in outcomes:
            channel = source.origin.channel
            if outcome.error is not None:
                sends.append(
                    await self._internal(read.output, source.record, source.headers,
                                         source.origin, outcome.error)
                )  # fmt: skip
                continue
            if not outcome.applied:
                metrics.duplicates.labels(channel).inc()
                continue
            metrics.events.labels(channel).inc()
            if outcome.behind is not None:
                metrics.late_seconds.labels(channel).observe(outcome.behind.total_seconds())
                if outcome.beyond:
                    metrics.late.labels(channel).inc()
            for other in outcome.also:  # deadlines before it; later events it corrected
                await self._emit(other, _moment(other), read)
            await self._emit(outcome, source.record.timestamp / 1000, read)
        for outcome, since in work.outcomes:  # merges: what the combined timeline revealed
            for other in outcome.also:
                await self._emit(other, since, read)
            await self._emit(outcome, since, read)
        for outcome in expired:
            await self._emit(outcome, _moment(outcome), read)
        documents: dict[str, bytes] = {}
        changes: dict[bytes, bytes | None] = dict(work.puts)
        for subject, state in changed.items():
            document = states.encode_document(state.context)
            documents[subject] = document
            changes[subject.encode()] = states.encode(state, document)
        for subject in work.removed:
            changes[subject.encode()] = None  # a tombstone in the changelog too
        applied = self._table.applied(partition)
        unrecorded = sum(n - applied.get(topic, 0) for topic, n in next_applied.items())
        if changes or unrecorded >= UNRECORDED_MAX:
            sends.extend(await self._table.stage(partition, changes, next_applied, read.output))
            acks = await asyncio.gather(*sends)
            await read.output.commit(read.consumed)
            self._table.write(partition, changes, next_applied, acks[-1].offset)
        elif sends:  # ticks, repeats, dead letters, forwards: nothing to store, yet
            await asyncio.gather(*sends)
            await read.output.commit(read.consumed)
        applied_at = time.time()
        cache, index, engine, desk = self._cache, self._index, self._engine, self._desk
        for subject in work.removed:
            key = subject.encode()
            cache.discard(key)
            index.schedule(partition, key, None)
        forced = work.forced
        for subject, state in changed.items():
            key = subject.encode()
            cache.put(key, state)
            index.schedule(partition, key, engine.next_wakeup(state))
            context = state.context
            identities = context.identities
            touch: tuple[str, ...] = ()
            if len(identities) > 1 or identities[0].type != CUSTOMER:
                touch = desk.touched(state, partition)
                work.identity_sets.update(desk.owned_identities(state, partition))
            self._mirror.submit(
                context.customer_id, context.version, documents[subject], applied_at=applied_at,
                force=subject in forced, touch=touch,
            )  # fmt: skip
        for key, at in work.expiring:
            index.schedule(partition, key, at)
        desk.mirror(work)

    async def _emit(self, outcome: Outcome, since: float, read: _Read) -> None:
        """Count the suppressions; send the trigger, if any (its latency from ``since``)."""
        metrics = self._metrics
        for action, reason in outcome.suppressed:
            metrics.suppressed.labels(action, reason.value).inc()
        trigger = outcome.trigger
        if trigger is None or outcome.snapshot is None:
            return
        document = states.encode_document(outcome.snapshot)
        sent = await read.output.send(
            self._names.triggers[trigger.channel],
            trigger.subject.encode(),
            trigger_codec.encode(trigger, document, outcome.snapshot.identities),
            None,
            None,
            [("content-type", trigger_codec.CONTENT_TYPE)],
        )
        action, channel = trigger.action, trigger.channel

        def acked(future: asyncio.Future[Any]) -> None:
            if not future.cancelled() and future.exception() is None:
                metrics.triggers.labels(action, channel).inc()
                metrics.trigger_latency.observe(max(0.0, time.time() - since))

        if isinstance(sent, asyncio.Future):
            sent.add_done_callback(acked)
        read.sends.append(sent)

    async def _dead_letter(
        self,
        output: BatchOutput,
        record: Record,
        headers: list[tuple[str, bytes]],
        origin: Origin,
        reason: Reason,
        text: str,
    ) -> Awaitable[Any]:
        """Send the record's original bytes to ``events.deadletter`` with the reason headers."""
        self._metrics.rejected.labels(origin.channel, reason.value).inc()
        own = {CHANNEL_HEADER, *ORIGIN_HEADERS}
        return await output.send(
            self._names.deadletter,
            record.key,
            record.value,
            None,
            None,
            [
                *((k, v) for k, v in headers if k not in own),
                ("nextbest.error.reason", reason.value.encode()),
                ("nextbest.error.message", text.encode("utf-8", "replace")[:1024]),
                ("nextbest.error.topic", origin.topic.encode()),
                ("nextbest.error.partition", str(origin.partition).encode()),
                ("nextbest.error.offset", str(origin.offset).encode()),
            ],
        )

    async def _internal(
        self,
        output: BatchOutput,
        record: Record,
        headers: list[tuple[str, bytes]],
        origin: Origin,
        error: Exception,
    ) -> Awaitable[Any]:
        log_failure(
            log, error, "internal error on %s[%d]@%d", origin.topic, origin.partition, origin.offset
        )
        return await self._dead_letter(
            output, record, headers, origin, Reason.INTERNAL, f"{type(error).__name__}: {error}"
        )

    # --- around batches ------------------------------------------------------------------

    def forget_states(self) -> None:
        """Drop what is kept between batches: partitions moved."""
        self._cache.clear()
        self._table.forget()

    def report_pending(self, partitions: Iterable[int]) -> None:
        """Set ``nextbest_timers_pending`` to the deadlines of the partitions owned now."""
        self._metrics.timers_pending.set(self._index.pending(partitions))

    def rebuild_index(self, partitions: Iterable[int]) -> None:
        """Re-read the table after an assignment: every pending deadline of ``partitions``."""
        owned = set(partitions)
        entries: list[tuple[int, bytes, datetime]] = []
        for partition in owned:
            expiring, pending = self._desk.entries(partition)
            entries.extend((partition, key, due) for key, due in expiring)
            self._desk.resubmit(partition, pending)
            for key, raw in self._table.items(partition):
                try:
                    due = self._engine.next_wakeup(states.decode(raw))
                except Exception as error:  # its events are dead-lettered as they come
                    log_failure(log, error, "a stored state of partition %d is unreadable",
                                partition)  # fmt: skip
                    continue
                if due is not None:
                    entries.append((partition, key, due))
        self._index.replace(owned, entries)
        self.report_pending(owned)

    def restore(self, tp: Any, records: Sequence[Record]) -> bool:
        return self._table.restore(tp, records)
