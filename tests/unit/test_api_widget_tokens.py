"""The API with widget tokens: one customer only, 403 another, 401 expired, counted by reason."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry, generate_latest

from nextbest.api.app import ApiConfig, ApiMetrics, ContextApi
from nextbest.api.contexts import MemoryContexts
from nextbest.api.widget_tokens import WidgetTokens, mint

KEY = Ed25519PrivateKey.generate()
SERVICE = "service-token"
Client = TestClient[web.Request, web.Application]


def document(customer: str, version: int = 1) -> bytes:
    return orjson.dumps({"customer_id": customer, "version": version})


def token(customer: str, ttl: float = 900, now: float | None = None) -> str:
    return mint(KEY, customer, ttl, audience="nextbest", now=now)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
def metrics() -> ApiMetrics:
    return ApiMetrics(CollectorRegistry())


@pytest.fixture
def contexts() -> MemoryContexts:
    source = MemoryContexts()
    source.put("alice-0001", document("alice-0001"))
    source.put("bob-0002", document("bob-0002"))
    return source


async def serve(
    contexts: MemoryContexts, metrics: ApiMetrics, tokens: tuple[str, ...] = (SERVICE,)
) -> AsyncIterator[Client]:
    widgets = WidgetTokens([KEY.public_key()], audience="nextbest", max_ttl=3600)
    config = ApiConfig(tokens=tokens, keepalive=0.2, widget_tokens=widgets)
    async with TestClient(TestServer(ContextApi(contexts, config, metrics).app())) as client:
        yield client


@pytest.fixture
async def client(contexts: MemoryContexts, metrics: ApiMetrics) -> AsyncIterator[Client]:
    async for served in serve(contexts, metrics):
        yield served


def refused(metrics: ApiMetrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "nextbest_api_widget_tokens_refused_total", {"reason": reason}
    )
    return value or 0.0


async def test_a_widget_token_opens_its_own_customer(client: Client, metrics: ApiMetrics) -> None:
    answer = await client.get(
        "/v1/customers/alice-0001/context", headers=bearer(token("alice-0001"))
    )
    assert answer.status == 200
    assert await answer.read() == document("alice-0001")
    accepted = metrics.registry.get_sample_value("nextbest_api_widget_tokens_accepted_total")
    assert accepted == 1


@pytest.mark.parametrize("path", ["/context", "/context/stream"])
async def test_another_customer_is_403_and_counted(
    client: Client, metrics: ApiMetrics, path: str
) -> None:
    answer = await client.get(f"/v1/customers/bob-0002{path}", headers=bearer(token("alice-0001")))
    assert answer.status == 403
    assert await answer.json() == {
        "error": "forbidden",
        "message": "this widget token is for another customer's context",
    }
    assert refused(metrics, "wrong_customer") == 1


async def test_an_expired_token_is_401_and_counted(client: Client, metrics: ApiMetrics) -> None:
    old = token("alice-0001", ttl=60, now=time.time() - 3600)
    answer = await client.get("/v1/customers/alice-0001/context", headers=bearer(old))
    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="nextbest", error="invalid_token"'
    assert await answer.json() == {
        "error": "invalid_token",
        "message": "the widget token has expired",
    }
    assert refused(metrics, "expired") == 1


async def test_a_badly_signed_token_is_401(client: Client, metrics: ApiMetrics) -> None:
    forged = mint(Ed25519PrivateKey.generate(), "alice-0001", 60, audience="nextbest")
    answer = await client.get("/v1/customers/alice-0001/context", headers=bearer(forged))
    assert answer.status == 401
    assert refused(metrics, "unknown_key") == 1


async def test_a_type_lookup_opens_only_the_tokens_own_customer(
    client: Client, contexts: MemoryContexts, metrics: ApiMetrics
) -> None:
    """``?type=`` (contract §10) with a widget token: its customer's own identifiers
    only; another person's, or nobody's, is refused the same way."""
    contexts.link("email", "h-alice", "alice-0001")
    contexts.link("email", "h-bob", "bob-0002")
    contexts.put("bob-0002", document("bob-0002"))
    mine = "/v1/customers/h-alice/context?type=email"
    answer = await client.get(mine, headers=bearer(token("alice-0001")))
    assert answer.status == 200
    assert orjson.loads(await answer.read())["customer_id"] == "alice-0001"
    for other in ("h-bob", "h-nobody"):
        url = f"/v1/customers/{other}/context?type=email"
        answer = await client.get(url, headers=bearer(token("alice-0001")))
        assert answer.status == 403
    assert refused(metrics, "wrong_customer") == 2
    # the service token is not scoped
    answer = await client.get("/v1/customers/h-bob/context?type=email", headers=bearer(SERVICE))
    assert answer.status == 200


async def test_service_tokens_still_open_every_customer(client: Client) -> None:
    for customer in ("alice-0001", "bob-0002"):
        answer = await client.get(f"/v1/customers/{customer}/context", headers=bearer(SERVICE))
        assert answer.status == 200


async def test_with_only_widget_tokens_configured_a_token_is_still_required(
    contexts: MemoryContexts, metrics: ApiMetrics
) -> None:
    async for client in serve(contexts, metrics, tokens=()):
        answer = await client.get("/v1/customers/alice-0001/context")
        assert answer.status == 401
        assert (await answer.json())["error"] == "unauthorized"
        answer = await client.get("/v1/customers/alice-0001/context", headers=bearer("guess"))
        assert answer.status == 401


async def test_a_stream_ends_when_its_widget_token_expires(contexts: MemoryContexts) -> None:
    now = [time.time()]
    widgets = WidgetTokens(
        [KEY.public_key()], audience="nextbest", max_ttl=3600, clock=lambda: now[0]
    )
    config = ApiConfig(tokens=(SERVICE,), keepalive=0.1, widget_tokens=widgets)
    api = ContextApi(contexts, config, ApiMetrics(CollectorRegistry()))
    async with TestClient(TestServer(api.app())) as client:
        url = "/v1/customers/alice-0001/context/stream"
        async with client.get(url, headers=bearer(token("alice-0001", ttl=900))) as stream:
            assert stream.status == 200
            first = await asyncio.wait_for(stream.content.readuntil(b"\n\n"), 5)
            assert first.startswith(b"event: context\n")
            now[0] += 900 + 60  # past exp and the leeway
            rest = await asyncio.wait_for(stream.content.read(), 5)
        assert rest.endswith(b"event: expired\ndata: {}\n\n")


async def test_metric_labels_carry_reasons_never_customers(
    client: Client, metrics: ApiMetrics
) -> None:
    await client.get("/v1/customers/bob-0002/context", headers=bearer(token("alice-0001")))
    await client.get("/v1/customers/alice-0001/context", headers=bearer(token("alice-0001")))
    exposition = generate_latest(metrics.registry).decode()
    assert "alice-0001" not in exposition
    assert "bob-0002" not in exposition
    assert 'nextbest_api_widget_tokens_refused_total{reason="wrong_customer"} 1.0' in exposition
