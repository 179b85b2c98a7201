"""Absence timers with a clock the test moves: fire once, move, cancel, stale, consent."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import resources

import pytest

from nextbest.core.config import EngineConfig
from nextbest.core.engine import Engine
from nextbest.core.envelope import DEFAULT_CHANNELS, Event
from nextbest.core.rules import Suppression, load_rules
from nextbest.core.schedule import DueIndex
from nextbest.core.state import CustomerState, decode, encode
from nextbest.core.triggers import Trigger
from tests.unit.events import at, event

CONFIG = EngineConfig(
    cart_abandon_after=timedelta(minutes=15), checkout_stall_after=timedelta(minutes=10)
)
RULES = load_rules(
    resources.files("nextbest").joinpath("default_rules.toml").read_text(),
    channels=DEFAULT_CHANNELS,
)
ADD = {"sku": "A1", "qty": 1, "price": 10.0}


@dataclass
class Customer:
    """One customer's state, driven like the worker drives it: events, then clock ticks."""

    engine: Engine = field(default_factory=lambda: Engine(CONFIG, RULES))
    state: CustomerState = field(default_factory=lambda: CustomerState.new("c-1"))
    fired: list[Trigger] = field(default_factory=list)
    suppressed: list[tuple[str, Suppression]] = field(default_factory=list)

    def send(self, item: Event) -> None:
        self.state = self.engine.process(self.state, item, item.time).state

    def tick(self, now: datetime) -> None:
        while (outcome := self.engine.expire(self.state, now)) is not None:
            self.state = outcome.state
            self.suppressed += outcome.suppressed
            if outcome.trigger is not None:
                self.fired.append(outcome.trigger)

    def actions(self) -> list[tuple[str, str, datetime]]:
        return [(t.action, t.channel, t.moment) for t in self.fired]


def consenting(mobile: bool = True, email: bool = False) -> Customer:
    customer = Customer()
    customer.send(event("consent.updated", minute=-1, data={"mobile": mobile, "email": email}))
    return customer


def test_cart_left_alone_fires_once_at_its_deadline() -> None:
    customer = consenting()
    customer.send(event("cart.item_added", "web", minute=0, data=ADD))
    assert customer.engine.next_wakeup(customer.state) == at(15)
    customer.tick(at(14.99))
    assert customer.fired == []
    customer.tick(at(15))
    assert customer.actions() == [("cart_reminder", "mobile", at(15))]
    assert customer.fired[0].caused_by is None
    for minute in (15.5, 16, 60):
        customer.tick(at(minute))
    assert len(customer.fired) == 1
    assert customer.engine.next_wakeup(customer.state) is None


def test_fired_deadlines_survive_encoding() -> None:
    customer = consenting()
    customer.send(event("cart.item_added", "web", data=ADD))
    customer.tick(at(15))
    restored = decode(encode(customer.state))
    assert customer.engine.expire(restored, at(20)) is None


def test_activity_moves_the_cart_deadline() -> None:
    customer = consenting()
    customer.send(event("cart.item_added", "web", minute=0, data=ADD))
    customer.send(event("page.viewed", "mobile", minute=10, data={"page_type": "home"}))
    assert customer.engine.next_wakeup(customer.state) == at(25)
    customer.tick(at(20))
    assert customer.fired == []
    customer.tick(at(25))
    assert customer.actions() == [("cart_reminder", "mobile", at(25))]


def test_new_activity_after_a_fire_sets_a_new_deadline() -> None:
    customer = consenting()
    customer.send(event("cart.item_added", "web", minute=0, data=ADD))
    customer.tick(at(15))
    customer.send(event("page.viewed", "web", minute=50, data={"page_type": "home"}))
    customer.tick(at(65))
    assert [moment for *_, moment in customer.actions()] == [at(15), at(65)]


def test_emptying_the_cart_cancels() -> None:
    customer = consenting()
    customer.send(event("cart.item_added", "web", data=ADD))
    customer.send(event("cart.item_removed", "web", minute=1, data={"sku": "A1", "qty": 1}))
    assert customer.engine.next_wakeup(customer.state) is None
    customer.tick(at(30))
    assert customer.fired == []


def test_an_order_cancels_the_checkout_timer() -> None:
    customer = consenting()
    customer.send(event("checkout.started", "web", minute=0))
    customer.send(event("order.placed", "web", minute=9, data={"order_id": "o-1"}))
    customer.tick(at(60))
    assert customer.fired == []


def test_checkout_stalls_on_the_channel_where_it_started() -> None:
    customer = consenting()
    customer.send(event("cart.item_added", "web", minute=0, data=ADD))
    customer.send(event("checkout.started", "mobile", minute=1))
    customer.send(event("page.viewed", "web", minute=2, data={"page_type": "help"}))
    customer.tick(at(11))
    assert customer.actions() == [("checkout_help", "mobile", at(11))]
    customer.tick(at(17))  # the cart deadline is a deadline of its own
    assert customer.actions()[1] == ("cart_reminder", "mobile", at(17))


