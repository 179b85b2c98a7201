"""The API process on the real Redis mirror, fed by a real worker on the real broker."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from nextbest import schemas
from nextbest.adapters.projection import RedisMirror, updates_channel
from nextbest.api.contexts import ContextSource, MemoryContexts, RedisContexts
from nextbest.metrics import Metrics
from tests.integration.harness import Channels, WorkerProcess, eventually

pytestmark = pytest.mark.timeout(180)
TOKEN = "it-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def document(customer: str, version: int) -> bytes:
    """A context document of the shape the worker writes (context.json's example)."""
    example = schemas.load("context.json")["examples"][0]
    return orjson.dumps({**example, "customer_id": customer, "version": version})


# --- one contract suite over both sources -----------------------------------------

Writer = Callable[[str, int], Awaitable[None]]


@pytest.fixture(params=["memory", "redis"])
async def source(
    request: pytest.FixtureRequest, redis_url: str
) -> AsyncIterator[tuple[ContextSource, Writer]]:
    if request.param == "memory":
        memory = MemoryContexts()

        async def put(customer: str, version: int) -> None:
            memory.put(customer, document(customer, version))

        yield memory, put
        return
    client: Redis = Redis.from_url(redis_url)
    mirror = RedisMirror(client, Metrics(CollectorRegistry()), ttl=timedelta(minutes=5))
    writing = asyncio.create_task(mirror.run())
    contexts = RedisContexts(client)

    async def write(customer: str, version: int) -> None:
        mirror.submit(customer, version, document(customer, version))
        assert await mirror.drained(within=5)

    try:
        yield contexts, write
    finally:
        writing.cancel()
        await contexts.close()
        await client.aclose()


async def test_source_reads_what_was_written(source: tuple[ContextSource, Writer]) -> None:
    contexts, write = source
    customer = f"c-{uuid.uuid4().hex[:12]}"
    assert await contexts.get(customer) is None
    await write(customer, 1)
    assert await contexts.get(customer) == document(customer, 1)
    assert await contexts.ready()


async def test_source_watch_sees_each_new_document(source: tuple[ContextSource, Writer]) -> None:
    contexts, write = source
    customer, other = f"c-{uuid.uuid4().hex[:12]}", f"c-{uuid.uuid4().hex[:12]}"
    async with contexts.watch(customer) as updates:
        assert contexts.watchers == 1
        await write(other, 1)
        await write(customer, 1)
        await write(customer, 2)
        async with asyncio.timeout(5):
            assert await updates.get() == document(customer, 1)
            assert await updates.get() == document(customer, 2)
        assert updates.empty()
    assert contexts.watchers == 0


# --- the API process --------------------------------------------------------------


@pytest.fixture(scope="module")
def api(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    process = WorkerProcess(
        kafka_bootstrap,
        redis_url,
        tmp_path_factory.mktemp("api"),
        command="api",
        env={"NEXTBEST_API_TOKENS": f"other,{TOKEN}", "NEXTBEST_API_KEEPALIVE": "1s"},
    )
    process.start(ready_within=30)
    yield process
    assert process.stop() == 0, process.tail()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def test_get_after_an_event(
    worker: WorkerProcess, api: WorkerProcess, kafka_bootstrap: str, http: aiohttp.ClientSession
) -> None:
    customer = f"c-{uuid.uuid4().hex[:12]}"
    async with Channels(kafka_bootstrap) as channels:
        await channels.send("web", "cart.item_added", customer, {"sku": "Z9", "qty": 2, "price": 4})

    async def fetched() -> dict[str, object] | None:
        async with http.get(api.url(f"/v1/customers/{customer}/context"), headers=AUTH) as answer:
            return await answer.json() if answer.status == 200 else None

    found = await eventually(fetched, within=10)
    assert found["customer_id"] == customer
    assert found["cart"] == {"items": [{"sku": "Z9", "qty": 2, "price": 4.0}], "value": 8.0}


async def test_unknown_customer_is_404(api: WorkerProcess, http: aiohttp.ClientSession) -> None:
    async with http.get(api.url("/v1/customers/nobody-at-all/context"), headers=AUTH) as answer:
        assert answer.status == 404
        assert (await answer.json())["error"] == "not_found"


@pytest.mark.parametrize("path", ["/v1/customers/c-1/context", "/v1/customers/c-1/context/stream"])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}])
async def test_every_v1_route_needs_a_token(
    api: WorkerProcess, http: aiohttp.ClientSession, path: str, headers: dict[str, str]
) -> None:
    async with http.get(api.url(path), headers=headers) as answer:
        assert answer.status == 401
        assert (await answer.json())["error"] == "unauthorized"


async def next_event(content: aiohttp.StreamReader) -> bytes:
    """The data of the next SSE event (comments skipped)."""
    data = b""
    while True:
        line = (await content.readline()).rstrip(b"\n")
        if line.startswith(b"data: "):
            data = line[6:]
        elif not line and data:
            return data


