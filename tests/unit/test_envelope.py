"""contract §3 and §4: what is an event, and the reason code for everything that is not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from nextbest.core.envelope import Reason, Rejected, parse

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def envelope(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": "e-1",
        "source": "/web/storefront",
        "type": "cart.item_added",
        "time": "2026-11-22T11:59:00Z",
        "subject": "c-1",
        "data": {"sku": "A1", "qty": 2, "price": 19.5},
    }
    document.update(changes)
    return {k: v for k, v in document.items() if v is not ...}


def read(document: Any, channel: str = "web", headers: Any = ()) -> Any:
    return parse(orjson.dumps(document), headers, channel, now=NOW)


def test_structured_event_is_read() -> None:
    event = read(envelope())
    assert (event.id, event.type, event.subject, event.channel) == (
        "e-1",
        "cart.item_added",
        "c-1",
        "web",
    )
    assert event.time == datetime(2026, 11, 22, 11, 59, tzinfo=UTC)
    assert event.data == {"sku": "A1", "qty": 2, "price": 19.5}


def test_binary_mode_reads_ce_headers_and_data_value() -> None:
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"e-2"),
        ("ce_source", b"/app"),
        ("ce_type", b"search.performed"),
        ("ce_time", b"2026-11-22T11:59:30.250+01:00"),
        ("ce_subject", b"c-9"),
        ("content-type", b"application/json"),
    ]
    event = parse(b'{"query": "red shoes", "results": 0}', headers, "mobile", now=NOW)
    assert (event.id, event.subject, event.channel) == ("e-2", "c-9", "mobile")
    assert event.time == datetime(2026, 11, 22, 10, 59, 30, 250000, tzinfo=UTC)
    assert event.data == {"query": "red shoes", "results": 0}


def test_structured_content_type_wins_over_stray_ce_headers() -> None:
    headers = [("content-type", b"application/cloudevents+json"), ("ce_specversion", b"1.0")]
    assert read(envelope(), headers=headers).id == "e-1"


def test_time_far_ahead_of_the_clock_is_the_arrival_time() -> None:
    ahead = (NOW + timedelta(minutes=6)).isoformat()
    assert read(envelope(time=ahead)).time == NOW
    close = NOW + timedelta(minutes=4)
    assert read(envelope(time=close.isoformat())).time == close


def test_unknown_types_are_accepted_with_any_data() -> None:
    event = read(envelope(type="loyalty.points_earned", data=[1, 2]))
    assert event.type == "loyalty.points_earned"
    assert event.data == {}


def test_types_without_fields_accept_missing_data() -> None:
    assert read(envelope(type="checkout.started", data=...)).data == {}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xfe{}", Reason.NOT_UTF8),
        (b"not json", Reason.INVALID_JSON),
        (b"", Reason.INVALID_JSON),
        (b"[1, 2]", Reason.INVALID_ENVELOPE),
        (b"x" * 65537, Reason.TOO_LARGE),
    ],
)
def test_undecodable_values(value: bytes, reason: Reason) -> None:
    with pytest.raises(Rejected) as caught:
        parse(value, (), "web", now=NOW)
    assert caught.value.reason is reason
    assert caught.value.message


def test_tombstone_is_rejected() -> None:
    with pytest.raises(Rejected) as caught:
        parse(None, (), "web", now=NOW)
    assert caught.value.reason is Reason.INVALID_JSON


@pytest.mark.parametrize(
    ("changes", "reason", "mentions"),
    [
        ({"specversion": "0.3"}, Reason.INVALID_ENVELOPE, "specversion"),
        ({"specversion": ...}, Reason.INVALID_ENVELOPE, "specversion"),
        ({"id": ""}, Reason.INVALID_ENVELOPE, "id"),
        ({"id": "x" * 257}, Reason.INVALID_ENVELOPE, "id"),
        ({"id": 7}, Reason.INVALID_ENVELOPE, "id"),
        ({"source": ...}, Reason.INVALID_ENVELOPE, "source"),
        ({"type": ...}, Reason.INVALID_ENVELOPE, "type"),
        ({"subject": ...}, Reason.INVALID_ENVELOPE, "subject"),
        ({"subject": "c" * 129}, Reason.INVALID_ENVELOPE, "subject"),
        ({"time": ...}, Reason.INVALID_ENVELOPE, "time"),
        ({"time": "yesterday"}, Reason.INVALID_ENVELOPE, "time"),
        ({"time": "2026-11-22"}, Reason.INVALID_ENVELOPE, "time"),
        ({"time": "2026-11-22T11:59:00"}, Reason.INVALID_ENVELOPE, "time"),
        ({"time": "2026-11-22T11:59:00.000"}, Reason.INVALID_ENVELOPE, "UTC offset"),
        ({"channel": "mobile"}, Reason.CHANNEL_MISMATCH, "mobile"),
        ({"data": "A1"}, Reason.INVALID_DATA, "object"),
        ({"data": {"sku": "A1", "qty": 0, "price": 1}}, Reason.INVALID_DATA, "qty"),
        ({"data": {"sku": "A1", "qty": 1.5, "price": 1}}, Reason.INVALID_DATA, "qty"),
        ({"data": {"sku": "A1", "qty": True, "price": 1}}, Reason.INVALID_DATA, "qty"),
        ({"data": {"sku": "A1", "qty": 1, "price": -1}}, Reason.INVALID_DATA, "price"),
        ({"data": {"qty": 1, "price": 1}}, Reason.INVALID_DATA, "sku"),
        (
            {"type": "page.viewed", "data": {"page_type": "basement"}},
            Reason.INVALID_DATA,
            "page_type",
        ),
        ({"type": "search.performed", "data": {"query": "x"}}, Reason.INVALID_DATA, "results"),
        (
            {"type": "consent.updated", "data": {"email": "yes"}},
            Reason.INVALID_DATA,
            "email",
        ),
        (
            {"type": "social.mentioned", "data": {"sentiment": "angry"}},
            Reason.INVALID_DATA,
            "sentiment",
        ),
    ],
)
def test_invalid_events(changes: dict[str, Any], reason: Reason, mentions: str) -> None:
    with pytest.raises(Rejected) as caught:
        read(envelope(**changes))
    assert caught.value.reason is reason
    assert mentions in caught.value.message


def test_matching_channel_attribute_is_fine() -> None:
    assert read(envelope(channel="web")).channel == "web"


def test_optional_fields_may_be_null_or_absent() -> None:
    event = read(envelope(type="product.viewed", data={"sku": "A1", "price": None}))
    assert event.data["sku"] == "A1"


# --- contract v0.2 §10: subjecttype -----------------------------------------------------


def test_without_subjecttype_the_subject_is_a_customer_id() -> None:
    assert read(envelope()).subjecttype == "customer"
    assert read(envelope(subjecttype="customer")).subjecttype == "customer"


@pytest.mark.parametrize("kind", ["anonymous", "device", "loyalty", "phone", "email", "chat"])
def test_subjecttype_names_the_kind_of_identifier(kind: str) -> None:
    event = read(envelope(subject="h-4f2a", subjecttype=kind))
    assert (event.subjecttype, event.subject) == (kind, "h-4f2a")


def test_subjecttype_in_binary_mode_is_the_ce_subjecttype_header() -> None:
    headers = [
        ("ce_specversion", b"1.0"), ("ce_id", b"e-1"), ("ce_source", b"/t"),
        ("ce_type", b"session.started"), ("ce_time", b"2026-11-22T11:59:00Z"),
        ("ce_subject", b"ck-1"), ("ce_subjecttype", b"anonymous"),
    ]  # fmt: skip
    assert parse(b"{}", headers, "web", now=NOW).subjecttype == "anonymous"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"subjecttype": "fax"}, "subjecttype 'fax' is not one of"),
        ({"subjecttype": 7}, "subjecttype 7 is not one of"),
        ({"subjecttype": "phone", "subject": "undefined"}, "is a placeholder"),
        ({"subjecttype": "anonymous", "subject": " NULL "}, "is a placeholder"),
        ({"subjecttype": "device", "subject": "0"}, "is a placeholder"),
    ],
)
def test_an_unknown_kind_or_a_placeholder_subject_is_invalid_envelope(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(Rejected) as rejected:
        read(envelope(**changes))
    assert rejected.value.reason is Reason.INVALID_ENVELOPE
    assert message in rejected.value.message


def test_a_customer_id_that_looks_like_a_placeholder_is_still_one() -> None:
    """v0.1 accepted any customer id; a customer "0" stays valid."""
    assert read(envelope(subject="0")).subject == "0"


def test_the_configured_types_are_the_ones_accepted() -> None:
    document = orjson.dumps(envelope(subjecttype="member-card"))
    with pytest.raises(Rejected):
        parse(document, (), "web", now=NOW)
    event = parse(document, (), "web", now=NOW, subject_types=("customer", "member-card"))
    assert event.subjecttype == "member-card"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"identities": [{"type": "Phone", "id": "x"}], "method": "login"}, "is not a type name"),
        ({"identities": [{"type": "phone", "id": "x" * 129}], "method": "login"}, "at most 128"),
        ({"identities": [{"type": "phone", "id": "a\nb"}], "method": "login"}, "no control"),
    ],
)
def test_identifiers_in_identity_data_are_well_formed(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(Rejected) as rejected:
        read(envelope(type="identity.linked", data=data))
    assert rejected.value.reason is Reason.INVALID_DATA
    assert problem in rejected.value.message


def test_identity_data_of_an_unconfigured_type_is_for_the_link_to_refuse() -> None:
    """Well-formed but not configured: applied, then refused (reason type) and counted."""
    data = {"identities": [{"type": "fax", "id": "1"}, {"type": "phone", "id": ""}],
            "method": "login"}  # fmt: skip
    assert read(envelope(type="identity.linked", data=data)).data == data
    unlinked = read(envelope(type="identity.unlinked", data={"type": "fax", "id": "1"}))
    assert unlinked.type == "identity.unlinked"
    with pytest.raises(Rejected):
        read(envelope(type="identity.unlinked", data={"type": "fax", "id": "a\x00b"}))
