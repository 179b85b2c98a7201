"""A restarted worker recovers every context from the changelog, and Redis outages heal."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.exceptions import RedisError

from nextbest.adapters.projection import RedisMirror, context_key
from nextbest.adapters.topics import partition_for
from nextbest.metrics import Metrics
from tests.integration.harness import (
    Channels,
    WorkerProcess,
    about,
    eventually,
    free_port,
    read,
)

pytestmark = pytest.mark.timeout(240)


async def versions(redis_url: str, customers: list[str]) -> dict[str, int]:
    client: Redis = Redis.from_url(redis_url, socket_connect_timeout=1)
    try:
        raws = await client.mget([context_key(c) for c in customers])
    finally:
        await client.aclose()
    return {c: orjson.loads(raw)["version"] for c, raw in zip(customers, raws, strict=True) if raw}


async def test_restarted_worker_recovers_context_from_the_changelog(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path, channels: Channels
) -> None:
    worker = WorkerProcess(kafka_bootstrap, redis_url, tmp_path)
    customer = f"c-{uuid.uuid4().hex[:12]}"
    worker.start()
    try:
        added = await channels.send(
            "web", "cart.item_added", customer, {"sku": "A1", "qty": 2, "price": 19.5}
        )
        await channels.send("web", "product.viewed", customer, {"sku": "B2"})
        await eventually(lambda: _at(redis_url, customer, 2), within=15)
    finally:
        assert worker.stop() == 0, worker.tail()
    # a new machine: no local RocksDB, only the changelog in Kafka
    shutil.rmtree(worker.data_dir or tmp_path / "missing", ignore_errors=True)
    worker.start(data_dir=tmp_path / "fresh")
    try:
        again = {"sku": "A1", "qty": 1, "price": 19.5}
        await channels.send("web", "cart.item_added", customer, again, id_=added)
        await channels.send("mobile", "session.started", customer)
        records = await read(kafka_bootstrap, ["triggers.mobile"], about(customer), settle=1.0)
    finally:
        assert worker.stop() == 0, worker.tail()
    [trigger] = [orjson.loads(r.value) for r in records]
    context = trigger["data"]["context"]
    assert trigger["data"]["action"] == "resume_cart"
    assert context["version"] == 3  # the repeated cart event changed nothing
    assert context["cart"]["items"] == [{"sku": "A1", "qty": 2, "price": 19.5}]
    assert context["recent_products"] == ["B2"]


FAULTS = Path(__file__).parent / "faults"


async def test_a_restore_that_receives_nothing_is_read_again(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path, channels: Channels
) -> None:
    """The stall seen after a rebalance, injected: the restore of one partition loses
    every record once. The worker notices, reads the partition again, and recovers."""
    worker = WorkerProcess(kafka_bootstrap, redis_url, tmp_path)
    customer = f"c-{uuid.uuid4().hex[:12]}"
    worker.start()
    try:
        await channels.send("web", "cart.item_added", customer, {"sku": "A1", "qty": 1, "price": 5})
        await eventually(lambda: _at(redis_url, customer, 1), within=15)
    finally:
        assert worker.stop() == 0, worker.tail()
    lost = partition_for(customer.encode(), 8)
    worker.env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(FAULTS), os.environ.get("PYTHONPATH")])),
        "NEXTBEST_FAULT_LOSE_CHANGELOG": str(lost),
    }
    worker.start(data_dir=tmp_path / "fresh", ready_within=60)
    try:
        await channels.send("mobile", "session.started", customer)
        records = await read(kafka_bootstrap, ["triggers.mobile"], about(customer), settle=1.0)
    finally:
        assert worker.stop() == 0, worker.tail()
    log = worker.log_path.read_text(errors="replace")
    # read again at once (adapters/consumer.py), or by the stall watch 10 s later
    assert (
        f"contexts-changelog[{lost}]: records had been read past without reaching the table restore"
        in log
        or f"contexts-changelog[{lost}] made no progress" in log
    )
    [trigger] = [orjson.loads(r.value) for r in records]
    assert trigger["data"]["action"] == "resume_cart"  # the cart came back from the changelog
    assert trigger["data"]["context"]["version"] == 2


async def _at(redis_url: str, customer: str, version: int) -> bool:
    return (await versions(redis_url, [customer])).get(customer) == version


class RedisServer:
    """A redis-server of this test's own, so the test may stop and restart it."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not on PATH: run `nextbest dev up` or install redis")
        self.binary = binary
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.workdir), "--appendonly", "yes", "--save", ""],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done = subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, check=False
            )
            if done.stdout.strip() == b"PONG":
                return
            time.sleep(0.1)
        pytest.fail(f"redis-server on port {self.port} did not answer PING")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


