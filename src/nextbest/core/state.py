"""A customer's whole state: the §6 context and what the engine must remember.

The context is every event of the customer folded in ``time`` order (contract
§3 "Order"). To place an event that arrives late, the state keeps the
customer's recent events (:class:`Step`, within the reorder window) and
``base``, the context of everything before them: a late event is put in its
place among the recent ones and the context is folded again from ``base``
(see :mod:`nextbest.core.timeline`).

Beside the events' fold, the state remembers what the engine decided, which no
replay may change: the triggers it emitted (``context.last_triggers``), when
each action was last triggered (``last_fired``, the cooldown, in event time)
and the deadline each timer signal last fired for (``fired``). ``seen_ids`` are
the newest event ids (an id seen again is ignored).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

import orjson

from nextbest.core.context import (
    TRIGGERS_KEPT,
    Context,
    TriggerRecord,
    encode_document,
    from_document,
)
from nextbest.core.envelope import DATA_FIELDS, Event

_JSON = orjson.OPT_UTC_Z
__all__ = ["CustomerState", "Step", "decode", "encode", "encode_base", "encode_document"]

SEEN_KEPT = 100
# How a state is stored (the table's values and its changelog's): a header, the
# §6 document, then the rest as JSON. The header (MAGIC, the version, the
# document's length) lets a restore hand the document to Redis without parsing
# the state. Format 1 (0.1) was JSON alone, with no timeline.
MAGIC = b"\xf2"
_HEADER = struct.Struct(">cQI")


# In a step's ``raised``: its event has had its trigger (at most one per event).
FIRED = 1 << 30


class Step(NamedTuple):
    """An event kept for the reorder window, the signals (bits of
    :data:`~nextbest.core.signals.SIGNAL_BITS`) it has raised and whether it has had
    its trigger (:data:`FIRED`), and its stored form (encoded once, when it is kept:
    the state is written once per batch)."""

    event: Event
    raised: int
    encoded: bytes

    @classmethod
    def of(cls, event: Event, raised: int = 0) -> Step:
        fields = DATA_FIELDS.get(event.type)
        data = {k: v for k, v in event.data.items() if k in fields} if fields else {}
        stored = (event.id, event.type, event.time, event.channel, data)
        return cls(event, raised, orjson.dumps(stored, option=_JSON))

    @property
    def size(self) -> int:
        return len(self.encoded)


class CustomerState(NamedTuple):
    """``context``: all events folded in time order; ``base``: all but ``recent``."""

    context: Context
    base: Context
    base_encoded: bytes = b"null"  # base's stored form, encoded when base changes
    recent: tuple[Step, ...] = ()
    recent_bytes: int = 0  # the sum of the kept steps' sizes
    seen_ids: tuple[str, ...] = ()
    last_fired: Mapping[str, datetime] = {}
    fired: Mapping[str, datetime] = {}

    @classmethod
    def new(cls, customer_id: str) -> CustomerState:
        empty = Context(customer_id)
        return cls(empty, empty)

    @property
    def customer_id(self) -> str:
        return self.context.customer_id


def is_duplicate(state: CustomerState, event: Event) -> bool:
    return event.id in state.seen_ids


def mark_fired(state: CustomerState, event_id: str) -> CustomerState:
    """Remember that the kept event ``event_id`` has had its trigger."""
    recent = tuple(
        s._replace(raised=s.raised | FIRED) if s.event.id == event_id else s for s in state.recent
    )
    return state._replace(recent=recent)


def record_trigger(state: CustomerState, record: TriggerRecord, moment: datetime) -> CustomerState:
    """Remember an emitted trigger: in ``last_triggers``, and its signal's ``moment``
    for its action's cooldown."""
    context = state.context.with_triggers(
        (*state.context.last_triggers, record)[-TRIGGERS_KEPT:], record.at
    )
    last_fired = {**state.last_fired, record.action: moment}
    return CustomerState(
        context,
        state.base,
        state.base_encoded,
        state.recent,
        state.recent_bytes,
        state.seen_ids,
        last_fired,
        state.fired,
    )