async def test_stream_updates_within_100ms_of_the_redis_write(
    api: WorkerProcess, redis_url: str, http: aiohttp.ClientSession
) -> None:
    customer = f"c-{uuid.uuid4().hex[:12]}"
    client: Redis = Redis.from_url(redis_url)
    mirror = RedisMirror(client, Metrics(CollectorRegistry()), ttl=timedelta(minutes=5))
    writing = asyncio.create_task(mirror.run())
    delays: list[float] = []
    try:
        mirror.submit(customer, 1, document(customer, 1))
        assert await mirror.drained(within=5)
        url = api.url(f"/v1/customers/{customer}/context/stream")
        async with http.get(url, headers=AUTH) as stream:
            assert stream.status == 200
            assert await asyncio.wait_for(next_event(stream.content), 5) == document(customer, 1)
            for version in range(2, 22):
                # from before the write (an upper bound: it includes the write itself)
                written = time.perf_counter()
                mirror.submit(customer, version, document(customer, version))
                data = await asyncio.wait_for(next_event(stream.content), 5)
                delays.append(time.perf_counter() - written)
                assert data == document(customer, version)
                assert await mirror.drained(within=5)
    finally:
        writing.cancel()
        await client.aclose()
    delays.sort()
    p50, worst = delays[10] * 1000, delays[-1] * 1000
    print(f"SSE delay, mirror submit to event received: p50 {p50:.1f} ms, max {worst:.1f} ms")
    assert delays[-1] < 0.1


async def test_a_disconnected_stream_frees_its_subscription(
    api: WorkerProcess, redis_url: str, http: aiohttp.ClientSession
) -> None:
    customer = f"c-{uuid.uuid4().hex[:12]}"
    client: Redis = Redis.from_url(redis_url)
    channel = updates_channel(customer)
    try:
        url = api.url(f"/v1/customers/{customer}/context/stream")
        async with http.get(url, headers=AUTH) as stream:
            assert stream.status == 200
            await eventually(lambda: _subscribers(client, channel, 1), within=5)
            assert api.metric("nextbest_api_streams") >= 1
        # the keep-alive (1 s here) finds the closed connection
        await eventually(lambda: _subscribers(client, channel, 0), within=10)
        await eventually(lambda: api.metric("nextbest_api_streams") == 0, within=5)
    finally:
        await client.aclose()


async def _subscribers(client: Redis, channel: str, expected: int) -> bool:
    counts = await client.pubsub_numsub(channel)
    return bool(counts[0][1] == expected)


async def test_health_and_readiness(api: WorkerProcess, http: aiohttp.ClientSession) -> None:
    for path in ("/healthz", "/readyz"):
        async with http.get(api.url(path)) as answer:
            assert answer.status == 200, path


# --- what SREs get: metrics, rules, dashboard ---------------------------------------

REPO = Path(__file__).resolve().parents[2]
METRIC_NAME = re.compile(r"\bnextbest_[a-z_]+")


def promtool() -> str:
    """promtool from PROMTOOL, .dev/tools/bin (deploy/tools/install.sh) or PATH."""
    candidates = [os.environ.get("PROMTOOL"), str(REPO / ".dev/tools/bin/promtool")]
    candidates.append(shutil.which("promtool"))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("promtool is missing: run deploy/tools/install.sh (make test does)")


def run_promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [promtool(), *args],
        input=stdin,
        capture_output=True,
        cwd=REPO / "deploy/prometheus",
        timeout=60,
        check=False,
    )


def scrape(process: WorkerProcess) -> bytes:
    with urllib.request.urlopen(process.url("/metrics"), timeout=5) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        return bytes(answer.read())


def test_promtool_accepts_the_alert_rules_and_their_tests() -> None:
    checked = run_promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run_promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert b"SUCCESS" in tested.stdout


@pytest.mark.parametrize("which", ["worker", "api"])
def test_promtool_accepts_each_processes_metrics(
    which: str, worker: WorkerProcess, api: WorkerProcess
) -> None:
    exposition = scrape(worker if which == "worker" else api)
    assert b"nextbest_" in exposition
    checked = run_promtool("check", "metrics", stdin=exposition)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_worker_exports_consumer_lag_per_partition(worker: WorkerProcess) -> None:
    text = scrape(worker).decode()
    lags = [line for line in text.splitlines() if line.startswith("nextbest_consumer_lag{")]
    assert any('topic="events.web"' in line for line in lags)
    assert len({line.split('partition="')[1].split('"')[0] for line in lags}) == 8
    assert "nextbest_worker_ready 1.0" in text


def test_dashboard_and_alerts_query_metrics_that_exist(
    worker: WorkerProcess, api: WorkerProcess
) -> None:
    exported = {
        name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
        for name in METRIC_NAME.findall((scrape(worker) + scrape(api)).decode())
    }
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/nextbest.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queries.append((REPO / "deploy/prometheus/alerts.yml").read_text())
    used = {
        name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
        for query in queries
        for name in METRIC_NAME.findall(query)
    }
    assert used - exported == set()
    assert len(used) >= 10
