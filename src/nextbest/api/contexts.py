"""Where the API reads live contexts: the Redis mirror, or memory (for tests).

Both implement :class:`ContextSource`; one contract suite runs over both.
``watch`` yields each new document as it is written: the Redis mirror
publishes every document it stores on ``nextbest:updates:<customer id>``, and
one subscriber connection per API process fans the messages out to every
stream watching that customer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from nextbest.adapters.projection import context_key, identity_key, updates_channel

log = logging.getLogger(__name__)


class ContextSource(Protocol):
    async def get(self, customer_id: str) -> bytes | None:
        """The customer's current document, or None if unknown."""

    async def resolve(self, kind: str, identifier: str) -> str | None:
        """The profile id of the identifier ``kind:identifier`` (§10), or None."""

    def watch(
        self, customer_id: str
    ) -> contextlib.AbstractAsyncContextManager[asyncio.Queue[bytes]]:
        """While entered, every new document of the customer is put on the queue."""

    async def ready(self) -> bool:
        """Can documents be read now?"""

    @property
    def watchers(self) -> int:
        """How many watches are open."""


class _Fanout:
    """Queues per customer; shared by both sources."""

    def __init__(self, queue_size: int = 16) -> None:
        self._queues: dict[str, set[asyncio.Queue[bytes]]] = defaultdict(set)
        self._queue_size = queue_size

    @property
    def watchers(self) -> int:
        return sum(len(queues) for queues in self._queues.values())

    def add(self, customer_id: str) -> tuple[asyncio.Queue[bytes], bool]:
        """A new queue for ``customer_id``; True when it is the customer's first."""
        queue: asyncio.Queue[bytes] = asyncio.Queue(self._queue_size)
        first = not self._queues[customer_id]
        self._queues[customer_id].add(queue)
        return queue, first

    def remove(self, customer_id: str, queue: asyncio.Queue[bytes]) -> bool:
        """Forget ``queue``; True when the customer has no watcher left."""
        queues = self._queues.get(customer_id)
        if queues is None:
            return False
        queues.discard(queue)
        if queues:
            return False
        del self._queues[customer_id]
        return True

    def publish(self, customer_id: str, document: bytes) -> None:
        for queue in self._queues.get(customer_id, ()):
            if queue.full():  # a slow reader only needs the newest document
                queue.get_nowait()
            queue.put_nowait(document)


class MemoryContexts:
    """Contexts in a dict: for tests, and to run the API without Redis."""

    def __init__(self) -> None:
        self._documents: dict[str, bytes] = {}
        self._identities: dict[tuple[str, str], str] = {}
        self._fanout = _Fanout()

    def put(self, customer_id: str, document: bytes) -> None:
        self._documents[customer_id] = document
        self._fanout.publish(customer_id, document)

    def link(self, kind: str, identifier: str, profile_id: str) -> None:
        self._identities[(kind, identifier)] = profile_id

    def delete(self, customer_id: str) -> None:
        self._documents.pop(customer_id, None)
        self._fanout.publish(customer_id, b"")

    async def get(self, customer_id: str) -> bytes | None:
        return self._documents.get(customer_id)

    async def resolve(self, kind: str, identifier: str) -> str | None:
        return self._identities.get((kind, identifier))

    @contextlib.asynccontextmanager
    async def watch(self, customer_id: str) -> AsyncIterator[asyncio.Queue[bytes]]:
        queue, _ = self._fanout.add(customer_id)
        try:
            yield queue
        finally:
            self._fanout.remove(customer_id, queue)

    async def ready(self) -> bool:
        return True

    @property
    def watchers(self) -> int:
        return self._fanout.watchers


class RedisContexts:
    """The Redis mirror: GET for reads, one pub/sub connection for every watch."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._fanout = _Fanout()
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def get(self, customer_id: str) -> bytes | None:
        document = await self._client.get(context_key(customer_id))
        return document.encode() if isinstance(document, str) else document

    async def resolve(self, kind: str, identifier: str) -> str | None:
        found = await self._client.get(identity_key(kind, identifier))
        if found is None:
            return None
        return found.decode() if isinstance(found, bytes) else str(found)

    @contextlib.asynccontextmanager
    async def watch(self, customer_id: str) -> AsyncIterator[asyncio.Queue[bytes]]:
        queue, first = self._fanout.add(customer_id)
        try:
            if first:
                await self._pubsub_connection().subscribe(updates_channel(customer_id))
                self._subscribed.set()
            yield queue
        finally:
            if self._fanout.remove(customer_id, queue) and self._pubsub is not None:
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.unsubscribe(updates_channel(customer_id))

    async def ready(self) -> bool:
        try:
            return bool(await self._client.ping())
        except (RedisError, OSError):
            return False

    @property
    def watchers(self) -> int:
        return self._fanout.watchers

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    def _pubsub_connection(self) -> PubSub:
        if self._pubsub is None:
            self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            self._reader = asyncio.create_task(self._read(self._pubsub))
        return self._pubsub

    async def _read(self, pubsub: PubSub) -> None:
        prefix = len(updates_channel(""))
        while True:
            await self._subscribed.wait()  # get_message needs a subscription first
            try:
                message = await pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as error:
                log.warning(
                    "Redis updates subscription failed (%s); retrying", type(error).__name__
                )
                await asyncio.sleep(0.5)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            customer_id = (channel.decode() if isinstance(channel, bytes) else channel)[prefix:]
            self._fanout.publish(customer_id, message["data"])
