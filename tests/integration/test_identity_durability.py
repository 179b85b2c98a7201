"""Identity operations survive kill -9 and rebalances; erasure leaves nothing behind.

Each test runs workers of its own (no other worker consumes meanwhile, as in
test_timer_failover.py). The proof style is the timers': kill the worker while
merges are in flight, start it again (or let another take its partitions), and
check that every merge completed once, nothing was lost and no trigger was sent
twice under different ids. Erasure is checked where the data lives: RocksDB
(read the store once the worker stopped), the changelog (read it to the end,
then again once the broker compacted it) and Redis (SCAN).
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import rocksdict
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from redis.asyncio import Redis

from nextbest.adapters.topics import partition_for
from tests.integration.harness import Channels, WorkerProcess, eventually, nextbest, read
from tests.integration.test_identity import CART, document, login, until_members

pytestmark = pytest.mark.timeout(300)
FAST_FAILOVER = {"NEXTBEST_KAFKA_SESSION_TIMEOUT": "6s"}


def new(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def browsed(channels: Channels, redis_url: str, count: int) -> list[tuple[str, str]]:
    """``count`` people, each an anonymous web session with a cart, applied."""
    people = [(new("c"), new("ck")) for _ in range(count)]
    for _, cookie in people:
        await channels.send("web", "cart.item_added", cookie, CART, subjecttype="anonymous")
    for _, cookie in people:
        await until_members(redis_url, f"anonymous:{cookie}", f"anonymous:{cookie}")
    return people


async def all_merged(redis_url: str, people: list[tuple[str, str]], within: float) -> None:
    for customer, cookie in people:
        merged = await until_members(redis_url, customer, f"customer:{customer}",
                                     f"anonymous:{cookie}", within=within)  # fmt: skip
        assert merged["cart"]["items"] == [CART]
        assert await document(redis_url, f"anonymous:{cookie}") is None


def resume_carts(records: list[ConsumerRecord[bytes, bytes]]) -> dict[bytes, set[str]]:
    """Trigger ids of resume_cart, per customer (a repeat has the same id)."""
    found: dict[bytes, set[str]] = {}
    for record in records:
        event = orjson.loads(record.value)
        assert event["data"]["action"] == "resume_cart"
        found.setdefault(record.key or b"", set()).add(event["id"])
    return found


async def test_merges_in_flight_survive_kill_9(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path, channels: Channels
) -> None:
    worker = WorkerProcess(kafka_bootstrap, redis_url, tmp_path, env=FAST_FAILOVER)
    worker.start()
    try:
        people = await browsed(channels, redis_url, 10)
        for customer, cookie in people:
            await channels.send("mobile", "identity.linked", customer,
                                login(("anonymous", cookie)))  # fmt: skip
        await asyncio.sleep(0.05)  # the links reach the worker; the merges are under way
    finally:
        worker.stop(signal.SIGKILL)
    worker.start(data_dir=worker.data_dir)
    try:
        await all_merged(redis_url, people, within=60)
        # the directory survived too: a cookie's next event is its customer's
        customer, cookie = people[0]
        before = await document(redis_url, customer)
        assert before is not None
        await channels.send("web", "page.viewed", cookie, {"page_type": "home"},
                            subjecttype="anonymous")  # fmt: skip
        await eventually(lambda: _version_above(redis_url, customer, before["version"]))
        wanted = {c.encode() for c, _ in people}
        records = await read(kafka_bootstrap, ["triggers.mobile"], lambda r: r.key in wanted,
                             count=len(people), within=30, settle=3.0)  # fmt: skip
    finally:
        assert worker.stop() == 0, worker.tail()
    ids = resume_carts(records)
    assert sorted(ids) == sorted(wanted)
    assert all(len(found) == 1 for found in ids.values()), ids  # repeats keep their id


async def _version_above(redis_url: str, profile: str, version: int) -> bool:
    found = await document(redis_url, profile)
    return found is not None and found["version"] > version


async def test_merges_complete_when_a_worker_is_lost_and_its_partitions_move(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path, channels: Channels
) -> None:
    first = WorkerProcess(kafka_bootstrap, redis_url, tmp_path / "a", env=FAST_FAILOVER)
    first.workdir.mkdir()
    first.start()
    second = WorkerProcess(kafka_bootstrap, redis_url, tmp_path / "b", app_id=first.app_id,
                           env=FAST_FAILOVER, new_group=False)  # fmt: skip
    second.workdir.mkdir()
    try:
        second.start()
        await eventually(lambda: _shared(first, second), within=40, every=0.5)
        people = await browsed(channels, redis_url, 12)
        for customer, cookie in people:
            await channels.send("mobile", "identity.linked", customer,
                                login(("anonymous", cookie)))  # fmt: skip
        await asyncio.sleep(0.05)
        first.stop(signal.SIGKILL)  # mid-merge; its partitions (maybe the coordinator's) move
        await all_merged(redis_url, people, within=90)
    finally:
        first.stop(signal.SIGKILL)
        assert second.stop() == 0, second.tail()


def _shared(first: WorkerProcess, second: WorkerProcess) -> bool:
    owned = [w.metric("nextbest_partitions_assigned") for w in (first, second)]
    return min(owned) > 0 and sum(owned) == 8


async def _changelog(bootstrap: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic``, from its beginning to its end now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")  # fmt: skip
    await consumer.start()
    try:
        partitions = await _partitions(consumer, topic)
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        found: list[ConsumerRecord[bytes, bytes]] = []
        while [p for p in partitions if await consumer.position(p) < ends[p]]:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                found.extend(records)
        return found
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[Any]:
    from aiokafka import TopicPartition

    await consumer._client.force_metadata_update()
    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]


async def _traffic(channels: Channels) -> None:
    """An event a second for someone on each of the 8 partitions, until cancelled."""
    people: dict[int, str] = {}
    while len(people) < 8:
        someone = new("c")
        people.setdefault(partition_for(someone.encode(), 8), someone)
    while True:
        for someone in people.values():
            await channels.send("web", "page.viewed", someone, {"page_type": "home"})
        await asyncio.sleep(1)


def _mentions(record: ConsumerRecord[bytes, bytes], secrets: list[bytes]) -> bool:
    return any(s in (record.key or b"") or s in (record.value or b"") for s in secrets)


async def test_erasure_leaves_nothing_in_rocksdb_the_changelog_or_redis(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path, channels: Channels
) -> None:
    # the broker may compact erased data away seconds after it was written over
    env = {"NEXTBEST_CHANGELOG_COMPACTION_LAG": "1s",
           "NEXTBEST_CHANGELOG_TOMBSTONE_RETENTION": "1s"}  # fmt: skip
    worker = WorkerProcess(kafka_bootstrap, redis_url, tmp_path, env=env)
    worker.start()
    customer, phone, cookie, card = new("c"), new("h"), new("ck"), new("L")
    secrets = [x.encode() for x in (customer, phone, cookie, card)]
    bystander = new("c")
    try:
        await channels.send("web", "cart.item_added", cookie, CART, subjecttype="anonymous")
        await channels.send("mobile", "checkout.started", customer)  # a deadline pending
        await channels.send(
            "store",
            "identity.linked",
            customer,
            login(("phone", phone), ("anonymous", cookie), ("loyalty", card)),
        )
        await channels.send("contact-center", "call.started", phone, subjecttype="phone")
        await channels.send("web", "session.started", bystander)
        await until_members(redis_url, customer, f"customer:{customer}", f"phone:{phone}",
                            f"anonymous:{cookie}", f"loyalty:{card}")  # fmt: skip
        changelog = f"{worker.app_id}-contexts-changelog"
        assert any(_mentions(r, secrets) for r in await _changelog(kafka_bootstrap, changelog))
        erased = nextbest("erase", "--type", "loyalty", "--id", card, bootstrap=kafka_bootstrap,
                          redis_url=redis_url)  # fmt: skip
        assert erased.returncode == 0, erased.stderr
        # Redis: nothing of theirs
        client: Redis = Redis.from_url(redis_url)
        try:
            left = [key async for key in client.scan_iter(match="nextbest:*")
                    if any(s in key for s in secrets)]  # fmt: skip
            values = [await client.get(k) async for k in client.scan_iter(match="nextbest:*")]
        finally:
            await client.aclose()
        assert left == []
        assert not [v for v in values if v is not None and any(s in v for s in secrets)]
        # the changelog, read to its end: every key that held them ends in a tombstone
        # within the 5 s of §11 (the record of a Redis delete, ``\x00r:<key>``, is
        # forgotten in the partition's next write after Redis has done it)
        named: set[tuple[int, bytes]] = set()

        async def tombstoned() -> bool:
            records = await _changelog(kafka_bootstrap, changelog)
            last: dict[tuple[int, bytes], bytes | None] = {}
            for record in records:
                last[(record.partition, record.key or b"")] = record.value
            holding = {k for k, v in last.items()
                       if v is not None and any(s in v for s in secrets)}  # fmt: skip
            assert holding == set()  # no value of theirs, ever, once erase returned
            named.update(k for k in last if any(s in k[1] for s in secrets))
            return all(last[k] is None for k in named)

        await eventually(tombstoned, within=5, every=0.5)
        assert named  # (keys that named them were there, and are tombstones now)
        # once the broker has compacted (segment.ms and max.compaction.lag.ms = 1 s, its
        # cleaner looking every 15 s), not even the old records or the tombstones remain.
        # Kafka rolls a segment only when a record comes after segment.ms, and the worker
        # writes a quiet partition's changelog only every 1,000 ticks (~4 min): other
        # people's events on every partition, as a live system has, keep them rolling.

        async def compacted() -> bool:
            return not any(_mentions(r, secrets) for r in await _changelog(kafka_bootstrap,
                                                                          changelog))  # fmt: skip

        traffic = asyncio.create_task(_traffic(channels))
        try:
            await eventually(compacted, within=180, every=5)
        finally:
            traffic.cancel()
        await channels.send("mobile", "session.started", bystander)
        await eventually(lambda: _version_above(redis_url, bystander, 1))
    finally:
        assert worker.stop() == 0, worker.tail()
    # RocksDB, read from the store the worker wrote: hashes of them at most
    stores = sorted((worker.data_dir or tmp_path).rglob("contexts-*.db"))
    assert len(stores) == 8
    found = 0
    for store in stores:
        db = rocksdict.Rdict(str(store), options=rocksdict.Options(raw_mode=True),
                             access_type=rocksdict.AccessType.read_only())  # fmt: skip
        try:
            for key, value in db.items():
                found += 1
                assert not any(s in key or s in value for s in secrets), key
        finally:
            db.close()
    assert found > 0  # the stores were read (the bystander is there)
