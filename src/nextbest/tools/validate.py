"""``nextbest validate FILE|-``: check events exactly as the worker would.

Each non-blank line is one record: either an event as it would be the record
value (structured content mode: one CloudEvent as compact JSON), or a capture
record (:mod:`.capture`, e.g. from ``kcat -C -J``) carrying a value, headers
(binary content mode: ``ce_*``) and its topic. Each is read with the worker's own
parser and size limit, and the tool prints one line per record::

    line 1: ok (cart.item_added, id e-1, channel web)
    line 2: invalid_data: data.qty of cart.item_added must be an integer >= 1

The reason codes are the dead-letter reasons of contract §4. The channel checked
against an event's ``channel`` attribute is ``--channel``, else the record's topic
(``events.<channel>``, or for a dead letter the topic it came from), else none.
Exit status: 0 when every record is valid, 1 when any is not, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO

import orjson

from nextbest.adapters.topics import DEADLETTER_TOPIC
from nextbest.core.envelope import Rejected, parse
from nextbest.settings import Settings
from nextbest.tools import capture

HINT_PRETTY = (
    "hint: the input looks like pretty-printed JSON; validate reads one event per line "
    "(e.g. `jq -c . events.json | nextbest validate -`)"
)


@dataclass
class Summary:
    records: int = 0
    valid: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    hints: set[str] = field(default_factory=set)

    def line(self) -> str:
        rejected = self.records - self.valid
        detail = ", ".join(f"{reason} {count}" for reason, count in sorted(self.reasons.items()))
        return f"validate: {self.records} records: {self.valid} ok, {rejected} rejected" + (
            f" ({detail})" if detail else ""
        )


@dataclass(frozen=True)
class Verdict:
    ok: bool
    text: str
    reason: str | None = None


def _channel_of_topic(record: capture.Record) -> str | None:
    topic = record.topic
    if topic == DEADLETTER_TOPIC:
        origin = record.header("nextbest.error.topic")
        topic = origin.decode("utf-8", "replace") if origin else None
    if topic is not None and topic.startswith("events."):
        return topic.removeprefix("events.")
    return None


def _claimed_channel(record: capture.Record) -> object:
    """The channel the event names itself, when it does (so that no mismatch is possible)."""
    header = record.header("ce_channel")
    if header is not None:
        return header.decode("utf-8", "replace")
    try:
        document = orjson.loads(record.value or b"")
    except orjson.JSONDecodeError:
        return None
    return document.get("channel") if isinstance(document, dict) else None


def judge(
    record: capture.Record,
    channel: str | None,
    settings: Settings,
    now: datetime,
) -> Verdict:
    """What the worker would do with ``record`` on ``events.<channel>``."""
    topic_channel = _channel_of_topic(record)
    target = channel or topic_channel
    if target is not None and target not in settings.channels:
        return Verdict(
            False,
            f"the engine reads no topic events.{target} (NEXTBEST_CHANNELS: "
            f"{', '.join(settings.channels)})",
            "unknown_channel",
        )
    if target is None:
        claimed = _claimed_channel(record)
        target = claimed if isinstance(claimed, str) else settings.channels[0]
    try:
        event = parse(
            record.value, record.headers, target, now=now, max_bytes=settings.max_event_bytes
        )
    except Rejected as rejection:
        return Verdict(False, f"{rejection.reason.value}: {rejection.message}", rejection.reason)
    return Verdict(True, f"ok ({event.type}, id {event.id}, channel {event.channel})")


def check_lines(
    lines: Iterable[bytes],
    settings: Settings,
    *,
    channel: str | None,
    out: IO[str],
    now: datetime | None = None,
) -> Summary:
    summary = Summary()
    for number, raw in enumerate(lines, start=1):
        line = raw.removesuffix(b"\n").removesuffix(b"\r")
        if not line.strip():
            continue
        if line.strip() in (b"{", b"[") or line.lstrip().startswith(b"[{"):
            summary.hints.add(HINT_PRETTY)
        summary.records += 1
        try:
            record = capture.read(line) or capture.Record(value=line)
        except capture.CaptureError as error:
            verdict = Verdict(False, f"not a capture record: {error}", "bad_capture")
        else:
            verdict = judge(record, channel, settings, now or datetime.now(UTC))
        if verdict.ok:
            summary.valid += 1
        else:
            summary.reasons[verdict.reason or "?"] += 1
        print(f"line {number}: {verdict.text}", file=out)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", help="events, one per line (JSON Lines), or kcat -J capture records; - for stdin"
    )
    parser.add_argument(
        "--channel", help="check the events as read from events.<channel> (default: their topic)"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.channel is not None and args.channel not in settings.channels:
        print(
            f"nextbest validate: unknown channel {args.channel!r} "
            f"(NEXTBEST_CHANNELS: {', '.join(settings.channels)})",
            file=sys.stderr,
        )
        return 2
    try:
        stream = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    except OSError as error:
        print(f"nextbest validate: cannot read {args.file}: {error.strerror}", file=sys.stderr)
        return 2
    with stream:
        summary = check_lines(stream, settings, channel=args.channel, out=sys.stdout)
    for hint in sorted(summary.hints):
        print(hint, file=sys.stderr)
    print(summary.line(), file=sys.stderr)
    return 0 if summary.valid == summary.records else 1
