"""``nextbest context ID``: a customer's live context, as the worker mirrored it to Redis.

Reads ``nextbest:context:<id>`` (contract §6) and pretty-prints the document.
With ``--type T`` the id is an identifier of that kind (contract §10): the
profile is found through ``nextbest:identity:<type>:<id>`` first. Exit status 1
with one line when there is no such context, or Redis does not answer.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson
from redis.exceptions import RedisError

from nextbest.adapters.projection import KEY_PREFIX, identity_key
from nextbest.settings import Settings


class NotFound(Exception):
    """No context (or no identifier) under that id; ``str()`` says which."""


async def fetch(settings: Settings, customer: str, identity_type: str | None = None) -> bytes:
    """The context document's bytes; raises :class:`NotFound` or ``RedisError``."""
    from nextbest.adapters.clients import redis_client

    client = redis_client(settings)
    try:
        if identity_type not in (None, "customer"):  # a customer id is its profile's id
            profile = await client.get(identity_key(identity_type, customer))
            if profile is None:
                raise NotFound(f"no profile has the {identity_type} identifier {customer!r}")
            customer = profile.decode("utf-8", "replace") if isinstance(profile, bytes) else profile
        document = await client.get(KEY_PREFIX + customer)
    finally:
        await client.aclose()
    if document is None:
        raise NotFound(f"no context for {customer!r} in Redis (none, or expired)")
    return document if isinstance(document, bytes) else document.encode()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", help="the customer id (or, with --type, another identifier)")
    parser.add_argument(
        "--type", dest="identity_type", help="the kind of identifier ID is: phone, device, ..."
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        raw = asyncio.run(fetch(settings, args.id, args.identity_type))
    except NotFound as missing:
        print(f"nextbest context: {missing}", file=sys.stderr)
        return 1
    except (RedisError, OSError) as error:
        print(f"nextbest context: cannot read Redis ({type(error).__name__})", file=sys.stderr)
        return 1
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        print(f"nextbest context: {KEY_PREFIX}{args.id} is not JSON", file=sys.stderr)
        return 1
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
