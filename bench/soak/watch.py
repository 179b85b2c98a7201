"""What the soak watches while it runs: Redis versions, consumer lag, worker memory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from bench.soak.fleet import Worker, rss_bytes
from nextbest.adapters.projection import KEY_PREFIX, UPDATES_PREFIX

log = logging.getLogger(__name__)


@dataclass
class RedisWatch:
    """Every document Redis publishes: a customer's version must never go back."""

    url: str
    newest: dict[str, int] = field(default_factory=dict)
    regressions: list[tuple[str, int, int]] = field(default_factory=list)
    updates: int = 0
    log: list[tuple[float, str, int]] = field(default_factory=list)  # when, who, version

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            client: Redis = Redis.from_url(self.url, socket_connect_timeout=1)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.psubscribe(f"{UPDATES_PREFIX}*")
                    while not stop.is_set():
                        message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                           timeout=0.5)  # fmt: skip
                        if message is not None:
                            self._seen(message["channel"], message["data"])
            except Exception as error:  # Redis is down: listen again once it is back
                log.debug("redis watch: %s", error)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()

    def _seen(self, channel: bytes, data: bytes) -> None:
        customer = channel.decode().removeprefix(UPDATES_PREFIX)
        if not customer:  # a worker's start-up check of its Redis rights (adapters/access.py)
            return
        version = int(orjson.loads(data)["version"])
        self.log.append((time.time(), customer, version))
        self.updates += 1
        before = self.newest.get(customer, 0)
        if version < before:
            self.regressions.append((customer, before, version))
        else:
            self.newest[customer] = version


async def versions(url: str, customers: Iterable[str]) -> dict[str, int]:
    """Each customer's version in Redis now (absent customers left out)."""
    client: Redis = Redis.from_url(url, socket_connect_timeout=2)
    found: dict[str, int] = {}
    names = list(customers)
    try:
        for start in range(0, len(names), 500):
            chunk = names[start : start + 500]
            for customer, raw in zip(chunk, await client.mget([KEY_PREFIX + c for c in chunk]),
                                     strict=True):  # fmt: skip
                if raw is not None:
                    found[customer] = int(orjson.loads(raw)["version"])
    finally:
        await client.aclose()
    return found


async def current_within(url: str, wanted: Mapping[str, int], within: float) -> float | None:
    """Seconds until every customer's Redis version reaches ``wanted``; None if it never did."""
    start = time.monotonic()
    waiting = dict(wanted)
    while time.monotonic() - start < within:
        with contextlib.suppress(Exception):
            now = await versions(url, waiting)
            waiting = {c: v for c, v in waiting.items() if now.get(c, 0) < v}
            if not waiting:
                return time.monotonic() - start
        await asyncio.sleep(0.5)
    return None


async def lag(bootstrap: str, group: str, topics: Iterable[str]) -> int | None:
    """Records the group has yet to commit on ``topics`` (None when the broker cannot say)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
    try:
        await admin.start()
        await consumer.start()
        committed = await admin.list_consumer_group_offsets(group)
        wanted = set(topics)
        partitions = [
            TopicPartition(t, p)
            for t in wanted
            for p in (consumer.partitions_for_topic(t) or await _partitions(consumer, t))
        ]
        ends = await consumer.end_offsets(partitions)
        total = 0
        for tp, end in ends.items():
            done = committed.get(tp)
            total += max(0, end - (done.offset if done is not None and done.offset >= 0 else 0))
        return total
    except Exception as error:
        log.debug("lag: %s", error)
        return None
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
        with contextlib.suppress(Exception):
            await admin.close()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or set()


@dataclass
class MemoryWatch:
    """Every few seconds, each live worker's RSS: (worker, incarnation, time.time(), bytes)."""

    workers: Callable[[], list[Worker]]
    every: float = 5.0
    samples: list[tuple[str, int, float, int]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for worker in self.workers():
                pid = worker.pid
                rss = rss_bytes(pid) if pid is not None and worker.alive() else None
                if rss is not None:
                    self.samples.append((worker.name, worker.incarnation, time.time(), rss))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every)

    def growth(self, warmup: float, least: float) -> list[tuple[str, float, int, int]]:
        """Per incarnation that lived ``least`` s after ``warmup`` s: (name, growth, from, to)."""
        lives: dict[tuple[str, int], list[tuple[float, int]]] = {}
        for name, incarnation, at, rss in self.samples:
            lives.setdefault((name, incarnation), []).append((at, rss))
        found = []
        for (name, _), samples in lives.items():
            born = samples[0][0]
            settled = [(at, rss) for at, rss in samples if at - born >= warmup]
            if len(settled) < 2 or settled[-1][0] - settled[0][0] < least:
                continue
            first, last = settled[0][1], settled[-1][1]
            found.append((name, (last - first) / first, first, last))
        return found
