"""docs/asyncapi.yaml: valid to the official parser, complete, and served as bundled.

The AsyncAPI parser (@asyncapi/parser, npm) comes from deploy/tools/install.sh
(``make test`` runs it); without it these tests fail. The parser does not check
message examples, so they are held against their schemas here.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from nextbest import schemas
from nextbest.adapters.topics import (
    DEADLETTER_TOPIC,
    changelog_topic,
    event_topic,
    rekey_topic,
    tick_topic,
)
from nextbest.core.envelope import DATA_FIELDS
from nextbest.schemas.bundle import bundle, component_key

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "docs/asyncapi.yaml"
VALIDATE = REPO / "deploy/tools/asyncapi/validate.mjs"
# keywords of 2020-12 that draft-07 (AsyncAPI's schema dialect) does not know
NEWER_KEYWORDS = {"$defs", "prefixItems", "unevaluatedProperties", "unevaluatedItems",
                  "dependentRequired", "dependentSchemas", "$anchor", "$dynamicRef",
                  "$dynamicAnchor", "minContains", "maxContains"}  # fmt: skip


def parse_with_asyncapi(*files: Path) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: deploy/tools/install.sh installs it (make test runs that)")
    done = subprocess.run(
        [node, str(VALIDATE), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode == 2:
        pytest.fail(done.stderr.strip())
    return done


@cache
def source() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(SOURCE.read_text("utf-8"))
    return document


@cache
def bundled() -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(schemas.asyncapi())
    return document


def test_the_official_parser_accepts_the_document_and_its_bundle() -> None:
    done = parse_with_asyncapi(SOURCE, REPO / "src/nextbest/schemas/asyncapi.json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": valid AsyncAPI 3.0.0") == 2, done.stdout


def test_the_parser_catches_a_broken_document(tmp_path: Path) -> None:
    broken = tmp_path / "docs" / "asyncapi.yaml"
    broken.parent.mkdir()
    text = SOURCE.read_text().replace(
        "../src/nextbest/schemas/", str(REPO / "src/nextbest/schemas") + "/"
    )
    broken.write_text(text.replace("data/cart.item_added.json", "data/cart.item_lost.json"))
    done = parse_with_asyncapi(broken)
    assert done.returncode == 1
    assert "cart.item_lost.json" in done.stdout


def test_the_served_bundle_is_what_the_document_gives() -> None:
    """Stale? Run `make asyncapi`."""
    spec = importlib.util.spec_from_file_location(
        "bundle", REPO / "deploy/tools/asyncapi/bundle.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert schemas.asyncapi().decode() == module.render(), "run `make asyncapi`"
    assert b"../src/" not in schemas.asyncapi()


DECLARED = {
    "cloudevent.json": "event",
    "event-headers.json": "eventHeaders",
    "deadletter-headers.json": "deadLetterHeaders",
}


def test_every_schema_file_is_referenced_and_inlined_once() -> None:
    components = bundled()["components"]["schemas"]
    for name in schemas.names():
        key = DECLARED.get(name, component_key(name))
        assert key in components, name
        stripped = {k: v for k, v in components[key].items() if k != "$ref"}
        assert stripped["title"] == schemas.load(name)["title"]


def test_schemas_use_only_keywords_draft_07_reads_the_same() -> None:
    def keywords(value: Any) -> set[str]:
        if isinstance(value, list):
            return set().union(*map(keywords, value)) if value else set()
        if not isinstance(value, dict):
            return set()
        return set(value) | set().union(*(keywords(v) for v in value.values()))

    for name in schemas.names():
        assert not keywords(schemas.load(name)) & NEWER_KEYWORDS, name


def test_channels_are_the_topics_the_engine_uses() -> None:
    channels = source()["channels"]
    assert channels["events"]["address"] == event_topic("{channel}")
    assert channels["triggers"]["address"] == "triggers.{channel}"
    assert channels["deadletter"]["address"] == DEADLETTER_TOPIC
    assert channels["rekey"]["address"] == rekey_topic("{appId}")
    assert channels["ticks"]["address"] == tick_topic("{appId}")
    assert channels["contextsChangelog"]["address"] == changelog_topic("{appId}")
    internal = {k for k, v in channels.items() if {"name": "internal"} in v.get("tags", [])}
    assert internal == {"rekey", "ticks", "contextsChangelog"}
    default_channels = source()["components"]["parameters"]["channel"]["enum"]
    assert tuple(default_channels) == ("web", "mobile", "store", "contact-center", "chat",
                                       "email", "social")  # fmt: skip


def test_every_known_event_type_has_its_message() -> None:
    messages = source()["components"]["messages"]
    named = {m["name"] for m in messages.values()}
    assert set(DATA_FIELDS) <= named
    events = source()["channels"]["events"]["messages"]
    for type_ in DATA_FIELDS:
        [key] = [k for k, m in messages.items() if m["name"] == type_]
        assert events[key] == {"$ref": f"#/components/messages/{key}"}
        payload = messages[key]["payload"]["allOf"]
        assert payload[1]["properties"]["type"] == {"const": type_}
        assert payload[1]["properties"]["data"]["$ref"].endswith(f"data/{type_}.json")
    operation = source()["operations"]["receiveEvents"]["messages"]
    assert len(operation) == len(events)


@cache
def bundle_validator() -> tuple[Registry[Any], str]:
    uri = "urn:nextbest:asyncapi"
    resource = Resource.from_contents(bundled(), DRAFT202012)
    return Registry().with_resource(uri, resource), uri


def example_cases() -> list[tuple[str, str, int]]:
    found = []
    for key, message in bundled()["components"]["messages"].items():
        for index, example in enumerate(message.get("examples", [])):
            found += [(key, part, index) for part in ("headers", "payload") if part in example]
    return found


@pytest.mark.parametrize(("message", "part", "index"), example_cases())
def test_message_examples_match_their_schemas(message: str, part: str, index: int) -> None:
    registry, uri = bundle_validator()
    found = bundled()["components"]["messages"][message]
    pointer = f"#/components/messages/{message}/{part}"
    if part not in found:  # from its trait, as AsyncAPI applies traits
        [trait] = [t["$ref"] for t in found["traits"]]
        pointer = f"{trait}/{part}"
    schema = {"$ref": uri + pointer}
    example = found["examples"][index][part]
    validator = Draft202012Validator(
        schema, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    assert [error.message for error in validator.iter_errors(example)] == []


def test_bundling_rewrites_references_between_files() -> None:
    document = {
        "components": {"schemas": {"trigger": {"$ref": "../src/nextbest/schemas/trigger.json"}}}
    }
    result = bundle(document, note="test")
    inlined = result["components"]["schemas"]
    assert inlined["trigger"]["properties"]["data"]["properties"]["context"]["$ref"] == (
        "#/components/schemas/context"
    )
    assert inlined["context"]["properties"]["updated_at"]["$ref"] == "#/components/schemas/time"
    assert set(inlined) == {"trigger", "context", "time"}
