"""CloudEvents 1.0 envelopes off Kafka records (contract §3) and why one is rejected (§4).

:func:`parse` turns a record's value and headers into an :class:`Event`, or raises
:class:`Rejected` carrying one of the contract's reason codes. It accepts the
structured content mode (the whole event as a JSON object in the value) and the
binary content mode (attributes in ``ce_*`` headers, ``data`` as the value).

Contract v0.2 (§10): the extension attribute ``subjecttype`` (binary mode:
``ce_subjecttype``) says what kind of identifier ``subject`` is: ``customer``
when absent, else one of the configured identity types; any other value is
``invalid_envelope``, and so is a placeholder ``subject`` ("", "null",
"undefined", ...) of a type other than ``customer`` — it would make one
profile of everyone whose channel app sent it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

import orjson

from nextbest.core.identity import CUSTOMER, DEFAULT_TYPES, ID_LONGEST, is_blocked

# C0 controls and DEL: never in a customer id (the table keeps its own entries
# under keys that start with NUL, and control characters have no business in logs)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
TYPE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")  # an identity type (NEXTBEST_IDENTITY_TYPES)

DEFAULT_CHANNELS = ("web", "mobile", "store", "contact-center", "chat", "email", "social")

Headers = Iterable[tuple[str, bytes]]


class Reason(StrEnum):
    """Why a record was not applied: the ``nextbest.error.reason`` header of §4."""

    NOT_UTF8 = "not_utf8"
    INVALID_JSON = "invalid_json"
    TOO_LARGE = "too_large"
    INVALID_ENVELOPE = "invalid_envelope"
    CHANNEL_MISMATCH = "channel_mismatch"
    INVALID_DATA = "invalid_data"
    INTERNAL = "internal"


class Rejected(Exception):
    """A record that is not a valid event; ``reason`` is a :class:`Reason` code."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Event(NamedTuple):
    """A valid event. ``time`` is aware UTC, already clamped to the engine's clock.

    A named tuple: one is built per record, and a frozen dataclass costs
    several times as much to build.
    """

    id: str
    source: str
    type: str
    time: datetime
    subject: str
    channel: str
    data: Mapping[str, Any]
    # v0.2: the kind of identifier ``subject`` is, and the state key of the profile
    # the adapter resolved it to (None: ``subject`` itself, a customer id)
    subjecttype: str = CUSTOMER
    profile: str | None = None


# --- data of the known event types -------------------------------------------------

Check = Callable[[object], bool]


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def _at_least(check: Check, floor: float) -> Check:
    return lambda value: check(value) and value >= floor  # type: ignore[operator]


def _one_of(*choices: str) -> Check:
    allowed = frozenset(choices)
    return lambda value: isinstance(value, str) and value in allowed


def _is_identities(value: object) -> bool:
    """A non-empty list of ``{"type": str, "id": str}`` objects (contract §10)."""
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(
            isinstance(item, dict)
            and isinstance(item.get("type"), str)
            and isinstance(item.get("id"), str)
            for item in value
        )
    )


@dataclass(frozen=True, slots=True)
class Field:
    check: Check
    expected: str
    required: bool = True


def _optional(check: Check, expected: str) -> Field:
    return Field(check, expected, required=False)


_QUEUE = {"queue_seconds": _optional(_at_least(_is_number, 0), "a number >= 0")}
_REASON = {"reason": _optional(_is_str, "a string")}

