"""The services themselves: a real broker with consumer groups, a real Redis."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from redis.asyncio import Redis


async def test_produce_and_consume_with_a_consumer_group(
    kafka_bootstrap: str, unique_name: str
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(unique_name, 3, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for index in range(30):
            await producer.send_and_wait(
                unique_name, f"v{index}".encode(), key=f"k{index}".encode()
            )
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        unique_name,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"{unique_name}-group",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: list[bytes] = []
    try:
        async with asyncio.timeout(30):
            while len(seen) < 30:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    seen.extend(r.value for r in records)
        await consumer.commit()
        assert len(consumer.assignment()) == 3
        committed = [await consumer.committed(tp) for tp in consumer.assignment()]
    finally:
        await consumer.stop()
    assert sorted(seen) == sorted(f"v{i}".encode() for i in range(30))
    assert sum(c or 0 for c in committed) == 30


async def test_redis_write_read_and_ttl(redis_url: str, unique_name: str) -> None:
    client: Redis = Redis.from_url(redis_url)
    try:
        await client.set(unique_name, b'{"version": 1}', px=60_000)
        assert await client.get(unique_name) == b'{"version": 1}'
        assert 0 < await client.pttl(unique_name) <= 60_000
        await client.delete(unique_name)
        assert await client.get(unique_name) is None
    finally:
        await client.aclose()
