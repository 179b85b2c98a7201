"""contract §6: the context reducer, its bounds, its idempotence and its encoding.

Events here come in ``time`` order or are placed by the timeline (tests of the
reordering itself are in test_timeline.py).
"""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from nextbest.core.context import CartItem, TriggerRecord, to_document
from nextbest.core.envelope import Event
from nextbest.core.state import (
    CustomerState,
    Membership,
    decode,
    encode,
    encode_document,
    is_duplicate,
    record_trigger,
)
from nextbest.core.timeline import Bounds, place
from tests.unit.events import T0, at, event

WINDOW = timedelta(minutes=10)
BOUNDS = Bounds(
    window=timedelta(minutes=2),
    max_events=50,
    max_bytes=16384,
    journey_window=timedelta(minutes=30),
    search_window=WINDOW,
    search_count=3,
)


def run(*events: Event, state: CustomerState | None = None) -> CustomerState:
    """Each event decided at its own time; a repeated id changes nothing."""
    state = state or CustomerState.new("c-1")
    for item in events:
        if not is_duplicate(state, item):
            state = place(state, item, item.time, BOUNDS).state
    return state


def test_first_event_starts_the_journey() -> None:
    state = run(event("session.started", "web", minute=1))
    context = state.context
    assert context.version == 1
    assert context.current_channel == "web"
    assert context.last_event_at == at(1)
    assert context.updated_at == at(1)
    assert [(s.channel, s.since) for s in context.journey] == [("web", at(1))]
    assert context.channels["web"].events == 1


def test_cart_is_the_customers_across_channels() -> None:
    state = run(
        event("cart.item_added", "web", data={"sku": "A1", "qty": 2, "price": 19.5}),
        event("cart.item_added", "mobile", data={"sku": "B2", "qty": 1, "price": 5}),
        event("cart.item_added", "web", data={"sku": "A1", "qty": 1, "price": 18}),
        event("cart.item_removed", "store", data={"sku": "B2", "qty": 1}),
    )
    assert state.context.cart.items == (CartItem("A1", 3, 18.0),)
    assert state.context.cart.value == 54.0
    assert to_document(state.context)["cart"] == {
        "items": [{"sku": "A1", "qty": 3, "price": 18.0}],
        "value": 54.0,
    }


def test_removing_part_of_a_line_keeps_the_rest() -> None:
    state = run(
        event("cart.item_added", data={"sku": "A1", "qty": 3, "price": 2}),
        event("cart.item_removed", data={"sku": "A1", "qty": 1}),
        event("cart.item_removed", data={"sku": "ZZ", "qty": 1}),
    )
    assert state.context.cart.items == (CartItem("A1", 2, 2.0),)


def test_order_empties_the_cart_and_ends_checkout() -> None:
    state = run(
        event("cart.item_added", data={"sku": "A1", "qty": 1, "price": 2}),
        event("checkout.started", "mobile", minute=1),
    )
    assert state.context.checkout.state == "started"
    assert state.context.checkout.channel == "mobile"
    assert state.context.checkout.started_at == at(1)
    state = run(event("order.placed", "mobile", minute=2, data={"order_id": "o-1"}), state=state)
    assert state.context.cart.items == ()
    assert state.context.checkout.state == "none"
    assert state.context.checkout.started_at is None


def test_consent_changes_only_what_is_given() -> None:
    state = run(event("consent.updated", data={"email": True}))
    assert (state.context.consent.email, state.context.consent.mobile) == (True, False)
    state = run(event("consent.updated", data={"mobile": True}), state=state)
    assert (state.context.consent.email, state.context.consent.mobile) == (True, True)
    state = run(event("consent.updated", data={"email": False}), state=state)
    assert (state.context.consent.email, state.context.consent.mobile) == (False, True)


