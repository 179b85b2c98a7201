"""/openapi.json, /asyncapi.json and /schemas/*: one set of schemas, resolvable over HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from typing import Any
from urllib.parse import urljoin

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from nextbest import schemas
from nextbest.api.app import ApiConfig, ApiMetrics, ContextApi
from nextbest.api.contexts import MemoryContexts

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    api = ContextApi(MemoryContexts(), ApiConfig(tokens=("t",)), ApiMetrics(CollectorRegistry()))
    async with TestClient(TestServer(api.app())) as served:
        yield served


def refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        if isinstance(value.get("$ref"), str):
            yield value["$ref"]
        for item in value.values():
            yield from refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from refs(item)


async def test_asyncapi_is_served_without_a_token(client: Client) -> None:
    answer = await client.get("/asyncapi.json")
    assert answer.status == 200
    assert answer.content_type == "application/json"
    document = await answer.json()
    assert document["asyncapi"] == "3.0.0"
    assert all(ref.startswith("#/") for ref in refs(document)), "self-contained"


@pytest.mark.parametrize("name", schemas.names())
async def test_each_schema_is_served_as_it_is_in_the_package(client: Client, name: str) -> None:
    answer = await client.get(f"/schemas/{name}")
    assert answer.status == 200
    assert answer.content_type == "application/schema+json"
    assert await answer.read() == schemas.read(name)


@pytest.mark.parametrize("path", ["/schemas/nope.json", "/schemas/../api/openapi.json",
                                  "/schemas/asyncapi.json", "/schemas/__init__.py"])  # fmt: skip
async def test_anything_else_under_schemas_is_a_json_404(client: Client, path: str) -> None:
    answer = await client.get(path)
    assert answer.status == 404
    assert (await answer.json())["error"] == "not_found"


async def test_every_reference_of_the_served_documents_resolves_over_http(client: Client) -> None:
    """openapi.json's ../schemas/context.json resolves to /schemas/context.json, and so on."""
    seen: set[str] = set()
    pending = ["/openapi.json", *(f"/schemas/{n}" for n in schemas.names())]
    while pending:
        url = pending.pop()
        if url in seen:
            continue
        seen.add(url)
        answer = await client.get(url)
        assert answer.status == 200, url
        document = json.loads(await answer.read())
        for ref in refs(document):
            target = urljoin(url, ref.partition("#")[0]) if not ref.startswith("#") else url
            pending.append(target)
    assert "/schemas/context.json" in seen
    in_repo = json.loads(resources.files("nextbest.api").joinpath("openapi.json").read_text())
    assert in_repo["components"]["schemas"]["Context"] == {"$ref": "../schemas/context.json"}
