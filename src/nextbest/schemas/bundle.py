"""Inline the schema files into an AsyncAPI document: one self-contained JSON.

``docs/asyncapi.yaml`` references the files of this package by relative paths
(``../src/nextbest/schemas/trigger.json``), which resolve in the repository but
not for someone who downloads ``/asyncapi.json``. :func:`bundle` turns every
such reference into ``#/components/schemas/<key>`` and puts each file there
once, its own relative references rewritten the same way. A component that is
itself just a reference to a file keeps its key for that file.

Pure: the caller reads the YAML (``deploy/tools/asyncapi/bundle.py``); the
schema files come from :func:`nextbest.schemas.load`.
"""

from __future__ import annotations

import copy
import posixpath
import re
from collections.abc import Callable, Mapping
from typing import Any

from nextbest import schemas

SOURCE_PREFIX = "../src/nextbest/schemas/"
GENERATED = "x-nextbest-generated"


def component_key(name: str) -> str:
    """``data/cart.item_added.json`` -> ``cartItemAddedData``; ``time.json`` -> ``time``."""
    stem = posixpath.basename(name).removesuffix(".json")
    words = [w for w in re.split(r"[^A-Za-z0-9]+", stem) if w]
    key = words[0] + "".join(w[:1].upper() + w[1:] for w in words[1:])
    return key + "Data" if name.startswith("data/") else key


def bundle(
    document: Mapping[str, Any],
    *,
    load: Callable[[str], dict[str, Any]] = schemas.load,
    note: str = "generated from docs/asyncapi.yaml by `make asyncapi`: edit that file",
) -> dict[str, Any]:
    """The document with every schema file inlined under ``components.schemas``."""
    result: dict[str, Any] = {GENERATED: note, **copy.deepcopy(dict(document))}
    components = result.setdefault("components", {})
    declared: dict[str, Any] = components.setdefault("schemas", {})
    keys: dict[str, str] = {}
    for key, schema in declared.items():
        ref = schema.get("$ref") if isinstance(schema, Mapping) else None
        if isinstance(ref, str) and ref.startswith(SOURCE_PREFIX) and len(schema) == 1:
            keys[ref.removeprefix(SOURCE_PREFIX)] = key
    inlined: dict[str, Any] = {}

    def key_of(name: str) -> str:
        if name not in keys:
            keys[name] = component_key(name)
        if name not in inlined:
            inlined[name] = None  # placeholder first: schemas may refer to each other
            inlined[name] = rewrite(load(name), posixpath.dirname(name))
        return keys[name]

    def rewrite(value: Any, base: str) -> Any:
        if isinstance(value, list):
            return [rewrite(item, base) for item in value]
        if not isinstance(value, dict):
            return value
        out = {k: rewrite(v, base) for k, v in value.items()}
        ref = value.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            target, _, fragment = ref.partition("#")
            name = posixpath.normpath(posixpath.join(base, target))
            out["$ref"] = f"#/components/schemas/{key_of(name)}" + (fragment or "")
        return out

    for name in list(keys):  # the files the document names as components, under those names
        key_of(name)
    body = {k: _outside(v, key_of) for k, v in result.items() if k != "components"}
    others = {k: _outside(v, key_of) for k, v in components.items() if k != "schemas"}
    own = {k: _outside(v, key_of) for k, v in declared.items() if k not in keys.values()}
    files = {keys[name]: inlined[name] for name in sorted(inlined, key=lambda n: keys[n])}
    return {**body, "components": {**others, "schemas": {**files, **own}}}


def _outside(value: Any, key_of: Callable[[str], str]) -> Any:
    """Rewrite references to the schema files in the AsyncAPI document itself."""
    if isinstance(value, list):
        return [_outside(item, key_of) for item in value]
    if not isinstance(value, dict):
        return value
    out = {k: _outside(v, key_of) for k, v in value.items()}
    ref = value.get("$ref")
    if isinstance(ref, str) and ref.startswith(SOURCE_PREFIX):
        out["$ref"] = f"#/components/schemas/{key_of(ref.removeprefix(SOURCE_PREFIX))}"
    return out