def test_lists_keep_only_their_newest_entries() -> None:
    channels = ["web", "mobile"]
    many = [event("session.started", channels[i % 2], minute=i) for i in range(25)]
    searches = [
        event("search.performed", minute=30 + i, data={"query": f"q{i}", "results": 1})
        for i in range(7)
    ]
    products = [event("product.viewed", minute=40 + i, data={"sku": f"S{i}"}) for i in range(12)]
    again = event("product.viewed", minute=60, data={"sku": "S5"})
    state = run(*many, *searches, *products, again)
    assert len(state.context.journey) == 20
    assert state.context.journey[-1].channel == "web"
    assert [s.query for s in state.context.recent_searches] == ["q2", "q3", "q4", "q5", "q6"]
    assert state.context.recent_products == tuple(f"S{i}" for i in (2, 3, 4, 6, 7, 8, 9, 10, 11, 5))


def test_last_triggers_keep_ten_and_remember_the_cooldown() -> None:
    state = CustomerState.new("c-1")
    for i in range(12):
        state = record_trigger(state, TriggerRecord(f"t{i}", f"a{i % 3}", "web", at(i + 1)), at(i))
    assert [t.id for t in state.context.last_triggers] == [f"t{i}" for i in range(2, 12)]
    # the cooldown counts from the signal's moment (event time), not the decision
    assert state.last_fired == {"a0": at(9), "a1": at(10), "a2": at(11)}


def test_unknown_types_change_only_activity() -> None:
    before = run(event("cart.item_added", data={"sku": "A1", "qty": 1, "price": 2}))
    after = run(event("loyalty.points_earned", "email", minute=3), state=before)
    assert after.context.version == 2
    assert after.context.current_channel == "email"
    assert after.context.cart == before.context.cart
    assert after.context.last_event_at == at(3)


def test_late_event_does_not_move_last_event_at_back() -> None:
    state = run(
        event("session.started", minute=5),
        event("page.viewed", minute=1, data={"page_type": "home"}),  # beyond the window
        event("page.viewed", minute=4, data={"page_type": "home"}),  # within it
    )
    assert state.context.last_event_at == at(5)
    assert state.context.current_channel == "web"
    assert state.context.version == 3


def test_a_repeated_id_changes_nothing() -> None:
    first = event("cart.item_added", data={"sku": "A1", "qty": 1, "price": 2}, id_="dup")
    state = run(first)
    assert is_duplicate(state, first)
    assert run(first, state=state) is state


def test_only_the_last_hundred_ids_are_remembered() -> None:
    oldest = event("session.started", id_="oldest")
    state = run(oldest, *(event("session.started") for _ in range(100)))
    assert not is_duplicate(state, oldest)
    assert len(state.seen_ids) == 100


def test_state_survives_encoding() -> None:
    state = run(
        event("cart.item_added", "web", data={"sku": "A1", "qty": 2, "price": 19.5}),
        event("search.performed", "mobile", minute=1, data={"query": "x", "results": 0}),
        event("product.viewed", "mobile", minute=2, data={"sku": "A1"}),
        event("checkout.started", "web", minute=3),
        event("consent.updated", minute=4, data={"email": True}),
    )
    state = record_trigger(state, TriggerRecord("t", "resume_cart", "web", at(5)), at(3))
    assert decode(encode(state)) == _stored(state)
    assert encode(state, encode_document(state.context)) == encode(state)


def test_a_state_with_a_base_survives_encoding() -> None:
    """Kept events are folded into base once the window lies behind them."""
    state = run(
        event("cart.item_added", "web", data={"sku": "A1", "qty": 2, "price": 19.5}),
        event("search.performed", "mobile", minute=1, data={"query": "x", "results": 0}),
        event("product.viewed", "store", minute=6, data={"sku": "A1"}),
        event("page.viewed", "store", minute=6.5, data={"page_type": "home"}),
    )
    assert state.base.version == 2
    assert len(state.recent) == 2
    assert decode(encode(state)) == _stored(state)


def _stored(state: CustomerState) -> CustomerState:
    """What survives storage: kept events keep only what the reducer reads."""
    recent = tuple(s._replace(event=s.event._replace(source="", subject="")) for s in state.recent)
    return state._replace(recent=recent)