DATA_FIELDS: Mapping[str, Mapping[str, Field]] = {
    "session.started": {},
    "page.viewed": {
        "page_type": Field(
            _one_of("home", "category", "product", "help", "checkout", "other"),
            "one of home, category, product, help, checkout, other",
        ),
        "url": _optional(_is_str, "a string"),
    },
    "product.viewed": {
        "sku": Field(_is_str, "a string"),
        "price": _optional(_at_least(_is_number, 0), "a number >= 0"),
    },
    "search.performed": {
        "query": Field(_is_str, "a string"),
        "results": Field(_at_least(_is_int, 0), "an integer >= 0"),
    },
    "cart.item_added": {
        "sku": Field(_is_str, "a string"),
        "qty": Field(_at_least(_is_int, 1), "an integer >= 1"),
        "price": Field(_at_least(_is_number, 0), "a number >= 0"),
    },
    "cart.item_removed": {
        "sku": Field(_is_str, "a string"),
        "qty": Field(_at_least(_is_int, 1), "an integer >= 1"),
    },
    "checkout.started": {},
    "payment.failed": _REASON,
    "order.placed": {
        "order_id": Field(_is_str, "a string"),
        "value": _optional(_at_least(_is_number, 0), "a number >= 0"),
    },
    "store.visited": {"store_id": Field(_is_str, "a string")},
    "product.scanned": {
        "sku": Field(_is_str, "a string"),
        "store_id": _optional(_is_str, "a string"),
    },
    "call.started": _REASON,
    "call.ended": _REASON,
    "call.abandoned": _QUEUE,
    "chat.started": {},
    "chat.ended": {},
    "chat.abandoned": _QUEUE,
    "email.clicked": {"campaign": _optional(_is_str, "a string")},
    "social.mentioned": {
        "sentiment": _optional(
            _one_of("positive", "neutral", "negative"), "one of positive, neutral, negative"
        )
    },
    "consent.updated": {
        "email": _optional(_is_bool, "a boolean"),
        "mobile": _optional(_is_bool, "a boolean"),
    },
    # v0.2 (contract §10 and §11)
    "identity.linked": {
        "identities": Field(
            _is_identities, 'a non-empty list of {"type": string, "id": string} objects'
        ),
        "method": Field(
            _one_of("login", "loyalty_scan", "phone_verified", "email_click", "other"),
            "one of login, loyalty_scan, phone_verified, email_click, other",
        ),
    },
    "identity.unlinked": {
        "type": Field(_is_str, "a string"),
        "id": Field(_is_str, "a string"),
    },
    "customer.erased": {},
}


