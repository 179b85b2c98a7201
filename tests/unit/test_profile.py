"""Profiles of several identifiers: merges and splits of states (core/profile.py).

Each identifier's events are applied through the engine as the worker applies
them; a merge is ``Engine.absorb`` of what the other profile ships, a split is
``Engine.split`` (and ``promote`` of the part that leaves).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from importlib import resources
from itertools import permutations
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nextbest.core import profile
from nextbest.core.config import EngineConfig
from nextbest.core.context import Identity, to_document
from nextbest.core.engine import Engine
from nextbest.core.envelope import DEFAULT_CHANNELS, Event
from nextbest.core.identity import Identifier
from nextbest.core.rules import load_rules
from nextbest.core.state import CustomerState, decode, encode
from tests.unit.events import at

ENGINE = Engine(
    EngineConfig(),
    load_rules(
        resources.files("nextbest").joinpath("default_rules.toml").read_text(),
        channels=DEFAULT_CHANNELS,
    ),
)
NOW = at(30)
C1 = Identifier("customer", "c-1")
A1 = Identifier("anonymous", "ck-1")
P1 = Identifier("phone", "h-ph1")
_ids = iter(range(10**9))


def ev(
    who: Identifier, type_: str, channel: str, minute: float, data: dict[str, Any] | None = None
) -> Event:
    return Event(
        f"{who.type}-{next(_ids)}", "/t", type_, at(minute), who.id, channel, data or {}, who.type
    )


def run(state: CustomerState | None, events: Iterable[Event], now: Any = NOW) -> CustomerState:
    for event in events:
        outcome = ENGINE.process(state, event, now)
        state = outcome.state
    assert state is not None
    return state


def alone(who: Identifier, events: Sequence[Event]) -> CustomerState:
    """The profile ``who`` has before any link: its own events."""
    return run(None, events)


def merge(target: CustomerState | None, key: str, *others: CustomerState, now: Any = NOW) -> Any:
    shipments = [
        profile.ship(other, {i.key for i in other.context.identities}, {}, now, ENGINE._bounds)[0]
        for other in others
    ]
    return ENGINE.absorb(target, key, shipments, now)


def unlink(state: CustomerState, who: Identifier) -> tuple[CustomerState, CustomerState]:
    rest, parts = ENGINE.split(state, {who.key}, NOW)
    assert rest is not None
    [identity] = [i for i in state.context.identities if i.key == who.key]
    leaver = ENGINE.promote(parts[who.key], identity, state.context.version + 1, NOW)
    return rest, leaver


def document(state: CustomerState) -> dict[str, Any]:
    """The context document minus what a merge or split changes by design."""
    found = to_document(state.context)
    for name in ("version", "updated_at", "identities", "last_triggers"):
        found.pop(name)
    return found


CART = {"sku": "SHOE-42", "qty": 1, "price": 89.0}


# --- tables ------------------------------------------------------------------------------


def test_a_login_on_mobile_after_an_anonymous_web_cart_is_resume_cart_on_mobile() -> None:
    browsing = alone(A1, [
        ev(A1, "session.started", "web", 0), ev(A1, "product.viewed", "web", 0.5, {"sku": "X"}),
        ev(A1, "cart.item_added", "web", 1, CART),
    ])  # fmt: skip
    login = alone(C1, [ev(C1, "identity.linked", "mobile", 1.5, {
        "identities": [{"type": "anonymous", "id": A1.id}], "method": "login"})])  # fmt: skip
    outcome = merge(login, "c-1", browsing, now=at(1.6))
    assert outcome.trigger is not None
    assert (outcome.trigger.action, outcome.trigger.channel) == ("resume_cart", "mobile")
    assert outcome.trigger.subject == "c-1"
    merged = outcome.state.context
    assert [s.channel for s in merged.journey] == ["web", "mobile"]
    assert [i.key for i in merged.identities] == [C1.key, A1.key]
    assert merged.cart.items[0].sku == "SHOE-42"
    assert merged.version == 4 + 1  # every event, and the merge itself
    assert sorted(outcome.state.parts) == sorted([C1.key, A1.key])
    # the same signal is never revealed twice: a later merge replays the same events
    again = ENGINE.absorb(outcome.state, "c-1", [], at(1.7))
    assert again.trigger is None


def test_a_merge_long_after_the_browsing_fires_nothing_stale() -> None:
    browsing = alone(A1, [ev(A1, "cart.item_added", "web", 0, CART)])
    login = alone(C1, [ev(C1, "session.started", "mobile", 1)])
    outcome = merge(login, "c-1", browsing, now=at(25))  # decided 25 minutes after
    assert outcome.trigger is None
    assert ("resume_cart", "stale") in [(a, r.value) for a, r in outcome.suppressed]


def test_cross_identifier_effects_after_a_merge_are_exact_and_undone_by_an_unlink() -> None:
    browsing = alone(A1, [ev(A1, "cart.item_added", "web", 0, CART)])
    login = alone(C1, [ev(C1, "session.started", "mobile", 1)])
    merged = merge(login, "c-1", browsing).state
    # the logged-in customer removes the item the anonymous session added
    after = run(merged, [ev(C1, "cart.item_removed", "mobile", 2, {"sku": "SHOE-42", "qty": 1})])
    assert after.context.cart.items == ()
    rest, leaver = unlink(after, A1)
    assert leaver.context.cart.items[0].sku == "SHOE-42"  # what happened under the cookie
    assert leaver.context.customer_id == "anonymous:ck-1"
    assert [i.key for i in leaver.context.identities] == [A1.key]
    assert rest.context.cart.items == ()
    assert [i.key for i in rest.context.identities] == [C1.key]
    assert rest.parts == {}
    assert leaver.parts == {}
    assert rest.context.version > after.context.version  # never down under a key
    assert leaver.context.version > after.context.version


def test_an_order_placed_after_the_login_empties_the_anonymous_cart() -> None:
    browsing = alone(A1, [ev(A1, "cart.item_added", "web", 0, CART)])
    login = alone(C1, [ev(C1, "checkout.started", "mobile", 1)])
    merged = merge(login, "c-1", browsing).state
    after = run(merged, [ev(C1, "order.placed", "mobile", 2, {"order_id": "o-1"})])
    assert after.context.cart.items == ()
    assert after.context.checkout.state == "none"


def test_field_rules_for_what_the_parts_folded_away() -> None:
    """Events older than the reorder window behind the newest are merged field by field."""
    web = alone(A1, [
        ev(A1, "cart.item_added", "web", 0, CART),
        ev(A1, "search.performed", "web", 1, {"query": "shoes", "results": 0}),
        ev(A1, "consent.updated", "web", 2, {"email": True, "mobile": True}),
        ev(A1, "page.viewed", "web", 20, {"page_type": "home"}),
    ])  # fmt: skip
    store = alone(C1, [
        ev(C1, "consent.updated", "store", 5, {"email": False, "mobile": False}),
        ev(C1, "order.placed", "store", 6, {"order_id": "o-1"}),
        ev(C1, "search.performed", "store", 7, {"query": "socks", "results": 3}),
        ev(C1, "store.visited", "store", 25, {"store_id": "s-1"}),
    ])  # fmt: skip
    merged = merge(store, "c-1", web).state.context
    assert merged.channels["web"].events == 4
    assert merged.channels["store"].events == 4
    assert [s.channel for s in merged.journey] == ["web", "store", "web", "store"]
    assert merged.current_channel == "store"
    assert merged.cart.items == ()  # added before the customer's order: that order emptied it
    assert [s.query for s in merged.recent_searches] == ["shoes", "socks"]
    assert (merged.consent.email, merged.consent.mobile) == (False, False)  # the newest says so


def test_a_three_way_merge_is_the_same_in_any_order() -> None:
    people = {
        C1: alone(C1, [ev(C1, "session.started", "mobile", 3)]),
        A1: alone(A1, [ev(A1, "cart.item_added", "web", 1, CART)]),
        P1: alone(P1, [ev(P1, "call.started", "contact-center", 2)]),
    }
    documents = []
    for order in permutations([A1, P1]):
        state = people[C1]
        for who in order:
            state = merge(state, "c-1", people[who]).state
        documents.append(document(state))
    at_once = merge(people[C1], "c-1", people[A1], people[P1]).state
    assert documents[0] == documents[1] == document(at_once)


def test_a_merged_state_survives_encoding() -> None:
    browsing = alone(A1, [ev(A1, "cart.item_added", "web", 0, CART)])
    login = alone(C1, [ev(C1, "session.started", "mobile", 1)])
    merged = merge(login, "c-1", browsing).state
    again = decode(encode(merged))
    assert encode(again) == encode(merged)  # a stored event keeps what folding reads
    assert again.parts.keys() == merged.parts.keys()
    assert again.parts[A1.key].context.identities[0].since == at(0)


def test_identifiers_nobody_has_seen_join_with_empty_parts() -> None:
    login = alone(C1, [ev(C1, "session.started", "mobile", 1)])
    nobody = Identity("phone", "h-new", at(1), "phone_verified", at(1))
    outcome = ENGINE.absorb(login, "c-1", [profile.Shipment({}, (nobody,))], NOW)
    assert [i.key for i in outcome.state.context.identities] == [C1.key, "phone:h-new"]
    assert outcome.state.parts["phone:h-new"].context.version == 0
    rest, leaver = unlink(outcome.state, Identifier("phone", "h-new"))
    assert document(rest) == document(login)
    assert leaver.context.version >= 1  # a document Redis and the schema accept


def test_the_name_is_the_customer_else_the_oldest_identifier() -> None:
    older = Identity("phone", "p", _since=at(0))
    newer = Identity("anonymous", "a", _since=at(5))
    assert profile.name_of([newer, older]) is older
    customer = Identity("customer", "c", _since=at(9))
    assert profile.name_of([newer, older, customer]) is customer


# --- properties ----------------------------------------------------------------------------

KINDS = [
    ("session.started", {}),
    ("page.viewed", {"page_type": "product"}),
    ("product.viewed", {"sku": "A"}),
    ("cart.item_added", {"sku": "A", "qty": 1, "price": 5.0}),
    ("cart.item_added", {"sku": "B", "qty": 2, "price": 3.0}),
    ("cart.item_removed", {"sku": "A", "qty": 1}),
    ("search.performed", {"query": "q", "results": 0}),
    ("checkout.started", {}),
    ("order.placed", {"order_id": "o"}),
    ("consent.updated", {"email": True}),
    ("call.started", {}),
]


def journeys(who: Identifier, min_size: int = 0) -> st.SearchStrategy[list[Event]]:
    step = st.tuples(
        st.sampled_from(KINDS),
        st.sampled_from(DEFAULT_CHANNELS),
        st.floats(0, 40, allow_nan=False).map(lambda m: round(m, 2)),
    )
    return st.lists(step, min_size=min_size, max_size=12).map(
        lambda steps: [
            ev(who, kind, channel, minute, data) for (kind, data), channel, minute in steps
        ]
    )


@settings(max_examples=120, deadline=None)
@given(
    own=journeys(C1),
    theirs=journeys(A1),
    own_later=journeys(C1),
    theirs_later=journeys(A1),
)
def test_a_merge_then_an_unlink_gives_back_both_contexts(
    own: list[Event], theirs: list[Event], own_later: list[Event], theirs_later: list[Event]
) -> None:
    """Whatever each identifier did before and after they were one profile, the unlink
    gives each the context it would have had alone."""
    customer = alone(C1, own) if own else CustomerState.new(C1.id)
    cookie = alone(A1, theirs) if theirs else CustomerState.named(A1, at(0))
    merged = merge(customer, "c-1", cookie, now=at(41)).state
    # each identifier's later events arrive in the same order as when alone (arrival
    # order decides where an event beyond the reorder window goes, §3)
    later = [*own_later, *theirs_later]
    merged = run(merged, [e._replace(profile="c-1") for e in later], now=at(42))
    rest, leaver = unlink(merged, A1)
    assert document(rest) == document(run(customer, own_later, now=at(42)))
    assert document(leaver) == document(run(cookie, theirs_later, now=at(42)))


@settings(max_examples=80, deadline=None)
@given(c=journeys(C1, 1), a=journeys(A1, 1), p=journeys(P1, 1))
def test_merges_in_any_order_give_the_same_profile(
    c: list[Event], a: list[Event], p: list[Event]
) -> None:
    people = {who: alone(who, events) for who, events in ((C1, c), (A1, a), (P1, p))}
    results = []
    for order in permutations([A1, P1]):
        state = people[C1]
        for who in order:
            state = merge(state, "c-1", people[who], now=at(41)).state
        results.append(document(state))
    assert (
        results[0]
        == results[1]
        == document(merge(people[C1], "c-1", people[A1], people[P1], now=at(41)).state)
    )
