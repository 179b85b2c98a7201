"""The worker end to end on the real broker and Redis: signals, triggers, dead letters, mirror."""

from __future__ import annotations

import re
import uuid

import orjson
import pytest
from redis.asyncio import Redis

from tests.integration.harness import (
    Channels,
    WorkerProcess,
    about,
    applied,
    cloudevent,
    headers_of,
    read,
)

CUSTOMER_ID = re.compile(r"\bc-[0-9a-f]{12}\b")  # \b: not the tail of a uuid

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def customer() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


async def triggers_for(
    bootstrap: str, customer: str, channel: str, count: int = 1, settle: float = 1.0
) -> list[dict[str, object]]:
    records = await read(
        bootstrap, [f"triggers.{channel}"], about(customer), count=count, settle=settle
    )
    for record in records:
        assert headers_of(record)["content-type"] == (
            b"application/cloudevents+json; charset=utf-8"
        )
    return [orjson.loads(r.value) for r in records]


def data(trigger: dict[str, object]) -> dict[str, object]:
    value = trigger["data"]
    assert isinstance(value, dict)
    return value


SIGNALS = [
    # (steps, trigger channel, action, signal)
    (
        [("web", "page.viewed", {"page_type": "help"}), ("contact-center", "call.started", {})],
        "contact-center",
        "agent_handoff",
        "channel_switch",
    ),
    (
        [("mobile", "payment.failed", {"reason": "declined"})],
        "mobile",
        "payment_help",
        "payment_failed",
    ),
    (
        [("web", "search.performed", {"query": "zzz", "results": 0})] * 3,
        "web",
        "chat_offer",
        "search_frustration",
    ),
    (
        [("web", "consent.updated", {"mobile": True}), ("contact-center", "call.abandoned", {})],
        "mobile",
        "callback_offer",
        "contact_abandoned",
    ),
    ([("store", "product.scanned", {"sku": "TV-1"})], "store", "price_match", "showrooming"),
    (
        [
            ("web", "cart.item_added", {"sku": "A1", "qty": 1, "price": 10}),
            ("store", "store.visited", {"store_id": "s-1"}),
        ],
        "store",
        "associate_assist",
        "channel_switch",
    ),
    (
        [
            ("web", "cart.item_added", {"sku": "A1", "qty": 2, "price": 19.5}),
            ("mobile", "session.started", {}),
        ],
        "mobile",
        "resume_cart",
        "channel_switch",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("steps", "channel", "action", "signal"),
    SIGNALS,
    ids=[f"{s[3]}->{s[2]}" for s in SIGNALS],
)
async def test_signal_emits_its_trigger(
    worker: WorkerProcess,
    channels: Channels,
    kafka_bootstrap: str,
    redis_url: str,
    customer: str,
    steps: list[tuple[str, str, dict[str, object]]],
    channel: str,
    action: str,
    signal: str,
) -> None:
    last_id = ""
    for version, (source, type_, payload) in enumerate(steps, start=1):
        last_id = await channels.send(source, type_, customer, payload)
        # Kafka orders events within a topic only: a customer's events on two
        # channel topics sent a millisecond apart may be applied in either order
        await applied(redis_url, customer, version)
    [trigger] = await triggers_for(kafka_bootstrap, customer, channel)
    assert trigger["type"] == "nextbest.trigger"
    assert trigger["source"] == "/nextbest"
    assert trigger["specversion"] == "1.0"
    assert trigger["subject"] == customer
    assert trigger["channel"] == channel
    body = data(trigger)
    assert (body["action"], body["signal"], body["caused_by"]) == (action, signal, last_id)
    assert isinstance(body["reason"], str)
    assert body["reason"].endswith(".")
    context = body["context"]
    assert isinstance(context, dict)
    assert context["customer_id"] == customer
    assert context["version"] == len(steps)


async def test_events_keyed_otherwise_reach_the_customers_state(
    worker: WorkerProcess, channels: Channels, kafka_bootstrap: str, redis_url: str, customer: str
) -> None:
    cart = {"sku": "K1", "qty": 3, "price": 2.5}
    await channels.send("web", "cart.item_added", customer, cart, key=b"session-77")
    await channels.send("web", "product.viewed", customer, {"sku": "K2"}, key=None)
    # a repartition hop may reorder against directly keyed events: let both land first
    await applied(redis_url, customer, 2)
    await channels.send("mobile", "session.started", customer)  # keyed by the customer
    [trigger] = await triggers_for(kafka_bootstrap, customer, "mobile")
    context = data(trigger)["context"]
    assert isinstance(context, dict)
    assert context["cart"] == {"items": [{"sku": "K1", "qty": 3, "price": 2.5}], "value": 7.5}
    assert context["recent_products"] == ["K2"]
    assert context["version"] == 3


async def test_repeated_event_ids_and_cooldown_emit_once(
    worker: WorkerProcess, channels: Channels, kafka_bootstrap: str, redis_url: str, customer: str
) -> None:
    await channels.send("web", "session.started", customer)
    await applied(redis_url, customer, 1)
    switch = await channels.send("chat", "chat.started", customer)
    await channels.send("chat", "chat.started", customer, id_=switch)  # a repeat
    await applied(redis_url, customer, 2)
    await channels.send("web", "session.started", customer)
    await applied(redis_url, customer, 3)
    await channels.send("chat", "chat.started", customer)  # inside the cooldown
    triggers = await triggers_for(kafka_bootstrap, customer, "chat", settle=2.0)
    assert [data(t)["caused_by"] for t in triggers] == [switch]


REJECTS = [
    ("not_utf8", b"\xff\xfe\x00{", None),
    ("invalid_json", b"{not json", None),
    ("too_large", b"{" + b" " * 70_000 + b"}", None),
    ("invalid_envelope", orjson.dumps({"specversion": "1.0", "id": "x"}), None),
    ("channel_mismatch", None, {"channel": "store"}),
    ("invalid_data", None, {"data": {"sku": "A1", "qty": 0, "price": 1}}),
]


@pytest.mark.parametrize(("reason", "value", "changes"), REJECTS, ids=[r[0] for r in REJECTS])
async def test_bad_records_are_dead_lettered(
    worker: WorkerProcess,
    channels: Channels,
    kafka_bootstrap: str,
    reason: str,
    value: bytes | None,
    changes: dict[str, object] | None,
) -> None:
    marker = uuid.uuid4().hex.encode()
    if value is None:
        value = cloudevent("cart.item_added", "c-dlq", {"sku": "A1", "qty": 1, "price": 1})
        document = {**orjson.loads(value), **(changes or {})}
        value = orjson.dumps(document)
    before = worker.metric("nextbest_events_rejected_total", channel="web", reason=reason)
    await channels.send_raw("web", value, key=marker, headers=[("trace", marker)])
    [record] = await read(
        kafka_bootstrap, ["events.deadletter"], lambda r: r.key == marker, settle=0.5
    )
    assert record.value == value  # the original bytes, unchanged
    headers = headers_of(record)
    assert headers["nextbest.error.reason"] == reason.encode()
    assert headers["nextbest.error.message"]
    assert headers["nextbest.error.topic"] == b"events.web"
    assert int(headers["nextbest.error.partition"]) >= 0
    assert int(headers["nextbest.error.offset"]) >= 0
    assert headers["trace"] == marker  # the producer's own headers travel along
    after = worker.metric("nextbest_events_rejected_total", channel="web", reason=reason)
    assert after == before + 1


async def test_context_is_mirrored_to_redis_with_a_ttl(
    worker: WorkerProcess, channels: Channels, redis_url: str, customer: str
) -> None:
    await channels.send("web", "cart.item_added", customer, {"sku": "R1", "qty": 1, "price": 3})
    await channels.send("web", "search.performed", customer, {"query": "red", "results": 2})
    await channels.send("web", "consent.updated", customer, {"email": True})
    document = await applied(redis_url, customer, 3)
    client: Redis = Redis.from_url(redis_url)
    try:
        ttl = await client.ttl(f"nextbest:context:{customer}")
    finally:
        await client.aclose()
    assert 29 * 86400 < ttl <= 30 * 86400
    assert document["cart"]["value"] == 3.0
    assert document["recent_searches"][0]["query"] == "red"
    assert document["consent"] == {"email": True, "mobile": False}
    assert set(document) >= {
        "customer_id", "version", "updated_at", "last_event_at", "current_channel", "channels",
        "journey", "cart", "checkout", "recent_searches", "recent_products", "consent",
        "last_triggers",
    }  # fmt: skip


def test_metrics_name_no_customer(worker: WorkerProcess) -> None:
    text = worker.metrics()
    assert "nextbest_events_total" in text
    assert "nextbest_triggers_total" in text
    assert "nextbest_trigger_latency_seconds_count" in text
    assert "nextbest_context_mirror_lag_seconds_count" in text
    assert CUSTOMER_ID.search(text) is None


def test_worker_log_names_no_customer(worker: WorkerProcess) -> None:
    log = worker.log_path.read_text(errors="replace")
    assert "Ready" in log
    assert CUSTOMER_ID.search(log) is None
    assert "c-dlq" not in log