async def test_redis_outage_keeps_triggers_flowing_and_heals(
    kafka_bootstrap: str, tmp_path: Path, channels: Channels, own_redis: RedisServer
) -> None:
    worker = WorkerProcess(kafka_bootstrap, own_redis.url, tmp_path)
    customers = [f"c-{uuid.uuid4().hex[:12]}" for _ in range(5)]
    worker.start()
    try:
        for customer in customers:
            await channels.send("web", "session.started", customer)
        await eventually(lambda: _all_at(own_redis.url, customers, 1), within=15)

        own_redis.stop()
        for customer in customers:  # triggers must not wait on Redis
            await channels.send("mobile", "payment.failed", customer)
        records = await read(
            kafka_bootstrap,
            ["triggers.mobile"],
            lambda r: r.key is not None and r.key.decode() in customers,
            count=len(customers),
        )
        assert {r.key.decode() for r in records if r.key} == set(customers)
        await eventually(lambda: worker.metric("nextbest_redis_errors_total") > 0, within=10)

        own_redis.start()
        await eventually(lambda: _all_at(own_redis.url, customers, 2), within=20)
        final = await versions(own_redis.url, customers)
    finally:
        assert worker.stop() == 0, worker.tail()
    assert final == dict.fromkeys(customers, 2)


async def _all_at(redis_url: str, customers: list[str], version: int) -> bool:
    try:
        return await versions(redis_url, customers) == dict.fromkeys(customers, version)
    except (OSError, RedisError):
        return False


async def test_mirror_never_replaces_a_newer_version(redis_url: str) -> None:
    client: Redis = Redis.from_url(redis_url)
    customer = f"c-{uuid.uuid4().hex[:12]}"
    mirror = RedisMirror(client, Metrics(CollectorRegistry()), ttl=timedelta(seconds=60))
    task = asyncio.create_task(mirror.run())
    try:
        for version in (5, 3, 5, 4):
            mirror.submit(customer, version, orjson.dumps({"version": version, "n": version}))
            assert await mirror.drained(within=5)
        stored = orjson.loads(await client.get(context_key(customer)))
        ttl = await client.pttl(context_key(customer))
    finally:
        task.cancel()
        await client.delete(context_key(customer))
        await client.aclose()
    assert stored == {"version": 5, "n": 5}
    assert 0 < ttl <= 60_000


async def test_mirror_reloads_its_script_after_redis_forgets_it(redis_url: str) -> None:
    """A restarted Redis has an empty script cache: the write is retried, not lost."""
    client: Redis = Redis.from_url(redis_url)
    customer = f"c-{uuid.uuid4().hex[:12]}"
    mirror = RedisMirror(client, Metrics(CollectorRegistry()), ttl=timedelta(seconds=60))
    task = asyncio.create_task(mirror.run())
    try:
        mirror.submit(customer, 1, orjson.dumps({"version": 1}))
        assert await mirror.drained(within=5)
        await client.script_flush()
        mirror.submit(customer, 2, orjson.dumps({"version": 2}))
        assert await mirror.drained(within=5)
        stored = orjson.loads(await client.get(context_key(customer)))
    finally:
        task.cancel()
        await client.delete(context_key(customer))
        await client.aclose()
    assert stored == {"version": 2}
