"""Absence timers on the real broker, with second-scale durations.

Deadlines fire once, move with activity and are cancelled by an order. (Their
survival of ``kill -9`` and of a rebalance is in test_timer_failover.py: those
need no other worker consuming meanwhile.)
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import orjson
import pytest
from aiokafka import ConsumerRecord

from tests.integration.harness import Channels, WorkerProcess, about, read

pytestmark = pytest.mark.timeout(300)

SHORT = {"NEXTBEST_CART_ABANDON_AFTER": "2s", "NEXTBEST_CHECKOUT_STALL_AFTER": "3s"}


@pytest.fixture(scope="module")
def worker_env() -> dict[str, str]:
    return SHORT


def new_customer() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


def body(record: ConsumerRecord[bytes, bytes]) -> dict[str, object]:
    document = orjson.loads(record.value)
    assert isinstance(document, dict)
    return document


def when(document: dict[str, object]) -> datetime:
    value = document["time"]
    assert isinstance(value, str)
    return datetime.fromisoformat(value)


@pytest.mark.parametrize(
    ("consent", "channel"), [({"mobile": True}, "mobile"), ({"email": True}, "email")]
)
async def test_a_cart_left_alone_is_reminded_once(
    worker: WorkerProcess,
    channels: Channels,
    kafka_bootstrap: str,
    consent: dict[str, bool],
    channel: str,
) -> None:
    customer = new_customer()
    await channels.send("web", "consent.updated", customer, consent)
    await channels.send("web", "cart.item_added", customer, {"sku": "A1", "qty": 1, "price": 5})
    records = await read(
        kafka_bootstrap, [f"triggers.{channel}"], about(customer), within=15, settle=3.0
    )
    [trigger] = [body(r) for r in records]
    data = trigger["data"]
    assert isinstance(data, dict)
    assert (data["action"], data["signal"], data["caused_by"]) == (
        "cart_reminder",
        "cart_abandoned",
        None,
    )


async def test_activity_moves_the_deadline(
    worker: WorkerProcess, channels: Channels, kafka_bootstrap: str
) -> None:
    customer = new_customer()
    await channels.send("web", "consent.updated", customer, {"mobile": True})
    await channels.send("web", "cart.item_added", customer, {"sku": "A1", "qty": 1, "price": 5})
    # keep the customer busy past the first deadline
    await channels.send("web", "page.viewed", customer, {"page_type": "home"})
    await asyncio.sleep(1.5)
    last = datetime.now().astimezone()
    await channels.send("web", "page.viewed", customer, {"page_type": "product"})
    records = await read(
        kafka_bootstrap, ["triggers.mobile"], about(customer), within=15, settle=2.5
    )
    [trigger] = [body(r) for r in records]
    fired_after = (when(trigger) - last).total_seconds()
    assert 2.0 <= fired_after < 3.5, fired_after


async def test_an_order_cancels_the_checkout_timer(
    worker: WorkerProcess, channels: Channels, kafka_bootstrap: str
) -> None:
    stalled, ordered = new_customer(), new_customer()
    for customer in (stalled, ordered):
        await channels.send("mobile", "checkout.started", customer)
    await channels.send("mobile", "order.placed", ordered, {"order_id": "o-1"})
    records = await read(
        kafka_bootstrap,
        ["triggers.mobile"],
        lambda r: r.key in (stalled.encode(), ordered.encode()),
        within=15,
        settle=4.0,
    )
    assert [(r.key, body(r)["data"]["action"]) for r in records] == [  # type: ignore[index]
        (stalled.encode(), "checkout_help")
    ]
