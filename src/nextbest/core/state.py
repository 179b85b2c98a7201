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

A profile with more than one identifier (contract §10) also keeps ``parts``:
per identifier, the state of its own events alone (a timeline like this one),
so that an identifier that leaves takes back exactly what happened under it
(see :mod:`nextbest.core.profile`). ``membership`` is the bookkeeping of the
identity protocol (the sequence number of the newest identity operation
applied, and the one being assembled here).
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
    Identity,
    TriggerRecord,
    encode_document,
    from_document,
)
from nextbest.core.envelope import DATA_FIELDS, Event
from nextbest.core.identity import CUSTOMER, Identifier

_JSON = orjson.OPT_UTC_Z
__all__ = [
    "CustomerState",
    "Membership",
    "Step",
    "decode",
    "encode",
    "encode_base",
    "encode_document",
]

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


class Membership(NamedTuple):
    """Where a profile stands in the identity protocol (``adapters/identity.py``).

    ``epoch``: the sequence number of the newest identity operation applied to
    it (an older command is stale and ignored). ``assembling``: the operation
    whose shipments it awaits (``expected`` of them), and the sources
    ``received`` so far.
    """

    epoch: int = 0
    assembling: int = 0
    expected: int = 0
    received: tuple[str, ...] = ()


NO_MEMBERSHIP = Membership()


class CustomerState(NamedTuple):
    """``context``: all events folded in time order; ``base``: all but ``recent``.

    ``parts`` (only for a profile of several identifiers): identifier key ->
    the state of that identifier's own events.
    """

    context: Context
    base: Context
    base_encoded: bytes = b"null"  # base's stored form, encoded when base changes
    recent: tuple[Step, ...] = ()
    recent_bytes: int = 0  # the sum of the kept steps' sizes
    seen_ids: tuple[str, ...] = ()
    last_fired: Mapping[str, datetime] = {}
    fired: Mapping[str, datetime] = {}
    parts: Mapping[str, CustomerState] = {}
    membership: Membership = NO_MEMBERSHIP

    @classmethod
    def new(cls, customer_id: str) -> CustomerState:
        empty = Context(customer_id, identities=(Identity(CUSTOMER, customer_id),))
        return cls(empty, empty)

    @classmethod
    def named(cls, identifier: Identifier, since: datetime | None) -> CustomerState:
        """A new profile of ``identifier`` alone, known from ``since``."""
        identity = Identity(identifier.type, identifier.id, _since=since)
        empty = Context(identifier.profile_id, identities=(identity,))
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
        state.parts,
        state.membership,
    )


# --- bytes, for the table and its changelog -----------------------------------------


def _extras(context: Context) -> dict[str, Any]:
    """What the stored state keeps beside the document: the context's underscore fields."""
    extras: dict[str, Any] = {
        "zero_searches": context._zero_searches,
        "product_viewed_at": context._product_viewed_at,
    }
    if context._cart_at is not None:
        extras["cart_at"] = context._cart_at
    if context._ordered_at is not None:
        extras["ordered_at"] = context._ordered_at
    if context._consent_at is not None:
        extras["consent_at"] = context._consent_at
    identities = context.identities
    if len(identities) > 1 or (identities and identities[0]._since is not None):
        extras["since"] = [identity._since for identity in identities]
    return extras


def encode_base(base: Context) -> bytes:
    """How ``base`` is stored: ``null`` while no event is folded into it."""
    if base.version == 0:
        return b"null"
    document = orjson.Fragment(encode_document(base))
    return orjson.dumps({"document": document, "extras": _extras(base)}, option=_JSON)


def _rest(state: CustomerState) -> dict[str, Any]:
    """What a stored state holds beside its document (and its parts, each with its own)."""
    rest: dict[str, Any] = {
        "extras": _extras(state.context),
        "base": orjson.Fragment(state.base_encoded),
        "recent": [orjson.Fragment(s.encoded) for s in state.recent],
        "raised": [s.raised for s in state.recent],
        "seen_ids": state.seen_ids,
        "last_fired": state.last_fired,
        "fired": state.fired,
    }
    if state.parts:
        rest["parts"] = {
            key: {"document": orjson.Fragment(encode_document(part.context)), **_rest(part)}
            for key, part in state.parts.items()
        }
    if state.membership != NO_MEMBERSHIP:
        rest["membership"] = list(state.membership)
    return rest


def encode(state: CustomerState, document: bytes | None = None) -> bytes:
    """The state as stored; ``document`` is ``encode_document(state.context)`` if known."""
    context = state.context
    if document is None:
        document = encode_document(context)
    header = _HEADER.pack(MAGIC, context.version, len(document))
    return header + document + orjson.dumps(_rest(state), option=_JSON)


def to_json(state: CustomerState) -> bytes:
    """The state as one JSON object (the identity protocol carries states in messages)."""
    document = orjson.Fragment(encode_document(state.context))
    return orjson.dumps({"document": document, **_rest(state)}, option=_JSON)


def from_json(stored: dict[str, Any]) -> CustomerState:
    """A state from :func:`to_json`'s object, parsed."""
    return _decoded(stored["document"], stored)


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _context(document: Mapping[str, Any], extras: Mapping[str, Any]) -> Context:
    return from_document(
        document,
        zero_searches=tuple(datetime.fromisoformat(t) for t in extras.get("zero_searches", ())),
        product_viewed_at=_time(extras.get("product_viewed_at")),
        cart_at=_time(extras.get("cart_at")),
        ordered_at=_time(extras.get("ordered_at")),
        consent_at=_time(extras.get("consent_at")),
        since=extras.get("since", ()),
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
    return _decoded(orjson.loads(raw[start : start + length]), stored)


def _decoded(document: dict[str, Any], stored: dict[str, Any]) -> CustomerState:
    context = _context(document, stored["extras"])
    stored_base = stored["base"]
    base = (
        Context(context.customer_id, identities=context.identities)
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
        {key: _decoded(part["document"], part) for key, part in stored.get("parts", {}).items()},
        _membership(stored["membership"]) if "membership" in stored else NO_MEMBERSHIP,
    )


def _membership(stored: list[Any]) -> Membership:
    epoch, assembling, expected, received = stored
    return Membership(epoch, assembling, expected, tuple(received))


def _times(stored: Mapping[str, str]) -> dict[str, datetime]:
    return {key: datetime.fromisoformat(value) for key, value in stored.items()}
