"""Deadlines survive ``kill -9`` and move with their partitions to another worker.

No other worker may consume meanwhile (it would fire the same deadlines), so
these tests have a module of their own.
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka import ConsumerRecord
from redis.asyncio import Redis

from nextbest.adapters.projection import context_key
from tests.integration.harness import (
    Channels,
    WorkerProcess,
    about,
    applied,
    eventually,
    read,
)

pytestmark = pytest.mark.timeout(300)
# a killed worker's partitions move once the group gives up on it
FAST_FAILOVER = {"NEXTBEST_KAFKA_SESSION_TIMEOUT": "6s"}


def new_customer() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


def action(record: ConsumerRecord[bytes, bytes]) -> tuple[bytes | None, str]:
    return record.key, str(orjson.loads(record.value)["data"]["action"])


async def test_deadlines_survive_kill_9_and_fire_exactly_once(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path, channels: Channels
) -> None:
    worker = WorkerProcess(
        kafka_bootstrap,
        redis_url,
        tmp_path,
        env={
            "NEXTBEST_CART_ABANDON_AFTER": "2s",
            "NEXTBEST_CHECKOUT_STALL_AFTER": "8s",
            **FAST_FAILOVER,
        },
    )
    worker.start()
    fired_before, pending = new_customer(), [new_customer() for _ in range(4)]
    try:
        for customer in (fired_before, *pending):
            await channels.send("web", "consent.updated", customer, {"mobile": True})
        # fires 2 s after its cart, before the kill
        cart = {"sku": "A", "qty": 1, "price": 1}
        await channels.send("web", "cart.item_added", fired_before, cart)
        await read(kafka_bootstrap, ["triggers.mobile"], about(fired_before), within=15)
        for customer in pending:  # pending at the kill: due 8 s after checkout starts
            await channels.send("web", "checkout.started", customer)
        for customer in pending:  # applied (consent, then checkout) before the kill
            await applied(redis_url, customer, 2)
        # the gauge is refreshed every second
        await eventually(
            lambda: worker.metric("nextbest_timers_pending") >= len(pending), within=10
        )
    finally:
        worker.stop(signal.SIGKILL)  # also when a step above failed: no stray worker

    worker.start(data_dir=worker.data_dir)
    try:
        customers = {c.encode() for c in (fired_before, *pending)}
        records = await read(
            kafka_bootstrap,
            ["triggers.mobile", "triggers.web"],
            lambda r: r.key in customers,
            count=1 + len(pending),
            within=30,
            settle=4.0,
        )
    finally:
        assert worker.stop() == 0, worker.tail()
    assert sorted(action(r) for r in records) == sorted(
        [(fired_before.encode(), "cart_reminder")]
        + [(c.encode(), "checkout_help") for c in pending]
    )
    assert len({orjson.loads(r.value)["id"] for r in records}) == len(records)


async def test_a_stopped_workers_deadlines_fire_on_the_other(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path, channels: Channels
) -> None:
    env = {"NEXTBEST_CHECKOUT_STALL_AFTER": "10s", **FAST_FAILOVER}
    first = WorkerProcess(kafka_bootstrap, redis_url, tmp_path / "a", env=env)
    first.workdir.mkdir()
    first.start()
    second = WorkerProcess(
        kafka_bootstrap, redis_url, tmp_path / "b", app_id=first.app_id, env=env, new_group=False
    )
    second.workdir.mkdir()
    try:
        second.start()
        # both in the group: the partitions are shared between them
        await eventually(lambda: _shared(first, second), within=30, every=0.5)
        customers = [new_customer() for _ in range(16)]
        for customer in customers:
            await channels.send("web", "checkout.started", customer)
        # all applied (mirrored) long before their deadlines, then one worker goes
        await eventually(lambda: _all_applied(redis_url, customers), within=10)
        assert first.stop() == 0, first.tail()
        wanted = {c.encode() for c in customers}
        records = await read(
            kafka_bootstrap,
            ["triggers.web"],
            lambda r: r.key in wanted,
            count=len(customers),
            within=40,
            settle=3.0,
        )
    finally:
        first.stop()
        assert second.stop() == 0, second.tail()
    assert sorted(action(r) for r in records) == sorted((c, "checkout_help") for c in wanted)


async def _all_applied(redis_url: str, customers: list[str]) -> bool:
    client: Redis = Redis.from_url(redis_url)
    try:
        found = await client.exists(*(context_key(c) for c in customers))
    finally:
        await client.aclose()
    return bool(found == len(customers))


def _shared(first: WorkerProcess, second: WorkerProcess) -> bool:
    owned = [w.metric("nextbest_partitions_assigned") for w in (first, second)]
    return min(owned) > 0 and sum(owned) == 8
