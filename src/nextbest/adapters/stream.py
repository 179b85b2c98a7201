"""The Faust adapter: records in, core decisions, triggers and dead letters out.

:class:`EventHandler` is the agent's body and nothing else: decode the record,
load the customer's state, call :meth:`Engine.process`, store the new state,
send the trigger, hand the document to the Redis mirror and count. Every
decision is in :mod:`nextbest.core`.

Records whose partition is not their customer's (keyed by something other than
the customer id, or unkeyed) are forwarded once to ``<app id>-rekey`` on the
customer's partition, so every customer's state lives on one partition of the
``contexts`` table whatever the producers do.

Records come in batches (:meth:`EventHandler.handle_batch`): a record's
trigger goes out as it is handled, but each changed customer is encoded,
written to the table (and so to its changelog) and handed to the Redis mirror
once per batch, with its newest state. The agent acknowledges a batch only
after that write, so a committed offset never runs ahead of the changelog; a
crash mid-batch replays the batch (its triggers again, with the same ids).
Decoded states stay in a :class:`~nextbest.adapters.cache.StateCache` between
batches, so a customer's next event seldom decodes its state again.

Absence timers ride the same stream: each worker sends a tick to
``<app id>-ticks`` for every partition it owns a few times a second, and the
tick, handled in that partition's order like any event, fires the deadlines the
:class:`~nextbest.core.schedule.DueIndex` says are due. So timer state changes
are ordinary table writes with a changelog, never concurrent with the
customer's events.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from aiokafka.partitioner import murmur2

from nextbest.adapters.cache import StateCache
from nextbest.adapters.projection import RedisMirror
from nextbest.core import state as states
from nextbest.core import triggers as trigger_codec
from nextbest.core.engine import Engine, Outcome
from nextbest.core.envelope import Reason, Rejected, parse
from nextbest.core.schedule import DueIndex
from nextbest.core.triggers import Trigger
from nextbest.failures import log_failure
from nextbest.metrics import Metrics

log = logging.getLogger(__name__)

DEADLETTER_TOPIC = "events.deadletter"
CHANNEL_HEADER = "nextbest.channel"
ORIGIN_HEADERS = ("nextbest.origin.topic", "nextbest.origin.partition", "nextbest.origin.offset")

Clock = Callable[[], datetime]


def event_topic(channel: str) -> str:
    return f"events.{channel}"


def trigger_topic(channel: str) -> str:
    return f"triggers.{channel}"


def rekey_topic(app_id: str) -> str:
    return f"{app_id}-rekey"


def tick_topic(app_id: str) -> str:
    return f"{app_id}-ticks"


def partition_for(customer_id: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a record keyed by ``customer_id``."""
    return int(murmur2(customer_id) & 0x7FFFFFFF) % partitions


class Message(Protocol):
    """What the handler reads of a Faust message."""

    topic: str
    partition: int
    offset: int
    timestamp: float
    key: bytes | None
    value: bytes | None
    headers: Any


class Record(Protocol):
    """A record as the agent hands it over (a faust event): its message."""

    @property
    def message(self) -> Message: ...


@dataclass(frozen=True, slots=True)
class _Single:
    message: Message


@dataclass(slots=True)
class _Change:
    """A customer changed in this batch: its newest state, the record that made it,
    and when its oldest change not yet stored was applied (``time.time()``)."""

    state: states.CustomerState
    record: Any
    applied_at: float


Enter = Callable[[Any], None]


class Sender(Protocol):
    """A Faust topic, as far as the handler sends to it."""

    async def send(
        self,
        *,
        key: bytes | None = ...,
        value: bytes | None = ...,
        partition: int | None = ...,
        timestamp: float | None = ...,
        headers: Any = ...,
        callback: Any = ...,
    ) -> Any: ...


class Store(Protocol):
    """The ``contexts`` table: customer id (bytes) to encoded state."""

    def get(self, key: bytes) -> bytes | None: ...

    def __setitem__(self, key: bytes, value: bytes) -> None: ...

    def items(self) -> Iterable[tuple[bytes, bytes]]: ...


