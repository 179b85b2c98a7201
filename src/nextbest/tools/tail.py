"""``nextbest tail``: a live, readable view of triggers, or with ``--deadletter`` of rejects.

Follows ``triggers.<channel>`` of every configured channel (or those given with
``--channel``) from now on, or from the beginning, one line per record::

    2026-11-22T12:00:01.240Z mobile  c-1  resume_cart (channel_switch from web, priority 40): ...

With ``--deadletter`` it follows ``events.deadletter``::

    2026-11-22T12:00:03.004Z events.web[3]@17  key c-1  invalid_data: data.qty of cart.item_...

``--json`` prints each trigger as its CloudEvent, and each dead letter as a
capture record (:mod:`.capture`: topic, key, headers, payload), which
``nextbest validate`` reads back. ``--customer`` keeps one customer's records;
``--reason`` (dead letters) one or more reasons. Ctrl-C ends it (status 0).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from nextbest.adapters.topics import DEADLETTER_TOPIC, trigger_topic
from nextbest.settings import Settings
from nextbest.tools import capture
from nextbest.tools.clients import KafkaRecord, Unreachable, partitions, start_consumer

Print = Callable[[str], None]


class NoTopics(Exception):
    """None of the topics to follow exists yet."""


@dataclass(frozen=True)
class Filter:
    channels: frozenset[str]
    customer: str | None = None
    reasons: frozenset[str] = frozenset()

    def keeps_trigger(self, record: KafkaRecord, trigger: dict[str, Any] | None) -> bool:
        if self.customer is None:
            return True
        subject = trigger.get("subject") if trigger else None
        return record.key == self.customer.encode() or subject == self.customer

    def keeps_letter(self, record: KafkaRecord) -> bool:
        headers = dict(record.headers)
        origin = headers.get("nextbest.error.topic", b"").decode("utf-8", "replace")
        if origin.removeprefix("events.") not in self.channels:
            return False
        reason = headers.get("nextbest.error.reason", b"").decode("utf-8", "replace")
        if self.reasons and reason not in self.reasons:
            return False
        return self.customer is None or self.customer in _letter_customers(record)


def _letter_customers(record: KafkaRecord) -> set[str]:
    """Who a dead letter may be about: its key, its ce_subject, its subject attribute."""
    found = set()
    if record.key is not None:
        found.add(record.key.decode("utf-8", "replace"))
    headers = dict(record.headers)
    if "ce_subject" in headers:
        found.add(headers["ce_subject"].decode("utf-8", "replace"))
    try:
        document = orjson.loads(record.value or b"")
    except orjson.JSONDecodeError:
        return found
    if isinstance(document, dict) and isinstance(document.get("subject"), str):
        found.add(document["subject"])
    return found


def _when(timestamp_ms: int) -> str:
    moment = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def trigger_line(record: KafkaRecord, trigger: dict[str, Any] | None) -> str:
    if trigger is None or not isinstance(trigger.get("data"), dict):
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        return f"{_when(record.timestamp)} {where}: not a trigger (see --json)"
    data = trigger["data"]
    origin = f" from {data['from_channel']}" if data.get("from_channel") else ""
    return (
        f"{trigger.get('time', _when(record.timestamp))} {trigger.get('channel', '?'):<14} "
        f"{trigger.get('subject', '?')}  {data.get('action')} ({data.get('signal')}{origin}, "
        f"priority {data.get('priority')}): {data.get('reason')}"
    )


def letter_line(record: KafkaRecord) -> str:
    headers = {k: v.decode("utf-8", "replace") for k, v in record.headers}
    error = {k.removeprefix("nextbest.error."): v for k, v in headers.items()}
    origin = f"{error.get('topic', '?')}[{error.get('partition', '?')}]@{error.get('offset', '?')}"
    key = "(no key)" if record.key is None else "key " + record.key.decode("utf-8", "replace")
    replayed = headers.get("nextbest.replay.from")
    note = f" (a replay of {replayed})" if replayed else ""
    return (
        f"{_when(record.timestamp)} {origin}  {key}  "
        f"{error.get('reason', '?')}: {error.get('message', '')}"
        f"{note}"
    )


def as_capture(record: KafkaRecord) -> str:
    return capture.write(
        capture.Record(
            value=record.value,
            headers=list(record.headers),
            key=record.key,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
        )
    ).decode()


async def _assign(
    consumer: AIOKafkaConsumer, found: list[TopicPartition], from_beginning: bool
) -> None:
    """Read ``found`` from their end (or start), every position resolved before returning."""
    consumer.assign(found)
    if from_beginning:
        await consumer.seek_to_beginning(*found)
    else:
        await consumer.seek_to_end(*found)
    for partition in found:  # resolve every position now: "from now" means now
        await consumer.position(partition)


async def follow(
    settings: Settings,
    *,
    deadletter: bool,
    keep: Filter,
    as_json: bool,
    from_beginning: bool,
    count: int | None,
    emit: Print,
    status: Print,
) -> int:
    """Print records until cancelled or ``count`` were printed; returns how many were."""
    topics = (
        [DEADLETTER_TOPIC]
        if deadletter
        else [trigger_topic(channel) for channel in sorted(keep.channels)]
    )
    found = await partitions(settings, topics)
    if not found:
        raise NoTopics(", ".join(topics))
    consumer = await start_consumer(settings)
    printed = 0
    try:
        await _assign(consumer, found, from_beginning)
        start = "the beginning" if from_beginning else "now"
        status(f"tail: following {', '.join(topics)} ({len(found)} partitions) from {start}; "
               "Ctrl-C to stop")  # fmt: skip
        while count is None or printed < count:
            batches = await consumer.getmany(timeout_ms=500)
            records = sorted((r for rs in batches.values() for r in rs), key=lambda r: r.timestamp)
            for record in records:
                line = _render(record, deadletter=deadletter, keep=keep, as_json=as_json)
                if line is None:
                    continue
                emit(line)
                printed += 1
                if count is not None and printed >= count:
                    break
    finally:
        await consumer.stop()
    return printed


def _render(record: KafkaRecord, *, deadletter: bool, keep: Filter, as_json: bool) -> str | None:
    if deadletter:
        if not keep.keeps_letter(record):
            return None
        return as_capture(record) if as_json else letter_line(record)
    try:
        trigger = orjson.loads(record.value or b"")
    except orjson.JSONDecodeError:
        trigger = None
    if not isinstance(trigger, dict):
        trigger = None
    if not keep.keeps_trigger(record, trigger):
        return None
    if as_json:
        return (record.value or b"").decode("utf-8", "replace")
    return trigger_line(record, trigger)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--deadletter", action="store_true", help="follow events.deadletter, not the triggers"
    )
    parser.add_argument(
        "--channel", action="append", help="only this channel (repeatable; default: all)"
    )
    parser.add_argument("--customer", help="only this customer's records")
    parser.add_argument(
        "--reason", action="append", help="dead letters: only this reason (repeatable)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per record")
    parser.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest record, not now"
    )
    parser.add_argument("--count", type=int, help="stop after printing this many records")


def run(args: argparse.Namespace, settings: Settings) -> int:
    channels = args.channel or list(settings.channels)
    unknown = sorted(set(channels) - set(settings.channels))
    if unknown or (args.count is not None and args.count < 1):
        problem = f"unknown channel {unknown[0]!r}" if unknown else "--count must be at least 1"
        print(f"nextbest tail: {problem} (NEXTBEST_CHANNELS: {', '.join(settings.channels)})",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.reason and not args.deadletter:
        print("nextbest tail: --reason needs --deadletter", file=sys.stderr)
        return 2
    keep = Filter(frozenset(channels), args.customer, frozenset(args.reason or ()))

    def emit(line: str) -> None:
        print(line, flush=True)

    def status(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        asyncio.run(
            follow(
                settings,
                deadletter=args.deadletter,
                keep=keep,
                as_json=args.json,
                from_beginning=args.from_beginning,
                count=args.count,
                emit=emit,
                status=status,
            )
        )
    except Unreachable as error:
        print(f"nextbest tail: {error}", file=sys.stderr)
        return 1
    except NoTopics as missing:
        print(f"nextbest tail: no topic to follow yet ({missing}): has a worker run here?",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0
