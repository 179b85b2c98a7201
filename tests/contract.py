"""The JSON Schemas of src/nextbest/schemas as validators, for every tier's tests.

``check("trigger.json", document)`` raises AssertionError naming each violation;
``errors(...)`` lists them. Formats are asserted (date-time through
rfc3339-validator, uuid), not just noted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from nextbest import schemas

BASE = "https://nextbest.invalid/schemas/"  # .invalid: never fetched, only a base for $refs
FORMATS = Draft202012Validator.FORMAT_CHECKER
assert "date-time" in FORMATS.checkers, "install rfc3339-validator: date-time is not asserted"


@cache
def registry() -> Registry[Any]:
    resources = [
        (BASE + name, Resource.from_contents(schemas.load(name), DRAFT202012))
        for name in schemas.names()
    ]
    return Registry().with_resources(resources)


@cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": BASE + name}, registry=registry(), format_checker=FORMATS)


def errors(name: str, instance: Any) -> list[str]:
    """Each way ``instance`` breaks schema ``name``, as ``path: message``."""
    found = validator(name).iter_errors(instance)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in found)


def check(name: str, instance: Any) -> None:
    problems = errors(name, instance)
    assert not problems, f"not valid per {name}:\n  " + "\n  ".join(problems)


def header_map(headers: Iterable[tuple[str, bytes]]) -> Mapping[str, str]:
    """Kafka headers as the text the header schemas describe."""
    return {name: value.decode("utf-8", "replace") for name, value in headers}