def test_a_restarted_checkout_moves_its_deadline() -> None:
    customer = consenting()
    customer.send(event("checkout.started", "web", minute=0))
    customer.send(event("checkout.started", "web", minute=5))
    customer.tick(at(10))
    assert customer.fired == []
    customer.tick(at(15))
    assert customer.actions() == [("checkout_help", "web", at(15))]


def test_long_past_deadlines_update_state_but_emit_nothing() -> None:
    customer = consenting()
    customer.send(event("cart.item_added", "web", data=ADD))
    customer.tick(at(15) + CONFIG.max_signal_age + timedelta(seconds=1))
    assert customer.fired == []
    assert customer.suppressed == [("cart_reminder", Suppression.STALE)]
    assert customer.engine.next_wakeup(customer.state) is None


@pytest.mark.parametrize(
    ("mobile", "email", "expected"),
    [(True, True, "mobile"), (False, True, "email"), (False, False, None)],
)
def test_cart_reminder_needs_consent(mobile: bool, email: bool, expected: str | None) -> None:
    customer = consenting(mobile=mobile, email=email)
    customer.send(event("cart.item_added", "web", data=ADD))
    customer.tick(at(16))
    assert [t.channel for t in customer.fired] == ([expected] if expected else [])
    if expected is None:
        assert customer.suppressed == [("cart_reminder", Suppression.CONSENT)]


def test_timer_trigger_ids_are_deterministic_per_deadline() -> None:
    first, second = consenting(), consenting()
    for customer in (first, second):
        customer.send(event("cart.item_added", "web", data=ADD))
        customer.tick(at(15))
    assert first.fired[0].id == second.fired[0].id


# --- the index ----------------------------------------------------------------------


def test_index_pops_only_what_is_due_in_due_order() -> None:
    index = DueIndex()
    index.schedule(0, b"a", at(3))
    index.schedule(0, b"b", at(1))
    index.schedule(1, b"c", at(0))
    index.schedule(0, b"d", at(2))
    assert len(index) == 4
    assert index.pop_due(0, at(2)) == [b"b", b"d"]
    assert index.pop_due(0, at(2)) == []
    assert index.next_due(0) == at(3)
    assert len(index) == 2


def test_rescheduling_and_cancelling_leave_no_ghosts() -> None:
    index = DueIndex()
    index.schedule(0, b"a", at(1))
    index.schedule(0, b"a", at(5))  # moved
    index.schedule(0, b"b", at(2))
    index.schedule(0, b"b", None)  # cancelled
    assert index.pop_due(0, at(4)) == []
    assert index.pop_due(0, at(5)) == [b"a"]
    assert len(index) == 0


def test_many_moves_are_compacted() -> None:
    index = DueIndex()
    for minute in range(1000):
        index.schedule(0, b"a", at(minute))
    assert len(index._heaps[0]) <= 130
    assert index.pop_due(0, at(999)) == [b"a"]


def test_replace_keeps_only_owned_partitions() -> None:
    index = DueIndex()
    index.schedule(5, b"old", at(0))
    index.replace([0, 1], [(0, b"a", at(1)), (1, b"b", at(2)), (2, b"c", at(0))])
    assert len(index) == 2
    assert index.pop_due(5, at(9)) == []
    assert index.pop_due(2, at(9)) == []
    assert index.pop_due(1, at(9)) == [b"b"]


def test_pending_counts_only_the_partitions_asked_for() -> None:
    index = DueIndex()
    index.schedule(0, b"a", at(1))
    index.schedule(0, b"b", at(2))
    index.schedule(3, b"c", at(1))
    assert index.pending([0, 1]) == 2
    assert index.pending([3]) == 1
    assert index.pending([]) == 0
    assert len(index) == 3


def test_an_event_that_comes_after_a_deadline_lets_it_fire_first() -> None:
    """After an outage the backlog arrives together: a checkout that stalled before the
    customer's next event stalled all the same, though that event is applied first."""
    engine = Engine(CONFIG, RULES)
    state = engine.process(None, event("checkout.started", "web", minute=0), at(0)).state
    later = event("checkout.started", "mobile", minute=12)  # checkout started anew at 12
    outcome = engine.process(state, later, at(13))
    [stalled] = outcome.also
    assert stalled.trigger is not None
    assert (stalled.trigger.action, stalled.trigger.channel) == ("checkout_help", "web")
    assert stalled.trigger.moment == at(10)
    assert outcome.state.fired["checkout_stalled"] == at(10)
    assert engine.next_wakeup(outcome.state) == at(22)  # the new checkout's deadline


def test_a_tick_fires_only_deadlines_up_to_the_watermark() -> None:
    engine = Engine(CONFIG, RULES)
    state = engine.process(None, event("checkout.started", "web", minute=0), at(0)).state
    batch = engine.expire_batch({"c-1": state}, at(12), until=at(5))
    assert batch.outcomes == []
    batch = engine.expire_batch({"c-1": state}, at(12), until=at(10))
    [fired] = batch.outcomes
    assert fired.trigger is not None
    assert fired.trigger.moment == at(10)
