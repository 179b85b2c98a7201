"""contract §3 "Order": a customer's events folded in time order, whatever the arrival order."""

from __future__ import annotations

import copy
import itertools
from dataclasses import replace
from datetime import timedelta
from importlib import resources
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextbest.core.config import EngineConfig
from nextbest.core.engine import Engine
from nextbest.core.envelope import DEFAULT_CHANNELS, Event
from nextbest.core.rules import load_rules
from nextbest.core.signals import SignalName, detect
from nextbest.core.state import CustomerState
from nextbest.core.timeline import Bounds, place
from tests.unit.events import T0, at, event

BOUNDS = Bounds(
    window=timedelta(minutes=2),
    max_events=50,
    max_bytes=16384,
    journey_window=timedelta(minutes=30),
    search_window=timedelta(minutes=10),
    search_count=3,
)
NOW = at(10)
ADD = {"sku": "A1", "qty": 1, "price": 10.0}
REMOVE = {"sku": "A1", "qty": 1}
CONFIG = EngineConfig()
ENGINE = Engine(
    CONFIG,
    load_rules(
        resources.files("nextbest").joinpath("default_rules.toml").read_text(),
        channels=DEFAULT_CHANNELS,
    ),
)


def arrive(*events: Event, state: CustomerState | None = None) -> CustomerState:
    state = state or CustomerState.new("c-1")
    for item in events:
        state = place(state, item, NOW, BOUNDS).state
    return state


def in_time_order(*events: Event) -> CustomerState:
    return arrive(*sorted(events, key=lambda e: (e.time, e.id)))


def signals_of(state: CustomerState) -> set[tuple[SignalName, str | None]]:
    """The signals of the time-ordered fold, computed the plain way: one event at a time."""
    found = set()
    context = state.base
    for step in state.recent:
        before = context
        context = place(CustomerState(before, before), step.event, NOW, BOUNDS).state.context
        for signal in detect(
            before, context, step.event, journey_window=BOUNDS.journey_window, search_count=3
        ):
            found.add((signal.name, signal.caused_by))
    return found


# --- table: each reversed pair of the default rules' signals ---------------------------

REVERSED = [
    # (first in time, second in time, the action the time order fires)
    (event("product.viewed", "web", minute=0, data={"sku": "A1"}, id_="a"),
     event("store.visited", "store", minute=1, data={"store_id": "s1"}, id_="b"),
     "associate_assist"),
    (event("page.viewed", "web", minute=0, data={"page_type": "help"}, id_="a"),
     event("chat.started", "chat", minute=1, id_="b"),
     "agent_handoff"),
    (event("page.viewed", "web", minute=0, data={"page_type": "help"}, id_="a"),
     event("call.started", "contact-center", minute=1, id_="b"),
     "agent_handoff"),
    (event("cart.item_added", "store", minute=0, data=ADD, id_="a"),
     event("session.started", "web", minute=1, id_="b"),
     "resume_cart"),
]  # fmt: skip


def triggers_of(outcome: Any) -> list[Any]:
    """Every trigger one input brought about: its own, and the decisions it changed."""
    return [o.trigger for o in (*outcome.also, outcome) if o.trigger is not None]


@pytest.mark.parametrize(("first", "second", "action"), REVERSED)
def test_a_reversed_pair_fires_what_the_time_order_fires(
    first: Event, second: Event, action: str
) -> None:
    late_state = ENGINE.process(None, second, second.time).state
    outcome = ENGINE.process(late_state, first, second.time + timedelta(seconds=30))
    [trigger] = triggers_of(outcome)
    assert trigger.action == action
    assert trigger.caused_by == second.id  # the signal belongs to the later event
    assert outcome.behind == second.time - first.time
    in_order = ENGINE.process(ENGINE.process(None, first, first.time).state, second, second.time)
    assert in_order.trigger is not None
    assert trigger.id == in_order.trigger.id  # the same trigger, whichever order


def test_a_switch_decided_before_the_cart_arrived_is_decided_again() -> None:
    """web session, web cart add, mobile session (a switch with a cart: resume_cart);
    the cart add arrives last: the switch was decided without a cart, and the late
    cart changes that decision."""
    session = event("session.started", "web", minute=0, id_="a")
    cart = event("cart.item_added", "web", minute=1, data=ADD, id_="b")
    switch = event("session.started", "mobile", minute=2, id_="c")
    state = ENGINE.process(ENGINE.process(None, session, at(0)).state, switch, at(2)).state
    outcome = ENGINE.process(state, cart, at(2.5))
    [trigger] = triggers_of(outcome)
    assert (trigger.action, trigger.caused_by) == ("resume_cart", "c")
    again = ENGINE.process(outcome.state, event("page.viewed", "web", minute=1.5,
                                                 data={"page_type": "home"}), at(3))  # fmt: skip
    assert triggers_of(again) == []  # the switch has had its trigger: never twice


