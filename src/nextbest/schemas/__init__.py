"""The JSON Schemas (2020-12) of what crosses nextbest's edges: the one source.

Files beside this module, shipped in the wheel and served by ``nextbest api``
at ``/schemas/<name>``:

* ``cloudevent.json`` — an event on ``events.<channel>`` (structured content
  mode), its ``data`` checked per ``type`` against ``data/<type>.json``;
* ``event-headers.json`` — the ``ce_*`` headers of the binary content mode;
* ``trigger.json`` — a trigger on ``triggers.<channel>``;
* ``context.json`` — the live context document (Redis, HTTP, triggers);
* ``deadletter-headers.json`` — the reason headers on ``events.deadletter``;
* ``time.json`` — the RFC 3339 timestamp they all use.

They reference each other by relative paths, so they resolve the same from
the repository, from an installed package and from the API's ``/schemas/``.
``docs/asyncapi.yaml`` and ``api/openapi.json`` reference these files; the
AsyncAPI document bundled with them is ``asyncapi.json`` (``make asyncapi``
writes it; a unit test fails when it is stale).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import orjson

BUNDLE = "asyncapi.json"


@cache
def names() -> tuple[str, ...]:
    """Every schema's path relative to this package, e.g. ``data/page.viewed.json``."""
    root = resources.files(__name__)
    found = [entry.name for entry in root.iterdir() if entry.name.endswith(".json")]
    found += [f"data/{entry.name}" for entry in root.joinpath("data").iterdir()]
    return tuple(sorted(name for name in found if name.endswith(".json") and name != BUNDLE))


def read(name: str) -> bytes:
    """The bytes of schema ``name``; ``KeyError`` for anything that is not one."""
    if name not in names():
        raise KeyError(name)
    return resources.files(__name__).joinpath(name).read_bytes()


def load(name: str) -> dict[str, Any]:
    """Schema ``name`` as a mapping."""
    document: dict[str, Any] = orjson.loads(read(name))
    return document


def event_types() -> tuple[str, ...]:
    """The event types that have a data schema."""
    return tuple(n.removeprefix("data/").removesuffix(".json") for n in names() if "/" in n)


def asyncapi() -> bytes:
    """The AsyncAPI document with every schema inlined under ``components.schemas``."""
    return resources.files(__name__).joinpath(BUNDLE).read_bytes()
