"""The soak's oracle: expected contexts and triggers from the input, and the judgement."""

from __future__ import annotations

import random
from datetime import timedelta
from importlib import resources
from typing import Any

import orjson

from nextbest.core.config import EngineConfig
from nextbest.core.context import encode_document
from nextbest.core.engine import Engine
from nextbest.core.envelope import DEFAULT_CHANNELS
from nextbest.core.rules import load_rules
from nextbest.core.triggers import encode
from nextbest.oracle import differences, expect, judge_triggers
from tests.unit.events import at, event

ENGINE = Engine(
    EngineConfig(cart_abandon_after=timedelta(minutes=15)),
    load_rules(
        resources.files("nextbest").joinpath("default_rules.toml").read_text(),
        channels=DEFAULT_CHANNELS,
    ),
)
ADD = {"sku": "A1", "qty": 1, "price": 10.0}
COOLDOWN = timedelta(minutes=30)


def journey() -> list[Any]:
    return [
        event("consent.updated", "web", minute=0, data={"mobile": True}, subject="a", id_="a0"),
        event("cart.item_added", "web", minute=1, data=ADD, subject="a", id_="a1"),
        event("session.started", "mobile", minute=2, subject="a", id_="a2"),  # resume_cart
        event("page.viewed", "web", minute=0, data={"page_type": "help"}, subject="b", id_="b0"),
        event("chat.started", "chat", minute=1, subject="b", id_="b1"),  # agent_handoff
        event("cart.item_added", "web", minute=0, data=ADD, subject="c", id_="c0"),
        event("order.placed", "web", minute=20, data={"order_id": "o"}, subject="c", id_="c1"),
    ]


def test_events_and_deadlines_give_the_triggers_of_the_time_order() -> None:
    expected = expect(ENGINE, journey(), until=at(60))
    actions = sorted((t.subject, t.action, t.caused_by) for t in expected.triggers.values())
    assert actions == [
        ("a", "cart_reminder", None),  # 15 min after the last event, nothing moved it
        ("a", "resume_cart", "a2"),
        ("b", "agent_handoff", "b1"),
        # c: no consent, so its deadline (before the order) fired nothing
    ]
    assert expected.version("a") == 3
    assert expected.states["c"].context.cart.items == ()


def test_a_deadline_an_event_moved_does_not_fire_at_its_old_time() -> None:
    events = [
        event("consent.updated", "web", minute=0, data={"mobile": True}, subject="d", id_="d0"),
        event("cart.item_added", "web", minute=1, data=ADD, subject="d", id_="d1"),
        event("page.viewed", "web", minute=10, data={"page_type": "home"}, subject="d", id_="d2"),
    ]
    expected = expect(ENGINE, events, until=at(24))
    assert [t.action for t in expected.triggers.values()] == []  # due at 25 now
    expected = expect(ENGINE, events, until=at(25))
    [reminder] = expected.triggers.values()
    assert reminder.moment == at(25)


def test_the_expectation_does_not_depend_on_the_input_order() -> None:
    events = journey()
    first = expect(ENGINE, events, until=at(60))
    random.Random(3).shuffle(events)
    second = expect(ENGINE, events, until=at(60))
    assert first.triggers.keys() == second.triggers.keys()
    assert {c: s.context for c, s in first.states.items()} == {
        c: s.context for c, s in second.states.items()
    }


def test_documents_differ_only_in_what_the_input_decides() -> None:
    expected = expect(ENGINE, journey(), until=at(60)).states["a"]
    document = orjson.loads(encode_document(expected.context))
    assert differences(expected, document) == []
    document["updated_at"] = "2030-01-01T00:00:00Z"  # when the engine decided: not judged
    for trigger in document["last_triggers"]:
        trigger["at"] = "2030-01-01T00:00:00Z"
    assert differences(expected, document) == []
    document["cart"] = {"items": [], "value": 0}
    document["version"] += 1
    assert differences(expected, document) == ["cart", "version"]
    assert differences(expected, None) == ["(missing)"]


def test_trigger_judgement_counts_missing_replaced_extra_and_repeats() -> None:
    events = journey()
    times = {e.id: e.time for e in events}
    expected = expect(ENGINE, events, until=at(60))
    by_action = {t.action: t for t in expected.triggers.values()}
    handoff, resume = by_action["agent_handoff"], by_action["resume_cart"]

    def record(trigger: Any) -> dict[str, Any]:
        return dict(orjson.loads(encode(trigger, b"{}")))

    delivered = [record(handoff), record(handoff)]  # delivered twice
    # resume_cart went out for another cause within the cooldown: replaced, not missing
    other = record(resume._replace(id="other-id", caused_by="a1"))
    stranger = record(resume._replace(id="extra-id", subject="z"))
    judgement = judge_triggers(
        expected.triggers,
        [*delivered, other, stranger],
        event_times=times,
        cooldown=COOLDOWN,
    )
    assert judgement.expected == 3
    assert judgement.repeated == 1
    assert judgement.replaced == [resume.id]
    assert judgement.missing == [by_action["cart_reminder"].id]
    assert judgement.extra == 2
    far = record(resume._replace(id="late-id", caused_by=None, time=at(200)))
    judgement = judge_triggers(expected.triggers, [far], event_times=times, cooldown=COOLDOWN)
    assert resume.id in judgement.missing  # the same action, but far from its moment
