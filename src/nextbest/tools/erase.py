"""``nextbest erase --type T --id ID``: erase a person, for operators (contract §11).

Sends ``customer.erased`` with ``subject`` ``ID`` and ``subjecttype`` ``T``
(``customer`` by default) to ``events.<channel>`` (the first configured channel
unless ``--channel``), keyed by the id, and waits for the broker's
acknowledgement. The worker then erases the whole profile the identifier is
in — every identifier of it, its context, its timers, its table entries and
its Redis keys — and drops that person's later events for
``NEXTBEST_ERASURE_SUPPRESS``.

Unless ``--wait 0``, it then watches Redis until the profile's context and
identity keys are gone and says how long that took (exit status 1 if they are
still there after ``--wait`` seconds). Nothing it prints repeats the identifier.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from nextbest.adapters.projection import context_key, identity_key
from nextbest.core.envelope import Rejected, parse
from nextbest.core.identity import CUSTOMER
from nextbest.settings import Settings
from nextbest.tools.clients import Unreachable
from nextbest.tools.send import _send, build

SOURCE = "/nextbest-cli/erase"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--type", dest="identity_type", default=CUSTOMER,
        help="the kind of identifier: customer (default), phone, email, loyalty, ...",
    )  # fmt: skip
    parser.add_argument("--id", dest="identifier", required=True, help="the identifier")
    parser.add_argument(
        "--channel", default=None, help="the events topic it goes to (default: the first channel)"
    )
    parser.add_argument(
        "--wait", type=float, default=10.0,
        help="seconds to wait until the profile has left Redis (0: do not wait)",
    )  # fmt: skip


async def _redis_keys(settings: Settings, kind: str, identifier: str) -> list[str]:
    """The Redis keys of the profile ``kind:identifier`` is in, as Redis knows them now."""
    from nextbest.adapters.clients import redis_client

    client = redis_client(settings)
    try:
        keys = []
        profile: str | None = identifier
        if kind != CUSTOMER:
            keys.append(identity_key(kind, identifier))
            found = await client.get(identity_key(kind, identifier))
            profile = None if found is None else (
                found.decode() if isinstance(found, bytes) else str(found)
            )  # fmt: skip
        if profile is not None:
            keys.append(context_key(profile))
        return keys
    finally:
        await client.aclose()


async def _gone(settings: Settings, keys: list[str], within: float) -> float | None:
    """Seconds until none of ``keys`` exists any more; None if still there after ``within``."""
    from nextbest.adapters.clients import redis_client

    client = redis_client(settings)
    started = time.monotonic()
    try:
        while time.monotonic() - started < within:
            if not await client.exists(*keys):
                return time.monotonic() - started
            await asyncio.sleep(0.02)
        return None
    finally:
        await client.aclose()


def run(args: argparse.Namespace, settings: Settings) -> int:
    channel = args.channel or settings.channels[0]
    if channel not in settings.channels:
        print(f"nextbest erase: unknown channel {channel!r}", file=sys.stderr)
        return 2
    kind = args.identity_type
    outgoing = build(
        channel, "customer.erased", args.identifier, {},
        subject_type=None if kind == CUSTOMER else kind, source=SOURCE,
    )  # fmt: skip
    try:
        parse(
            outgoing.value,
            outgoing.headers,
            channel,
            now=datetime.now(UTC),
            max_bytes=settings.max_event_bytes,
            subject_types=settings.identity_types,
        )
    except Rejected as rejection:
        print(f"nextbest erase: not sent: {rejection.message}", file=sys.stderr)
        return 1
    keys: list[str] = []
    if args.wait > 0:
        try:
            keys = asyncio.run(_redis_keys(settings, kind, args.identifier))
        except (RedisError, OSError) as error:
            print(f"nextbest erase: cannot read Redis ({type(error).__name__}); sending anyway",
                  file=sys.stderr)  # fmt: skip
    try:
        partition, offset = asyncio.run(_send(outgoing, settings))
    except Unreachable as error:
        print(f"nextbest erase: {error}", file=sys.stderr)
        return 1
    except KafkaError as error:
        print(f"nextbest erase: not sent to {outgoing.topic}: {type(error).__name__}",
              file=sys.stderr)  # fmt: skip
        return 1
    print(outgoing.event_id)
    print(f"erasure sent to {outgoing.topic}[{partition}]@{offset}", file=sys.stderr)
    if args.wait <= 0:
        return 0
    if not keys:
        print("no profile of it in Redis: nothing to wait for", file=sys.stderr)
        return 0
    took = asyncio.run(_gone(settings, keys, args.wait))
    if took is None:
        print(f"nextbest erase: the profile is still in Redis after {args.wait:g} s",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"the profile's Redis keys are gone after {took * 1000:.0f} ms", file=sys.stderr)
    return 0
