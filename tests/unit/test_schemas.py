"""The JSON Schemas and the envelope parser agree, both ways.

The worker decides with :func:`nextbest.core.envelope.parse`; channel teams check
their producers with the schemas. For the data of every known event type, every
field, and a spread of values of every JSON kind, the two give the same verdict:
what the parser dead-letters as ``invalid_data`` the schema rejects, and what it
applies the schema accepts. Envelope attributes are checked one way: the schema
never accepts what the worker rejects (it is stricter on time formats the parser
forgives, e.g. ``+0100``).

One difference JSON Schema cannot express is pinned below: an integer written
with a fraction (``2.0``) is a JSON Schema integer but the parser rejects it.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from nextbest import schemas
from nextbest.core.envelope import DATA_FIELDS, Reason, Rejected, parse
from tests import contract

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
MISSING = object()


def envelope(type_: str = "session.started", data: Any = MISSING, **changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": "e-1",
        "source": "/web/storefront",
        "type": type_,
        "time": "2026-11-22T11:59:00Z",
        "subject": "c-1",
    }
    if data is not MISSING:
        document["data"] = data
    document.update(changes)
    return {k: v for k, v in document.items() if v is not MISSING}


def parser_verdict(document: dict[str, Any]) -> Reason | None:
    """None when the worker applies it, else its dead-letter reason."""
    try:
        parse(orjson.dumps(document), (), "web", now=NOW)
    except Rejected as rejection:
        return rejection.reason
    return None


def schema_accepts(document: dict[str, Any]) -> bool:
    return not contract.errors("cloudevent.json", document)


def example(type_: str) -> dict[str, Any]:
    """A valid data object of ``type_``: its schema's first example."""
    found: dict[str, Any] = copy.deepcopy(schemas.load(f"data/{type_}.json")["examples"][0])
    return found


# --- the schema files themselves ---------------------------------------------------