def test_an_add_and_a_remove_across_channels_in_the_wrong_order_empty_the_cart() -> None:
    added = event("cart.item_added", "web", minute=0, data=ADD)
    removed = event("cart.item_removed", "store", minute=1, data=REMOVE)
    state = arrive(removed, added)
    assert state.context.cart.items == ()
    assert state.context == in_time_order(added, removed).context


def test_checkout_started_after_its_order_leaves_no_checkout_to_stall() -> None:
    started = event("checkout.started", "web", minute=0)
    placed = event("order.placed", "web", minute=1, data={"order_id": "o-1"})
    state = arrive(placed, started)
    assert state.context.checkout.state == "none"
    assert ENGINE.next_wakeup(state) is None


def test_an_event_beyond_the_window_is_applied_and_raises_nothing() -> None:
    web = event("product.viewed", "web", minute=0, data={"sku": "A1"})
    store = event("store.visited", "store", minute=3, data={"store_id": "s1"})
    outcome = ENGINE.process(ENGINE.process(None, store, store.time).state, web, at(3.5))
    assert outcome.beyond
    assert outcome.behind == timedelta(minutes=3)
    assert outcome.trigger is None
    assert outcome.state.context.version == 2
    assert outcome.state.context.recent_products == ("A1",)
    assert outcome.state.context.current_channel == "store"  # the newest event's channel


def test_an_event_in_order_is_never_held_back() -> None:
    state = arrive(event("session.started", "web", minute=0))
    placed = place(state, event("call.started", "contact-center", minute=1), NOW, BOUNDS)
    assert [s.name for s in placed.signals] == [SignalName.CHANNEL_SWITCH]
    assert placed.behind is None
    assert placed.state.context.current_channel == "contact-center"


def test_a_late_event_between_a_switch_adds_no_second_trigger() -> None:
    """web at 0, store at 2 (a switch: associate_assist); web at 1 arrives late: the
    switch stays the store event's, which has had its trigger."""
    first = event("product.viewed", "web", minute=0, data={"sku": "A1"}, id_="a")
    third = event("store.visited", "store", minute=2, data={"store_id": "s1"}, id_="c")
    second = event("page.viewed", "web", minute=1, data={"page_type": "home"}, id_="b")
    state = ENGINE.process(ENGINE.process(None, first, at(0)).state, third, at(2))
    assert [t.action for t in triggers_of(state)] == ["associate_assist"]
    outcome = ENGINE.process(state.state, second, at(2.5))
    assert triggers_of(outcome) == []
    expected = in_time_order(first, second, third).context
    assert replace(outcome.state.context, updated_at=NOW, last_triggers=()) == expected


def test_kept_events_are_bounded_by_count_and_bytes() -> None:
    bounds = BOUNDS._replace(max_events=8, max_bytes=2048)
    state = CustomerState.new("c-1")
    for n in range(40):
        item = event("search.performed", minute=n / 100, data={"query": "q" * 200, "results": 3})
        state = place(state, item, NOW, bounds).state
        assert len(state.recent) <= 8
        assert state.recent_bytes == sum(s.size for s in state.recent) <= 2048
    assert state.base.version + len(state.recent) == state.context.version == 40


def test_a_late_event_before_what_the_bounds_folded_is_beyond() -> None:
    bounds = BOUNDS._replace(max_events=4)
    state = CustomerState.new("c-1")
    for n in range(10):
        state = place(state, event("session.started", minute=n / 10), NOW, bounds).state
    late = event("page.viewed", "mobile", minute=0.05, data={"page_type": "home"})
    placed = place(state, late, NOW, bounds)
    assert placed.beyond  # within the window, but before events already folded into base
    assert placed.state.context.version == 11


# --- properties -------------------------------------------------------------------------

TYPES = {
    "session.started": st.just({}),
    "page.viewed": st.just({"page_type": "help"}),
    "product.viewed": st.builds(lambda s: {"sku": s}, st.sampled_from("AB")),
    "product.scanned": st.builds(lambda s: {"sku": s}, st.sampled_from("AB")),
    "search.performed": st.builds(
        lambda r: {"query": "q", "results": r}, st.integers(min_value=0, max_value=1)
    ),
    "cart.item_added": st.builds(
        lambda s, q: {"sku": s, "qty": q, "price": 1.5},
        st.sampled_from("AB"),
        st.integers(min_value=1, max_value=3),
    ),
    "cart.item_removed": st.builds(
        lambda s, q: {"sku": s, "qty": q}, st.sampled_from("AB"), st.integers(1, 3)
    ),
    "checkout.started": st.just({}),
    "order.placed": st.just({"order_id": "o"}),
    "payment.failed": st.just({}),
    "call.started": st.just({}),
    "chat.abandoned": st.just({}),
    "consent.updated": st.builds(
        lambda e, m: {"email": e, "mobile": m}, st.booleans(), st.booleans()
    ),
}


