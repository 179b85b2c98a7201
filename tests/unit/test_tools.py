"""The tools' pure parts: capture lines, validate's verdicts, send's records, replay's rules."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import orjson
import pytest

from nextbest.core.envelope import parse
from nextbest.settings import load_settings
from nextbest.tools import capture, deadletter, send, validate
from tests import contract

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SETTINGS = load_settings(max_event_bytes=2000)
EVENT = {
    "specversion": "1.0",
    "id": "e-1",
    "source": "/web/storefront",
    "type": "cart.item_added",
    "time": "2026-11-22T11:59:00Z",
    "subject": "c-1",
    "data": {"sku": "A1", "qty": 2, "price": 19.5},
}
KCAT = (
    b'{"topic":"events.mobile","partition":4,"offset":7,"tstype":"create","ts":1764000000000,'
    b'"broker":1,"headers":["ce_specversion","1.0","ce_id","e-2","ce_source","/app",'
    b'"ce_type","search.performed","ce_time","2026-11-22T11:59:30.250+01:00","ce_subject","c-9",'
    b'"content-type","application/json"],"key":"c-9","payload":"{\\"query\\": \\"x\\", '
    b'\\"results\\": 0}"}'
)


def test_a_kcat_json_line_is_a_record() -> None:
    record = capture.read(KCAT)
    assert record is not None
    assert (record.topic, record.partition, record.offset, record.key) == (
        "events.mobile", 4, 7, b"c-9"
    )  # fmt: skip
    assert record.header("ce_type") == b"search.performed"
    assert record.value == b'{"query": "x", "results": 0}'
    assert record.extra == {"tstype": "create", "broker": 1}


def test_kcat_writes_raw_bytes_into_the_line_and_they_come_back() -> None:
    line = b'{"topic":"events.web","key":"c-2","payload":"\xff\xfe{}"}'
    record = capture.read(line)
    assert record is not None
    assert record.value == b"\xff\xfe{}"


@pytest.mark.parametrize(
    "headers",
    [
        ["ce_id", "e-1", "ce_type", "x"],
        [["ce_id", "e-1"], ["ce_type", "x"]],
        {"ce_id": "e-1", "ce_type": "x"},
    ],
)
def test_headers_in_each_accepted_form(headers: object) -> None:
    record = capture.read(orjson.dumps({"headers": headers, "payload": ""}))
    assert record is not None
    assert list(record.headers) == [("ce_id", b"e-1"), ("ce_type", b"x")]


@pytest.mark.parametrize(
    "line",
    [orjson.dumps(EVENT), b"not json", b"[1, 2]", orjson.dumps({"topic": "events.web"})],
)
def test_anything_else_is_not_a_record(line: bytes) -> None:
    assert capture.read(line) is None


@pytest.mark.parametrize(
    "document",
    [{"payload": 7}, {"payload": "", "headers": ["odd"]}, {"payload_base64": "%%%"}],
)
def test_a_broken_record_says_so(document: dict[str, object]) -> None:
    with pytest.raises(capture.CaptureError):
        capture.read(orjson.dumps(document))


@pytest.mark.parametrize(
    ("value", "key"), [(b"\xff\xfe{}", b"c-1"), (b'{"a": 1}', b"\x00\xff"), (None, None)]
)
def test_write_then_read_gives_the_record_back(value: bytes | None, key: bytes | None) -> None:
    record = capture.Record(
        value=value, headers=[("h", b"v")], key=key, topic="events.deadletter", partition=1,
        offset=2, timestamp_ms=3,
    )  # fmt: skip
    line = capture.write(record)
    orjson.loads(line)  # valid JSON whatever the bytes
    assert capture.read(line) == record


def lines(*items: bytes) -> list[str]:
    out = io.StringIO()
    validate.check_lines([*(i + b"\n" for i in items)], SETTINGS, channel=None, out=out, now=NOW)
    return out.getvalue().splitlines()


def test_validate_reads_events_and_captures_line_by_line() -> None:
    big = orjson.dumps({**EVENT, "data": {**EVENT["data"], "pad": "x" * 3000}})
    assert lines(orjson.dumps(EVENT), b"", b"\xff", big, KCAT) == [
        "line 1: ok (cart.item_added, id e-1, channel web)",
        "line 3: not_utf8: the record value is not UTF-8",
        f"line 4: too_large: the record value has {len(big)} bytes, over 2000",
        "line 5: ok (search.performed, id e-2, channel mobile)",
    ]


def test_validate_takes_the_channel_from_the_topic_or_the_event() -> None:
    claimed = orjson.dumps({**EVENT, "channel": "store"})
    assert lines(claimed) == ["line 1: ok (cart.item_added, id e-1, channel store)"]
    letter = capture.write(
        capture.Record(
            value=claimed,
            topic="events.deadletter",
            headers=[("nextbest.error.topic", b"events.web")],
        )
    )
    assert lines(letter)[0].startswith("line 1: channel_mismatch: attribute channel 'store'")
    elsewhere = capture.write(capture.Record(value=orjson.dumps(EVENT), topic="events.moon"))
    assert lines(elsewhere)[0].startswith("line 1: the engine reads no topic events.moon")


def test_validate_hints_at_pretty_printed_json() -> None:
    out = io.StringIO()
    summary = validate.check_lines(
        [b"{\n", b'  "id": "x"\n', b"}\n"], SETTINGS, channel="web", out=out
    )
    assert summary.records == 3
    assert summary.valid == 0
    assert summary.hints == {validate.HINT_PRETTY}


@pytest.mark.parametrize("binary", [False, True])
def test_send_builds_what_the_parser_and_the_schemas_accept(binary: bool) -> None:
    outgoing = send.build(
        "web", "cart.item_added", "c-1", {"sku": "A1", "qty": 1, "price": 2.5}, binary=binary,
        subject_type="customer",
    )  # fmt: skip
    assert outgoing.topic == "events.web"
    assert outgoing.key == b"c-1"
    event = parse(outgoing.value, outgoing.headers, "web", now=datetime.now(UTC))
    assert event.id == outgoing.event_id
    if binary:
        contract.check("event-headers.json", contract.header_map(outgoing.headers))
        assert orjson.loads(outgoing.value) == {"sku": "A1", "qty": 1, "price": 2.5}
    else:
        contract.check("cloudevent.json", orjson.loads(outgoing.value))


def test_replay_headers_drop_the_errors_and_mark_the_replay() -> None:
    headers = [
        ("trace", b"t-1"),
        ("nextbest.error.reason", b"too_large"),
        ("nextbest.error.topic", b"events.web"),
        ("nextbest.replay.from", b"events.deadletter/0/1"),
    ]
    sent = deadletter.replay_headers(headers, "events.deadletter/2/9", NOW)
    assert sent == [
        ("trace", b"t-1"),
        ("nextbest.replay.from", b"events.deadletter/2/9"),
        ("nextbest.replay.at", b"2026-11-22T12:00:00.000Z"),
    ]
    contract.check(
        "deadletter-headers.json",
        contract.header_map(
            [*sent, *headers[1:3], ("nextbest.error.message", b"m"),
             ("nextbest.error.partition", b"0"), ("nextbest.error.offset", b"5")]
        ),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "again", "kind"),
    [
        ({"nextbest.error.topic": b"events.web"}, False, None),
        ({}, False, "no original topic"),
        ({"nextbest.error.topic": b"events.moon"}, False, "not an events topic"),
        ({"nextbest.error.topic": b"events.web", "nextbest.replay.from": b"x"}, False, "already"),
        ({"nextbest.error.topic": b"events.web", "nextbest.replay.from": b"x"}, True, None),
    ],
)
def test_replay_refuses_what_cannot_or_should_not_go(
    headers: dict[str, bytes], again: bool, kind: str | None
) -> None:
    found = deadletter._refusal(headers, "events.deadletter/0/1", set(), again, SETTINGS)
    if kind is None:
        assert found is None
    else:
        assert found is not None
        assert found[0].startswith(kind)


def test_replay_skips_a_dead_letter_whose_replay_failed_again() -> None:
    headers = {"nextbest.error.topic": b"events.web"}
    tried = {"events.deadletter/0/1"}
    assert deadletter._refusal(headers, "events.deadletter/0/1", tried, False, SETTINGS) == (
        deadletter.AGAIN,
        "its replay was rejected again (--again sends it anyway)",
    )
    assert deadletter._refusal(headers, "events.deadletter/0/1", tried, True, SETTINGS) is None
    assert deadletter._refusal(headers, "events.deadletter/0/2", tried, False, SETTINGS) is None


def test_replay_reads_times_and_durations_ago() -> None:
    assert deadletter._moment("2h", NOW) == datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    assert deadletter._moment("2026-11-22T11:00:00+01:00", NOW) == datetime(
        2026, 11, 22, 10, 0, tzinfo=UTC
    )
    for bad in ("yesterday", "2026-11-22T11:00:00"):
        with pytest.raises(ValueError, match=repr(bad)):
            deadletter._moment(bad, NOW)