@pytest.mark.parametrize("name", schemas.names())
def test_each_schema_is_valid_2020_12_and_its_examples_pass(name: str) -> None:
    schema = schemas.load(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert schema.get("title"), "say what it is"
    assert schema.get("description"), "say what it is for"
    assert schema.get("examples"), "an example helps the reader and is checked here"
    for instance in schema["examples"]:
        contract.check(name, instance)


def test_a_data_schema_per_known_type_and_no_other() -> None:
    assert sorted(schemas.event_types()) == sorted(DATA_FIELDS)


@pytest.mark.parametrize("type_", sorted(DATA_FIELDS))
def test_data_schema_names_the_parsers_fields(type_: str) -> None:
    schema = schemas.load(f"data/{type_}.json")
    fields = DATA_FIELDS[type_]
    assert sorted(schema.get("required", [])) == sorted(n for n, f in fields.items() if f.required)
    assert sorted(schema["properties"]) == sorted(fields)
    assert parser_verdict(envelope(type_, example(type_))) is None


def test_envelope_examples_are_what_the_worker_applies() -> None:
    for document in schemas.load("cloudevent.json")["examples"]:
        assert parser_verdict(document) is None


def test_reading_a_name_that_is_not_a_schema_fails() -> None:
    with pytest.raises(KeyError):
        schemas.read("../api/openapi.json")


# --- data: the same verdict both ways ---------------------------------------------

PROBES: list[Any] = [
    None, True, False, 0, 1, 3, -1, 0.5, -0.5, 19.5, "", "x", "home", "positive", "login",
    [], [1], ["x"], [{"type": "customer", "id": "c-2"}], [{"type": "customer"}],
    [{"type": 1, "id": "x"}], [{"type": "phone", "id": ""}], {}, {"sku": "x"},
]  # fmt: skip
INTEGRAL_FLOATS = [1.0, 3.0]  # a JSON Schema integer; the parser wants an int literal


def data_cases() -> list[tuple[str, str, Any]]:
    cases = []
    for type_, fields in sorted(DATA_FIELDS.items()):
        for name, field in fields.items():
            enum = schemas.load(f"data/{type_}.json")["properties"][name].get("enum", [])
            for value in [*PROBES, *(v for v in enum if v is not None), MISSING]:
                cases.append((type_, name, value))
            del field
    return cases


@pytest.mark.parametrize(("type_", "field", "value"), data_cases())
def test_parser_and_schema_agree_on_each_field(type_: str, field: str, value: Any) -> None:
    data = example(type_)
    if value is MISSING:
        data.pop(field, None)
    else:
        data[field] = value
    document = envelope(type_, data)
    verdict = parser_verdict(document)
    assert verdict in (None, Reason.INVALID_DATA)
    assert schema_accepts(document) == (verdict is None), (
        f"{type_} data.{field}={value!r}: parser says {verdict or 'ok'}, "
        f"schema says {contract.errors('cloudevent.json', document) or 'ok'}"
    )


@pytest.mark.parametrize("type_", sorted(DATA_FIELDS))
@pytest.mark.parametrize("data", [MISSING, None, "A1", 7, [], [{}], True])
def test_parser_and_schema_agree_on_data_that_is_not_an_object(type_: str, data: Any) -> None:
    document = envelope(type_, data)
    verdict = parser_verdict(document)
    assert schema_accepts(document) == (verdict is None), (type_, data, verdict)


def test_unknown_types_take_any_data_in_both() -> None:
    for data in (MISSING, None, [1, 2], "text", {"anything": True}):
        document = envelope("loyalty.points_earned", data)
        assert parser_verdict(document) is None
        assert schema_accepts(document)


INTEGER_FIELDS = [
    (type_, name)
    for type_, fields in sorted(DATA_FIELDS.items())
    for name, field in fields.items()
    if field.expected.startswith("an integer")
]


@pytest.mark.parametrize(("type_", "field"), INTEGER_FIELDS)
def test_an_integer_written_with_a_fraction_is_the_one_known_difference(
    type_: str, field: str
) -> None:
    """JSON Schema cannot tell 2.0 from 2; the worker rejects 2.0, as the schema says in words."""
    description = schemas.load(f"data/{type_}.json")["properties"][field]["description"]
    assert "not 2.0" in description
    for value in INTEGRAL_FLOATS:
        document = envelope(type_, {**example(type_), field: value})
        assert parser_verdict(document) is Reason.INVALID_DATA
        assert schema_accepts(document)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(-5, 5, allow_nan=False).filter(lambda f: not f.is_integer())
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=3),
    lambda inner: st.lists(inner, max_size=2)
    | st.dictionaries(st.sampled_from(["type", "id", "x"]), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip


@st.composite
def data_objects(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    type_ = draw(st.sampled_from(sorted(DATA_FIELDS)))
    names = [*sorted(DATA_FIELDS[type_]), "extra"]  # extra: ignored by both
    data = draw(st.dictionaries(st.sampled_from(names), JSON_VALUES, max_size=len(names)))
    if draw(st.booleans()):  # often start from a valid object, so acceptance is explored too
        data = {**example(type_), **data}
    return type_, data


@settings(max_examples=400, deadline=None)
@given(data_objects())
def test_parser_and_schema_agree_on_arbitrary_data(case: tuple[str, dict[str, Any]]) -> None:
    type_, data = case
    document = envelope(type_, data)
    verdict = parser_verdict(document)
    assert schema_accepts(document) == (verdict is None), (type_, data, verdict)


# --- the envelope: whatever the schema accepts, the worker applies -----------------

ENVELOPE_PROBES: list[dict[str, Any]] = [
    {"specversion": "0.3"}, {"specversion": 1.0}, {"specversion": MISSING},
    {"id": ""}, {"id": "x" * 257}, {"id": 7}, {"id": None}, {"id": MISSING}, {"id": "x" * 256},
    {"source": ""}, {"source": 1}, {"source": MISSING}, {"source": "/" + "s" * 4096},
    {"type": ""}, {"type": MISSING}, {"type": ["session.started"]},
    {"subject": ""}, {"subject": "c" * 129}, {"subject": "c" * 128}, {"subject": MISSING},
    {"subject": 42},
    {"time": MISSING}, {"time": "yesterday"}, {"time": "2026-11-22"},
    {"time": "2026-11-22T11:59:00"}, {"time": "2026-11-22T11:59:00.000"},
    {"time": "2026-11-22T11:59Z"}, {"time": "2026-11-22T11:59:00+0100"},
    {"time": "2026-02-30T11:59:00Z"}, {"time": "2026-11-22T24:00:00Z"},
    {"time": "2026-11-22 11:59:00.123456789+01:00"}, {"time": "2026-11-22t11:59:00z"},
    {"time": 1764000000}, {"channel": "web"}, {"channel": 5}, {"subjecttype": "phone"},
    {"datacontenttype": "application/json"},
]  # fmt: skip


@pytest.mark.parametrize("changes", ENVELOPE_PROBES, ids=repr)
def test_the_schema_never_accepts_what_the_worker_rejects(changes: dict[str, Any]) -> None:
    document = envelope(**changes)
    verdict = parser_verdict(document)
    if schema_accepts(document):
        assert verdict is None, f"schema accepts {changes}, the worker rejects it: {verdict}"
    if verdict is not None:
        assert verdict in (Reason.INVALID_ENVELOPE, Reason.CHANNEL_MISMATCH)


def test_the_schema_accepts_the_usual_spellings_of_time() -> None:
    spellings = ("2026-11-22T11:59:00Z", "2026-11-22T12:59:00.2+01:00", "2026-11-22T06:59:00-05:00")
    for value in spellings:
        document = envelope(time=value)
        assert parser_verdict(document) is None
        assert schema_accepts(document), value


def test_a_binary_mode_capture_matches_the_header_schema() -> None:
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"e-2"),
        ("ce_source", b"/app"),
        ("ce_type", b"search.performed"),
        ("ce_time", b"2026-11-22T11:59:30.250+01:00"),
        ("ce_subject", b"c-9"),
        ("content-type", b"application/json"),
    ]
    value = b'{"query": "red shoes", "results": 0}'
    assert parse(value, headers, "mobile", now=NOW).type == "search.performed"
    contract.check("event-headers.json", contract.header_map(headers))
    contract.check(f"data/{'search.performed'}.json", orjson.loads(value))
    structured = [*headers[:-1], ("content-type", b"application/cloudevents+json")]
    assert contract.errors("event-headers.json", contract.header_map(structured))
