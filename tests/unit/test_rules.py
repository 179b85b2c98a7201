"""contract §5: every default rule row, its negative cases, and arbitration."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from importlib import resources

import pytest

from nextbest.core.config import EngineConfig
from nextbest.core.context import Consent
from nextbest.core.engine import Engine, Outcome
from nextbest.core.envelope import DEFAULT_CHANNELS, Event
from nextbest.core.rules import RuleSet, Suppression, decide, load_rules
from nextbest.core.signals import Signal, SignalName
from nextbest.core.state import CustomerState
from tests.unit.events import at, event

CONFIG = EngineConfig()


def default_rules() -> RuleSet:
    text = resources.files("nextbest").joinpath("default_rules.toml").read_text("utf-8")
    return load_rules(text, channels=DEFAULT_CHANNELS)


ENGINE = Engine(CONFIG, default_rules())


def journey(*events: Event, now_after: timedelta = timedelta(seconds=1)) -> Outcome:
    """Run events in order, each decided shortly after its time; return the last outcome."""
    state: CustomerState | None = None
    outcome = None
    for item in events:
        outcome = ENGINE.process(state, item, item.time + now_after)
        state = outcome.state
    assert outcome is not None
    return outcome


def fired(outcome: Outcome) -> tuple[str, str] | None:
    trigger = outcome.trigger
    return None if trigger is None else (trigger.action, trigger.channel)


def consent(email: bool = False, mobile: bool = False, minute: float = -1) -> Event:
    return event("consent.updated", "web", minute=minute, data={"email": email, "mobile": mobile})


ADD = {"sku": "A1", "qty": 1, "price": 10.0}
ZERO = {"query": "unobtainium", "results": 0}


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        # agent_handoff (90): into contact-center or chat, not by abandoning
        ([event("page.viewed", "web", data={"page_type": "help"}),
          event("call.started", "contact-center", minute=5)],
         ("agent_handoff", "contact-center")),
        ([event("session.started", "mobile"), event("chat.started", "chat", minute=29)],
         ("agent_handoff", "chat")),
        ([event("session.started", "web"), event("call.started", "contact-center", minute=31)],
         None),  # outside the journey window: no switch
        ([event("session.started", "web"), event("call.abandoned", "contact-center", minute=1)],
         None),  # abandoning is no handoff, and callback_offer has no consent
        ([event("call.started", "contact-center"), event("call.ended", "contact-center", minute=1)],
         None),  # same channel
        # payment_help (80): the event's channel
        ([event("payment.failed", "mobile", data={"reason": "declined"})],
         ("payment_help", "mobile")),
        # callback_offer (65): mobile if consent.mobile, else email if consent.email
        ([consent(mobile=True, email=True), event("call.abandoned", "contact-center", minute=0)],
         ("callback_offer", "mobile")),
        ([consent(email=True, minute=0), event("chat.abandoned", "web", minute=1)],
         ("callback_offer", "email")),
        ([event("chat.abandoned", "chat")], None),
        # associate_assist (60): into store with a cart or a product viewed in the window
        ([event("cart.item_added", "web", data=ADD), event("store.visited", "store", minute=10,
          data={"store_id": "s1"})],
         ("associate_assist", "store")),
        ([event("product.viewed", "mobile", data={"sku": "A1"}),
          event("store.visited", "store", minute=20, data={"store_id": "s1"})],
         ("associate_assist", "store")),
        ([event("product.viewed", "mobile", data={"sku": "A1"}),
          event("session.started", "mobile", minute=25),
          event("store.visited", "store", minute=31, data={"store_id": "s1"})],
         None),  # the product view is older than the journey window
        ([event("session.started", "web"),
          event("store.visited", "store", minute=1, data={"store_id": "s1"})],
         None),  # nothing in the cart, nothing viewed
        # price_match (50): mobile if consent.mobile, else store
        ([consent(mobile=True), event("product.scanned", "store", data={"sku": "A1"})],
         ("price_match", "mobile")),
        ([event("product.scanned", "store", data={"sku": "A1"})], ("price_match", "store")),
        # chat_offer (50): the third zero-result search within 10 minutes
        ([event("search.performed", "web", minute=m, data=ZERO) for m in (0, 4, 9)],
         ("chat_offer", "web")),
        ([event("search.performed", "web", minute=m, data=ZERO) for m in (0, 4)], None),
        ([event("search.performed", "web", minute=m, data=ZERO) for m in (0, 6, 10)],
         None),  # the first fell out of the window
        ([*(event("search.performed", "web", minute=m, data=ZERO) for m in (0, 1)),
          event("search.performed", "web", minute=2, data={"query": "x", "results": 4})],
         None),  # a search that found something is no frustration
        # resume_cart (40): into web or mobile with a non-empty cart
        ([event("cart.item_added", "web", data=ADD), event("session.started", "mobile", minute=3)],
         ("resume_cart", "mobile")),
        ([event("cart.item_added", "web", data=ADD),
          event("cart.item_removed", "web", minute=1, data={"sku": "A1", "qty": 1}),
          event("session.started", "mobile", minute=3)],
         None),
    ],
)  # fmt: skip
def test_default_rules(events: list[Event], expected: tuple[str, str] | None) -> None:
    assert fired(journey(*events)) == expected


def test_fourth_zero_result_search_does_not_fire_again() -> None:
    searches = [event("search.performed", "web", minute=m, data=ZERO) for m in (0, 1, 2, 3)]
    outcome = journey(*searches[:3])
    assert fired(outcome) == ("chat_offer", "web")
    assert fired(ENGINE.process(outcome.state, searches[3], searches[3].time)) is None


def test_trigger_carries_what_the_contract_promises() -> None:
    outcome = journey(
        event("cart.item_added", "web", data=ADD),
        event("call.started", "contact-center", minute=5, id_="call-1"),
    )
    trigger = outcome.trigger
    assert trigger is not None
    assert (trigger.signal, trigger.priority, trigger.caused_by) == ("channel_switch", 90, "call-1")
    assert trigger.from_channel == "web"
    assert trigger.time == at(5) + timedelta(seconds=1)
    assert "web" in trigger.reason
    assert "contact-center" in trigger.reason
    assert "$" not in trigger.reason
    assert outcome.snapshot is not None
    assert outcome.snapshot.last_triggers == ()
    assert [t.id for t in outcome.state.context.last_triggers] == [trigger.id]


def test_trigger_ids_are_deterministic() -> None:
    events = [event("session.started", "web"), event("call.started", "contact-center", minute=1)]
    first, second = journey(*events), journey(*events)
    assert first.trigger is not None
    assert second.trigger is not None
    assert first.trigger.id == second.trigger.id
    other = journey(event("session.started", "web"), event("call.started", "contact-center"))
    assert other.trigger is not None
    assert other.trigger.id != first.trigger.id


def test_cooldown_suppresses_the_same_action_for_thirty_minutes() -> None:
    first = journey(event("session.started", "web"), event("call.started", "contact-center"))
    assert fired(first) == ("agent_handoff", "contact-center")
    state = first.state
    for minute, expected in ((10, None), (29, None), (31, ("agent_handoff", "contact-center"))):
        back = event("session.started", "web", minute=minute - 0.5)
        state = ENGINE.process(state, back, back.time).state
        again = event("call.started", "contact-center", minute=minute)
        outcome = ENGINE.process(state, again, again.time)
        assert fired(outcome) == expected, minute
        if expected is None:
            assert outcome.suppressed == (("agent_handoff", Suppression.COOLDOWN),)
        state = outcome.state


def test_missing_consent_is_counted() -> None:
    outcome = journey(event("call.abandoned", "contact-center"))
    assert outcome.trigger is None
    assert outcome.suppressed == (("callback_offer", Suppression.CONSENT),)


def test_stale_moments_emit_nothing() -> None:
    outcome = journey(
        event("payment.failed", "web"), now_after=CONFIG.max_signal_age + timedelta(seconds=1)
    )
    assert outcome.trigger is None
    assert outcome.suppressed == (("payment_help", Suppression.STALE),)
    assert outcome.state.context.version == 1  # context is still rebuilt


def test_exactly_max_age_is_not_stale() -> None:
    assert fired(journey(event("payment.failed", "web"), now_after=CONFIG.max_signal_age)) == (
        "payment_help",
        "web",
    )


def test_higher_priority_wins_and_the_other_is_counted() -> None:
    outcome = journey(
        event("cart.item_added", "web", data=ADD),
        event("product.scanned", "store", minute=2, data={"sku": "A1"}),
    )
    assert fired(outcome) == ("associate_assist", "store")
    assert outcome.suppressed == (("price_match", Suppression.ARBITRATION),)


def test_equal_priority_goes_to_the_earlier_row() -> None:
    state = CustomerState.new("c-1")
    now = at(0)
    signals = [
        Signal(SignalName.SEARCH_FRUSTRATION, now, "web", caused_by="e"),
        Signal(SignalName.SHOWROOMING, now, "store", caused_by="e"),
    ]
    decision = decide(
        default_rules(),
        state,
        signals,
        now,
        journey_window=CONFIG.journey_window,
        cooldown=CONFIG.trigger_cooldown,
        max_signal_age=CONFIG.max_signal_age,
    )
    assert decision.winner is not None
    assert decision.winner.rule.action == "price_match"  # row 6 comes before row 7
    assert decision.suppressed == (("chat_offer", Suppression.ARBITRATION),)


def timer_decision(signal: SignalName, state: CustomerState, moment: datetime) -> object:
    decision = decide(
        default_rules(),
        state,
        [Signal(signal, moment, "web")],
        moment + timedelta(seconds=1),
        journey_window=CONFIG.journey_window,
        cooldown=CONFIG.trigger_cooldown,
        max_signal_age=CONFIG.max_signal_age,
    )
    if decision.winner is None:
        return decision.suppressed
    return decision.winner.rule.action, decision.winner.channel


@pytest.mark.parametrize(
    ("consent_", "expected"),
    [
        (Consent(mobile=True, email=True), ("cart_reminder", "mobile")),
        (Consent(email=True), ("cart_reminder", "email")),
        (Consent(), (("cart_reminder", Suppression.CONSENT),)),
    ],
)
def test_cart_reminder_follows_consent(consent_: Consent, expected: object) -> None:
    state = CustomerState.new("c-1")
    state = state._replace(context=replace(state.context, consent=consent_))
    assert timer_decision(SignalName.CART_ABANDONED, state, at(0)) == expected


def test_checkout_help_goes_where_checkout_started() -> None:
    started = journey(event("checkout.started", "mobile"))
    assert timer_decision(SignalName.CHECKOUT_STALLED, started.state, at(10)) == (
        "checkout_help",
        "mobile",
    )


def test_trigger_ids_stay_the_uuid5_they_always_were() -> None:
    """Ids must not change across versions: channel apps drop repeats by id."""
    import uuid

    from nextbest.core.triggers import trigger_id

    namespace = uuid.UUID("6d1f4a52-8f0b-5c9e-9a57-2b7c3e1f0a64")
    for parts in [("c-1", "agent_handoff", "channel_switch", "e-2"), ("ü", "a", "b", "c")]:
        assert trigger_id(*parts) == str(uuid.uuid5(namespace, "\x1f".join(parts)))