def _validate_data(event_type: str, data: object) -> Mapping[str, Any]:
    fields = DATA_FIELDS.get(event_type)
    if fields is None:  # other types are accepted; their data is not read
        return data if isinstance(data, dict) else {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise Rejected(Reason.INVALID_DATA, f"data of {event_type} must be an object")
    for name, field in fields.items():
        value = data.get(name)
        if value is None:
            if field.required:
                raise Rejected(Reason.INVALID_DATA, f"data.{name} of {event_type} is required")
            continue
        if not field.check(value):
            raise Rejected(
                Reason.INVALID_DATA, f"data.{name} of {event_type} must be {field.expected}"
            )
    return data


# --- attributes --------------------------------------------------------------------


def _text(attributes: Mapping[str, Any], name: str, longest: int) -> str:
    value = attributes.get(name)
    if not isinstance(value, str) or not value:
        raise Rejected(Reason.INVALID_ENVELOPE, f"attribute {name} must be a non-empty string")
    if len(value) > longest:
        raise Rejected(
            Reason.INVALID_ENVELOPE, f"attribute {name} is longer than {longest} characters"
        )
    return value


def _timestamp(attributes: Mapping[str, Any]) -> datetime:
    value = attributes.get("time")
    if not isinstance(value, str) or len(value) < 20 or value[10] not in "Tt ":
        raise Rejected(Reason.INVALID_ENVELOPE, "attribute time must be an RFC 3339 timestamp")
    try:
        moment = datetime.fromisoformat(value.upper())
    except ValueError:
        raise Rejected(
            Reason.INVALID_ENVELOPE, "attribute time must be an RFC 3339 timestamp"
        ) from None
    if moment.tzinfo is None:
        raise Rejected(Reason.INVALID_ENVELOPE, "attribute time needs a UTC offset")
    return moment.astimezone(UTC)


def _subjecttype(attributes: Mapping[str, Any], subject: str, types: Collection[str]) -> str:
    kind = attributes.get("subjecttype")
    if kind is None or kind == CUSTOMER:
        return CUSTOMER
    if not isinstance(kind, str) or kind not in types:
        raise Rejected(
            Reason.INVALID_ENVELOPE,
            f"attribute subjecttype {kind!r} is not one of {', '.join(types)}",
        )
    if is_blocked(subject):
        raise Rejected(
            Reason.INVALID_ENVELOPE,
            f"attribute subject {subject!r} is a placeholder, not a {kind} identifier",
        )
    return kind


def _identifier_problem(item: Mapping[str, Any]) -> str | None:
    kind, value = item.get("type"), item.get("id")
    if not isinstance(kind, str) or not TYPE_NAME.match(kind):
        return f"type {kind!r} is not a type name (a-z, 0-9, _ and -, at most 32)"
    if not isinstance(value, str) or len(value) > ID_LONGEST or _CONTROL.search(value):
        return f"id must be a string of at most {ID_LONGEST} characters, no control characters"
    return None


def _check_identities(event_type: str, data: Mapping[str, Any]) -> None:
    """The identifiers in ``identity.*`` data are well-formed (whether their type is
    configured is the link's business: an unknown one is refused, and counted)."""
    if event_type == "identity.linked":
        for index, item in enumerate(data["identities"]):
            problem = _identifier_problem(item)
            if problem is not None:
                raise Rejected(
                    Reason.INVALID_DATA, f"data.identities[{index}] of {event_type}: {problem}"
                )
    elif event_type == "identity.unlinked":
        problem = _identifier_problem(data)
        if problem is not None:
            raise Rejected(Reason.INVALID_DATA, f"data of {event_type}: {problem}")


def _event(
    attributes: Mapping[str, Any],
    data: object,
    channel: str,
    now: datetime,
    max_clock_skew: timedelta,
    types: Collection[str],
) -> Event:
    if attributes.get("specversion") != "1.0":
        raise Rejected(Reason.INVALID_ENVELOPE, 'attribute specversion must be "1.0"')
    event_id = _text(attributes, "id", 256)
    source = _text(attributes, "source", 4096)
    event_type = _text(attributes, "type", 256)
    subject = _text(attributes, "subject", 128)
    if _CONTROL.search(subject):
        raise Rejected(Reason.INVALID_ENVELOPE, "attribute subject contains control characters")
    subjecttype = _subjecttype(attributes, subject, types)
    moment = _timestamp(attributes)
    claimed = attributes.get("channel")
    if claimed is not None and claimed != channel:
        raise Rejected(
            Reason.CHANNEL_MISMATCH,
            f"attribute channel {claimed!r} disagrees with the topic's channel {channel!r}",
        )
    if moment > now + max_clock_skew:
        moment = now  # too far ahead of our clock: treated as the arrival time (§3)
    data = _validate_data(event_type, data)
    if event_type.startswith("identity."):
        _check_identities(event_type, data)
    return Event(event_id, source, event_type, moment, subject, channel, data, subjecttype)


def _json(value: bytes) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as error:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise Rejected(Reason.NOT_UTF8, "the record value is not UTF-8") from None
        raise Rejected(Reason.INVALID_JSON, f"the record value is not JSON: {error}") from None


def _binary_attributes(headers: Headers) -> dict[str, Any] | None:
    """The ``ce_*`` attributes of a binary-mode record, or None for structured mode."""
    attributes: dict[str, Any] = {}
    for name, raw in headers:
        if name.lower() == "content-type" and raw.startswith(b"application/cloudevents"):
            return None
        if name.startswith("ce_"):
            try:
                attributes[name[3:]] = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise Rejected(Reason.NOT_UTF8, f"header {name} is not UTF-8") from None
    return attributes if "specversion" in attributes else None


def parse(
    value: bytes | None,
    headers: Headers,
    channel: str,
    *,
    now: datetime,
    max_bytes: int = 65536,
    max_clock_skew: timedelta = timedelta(minutes=5),
    subject_types: Collection[str] = DEFAULT_TYPES,
) -> Event:
    """Read one record of ``events.<channel>``; raise :class:`Rejected` when it is not an event.

    ``subject_types`` are the identity types ``subjecttype`` may name (§10).
    """
    if value is None:
        raise Rejected(Reason.INVALID_JSON, "the record has no value")
    if len(value) > max_bytes:
        raise Rejected(
            Reason.TOO_LARGE, f"the record value has {len(value)} bytes, over {max_bytes}"
        )
    attributes = _binary_attributes(headers)
    if attributes is None:  # structured content mode
        document = _json(value)
        if not isinstance(document, dict):
            raise Rejected(Reason.INVALID_ENVELOPE, "the event must be a JSON object")
        return _event(document, document.get("data"), channel, now, max_clock_skew, subject_types)
    data = _json(value) if value else None
    return _event(attributes, data, channel, now, max_clock_skew, subject_types)
