"""``nextbest deadletter replay``: re-drive dead letters to their original topic.

Once the producer (or a setting, e.g. ``NEXTBEST_MAX_EVENT_BYTES``) is fixed,
records rejected meanwhile can go through the engine again. The tool reads
``events.deadletter`` up to the end offsets it finds when it starts (so what it
causes itself is never read again in the same run), keeps the records that
match the filters (``--reason``, ``--channel``, ``--customer``, ``--since`` and
``--until`` on the time they were dead-lettered), and sends each to the topic
in its ``nextbest.error.topic`` header with its key, value and headers as they
were, minus the ``nextbest.error.*`` headers, plus two of its own:

* ``nextbest.replay.from``: ``events.deadletter/<partition>/<offset>``, this dead letter;
* ``nextbest.replay.at``: when it was replayed.

**The rule against loops.** A replayed record that is rejected again lands in
``events.deadletter`` again, with those headers (the engine keeps a record's
headers). A later replay skips it, and skips the dead letter it came from too:
both have been tried and failed since. ``--again`` sends them anyway. A replay
that went through leaves no mark in the dead-letter topic; replaying the same
range twice sends it twice, and the engine then ignores the second as a repeated
event id (among the customer's last 100 events): narrow a second run with
``--since``.

``--dry-run`` says what it would send and sends nothing. Output: one line per
record sent or skipped, then a count. Exit status 1 when a send failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from nextbest.adapters.topics import DEADLETTER_TOPIC, event_topic
from nextbest.core.duration import parse_duration
from nextbest.settings import Settings
from nextbest.tools.clients import (
    KafkaRecord,
    Unreachable,
    partitions,
    start_consumer,
    start_producer,
)

ERROR_PREFIX = "nextbest.error."
REPLAY_FROM = "nextbest.replay.from"
REPLAY_AT = "nextbest.replay.at"
Print = Callable[[str], None]


def place(partition: int, offset: int) -> str:
    """How ``nextbest.replay.from`` names a dead letter."""
    return f"{DEADLETTER_TOPIC}/{partition}/{offset}"


@dataclass(frozen=True)
class Selection:
    """Which dead letters to replay."""

    reasons: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()
    customers: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None

    def keeps(self, record: KafkaRecord, headers: dict[str, bytes]) -> bool:
        reason = headers.get(ERROR_PREFIX + "reason", b"").decode("utf-8", "replace")
        origin = headers.get(ERROR_PREFIX + "topic", b"").decode("utf-8", "replace")
        key = None if record.key is None else record.key.decode("utf-8", "replace")
        moment = datetime.fromtimestamp(record.timestamp / 1000, UTC)
        return (
            (not self.reasons or reason in self.reasons)
            and (not self.channels or origin.removeprefix("events.") in self.channels)
            and (not self.customers or key in self.customers)
            and (self.since is None or moment >= self.since)
            and (self.until is None or moment < self.until)
        )


@dataclass
class Tally:
    sent: int = 0
    failed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    not_matching: int = 0
    read: int = 0

    def line(self, dry_run: bool) -> str:
        verb = "would be sent (dry run: nothing was sent)" if dry_run else "sent"
        parts = [f"{self.sent} {verb}"]
        if self.failed:
            parts.append(f"{self.failed} failed to send")
        parts += [f"{n} skipped ({why})" for why, n in sorted(self.skipped.items())]
        parts.append(f"{self.not_matching} not matching the filters")
        return f"replay: {', '.join(parts)}; {self.read} dead letters read"


def replay_headers(
    headers: Sequence[tuple[str, bytes]], source: str, now: datetime
) -> list[tuple[str, bytes]]:
    """The headers to send: the producer's own, and this replay's."""
    kept = [
        (name, value)
        for name, value in headers
        if not name.startswith(ERROR_PREFIX) and name not in (REPLAY_FROM, REPLAY_AT)
    ]
    at = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return [*kept, (REPLAY_FROM, source.encode()), (REPLAY_AT, at.encode())]


async def _range(
    settings: Settings, consumer: AIOKafkaConsumer, since: datetime | None
) -> dict[TopicPartition, tuple[int, int]]:
    """Per partition of the dead-letter topic: (first offset to read, end at the start)."""
    found = await partitions(settings, [DEADLETTER_TOPIC])
    if not found:
        return {}
    ends = await consumer.end_offsets(found)
    starts = await consumer.beginning_offsets(found)
    if since is not None:
        at = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in found})
        starts = {tp: ends[tp] if at[tp] is None else at[tp].offset for tp in found}
    return {tp: (starts[tp], ends[tp]) for tp in found if starts[tp] < ends[tp]}


async def _letters(
    consumer: AIOKafkaConsumer, ranges: dict[TopicPartition, tuple[int, int]]
) -> AsyncIterator[KafkaRecord]:
    """Every record in ``ranges`` (each partition in offset order), read from the broker."""
    if not ranges:
        return
    consumer.assign(list(ranges))
    for tp, (start, _) in ranges.items():
        consumer.seek(tp, start)
    pending = set(ranges)
    while pending:
        batches = await consumer.getmany(*pending, timeout_ms=1000)
        for tp, records in batches.items():
            end = ranges[tp][1]
            for record in records:
                if record.offset < end:
                    yield record
        for tp in list(pending):
            if await consumer.position(tp) >= ranges[tp][1]:
                pending.discard(tp)


async def replay(
    settings: Settings,
    selection: Selection,
    *,
    dry_run: bool = False,
    again: bool = False,
    say: Print = print,
) -> Tally:
    """Replay what ``selection`` picks; see the module's docstring for the rule.

    Two passes over the same offsets, so that memory does not grow with the topic:
    the first finds the dead letters whose replay was rejected again, the second
    sends.
    """
    consumer = await start_consumer(settings, max_partition_fetch_bytes=4 * 1024 * 1024)
    producer = None
    tally = Tally()
    try:
        ranges = await _range(settings, consumer, selection.since)
        tried = {
            value.decode("utf-8", "replace")
            async for record in _letters(consumer, ranges)
            for name, value in record.headers
            if name == REPLAY_FROM
        }
        producer = None if dry_run else await start_producer(settings, acks="all")
        pending: list[tuple[str, asyncio.Future[object]]] = []
        async for record in _letters(consumer, ranges):
            tally.read += 1
            outgoing = _decide(record, selection, tried, again, settings, tally, say, dry_run)
            if outgoing is None or producer is None:
                continue
            here, topic = outgoing
            future = await producer.send(
                topic,
                record.value,
                key=record.key,
                headers=replay_headers(record.headers, here, datetime.now(UTC)),
            )
            pending.append((here, future))
            if len(pending) >= ACK_EVERY:
                await _settle(pending, tally, say)
        await _settle(pending, tally, say)
    finally:
        await consumer.stop()
        if producer is not None:
            await producer.stop()
    return tally


ACK_EVERY = 1000  # sends awaited in groups of this many


def _decide(
    record: KafkaRecord,
    selection: Selection,
    tried: set[str],
    again: bool,
    settings: Settings,
    tally: Tally,
    say: Print,
    dry_run: bool,
) -> tuple[str, str] | None:
    """Where this dead letter goes back to, or None (counted and said either way)."""
    headers = dict(record.headers)
    here = place(record.partition, record.offset)
    if not selection.keeps(record, headers):
        tally.not_matching += 1
        return None
    refusal = _refusal(headers, here, tried, again, settings)
    if refusal is not None:
        kind, detail = refusal
        tally.skipped[kind] += 1
        say(f"skipped {here}: {detail}")
        return None
    topic = headers[ERROR_PREFIX + "topic"].decode()
    reason = headers.get(ERROR_PREFIX + "reason", b"?").decode("utf-8", "replace")
    tally.sent += 1
    say(f"{'would send' if dry_run else 'sent'} {here} -> {topic} ({reason})")
    return here, topic


async def _settle(
    pending: list[tuple[str, asyncio.Future[object]]], tally: Tally, say: Print
) -> None:
    """Wait for the broker's answers; a send it refused is counted as failed, not sent."""
    for here, future in pending:
        try:
            await future
        except KafkaError as error:
            tally.sent -= 1
            tally.failed += 1
            say(f"failed {here}: {type(error).__name__}")
    pending.clear()


