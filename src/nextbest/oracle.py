"""What the engine should have made of its input: the test oracle of the soak and the tests.

Given every valid event the channels sent, :func:`expect` computes with the
pure core, customer by customer and in ``time`` order (contract §3 "Order"),
each customer's final state and every trigger the engine should have emitted —
for events, and for the deadlines that passed with no event to move them. It
is what any arrival order must come to, so a run that lost, doubled or
misapplied an event, or failed to emit a trigger, shows up as a difference.

:func:`differences` compares a document the engine produced (from Redis, or
decoded from its table) with the expected one, leaving out what only depends
on when the engine happened to decide (``updated_at``, the times in
``last_triggers``). :func:`judge_triggers` compares the triggers delivered with
the expected ones.

Where arrival order may legitimately change a decision, the judgement says so
instead of calling it a loss: a late event's signal decided against a cooldown
that a later event's trigger started (contract §5: nothing is taken back) is
counted as *replaced* when the engine sent the same action to that customer.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from nextbest.core.context import to_document
from nextbest.core.engine import Engine
from nextbest.core.envelope import Event
from nextbest.core.state import CustomerState
from nextbest.core.triggers import Trigger

DECIDED_AFTER = timedelta(milliseconds=100)  # when the oracle "decides": just after the event
EARLIER = timedelta(microseconds=1)
# what depends on when the engine decided, not on the input
_WHEN = ("updated_at",)


@dataclass
class Expectation:
    """Per customer, the final state; and every expected trigger, by id."""

    states: dict[str, CustomerState] = field(default_factory=dict)
    triggers: dict[str, Trigger] = field(default_factory=dict)

    def version(self, customer: str) -> int:
        state = self.states.get(customer)
        return 0 if state is None else state.context.version


def expect(engine: Engine, events: Iterable[Event], until: datetime) -> Expectation:
    """Every customer's events in ``time`` order through ``engine``; deadlines up to ``until``.

    A deadline fires before an event of its customer whose time is after it,
    as the engine's ticks would have fired it in time.
    """
    by_customer: defaultdict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_customer[event.subject].append(event)
    expected = Expectation()
    for customer, own in by_customer.items():
        state: CustomerState | None = None
        for event in sorted(own, key=lambda e: (e.time, e.id)):
            if state is not None:
                state = _expire(engine, state, event.time - EARLIER, expected)
            outcome = engine.process(state, event, event.time + DECIDED_AFTER)
            if outcome.trigger is not None:
                expected.triggers[outcome.trigger.id] = outcome.trigger
            state = outcome.state
        assert state is not None
        expected.states[customer] = _expire(engine, state, until, expected)
    return expected


def _expire(
    engine: Engine, state: CustomerState, until: datetime, expected: Expectation
) -> CustomerState:
    """Fire every deadline up to ``until``, each decided just after its own moment."""
    while (due := engine.next_wakeup(state)) is not None and due <= until:
        outcome = engine.expire(state, due + DECIDED_AFTER)
        if outcome is None:  # pragma: no cover - next_wakeup said it was due
            break
        state = outcome.state
        if outcome.trigger is not None:
            expected.triggers[outcome.trigger.id] = outcome.trigger
    return state


def comparable(document: Mapping[str, Any]) -> dict[str, Any]:
    """A document without what depends on when the engine decided."""
    kept = {k: v for k, v in document.items() if k not in _WHEN}
    kept["last_triggers"] = [
        {k: v for k, v in trigger.items() if k != "at"} for trigger in document["last_triggers"]
    ]
    return kept


def differences(expected: CustomerState, document: Mapping[str, Any] | None) -> list[str]:
    """The top-level fields in which ``document`` differs from the expected context.

    ``last_triggers`` is left out: which triggers fired is judged on its own
    (:func:`judge_triggers`), with the allowance a late arrival may need.
    """
    if document is None:
        return ["(missing)"]
    want = comparable(to_document(expected.context))
    got = comparable(document)
    return sorted(
        key
        for key in want.keys() | got.keys()
        if key != "last_triggers" and want.get(key) != got.get(key)
    )


@dataclass
class TriggerJudgement:
    """Expected triggers against those delivered (their ids, each delivery counted)."""

    expected: int = 0
    delivered: int = 0  # distinct ids
    deliveries: int = 0
    missing: list[str] = field(default_factory=list)  # expected, never delivered
    replaced: list[str] = field(default_factory=list)  # expected; its action went out otherwise
    extra: int = 0  # delivered, not expected
    repeated: int = 0  # deliveries beyond the first of an id

    @property
    def repeated_share(self) -> float:
        return self.repeated / self.deliveries if self.deliveries else 0.0


def judge_triggers(
    expected: Mapping[str, Trigger],
    delivered: Sequence[Mapping[str, Any]],
    *,
    event_times: Mapping[str, datetime],
    cooldown: timedelta,
) -> TriggerJudgement:
    """``delivered``: every trigger record read from the trigger topics (the CloudEvents).

    An expected trigger that was not delivered counts as *replaced* when the
    arrival order legitimately decided otherwise: a delivered trigger names the
    same cause (that event had had its one trigger before a late event changed
    what it would decide), or sent the same action to the same customer for a
    moment within ``cooldown`` of its own (the moment of a delivered trigger:
    the time of the event it names in ``caused_by``, from ``event_times``, else
    when it was decided). Otherwise it is *missing*.
    """
    counts = Counter(str(record["id"]) for record in delivered)
    causes = {r["data"].get("caused_by") for r in delivered} - {None}
    sent: defaultdict[tuple[str, str], list[datetime]] = defaultdict(list)
    for record in delivered:
        cause = record["data"].get("caused_by")
        moment = event_times.get(cause) if cause is not None else None
        if moment is None:
            moment = datetime.fromisoformat(str(record["time"]))
        sent[(str(record["subject"]), str(record["data"]["action"]))].append(moment)
    judgement = TriggerJudgement(
        expected=len(expected),
        delivered=len(counts),
        deliveries=sum(counts.values()),
        extra=sum(1 for trigger_id in counts if trigger_id not in expected),
        repeated=sum(n - 1 for n in counts.values()),
    )
    for trigger_id, trigger in expected.items():
        if trigger_id in counts:
            continue
        moments = sent.get((trigger.subject, trigger.action), ())
        if trigger.caused_by in causes or any(
            abs(moment - trigger.moment) < cooldown for moment in moments
        ):
            judgement.replaced.append(trigger_id)
        else:
            judgement.missing.append(trigger_id)
    return judgement
