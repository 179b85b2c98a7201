"""``nextbest send CHANNEL TYPE --customer ID``: one well-formed event from the shell.

Builds a CloudEvent (a fresh id, ``time`` now, ``source`` ``/nextbest-cli``), checks
it with the worker's parser, sends it to ``events.<CHANNEL>`` keyed by the
customer id (structured content mode, or ``--binary``), waits for the broker's
acknowledgement and prints the event id. An event the worker would reject is not
sent: the tool says why and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka.errors import KafkaError

from nextbest.adapters.topics import event_topic
from nextbest.core.envelope import Rejected, parse
from nextbest.settings import Settings
from nextbest.tools.clients import Unreachable, start_producer

SOURCE = "/nextbest-cli"


@dataclass(frozen=True)
class Outgoing:
    """A record ready to send."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    event_id: str


def build(
    channel: str,
    type_: str,
    customer: str,
    data: Any,
    *,
    subject_type: str | None = None,
    event_id: str | None = None,
    source: str = SOURCE,
    time: datetime | None = None,
    binary: bool = False,
) -> Outgoing:
    """The record of one event, in structured or binary content mode."""
    moment = time or datetime.now(UTC)
    attributes: dict[str, str] = {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": type_,
        "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "subject": customer,
    }
    if subject_type is not None:
        attributes["subjecttype"] = subject_type
    if binary:
        headers = [(f"ce_{name}", value.encode()) for name, value in attributes.items()]
        headers.append(("content-type", b"application/json"))
        value = orjson.dumps(data)
    else:
        headers = [("content-type", b"application/cloudevents+json")]
        value = orjson.dumps({**attributes, "data": data})
    return Outgoing(event_topic(channel), customer.encode(), value, headers, attributes["id"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("channel", help="the channel: the event goes to events.<channel>")
    parser.add_argument("type", help="the event type, e.g. cart.item_added")
    parser.add_argument("--customer", required=True, help="the customer id: subject and key")
    parser.add_argument("--data", default="{}", help="the data object as JSON (default {})")
    parser.add_argument(
        "--subject-type", help="what kind of identifier the customer id is (v0.2: subjecttype)"
    )
    parser.add_argument("--id", dest="event_id", help="the event id (default: a new UUID)")
    parser.add_argument("--source", default=SOURCE, help=f"the source (default {SOURCE})")
    parser.add_argument(
        "--binary", action="store_true", help="binary content mode: attributes in ce_* headers"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.channel not in settings.channels:
        print(
            f"nextbest send: unknown channel {args.channel!r} "
            f"(NEXTBEST_CHANNELS: {', '.join(settings.channels)})",
            file=sys.stderr,
        )
        return 2
    try:
        data = orjson.loads(args.data)
    except orjson.JSONDecodeError as error:
        print(f"nextbest send: --data is not JSON: {error}", file=sys.stderr)
        return 2
    outgoing = build(
        args.channel,
        args.type,
        args.customer,
        data,
        subject_type=args.subject_type,
        event_id=args.event_id,
        source=args.source,
        binary=args.binary,
    )
    try:
        parse(
            outgoing.value,
            outgoing.headers,
            args.channel,
            now=datetime.now(UTC),
            max_bytes=settings.max_event_bytes,
        )
    except Rejected as rejection:
        print(
            f"nextbest send: not sent, the worker would reject it: "
            f"{rejection.reason.value}: {rejection.message}",
            file=sys.stderr,
        )
        return 1
    try:
        partition, offset = asyncio.run(_send(outgoing, settings))
    except Unreachable as error:
        print(f"nextbest send: {error}", file=sys.stderr)
        return 1
    except KafkaError as error:
        print(
            f"nextbest send: not sent to {outgoing.topic}: {type(error).__name__}", file=sys.stderr
        )
        return 1
    print(outgoing.event_id)
    print(f"sent {args.type} to {outgoing.topic}[{partition}]@{offset}", file=sys.stderr)
    return 0


async def _send(outgoing: Outgoing, settings: Settings) -> tuple[int, int]:
    producer = await start_producer(settings, acks="all")
    try:
        metadata = await producer.send_and_wait(
            outgoing.topic, outgoing.value, key=outgoing.key, headers=outgoing.headers
        )
    finally:
        await producer.stop()
    return int(metadata.partition), int(metadata.offset)
