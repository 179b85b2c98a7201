"""One timeline per customer (contract §3 "Order"), on the real broker.

Each case sends a customer's events in the wrong order, up to a minute apart in
event time and on different channel topics: the later event first (applied,
and mirrored, before the earlier one is even sent), then the earlier one. The
context must be what time order gives, and what the corrected timeline reveals
must fire when the late event arrives — as the trigger of the event it
concerns. An event later than the window is applied, fires nothing and is
counted.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from nextbest.core.envelope import DEFAULT_CHANNELS
from tests.integration.harness import Channels, WorkerProcess, about, applied, read

pytestmark = pytest.mark.timeout(180)

STALL_AFTER = 4  # seconds: checkout_stalled deadlines short enough to watch


@pytest.fixture(scope="module")
def worker_env() -> dict[str, str]:
    return {"NEXTBEST_CHECKOUT_STALL_AFTER": f"{STALL_AFTER}s"}


@dataclass(frozen=True)
class Step:
    channel: str
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    ago: float = 0.0  # seconds before the newest event of the case


@dataclass(frozen=True)
class Case:
    name: str
    steps: tuple[Step, ...]  # in time order; sent newest first
    trigger: tuple[str, str] | None  # (channel, action), caused by the newest step
    context: dict[str, Any] = field(default_factory=dict)  # fields of the final document


CART = {"sku": "A1", "qty": 1, "price": 10}
REMOVE = {"sku": "A1", "qty": 1}
STORE = {"store_id": "s-1"}
CASES = [
    Case(
        "switch to store",
        (Step("web", "product.viewed", {"sku": "TV-1"}, 60), Step("store", "store.visited", STORE)),
        ("store", "associate_assist"),
        {"current_channel": "store"},
    ),
    Case(
        "switch to chat",
        (Step("web", "page.viewed", {"page_type": "help"}, 45), Step("chat", "chat.started")),
        ("chat", "agent_handoff"),
        {"current_channel": "chat"},
    ),
    Case(
        "switch to contact center",
        (Step("mobile", "page.viewed", {"page_type": "home"}, 30),
         Step("contact-center", "call.started")),
        ("contact-center", "agent_handoff"),
        {"current_channel": "contact-center"},
    ),
    Case(
        "back to web with a cart",
        (Step("mobile", "cart.item_added", CART, 50), Step("web", "session.started")),
        ("web", "resume_cart"),
        {"current_channel": "web", "cart": {"items": [CART], "value": 10.0}},
    ),
    Case(
        "an add and a remove across channels",
        (Step("web", "cart.item_added", CART, 1), Step("store", "cart.item_removed", REMOVE)),
        None,  # in time order the store visit finds an empty cart and no product viewed
        {"current_channel": "store", "cart": {"items": [], "value": 0.0}},
    ),
]  # fmt: skip


async def send_reversed(channels: Channels, redis_url: str, customer: str, case: Case) -> str:
    """The newest step first, the others after it, each once the previous is applied;
    returns the newest step's event id."""
    newest = datetime.now(UTC)
    ids = {}
    for version, index in enumerate(reversed(range(len(case.steps))), start=1):
        step = case.steps[index]
        ids[index] = await channels.send(
            step.channel, step.type, customer, step.data,
            time_=newest - timedelta(seconds=step.ago),
        )  # fmt: skip
        await applied(redis_url, customer, version)
    return ids[len(case.steps) - 1]


async def triggers_of(bootstrap: str, customer: str, count: int, settle: float) -> list[Any]:
    """The customer's triggers, once ``count`` are there and ``settle`` s more passed."""
    topics = [f"triggers.{channel}" for channel in DEFAULT_CHANNELS]
    records = await read(bootstrap, topics, about(customer), count=count, settle=settle)
    return [orjson.loads(r.value) for r in records]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_a_reversed_pair_gives_the_time_order_context_and_trigger(
    worker: WorkerProcess,
    channels: Channels,
    kafka_bootstrap: str,
    redis_url: str,
    case: Case,
) -> None:
    customer = f"o-{uuid.uuid4().hex[:12]}"
    newest_id = await send_reversed(channels, redis_url, customer, case)
    document = await applied(redis_url, customer, len(case.steps))
    for name, value in case.context.items():
        assert document[name] == value, name
    # the journey in time order, whatever the arrival order
    assert [segment["channel"] for segment in document["journey"]] == list(
        dict.fromkeys(step.channel for step in case.steps)
    )
    if case.trigger is None:
        assert await triggers_of(kafka_bootstrap, customer, 0, settle=3.0) == []
        return
    [trigger] = await triggers_of(kafka_bootstrap, customer, 1, settle=1.0)
    channel, action = case.trigger
    assert (trigger["channel"], trigger["data"]["action"]) == (channel, action)
    assert trigger["data"]["signal"] == "channel_switch"
    assert trigger["data"]["caused_by"] == newest_id
    assert trigger["data"]["from_channel"] == case.steps[-2].channel


async def test_a_checkout_started_after_its_order_placed_never_stalls(
    worker: WorkerProcess, channels: Channels, kafka_bootstrap: str, redis_url: str
) -> None:
    """order.placed arrives first; checkout.started, a minute earlier in event time,
    after it. A customer whose checkout is never completed shows the deadline is live."""
    placed, control = f"o-{uuid.uuid4().hex[:12]}", f"o-{uuid.uuid4().hex[:12]}"
    now = datetime.now(UTC)
    await channels.send("web", "order.placed", placed, {"order_id": "O-1", "value": 10},
                        time_=now)  # fmt: skip
    await applied(redis_url, placed, 1)
    await channels.send("web", "checkout.started", placed, {}, time_=now - timedelta(minutes=1))
    document = await applied(redis_url, placed, 2)
    assert document["checkout"]["state"] == "none"  # the order came after it
    await channels.send("web", "checkout.started", control, {})
    [stalled] = await triggers_of(kafka_bootstrap, control, 1, settle=0.0)
    assert stalled["data"]["action"] == "checkout_help"  # fired after STALL_AFTER
    # by now the other's deadline (a minute ago plus STALL_AFTER) would have fired, too
    assert await triggers_of(kafka_bootstrap, placed, 0, settle=1.0) == []


async def test_an_event_beyond_the_window_is_applied_fires_nothing_and_is_counted(
    worker: WorkerProcess, channels: Channels, kafka_bootstrap: str, redis_url: str
) -> None:
    customer = f"o-{uuid.uuid4().hex[:12]}"
    late_before = worker.metric("nextbest_events_late_total", channel="web")
    now = datetime.now(UTC)
    await channels.send("store", "store.visited", customer, {"store_id": "s-1"}, time_=now)
    await applied(redis_url, customer, 1)
    # 3 minutes behind: past the 2-minute window; in time, it would make a switch
    await channels.send("web", "product.viewed", customer, {"sku": "TV-1"},
                        time_=now - timedelta(minutes=3))  # fmt: skip
    document = await applied(redis_url, customer, 2)
    assert document["current_channel"] == "store"  # the newest event is still the store's
    assert document["recent_products"] == ["TV-1"]  # applied all the same
    assert worker.metric("nextbest_events_late_total", channel="web") == late_before + 1
    assert await triggers_of(kafka_bootstrap, customer, 0, settle=3.0) == []