def _headers(message: Message) -> list[tuple[str, bytes]]:
    headers = message.headers or ()
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(k), bytes(v) if v is not None else b"") for k, v in items]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record first came from: its channel and its place on ``events.<channel>``."""

    channel: str
    topic: str
    partition: int
    offset: int

    @classmethod
    def of(
        cls, message: Message, headers: Iterable[tuple[str, bytes]], rekey_topic: str
    ) -> Origin | None:
        if message.topic != rekey_topic:
            channel = message.topic.removeprefix("events.")
            return cls(channel, message.topic, message.partition, message.offset)
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


class EventHandler:
    """One record at a time: the body of the worker's agent."""

    def __init__(
        self,
        *,
        engine: Engine,
        table: Store,
        triggers: Mapping[str, Sender],
        deadletter: Sender,
        rekey: Sender,
        rekey_topic: str,
        tick_topic: str,
        index: DueIndex,
        mirror: RedisMirror,
        metrics: Metrics,
        partitions: int,
        clock: Clock,
        cache: StateCache | None = None,
    ) -> None:
        self._engine = engine
        self._table = table
        self._triggers = triggers
        self._deadletter = deadletter
        self._rekey = rekey
        self._rekey_topic = rekey_topic
        self._tick_topic = tick_topic
        self._index = index
        self._mirror = mirror
        self._metrics = metrics
        self._partitions = partitions
        self._clock = clock
        self._cache = cache if cache is not None else StateCache(0)
        self._changed: dict[bytes, _Change] = {}  # by customer key, in this batch
        self._record: Any = None  # the record being handled

    async def handle_batch(self, records: Iterable[Record], enter: Enter | None = None) -> None:
        """Handle ``records`` in order, then write each changed customer's state once.

        ``enter(record)`` makes ``record`` the one being handled (faust reads
        and writes a table in the partition of its "current event"): called
        before each record, and before each state is written, with the last
        record that changed it.
        """
        try:
            for record in records:
                self._record = record
                if enter is not None:
                    enter(record)
                await self._handle_record(record.message)
        finally:
            self._record = None
            self.store_changes(enter)

    async def handle(self, message: Message) -> None:
        """One record as a batch of its own."""
        await self.handle_batch((_Single(message),))

    def store_changes(self, enter: Enter | None = None) -> int:
        """Store the batch's changed customers; how many reached the table.

        Each is encoded once: the document goes to the Redis mirror, the state
        to the table. A failed write is logged at ERROR and the others still
        go, as a failed write of one record was before batching: the batch is
        acknowledged and that customer's change is missing from the table
        (Redis has it). An exception escaping here would kill the agent.
        """
        changed, self._changed = self._changed, {}
        written = 0
        for key, change in changed.items():
            state = change.state
            try:
                document = states.encode_document(state.context)
                context = state.context
                self._mirror.submit(
                    context.customer_id, context.version, document, applied_at=change.applied_at
                )
                if enter is not None:
                    enter(change.record)
                self._table[key] = states.encode(state, document)
                self._cache.put(key, state)
                written += 1
            except Exception as error:  # the cache still holds what the table holds
                log_failure(log, error, "could not store a customer's state")
        return written

    def forget_states(self) -> None:
        """Drop the decoded states kept between batches: partitions moved."""
        self._cache.clear()

    def _change(self, key: bytes, state: states.CustomerState) -> None:
        known = self._changed.get(key)
        if known is None:
            self._changed[key] = _Change(state, self._record, time.time())
        else:
            known.state, known.record = state, self._record

    def _load(self, key: bytes) -> states.CustomerState | None:
        pending = self._changed.get(key)
        if pending is not None:
            return pending.state
        state = self._cache.get(key)
        if state is not None:
            self._metrics.state_cache_hits.inc()
            return state
        self._metrics.state_cache_misses.inc()
        raw = self._table.get(key)
        if raw is None:
            return None
        state = states.decode(raw)
        self._cache.put(key, state)
        return state

    async def _handle_record(self, message: Message) -> None:
        """Process one record; never raises for anything a producer can send.

        Its state change stays in the batch until :meth:`store_changes`.
        """
        if message.topic == self._tick_topic:
            try:
                await self.tick(message.partition)
            except Exception as error:  # a failed tick is retried by the next one
                log_failure(log, error, "timer tick failed on partition %d", message.partition)
            return
        headers = _headers(message)
        origin = Origin.of(message, headers, self._rekey_topic)
        if origin is None:
            log.error(
                "dropping a rekeyed record without origin headers at offset %d", message.offset
            )
            return
        try:
            await self._handle(message, headers, origin)
        except Rejected as rejection:
            await self.dead_letter(message, headers, origin, rejection.reason, rejection.message)
        except Exception as error:  # an escaping exception would silently kill the agent
            log_failure(
                log,
                error,
                "internal error on %s[%d]@%d",
                origin.topic,
                origin.partition,
                origin.offset,
            )
            await self.dead_letter(
                message, headers, origin, Reason.INTERNAL, f"{type(error).__name__}: {error}"
            )

    async def _handle(
        self, message: Message, headers: list[tuple[str, bytes]], origin: Origin
    ) -> None:
        config = self._engine.config
        now = self._clock()
        event = parse(
            message.value,
            headers,
            origin.channel,
            now=now,
            max_bytes=config.max_event_bytes,
            max_clock_skew=config.max_clock_skew,
        )
        key = event.subject.encode()
        home = partition_for(key, self._partitions)
        if message.partition != home and message.topic != self._rekey_topic:
            await self._forward(message, headers, origin, key, home)
            return
        self._metrics.events.labels(origin.channel).inc()
        outcome = self._engine.process(self._load(key), event, now)
        wakeup = self._engine.next_wakeup(outcome.state)
        self._index.schedule(message.partition, key, wakeup)
        if not outcome.applied:
            # a repeat changes nothing, but after a crash the repeats are the
            # uncommitted records replayed: they put their deadlines back in the index
            self._metrics.duplicates.labels(origin.channel).inc()
            return
        self._change(key, outcome.state)
        await self._emit(outcome, message.timestamp)

    def report_pending(self, partitions: Iterable[int]) -> None:
        """Set ``nextbest_timers_pending`` to the deadlines of the partitions owned now."""
        self._metrics.timers_pending.set(self._index.pending(partitions))

    async def tick(self, partition: int) -> None:
        """Fire the deadlines of ``partition`` that are due on the engine's clock."""
        now = self._clock()
        for key in self._index.pop_due(partition, now):
            loaded = self._load(key)
            if loaded is None:
                continue
            state = loaded
            fired = False
            while (outcome := self._engine.expire(state, now)) is not None:
                state, fired = outcome.state, True
                if outcome.trigger is not None:
                    await self._emit(outcome, outcome.trigger.moment.timestamp())
            if fired:
                self._change(key, state)
            self._index.schedule(partition, key, self._engine.next_wakeup(state))

    def rebuild_index(self, partitions: Iterable[int]) -> None:
        """Re-read the table after an assignment: every pending deadline of ``partitions``."""
        owned = set(partitions)
        entries = []
        for key, raw in self._table.items():
            partition = partition_for(key, self._partitions)
            if partition in owned:
                due = self._engine.next_wakeup(states.decode(raw))
                if due is not None:
                    entries.append((partition, key, due))
        self._index.replace(owned, entries)
        self.report_pending(owned)

    async def _emit(self, outcome: Outcome, since: float) -> None:
        """Count the suppressions; send the trigger, if any."""
        for action, reason in outcome.suppressed:
            self._metrics.suppressed.labels(action, reason.value).inc()
        if outcome.trigger is not None and outcome.snapshot is not None:
            snapshot = states.encode_document(outcome.snapshot)
            await self._send_trigger(outcome.trigger, snapshot, since)

    async def _send_trigger(self, trigger: Trigger, document: bytes, since: float) -> None:
        """Send without waiting for the ack; the ack's callback measures the latency."""
        metrics = self._metrics

        def acked(_: object) -> None:
            metrics.triggers.labels(trigger.action, trigger.channel).inc()
            metrics.trigger_latency.observe(max(0.0, time.time() - since))

        await self._triggers[trigger.channel].send(
            key=trigger.subject.encode(),
            value=trigger_codec.encode(trigger, document),
            headers=[("content-type", trigger_codec.CONTENT_TYPE)],
            callback=acked,
        )

    async def _forward(
        self,
        message: Message,
        headers: list[tuple[str, bytes]],
        origin: Origin,
        key: bytes,
        partition: int,
    ) -> None:
        self._metrics.rekeyed.labels(origin.channel).inc()
        await self._rekey.send(
            key=key,
            value=message.value,
            partition=partition,
            timestamp=message.timestamp,
            headers=[*headers, *origin.headers()],
        )

    async def dead_letter(
        self,
        message: Message,
        headers: list[tuple[str, bytes]],
        origin: Origin,
        reason: Reason,
        text: str,
    ) -> None:
        """Write the record's original bytes to ``events.deadletter`` with the reason headers."""
        self._metrics.rejected.labels(origin.channel, reason.value).inc()
        own = {CHANNEL_HEADER, *ORIGIN_HEADERS}
        try:
            await self._deadletter.send(
                key=message.key,
                value=message.value,
                headers=[
                    *((k, v) for k, v in headers if k not in own),
                    ("nextbest.error.reason", reason.value.encode()),
                    ("nextbest.error.message", text.encode("utf-8", "replace")[:1024]),
                    ("nextbest.error.topic", origin.topic.encode()),
                    ("nextbest.error.partition", str(origin.partition).encode()),
                    ("nextbest.error.offset", str(origin.offset).encode()),
                ],
            )
        except Exception as error:
            log_failure(
                log,
                error,
                "could not dead-letter %s[%d]@%d (%s)",
                origin.topic,
                origin.partition,
                origin.offset,
                reason.value,
            )