# --- bytes, for the table and its changelog -----------------------------------------


def _extras(context: Context) -> dict[str, Any]:
    """What the stored state keeps beside the document: the context's underscore fields."""
    return {"zero_searches": context.zero_searches, "product_viewed_at": context.product_viewed_at}


def encode_base(base: Context) -> bytes:
    """How ``base`` is stored: ``null`` while no event is folded into it."""
    if base.version == 0:
        return b"null"
    document = orjson.Fragment(encode_document(base))
    return orjson.dumps({"document": document, "extras": _extras(base)}, option=_JSON)


def encode(state: CustomerState, document: bytes | None = None) -> bytes:
    """The state as stored; ``document`` is ``encode_document(state.context)`` if known."""
    context = state.context
    if document is None:
        document = encode_document(context)
    header = _HEADER.pack(MAGIC, context.version, len(document))
    return (
        header
        + document
        + orjson.dumps(
            {
                "extras": _extras(context),
                "base": orjson.Fragment(state.base_encoded),
                "recent": [orjson.Fragment(s.encoded) for s in state.recent],
                "raised": [s.raised for s in state.recent],
                "seen_ids": state.seen_ids,
                "last_fired": state.last_fired,
                "fired": state.fired,
            },
            option=_JSON,
        )
    )


def _context(document: Mapping[str, Any], extras: Mapping[str, Any]) -> Context:
    viewed = extras.get("product_viewed_at")
    return from_document(
        document,
        zero_searches=tuple(datetime.fromisoformat(t) for t in extras.get("zero_searches", ())),
        product_viewed_at=None if viewed is None else datetime.fromisoformat(viewed),
    )


def stored_document(raw: bytes) -> tuple[int, bytes] | None:
    """The version and the §6 document of a stored state, without decoding the state
    (None for a state of format 1)."""
    if raw[:1] != MAGIC:
        return None
    _, version, length = _HEADER.unpack_from(raw)
    start = _HEADER.size
    return version, raw[start : start + length]


def decode(raw: bytes) -> CustomerState:
    if raw[:1] == MAGIC:
        return _decode(raw)
    # format 1: JSON, no timeline: everything is base
    stored: dict[str, Any] = orjson.loads(raw)
    extras = {
        "zero_searches": stored["zero_searches"],
        "product_viewed_at": stored["product_viewed_at"],
    }
    context = _context(stored["context"], extras)
    base = context.with_triggers((), None)
    return CustomerState(
        context,
        base,
        encode_base(base),
        (),
        0,
        tuple(stored["seen_ids"]),
        _times(stored["last_fired"]),
        _times(stored.get("fired", {})),
    )


def _decode(raw: bytes) -> CustomerState:
    _, _, length = _HEADER.unpack_from(raw)
    start = _HEADER.size
    stored: dict[str, Any] = orjson.loads(raw[start + length :])
    context = _context(orjson.loads(raw[start : start + length]), stored["extras"])
    stored_base = stored["base"]
    base = (
        Context(context.customer_id)
        if stored_base is None
        else _context(stored_base["document"], stored_base["extras"])
    )
    recent = tuple(
        Step.of(Event(id_, "", type_, datetime.fromisoformat(time), "", channel, data), raised)
        for (id_, type_, time, channel, data), raised in zip(
            stored["recent"], stored["raised"], strict=True
        )
    )
    return CustomerState(
        context,
        base,
        encode_base(base),
        recent,
        sum(step.size for step in recent),
        tuple(stored["seen_ids"]),
        _times(stored["last_fired"]),
        _times(stored["fired"]),
    )


def _times(stored: Mapping[str, str]) -> dict[str, datetime]:
    return {key: datetime.fromisoformat(value) for key, value in stored.items()}