AGAIN = "already replayed and rejected again; --again sends it anyway"


def _refusal(
    headers: dict[str, bytes], here: str, tried: set[str], again: bool, settings: Settings
) -> tuple[str, str] | None:
    """Why this dead letter is not sent, as (kind, detail), or None."""
    origin = headers.get(ERROR_PREFIX + "topic", b"").decode("utf-8", "replace")
    if not origin:
        return "no original topic", "it has no nextbest.error.topic header"
    if origin not in {event_topic(channel) for channel in settings.channels}:
        return "not an events topic", f"the engine does not read {origin}"
    if again:
        return None
    if REPLAY_FROM in headers:
        source = headers[REPLAY_FROM].decode("utf-8", "replace")
        return AGAIN, f"it is the replay of {source}, rejected again (--again sends it anyway)"
    if here in tried:
        return AGAIN, "its replay was rejected again (--again sends it anyway)"
    return None


def _moment(text: str, now: datetime) -> datetime:
    """An RFC 3339 time, or a duration ago (``2h``, ``30m``, ``1d``)."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither an RFC 3339 time nor a duration (2h, 30m)") from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} needs a UTC offset (e.g. Z)")
    return moment.astimezone(UTC)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", action="append", help="only this reason (repeatable)")
    parser.add_argument("--channel", action="append", help="only this channel (repeatable)")
    parser.add_argument("--customer", action="append", help="only this record key (repeatable)")
    parser.add_argument("--since", help="dead-lettered at or after: RFC 3339, or ago: 2h, 30m")
    parser.add_argument("--until", help="dead-lettered before: RFC 3339, or ago: 2h, 30m")
    parser.add_argument(
        "--dry-run", action="store_true", help="say what would be sent, send nothing"
    )
    parser.add_argument(
        "--again", action="store_true", help="also send what was replayed and rejected again"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    now = datetime.now(UTC)
    try:
        since = None if args.since is None else _moment(args.since, now)
        until = None if args.until is None else _moment(args.until, now)
    except ValueError as error:
        print(f"nextbest deadletter replay: --since/--until: {error}", file=sys.stderr)
        return 2
    unknown = sorted(set(args.channel or ()) - set(settings.channels))
    if unknown:
        print(f"nextbest deadletter replay: unknown channel {unknown[0]!r}", file=sys.stderr)
        return 2
    selection = Selection(
        frozenset(args.reason or ()),
        frozenset(args.channel or ()),
        frozenset(args.customer or ()),
        since,
        until,
    )
    try:
        tally = asyncio.run(
            replay(settings, selection, dry_run=args.dry_run, again=args.again, say=print)
        )
    except Unreachable as error:
        print(f"nextbest deadletter replay: {error}", file=sys.stderr)
        return 1
    print(tally.line(args.dry_run))
    return 1 if tally.failed else 0