def test_a_state_of_format_1_is_read_as_all_base() -> None:
    stored = {
        "context": to_document(run(event("session.started")).context),
        "seen_ids": ["e-x"],
        "zero_searches": [],
        "product_viewed_at": None,
        "last_fired": {"payment_help": at(1).isoformat()},
        "fired": {},
    }
    import orjson

    state = decode(orjson.dumps(stored))
    assert state.recent == ()
    assert state.base.version == state.context.version == 1
    assert state.last_fired == {"payment_help": at(1)}
    after = run(event("session.started", "mobile", minute=1), state=state)
    assert after.context.version == 2


# --- properties ---------------------------------------------------------------------

TYPES = {
    "session.started": st.just({}),
    "product.viewed": st.builds(lambda s: {"sku": s}, st.sampled_from("ABC")),
    "search.performed": st.builds(
        lambda r: {"query": "q", "results": r}, st.integers(min_value=0, max_value=2)
    ),
    "cart.item_added": st.builds(
        lambda s, q: {"sku": s, "qty": q, "price": 1.5},
        st.sampled_from("ABC"),
        st.integers(min_value=1, max_value=3),
    ),
    "cart.item_removed": st.builds(
        lambda s, q: {"sku": s, "qty": q}, st.sampled_from("ABC"), st.integers(1, 3)
    ),
    "checkout.started": st.just({}),
    "order.placed": st.just({"order_id": "o"}),
    "consent.updated": st.builds(lambda e: {"email": e}, st.booleans()),
}


@st.composite
def journeys(draw: st.DrawFn) -> list[Event]:
    count = draw(st.integers(min_value=1, max_value=30))
    events = []
    for index in range(count):
        type_ = draw(st.sampled_from(sorted(TYPES)))
        events.append(
            Event(
                id=f"e{index}",
                source="/p",
                type=type_,
                time=T0 + timedelta(seconds=draw(st.integers(0, 3600))),
                subject="c-1",
                channel=draw(st.sampled_from(["web", "mobile", "store"])),
                data=draw(TYPES[type_]),
            )
        )
    return events


@given(journeys(), st.randoms(use_true_random=False))
def test_reapplying_events_changes_nothing(events: list[Event], rnd: object) -> None:
    once = run(*events)
    # every event delivered again, each repeat somewhere after its first delivery
    repeats = list(events)
    rnd.shuffle(repeats)  # type: ignore[attr-defined]
    twice = run(*events, *repeats)
    assert twice == once


@given(journeys())
def test_version_counts_applied_events_and_never_goes_back(events: list[Event]) -> None:
    state = CustomerState.new("c-1")
    seen: set[str] = set()
    for item in events + events[:3]:
        before = state.context.version
        state = run(item, state=state)
        expected = before if item.id in seen else before + 1
        assert state.context.version == expected
        seen.add(item.id)
    assert state.context.version == len(events)
    assert all(i.qty >= 1 for i in state.context.cart.items)


def test_apply_carries_every_field_it_does_not_change() -> None:
    """apply() builds its result field by field (for speed): a new field must be
    added there too, or it is silently reset by every event."""
    from dataclasses import fields

    from nextbest.core.context import Consent, Context

    consent = Consent(email=True)
    before = run(event("consent.updated", data={"email": True}))
    membership = Membership(epoch=3)
    before = before._replace(last_fired={"x": T0}, fired={"y": T0}, membership=membership)
    after = run(event("page.viewed", minute=2, data={"page_type": "home"}, id_="e-9"), state=before)
    assert after.context.consent == consent
    assert (after.last_fired, after.fired) == (before.last_fired, before.fired)
    assert after.membership == membership
    assert after.context.identities == before.context.identities
    assert CustomerState._fields == (
        "context", "base", "base_encoded", "recent", "recent_bytes", "seen_ids", "last_fired",
        "fired", "parts", "membership",
    )  # fmt: skip
    assert tuple(f.name for f in fields(Context)) == (
        "customer_id", "version", "updated_at", "last_event_at", "current_channel", "channels",
        "journey", "cart", "checkout", "recent_searches", "recent_products", "consent",
        "last_triggers", "identities", "_zero_searches", "_product_viewed_at", "_cart_at",
        "_ordered_at", "_consent_at",
    )  # fmt: skip