@st.composite
def shuffled_journeys(draw: st.DrawFn) -> tuple[list[Event], list[Event]]:
    """A customer's events within the window (time order) and an arrival order."""
    count = draw(st.integers(min_value=1, max_value=12))
    events = []
    for index in range(count):
        type_ = draw(st.sampled_from(sorted(TYPES)))
        events.append(
            Event(
                f"e{index}",
                "/p",
                type_,
                T0 + timedelta(seconds=draw(st.integers(0, 110))),
                "c-1",
                draw(st.sampled_from(["web", "mobile", "store", "chat", "contact-center"])),
                draw(TYPES[type_]),
            )
        )
    arrival = draw(st.permutations(events))
    return sorted(events, key=lambda e: (e.time, e.id)), list(arrival)


@settings(max_examples=300)
@given(shuffled_journeys())
def test_any_arrival_order_gives_the_time_order_context(
    journey: tuple[list[Event], list[Event]],
) -> None:
    ordered, arrival = journey
    assert arrive(*arrival).context == arrive(*ordered).context


@settings(max_examples=300)
@given(shuffled_journeys())
def test_signals_come_only_from_a_time_ordered_timeline_and_all_of_its_signals_come(
    journey: tuple[list[Event], list[Event]],
) -> None:
    """Each arrival decides only signals of the time-ordered fold of the events known
    so far (never one no time order has), and by the end every signal of the full
    time order has been decided."""
    ordered, arrival = journey
    state = CustomerState.new("c-1")
    decided: set[tuple[SignalName, str | None]] = set()
    for count, item in enumerate(arrival, start=1):
        placed = place(state, item, NOW, BOUNDS)
        state = placed.state
        known = signals_of(in_time_order(*arrival[:count]))
        now_decided = {(s.name, s.caused_by) for s in placed.signals}
        assert now_decided <= known
        decided |= now_decided
    assert signals_of(in_time_order(*ordered)) <= decided


@settings(max_examples=300)
@given(shuffled_journeys())
def test_any_arrival_order_fires_the_time_orders_triggers_or_the_same_action_close_by(
    journey: tuple[list[Event], list[Event]],
) -> None:
    """What the time order fires, any arrival order fires too — unless the arrival
    order had already given that event its one trigger (nothing is taken back), or
    the cooldown made the two orders pick a different event for one action (then
    that action went out close by); and at most one trigger per event."""
    ordered, arrival = journey

    def fired(events: list[Event]) -> list[Any]:
        state: CustomerState | None = None
        found: list[Any] = []
        for item in events:
            outcome = ENGINE.process(state, item, NOW)
            state = outcome.state
            found += triggers_of(outcome)
        return found

    want, got = fired(ordered), fired(arrival)
    assert len({t.caused_by for t in got}) == len(got)  # one trigger per event at most
    cooldown = ENGINE.config.trigger_cooldown
    causes = {t.caused_by for t in got}
    for trigger in want:
        assert (
            trigger.id in {t.id for t in got}
            or trigger.caused_by in causes
            or any(
                t.action == trigger.action and abs(t.moment - trigger.moment) < cooldown
                for t in got
            )
        ), trigger


@settings(max_examples=200)
@given(shuffled_journeys(), st.randoms(use_true_random=False))
def test_a_trigger_id_is_never_emitted_twice_and_repeats_change_nothing(
    journey: tuple[list[Event], list[Event]], rnd: object
) -> None:
    _, arrival = journey
    repeats = list(arrival)
    rnd.shuffle(repeats)  # type: ignore[attr-defined]
    state: CustomerState | None = None
    ids = []
    for item in [*arrival, *repeats]:
        outcome = ENGINE.process(state, item, item.time + timedelta(seconds=1))
        state = outcome.state
        if outcome.trigger is not None:
            ids.append(outcome.trigger.id)
    assert len(ids) == len(set(ids))
    assert state is not None
    batch = ENGINE.process_batch({}, arrival, NOW).states["c-1"].context
    assert state.context == replace(
        batch, updated_at=state.context.updated_at, last_triggers=state.context.last_triggers
    )


def test_every_arrival_order_of_a_switch_journey_gives_one_context() -> None:
    events = [
        event("cart.item_added", "web", minute=0, data=ADD, id_="a"),
        event("product.viewed", "mobile", minute=0.5, data={"sku": "B"}, id_="b"),
        event("cart.item_removed", "store", minute=1, data=REMOVE, id_="c"),
        event("call.started", "contact-center", minute=1.5, id_="d"),
    ]
    expected = in_time_order(*events).context
    for order in itertools.permutations(events):
        assert arrive(*order).context == expected, [e.id for e in order]


@settings(max_examples=200)
@given(shuffled_journeys())
def test_the_core_never_changes_the_state_it_is_given(
    journey: tuple[list[Event], list[Event]],
) -> None:
    """The core's values are dataclasses that are never mutated (see core/context.py):
    a state handed to the engine is exactly as it was afterwards, late events,
    triggers and deadlines included."""
    _, arrival = journey
    state: CustomerState | None = None
    for item in arrival:
        before = copy.deepcopy(state)
        outcome = ENGINE.process(state, item, item.time + timedelta(seconds=1))
        assert state == before
        state = outcome.state
    assert state is not None
    before = copy.deepcopy(state)
    ENGINE.expire(state, T0 + timedelta(days=1))
    assert state == before
