"""The worker and the API on the secured stack: SASL_SSL + ACLs, mutual TLS, Redis TLS + ACL users.

Every process gets its role's settings as an operator would set them, each
secret as a ``*_FILE`` setting (Kubernetes Secrets mounted as files).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError

from nextbest.adapters.access import check_kafka, worker_needs
from nextbest.bootstrap import topic_names
from tests.integration.harness import (
    Channels,
    WorkerProcess,
    about,
    applied,
    eventually,
    read,
)
from tests.integration.secured.conftest import (
    SERVICE_TOKEN,
    Secured,
    WidgetKeys,
    api_process,
    worker_process,
)

pytestmark = pytest.mark.timeout(240)
SERVICE = {"Authorization": f"Bearer {SERVICE_TOKEN}"}


def customer_id() -> str:
    return f"sec-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def worker(secured: Secured, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    process = worker_process(secured, tmp_path_factory.mktemp("secured-worker"))
    process.start()
    yield process
    assert process.stop() == 0, process.tail()


@pytest.fixture(scope="module")
def api(
    secured: Secured,
    widget_keys: WidgetKeys,
    service_token_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerProcess]:
    process = api_process(
        secured, tmp_path_factory.mktemp("secured-api"), widget_keys, service_token_file
    )
    process.start(ready_within=30)
    yield process
    assert process.stop() == 0, process.tail()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def test_events_in_triggers_out(
    worker: WorkerProcess, secured: Secured, channels: Channels
) -> None:
    customer = customer_id()
    cause = await channels.send("web", "payment.failed", customer, {"reason": "declined"})
    [record] = await read(
        secured.bootstrap,
        ["triggers.web"],
        about(customer),
        client_options=secured.kafka_options("admin"),
    )
    trigger = orjson.loads(record.value)
    assert trigger["data"]["action"] == "payment_help"
    assert trigger["data"]["caused_by"] == cause
    assert worker.metric("nextbest_triggers_total", action="payment_help", channel="web") >= 1


async def test_the_redis_mirror_is_written_by_the_worker_user(
    worker: WorkerProcess, secured: Secured, channels: Channels
) -> None:
    customer = customer_id()
    await channels.send("mobile", "cart.item_added", customer, {"sku": "A1", "qty": 2, "price": 5})
    await channels.send("mobile", "product.viewed", customer, {"sku": "B2"})
    document = await applied(secured.redis_url(), customer, 2)
    assert document["cart"]["value"] == 10.0
    assert worker.metric("nextbest_redis_errors_total") == 0


async def test_redis_users_may_do_their_work_and_nothing_else(secured: Secured) -> None:
    worker_user = Redis.from_url(secured.redis_url("nextbest-worker", "redis-worker"))
    api_user = Redis.from_url(secured.redis_url("nextbest-api", "redis-api"))
    try:
        assert await api_user.get("nextbest:context:nobody") is None
        with pytest.raises(NoPermissionError):
            await api_user.set("nextbest:context:someone", b"{}")  # read-only
        with pytest.raises(NoPermissionError):
            await api_user.publish("nextbest:updates:someone", b"{}")
        with pytest.raises(NoPermissionError):
            await worker_user.get("elsewhere:key")  # only its own key prefix
        with pytest.raises(NoPermissionError):
            await worker_user.publish("another-channel", b"x")
        with pytest.raises(NoPermissionError):
            await worker_user.flushdb()
        with pytest.raises(NoPermissionError):
            await worker_user.keys("*")
    finally:
        await worker_user.aclose()
        await api_user.aclose()


async def test_the_api_reads_over_its_read_only_user_with_both_kinds_of_token(
    worker: WorkerProcess,
    api: WorkerProcess,
    channels: Channels,
    widget_keys: WidgetKeys,
    http: aiohttp.ClientSession,
) -> None:
    customer, other = customer_id(), customer_id()
    await channels.send("web", "product.viewed", customer, {"sku": "Z1"})
    url = api.url(f"/v1/customers/{customer}/context")

    async def fetched() -> dict[str, object] | None:
        async with http.get(url, headers=SERVICE) as answer:
            return await answer.json() if answer.status == 200 else None

    assert (await eventually(fetched, within=15))["customer_id"] == customer
    own = {"Authorization": f"Bearer {widget_keys.token(customer)}"}
    async with http.get(url, headers=own) as answer:
        assert answer.status == 200
        assert (await answer.json())["recent_products"] == ["Z1"]
    refused_before = api.metric("nextbest_api_widget_tokens_refused_total", reason="wrong_customer")
    someone_else = {"Authorization": f"Bearer {widget_keys.token(other)}"}
    async with http.get(url, headers=someone_else) as answer:
        assert answer.status == 403
        assert (await answer.json())["error"] == "forbidden"
    expired = widget_keys.token(customer, ttl=60, now=time.time() - 600)
    async with http.get(url, headers={"Authorization": f"Bearer {expired}"}) as answer:
        assert answer.status == 401
        assert (await answer.json())["error"] == "invalid_token"
    assert (
        api.metric("nextbest_api_widget_tokens_refused_total", reason="wrong_customer")
        == refused_before + 1
    )
    assert api.metric("nextbest_api_widget_tokens_refused_total", reason="expired") >= 1


async def next_event(content: aiohttp.StreamReader) -> tuple[str, bytes]:
    """The next SSE event's name and data (comments skipped)."""
    name, data = "message", b""
    while True:
        line = (await content.readline()).rstrip(b"\n")
        if line.startswith(b"event: "):
            name = line[7:].decode()
        elif line.startswith(b"data: "):
            data = line[6:]
        elif not line and data:
            return name, data


async def test_sse_with_a_widget_token_follows_the_customer(
    worker: WorkerProcess,
    api: WorkerProcess,
    secured: Secured,
    channels: Channels,
    widget_keys: WidgetKeys,
    http: aiohttp.ClientSession,
) -> None:
    customer = customer_id()
    await channels.send("web", "session.started", customer)
    await applied(secured.redis_url(), customer, 1)
    headers = {"Authorization": f"Bearer {widget_keys.token(customer)}"}
    url = api.url(f"/v1/customers/{customer}/context/stream")
    async with http.get(url, headers=headers) as stream:
        assert stream.status == 200
        name, data = await asyncio.wait_for(next_event(stream.content), 10)
        assert (name, orjson.loads(data)["version"]) == ("context", 1)
        await channels.send("chat", "chat.started", customer)
        name, data = await asyncio.wait_for(next_event(stream.content), 10)
        assert (name, orjson.loads(data)["current_channel"]) == ("context", "chat")


async def test_scram_sha_256_is_accepted_too(secured: Secured) -> None:
    settings = secured.settings("worker", kafka_sasl_mechanism="SCRAM-SHA-256")
    await check_kafka(settings, worker_needs(settings, topic_names(settings).all()))
