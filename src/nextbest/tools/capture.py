"""Kafka records as JSON lines, the format of ``kcat -C -J``: what the tools read and write.

One JSON object per line::

    {"topic": "events.web", "partition": 3, "offset": 17, "ts": 1764000000000,
     "key": "c-1", "headers": ["ce_id", "e-1", "ce_type", "cart.item_added"],
     "payload": "{\\"query\\": \\"red shoes\\", \\"results\\": 0}"}

``kcat -C -b BROKER -t events.web -J`` writes exactly this (plus ``tstype`` and
``broker``), so a capture of a producer's binary-mode records is a file of such
lines. ``headers`` may also be an object or a list of ``[name, value]`` pairs;
every member but ``payload`` is optional. A value that is not UTF-8 is written as
``payload_base64`` (kcat writes the raw bytes into the line instead; reading
handles both), no value as ``"payload": null``, a key that is not UTF-8 as
``key_base64``. Header values are written as text (bytes that are not UTF-8
replaced).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

Headers = Sequence[tuple[str, bytes]]


class CaptureError(ValueError):
    """A line that claims to be a record (it has a payload) but is not a well-formed one."""


@dataclass(frozen=True, slots=True)
class Record:
    value: bytes | None
    headers: Headers = ()
    key: bytes | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    timestamp_ms: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


def _bytes(text: str) -> bytes:
    """Back to the bytes kcat read: raw non-UTF-8 bytes survive as surrogate escapes."""
    return text.encode("utf-8", "surrogateescape")


def _headers(raw: Any) -> list[tuple[str, bytes]]:
    if raw is None:
        return []
    if isinstance(raw, dict):
        pairs: Iterable[Any] = raw.items()
    elif isinstance(raw, list) and all(isinstance(item, list) for item in raw):
        pairs = raw
    elif isinstance(raw, list) and len(raw) % 2 == 0:  # kcat: name, value, name, value
        pairs = zip(raw[::2], raw[1::2], strict=True)
    else:
        raise CaptureError("headers must be an object, [name, value] pairs or kcat's flat list")
    found = []
    for pair in pairs:
        name, value = pair if len(pair) == 2 else (None, None)
        if not isinstance(name, str) or not (value is None or isinstance(value, str)):
            raise CaptureError("each header needs a name and a text value")
        found.append((name, b"" if value is None else _bytes(value)))
    return found


def _optional_int(document: dict[str, Any], name: str) -> int | None:
    value = document.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read(line: bytes) -> Record | None:
    """The record a capture line holds, or None when the line is not a capture record.

    A line is a record when it is a JSON object with a ``payload`` (or
    ``payload_base64``) member and no ``specversion``: anything else is an event
    value in its own right (structured content mode).
    """
    try:
        document = json.loads(line.decode("utf-8", "surrogateescape"))
    except ValueError:
        return None
    if not isinstance(document, dict) or "specversion" in document:
        return None
    if "payload" not in document and "payload_base64" not in document:
        return None
    if "payload_base64" in document:
        try:
            value: bytes | None = base64.b64decode(document["payload_base64"], validate=True)
        except (binascii.Error, TypeError):
            raise CaptureError("payload_base64 is not base64") from None
    else:
        payload = document["payload"]
        if not (payload is None or isinstance(payload, str)):
            raise CaptureError("payload must be a string (the record value) or null")
        value = None if payload is None else _bytes(payload)
    key = document.get("key")
    if isinstance(document.get("key_base64"), str):
        try:
            key = base64.b64decode(document["key_base64"], validate=True)
        except binascii.Error:
            raise CaptureError("key_base64 is not base64") from None
    topic = document.get("topic")
    known = {"topic", "partition", "offset", "ts", "key", "key_base64", "headers", "payload",
             "payload_base64"}  # fmt: skip
    return Record(
        value=value,
        headers=_headers(document.get("headers")),
        key=_bytes(key) if isinstance(key, str) else key if isinstance(key, bytes) else None,
        topic=topic if isinstance(topic, str) else None,
        partition=_optional_int(document, "partition"),
        offset=_optional_int(document, "offset"),
        timestamp_ms=_optional_int(document, "ts"),
        extra={k: v for k, v in document.items() if k not in known},
    )


def _text(value: bytes) -> str | None:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def write(record: Record) -> bytes:
    """One capture line (without the newline): valid JSON whatever the bytes."""
    document: dict[str, Any] = {}
    for name, value in (
        ("topic", record.topic),
        ("partition", record.partition),
        ("offset", record.offset),
        ("ts", record.timestamp_ms),
    ):
        if value is not None:
            document[name] = value
    if record.headers:
        document["headers"] = [
            part
            for name, value in record.headers
            for part in (name, _text(value) or value.decode("utf-8", "replace"))
        ]
    key_text = None if record.key is None else _text(record.key)
    document["key"] = key_text if record.key is None or key_text is not None else None
    if record.key is not None and key_text is None:
        document["key_base64"] = base64.b64encode(record.key).decode()
    text = None if record.value is None else _text(record.value)
    if record.value is not None and text is None:
        document["payload_base64"] = base64.b64encode(record.value).decode()
    else:
        document["payload"] = text
    return orjson.dumps(document)
