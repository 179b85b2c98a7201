"""The HTTP/SSE API over the in-memory source: routes, auth, errors, limits, OpenAPI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from importlib import resources

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from nextbest.api.app import ApiConfig, ApiMetrics, ContextApi
from nextbest.api.contexts import MemoryContexts
from nextbest.api.limits import RateLimiter
from tests.integration.harness import eventually

TOKEN = "s3cret-token"


def document(version: int, customer: str = "c-1") -> bytes:
    return orjson.dumps({"customer_id": customer, "version": version})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def contexts() -> MemoryContexts:
    source = MemoryContexts()
    source.put("c-1", document(3))
    return source


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def serve(
    contexts: MemoryContexts, clock: Clock, **config: object
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    settings = {"tokens": (TOKEN,), "keepalive": 0.2, **config}
    api = ContextApi(contexts, ApiConfig(**settings), ApiMetrics(CollectorRegistry()), clock)  # type: ignore[arg-type]
    async with TestClient(TestServer(api.app())) as client:
        yield client


@pytest.fixture
async def client(
    contexts: MemoryContexts, clock: Clock
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async for served in serve(contexts, clock):
        yield served


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_get_context(client: TestClient[web.Request, web.Application]) -> None:
    answer = await client.get("/v1/customers/c-1/context", headers=AUTH)
    assert answer.status == 200
    assert answer.content_type == "application/json"
    assert await answer.read() == document(3)


async def test_unknown_customer_is_a_json_404(
    client: TestClient[web.Request, web.Application],
) -> None:
    answer = await client.get("/v1/customers/nobody/context", headers=AUTH)
    assert answer.status == 404
    assert await answer.json() == {"error": "not_found", "message": "no context for this customer"}


@pytest.mark.parametrize("path", ["/v1/customers/c-1/context", "/v1/customers/c-1/context/stream"])
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Basic x"}],
)
async def test_v1_routes_need_the_token(
    client: TestClient[web.Request, web.Application], path: str, headers: dict[str, str]
) -> None:
    answer = await client.get(path, headers=headers)
    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await answer.json())["error"] == "unauthorized"


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/openapi.json", "/widget"])
async def test_operational_routes_need_no_token(
    client: TestClient[web.Request, web.Application], path: str
) -> None:
    assert (await client.get(path)).status == 200


async def test_no_tokens_configured_means_open(contexts: MemoryContexts, clock: Clock) -> None:
    async for client in serve(contexts, clock, tokens=()):
        assert (await client.get("/v1/customers/c-1/context")).status == 200


async def test_unknown_route_is_a_json_404(
    client: TestClient[web.Request, web.Application],
) -> None:
    answer = await client.get("/v2/nothing")
    assert answer.status == 404
    assert (await answer.json())["error"] == "not_found"


async def test_large_requests_get_413(client: TestClient[web.Request, web.Application]) -> None:
    answer = await client.get("/v1/customers/c-1/context", headers=AUTH, data=b"x" * 20_000)
    assert answer.status == 413
    assert (await answer.json())["error"] == "request_too_large"


async def test_clients_over_their_rate_get_429(contexts: MemoryContexts, clock: Clock) -> None:
    async for client in serve(contexts, clock, rate_limit=1.0, rate_burst=2):
        statuses = [
            (await client.get("/v1/customers/c-1/context", headers=AUTH)).status for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        answer = await client.get("/v1/customers/c-1/context", headers=AUTH)
        assert answer.headers["Retry-After"] == "1"
        clock.now += 1.0
        assert (await client.get("/v1/customers/c-1/context", headers=AUTH)).status == 200


async def read_events(
    stream: web.StreamResponse | object, count: int, within: float = 3.0
) -> list[tuple[str, bytes]]:
    """(event, data) pairs of the next ``count`` SSE events; comments are skipped."""
    content = stream.content  # type: ignore[attr-defined]
    events: list[tuple[str, bytes]] = []
    name, data = "", b""
    async with asyncio.timeout(within):
        while len(events) < count:
            line = (await content.readline()).rstrip(b"\n")
            if line.startswith(b"event: "):
                name = line[7:].decode()
            elif line.startswith(b"data: "):
                data = line[6:]
            elif not line and name:
                events.append((name, data))
                name, data = "", b""
    return events


async def test_stream_sends_the_document_then_every_change(
    client: TestClient[web.Request, web.Application], contexts: MemoryContexts
) -> None:
    async with client.get("/v1/customers/c-1/context/stream", headers=AUTH) as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"] == "text/event-stream"
        assert await read_events(stream, 1) == [("context", document(3))]
        contexts.put("c-1", document(4))
        contexts.put("c-1", document(2))  # older than what was sent: not sent
        contexts.put("c-1", document(5))
        assert await read_events(stream, 2) == [("context", document(4)), ("context", document(5))]


async def test_stream_of_an_unknown_customer_waits_for_its_first_document(
    client: TestClient[web.Request, web.Application], contexts: MemoryContexts
) -> None:
    async with client.get("/v1/customers/c-new/context/stream", headers=AUTH) as stream:
        await asyncio.sleep(0.05)
        contexts.put("c-new", document(1, "c-new"))
        assert await read_events(stream, 1) == [("context", document(1, "c-new"))]


async def test_stream_keeps_idle_connections_alive(
    client: TestClient[web.Request, web.Application],
) -> None:
    async with client.get("/v1/customers/c-1/context/stream", headers=AUTH) as stream:
        await read_events(stream, 1)
        async with asyncio.timeout(2):
            assert await stream.content.readline() == b": keep-alive\n"


async def test_a_closed_stream_frees_its_watch(
    client: TestClient[web.Request, web.Application], contexts: MemoryContexts
) -> None:
    async with client.get("/v1/customers/c-1/context/stream", headers=AUTH) as stream:
        await read_events(stream, 1)
        assert contexts.watchers == 1
    await eventually(lambda: contexts.watchers == 0)
    metrics = await (await client.get("/metrics")).text()
    assert "nextbest_api_streams 0.0" in metrics


async def test_metrics_label_routes_not_customers(
    client: TestClient[web.Request, web.Application],
) -> None:
    await client.get("/v1/customers/c-1/context", headers=AUTH)
    text = await (await client.get("/metrics")).text()
    assert 'route="/v1/customers/{customer_id}/context",status="200"' in text
    assert "c-1" not in text


async def test_openapi_document_matches_the_routes(
    client: TestClient[web.Request, web.Application],
) -> None:
    served = await (await client.get("/openapi.json")).json()
    in_repo = json.loads(resources.files("nextbest.api").joinpath("openapi.json").read_text())
    assert served == in_repo
    routes = {
        resource.canonical
        for resource in client.app.router.resources()  # type: ignore[union-attr]
    }
    assert set(served["paths"]) == routes


def test_rate_limiter_refills_and_forgets() -> None:
    limiter = RateLimiter(rate=2.0, burst=2, clients=2)
    assert [limiter.allow("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert limiter.allow("a", 0.5) == 0.0
    limiter.allow("b", 0.5)
    limiter.allow("c", 0.5)  # "a" is the least recently seen: forgotten
    assert limiter.allow("a", 0.5) == 0.0


# --- contract v0.2 §10: a profile found by any of its identifiers ---------------------


async def test_a_profile_is_found_by_another_identifier(
    client: TestClient[web.Request, web.Application], contexts: MemoryContexts
) -> None:
    contexts.link("phone", "h-555", "c-1")
    answer = await client.get("/v1/customers/h-555/context?type=phone", headers=AUTH)
    assert answer.status == 200
    assert await answer.read() == document(3)
    # type=customer is the plain look-up
    answer = await client.get("/v1/customers/c-1/context?type=customer", headers=AUTH)
    assert await answer.read() == document(3)


@pytest.mark.parametrize(
    ("url", "status", "error"),
    [
        ("/v1/customers/h-999/context?type=phone", 404, "not_found"),
        ("/v1/customers/h-999/context?type=Phone!", 400, "invalid_type"),
        ("/v1/customers/h-999/context/stream?type=phone", 404, "not_found"),
    ],
)
async def test_type_lookups_that_find_nothing(
    client: TestClient[web.Request, web.Application], url: str, status: int, error: str
) -> None:
    answer = await client.get(url, headers=AUTH)
    assert answer.status == status
    assert (await answer.json())["error"] == error


async def test_a_stream_by_another_identifier_ends_when_its_profile_goes(
    client: TestClient[web.Request, web.Application], contexts: MemoryContexts
) -> None:
    """A profile merged into another (or erased) is deleted: its streams end, and the
    widget looks the identifier up again."""
    contexts.link("anonymous", "ck-1", "c-1")
    url = "/v1/customers/ck-1/context/stream?type=anonymous"
    async with client.get(url, headers=AUTH) as stream:
        assert await read_events(stream, 1) == [("context", document(3))]
        contexts.delete("c-1")
        assert await read_events(stream, 1) == [("gone", b"{}")]
        async with asyncio.timeout(2):
            assert await stream.content.read() == b""  # closed by the server
