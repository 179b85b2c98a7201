"""Events and deadlines through the whole core: dedupe, place, detect, decide, build.

:class:`Engine` binds the configuration and the rules. The worker hands it a
partition's batch at a time (:meth:`Engine.process_batch`, :meth:`Engine.expire_batch`)
with the states the batch touches, and gets back the new states and what each
event or deadline did, so it does its I/O once per batch. :meth:`Engine.process`
and :meth:`Engine.expire` are the same for one event or one customer.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

from nextbest.core import profile
from nextbest.core.config import EngineConfig
from nextbest.core.context import Context, Identity
from nextbest.core.envelope import Event
from nextbest.core.identity import CUSTOMER, Identifier
from nextbest.core.rules import RuleSet, Suppression, decide
from nextbest.core.signals import Signal
from nextbest.core.state import CustomerState, mark_fired, record_trigger
from nextbest.core.timeline import Bounds, place
from nextbest.core.timers import expire, next_wakeup
from nextbest.core.triggers import Trigger, build

_EARLIER = timedelta(microseconds=1)


class Outcome(NamedTuple):
    """What one event or deadline did. ``applied`` is False for a repeated event id.

    ``snapshot`` is the context at decision time, which the trigger carries;
    ``state`` also remembers the trigger. ``behind`` and ``beyond`` say how late
    the event came (see :class:`~nextbest.core.timeline.Placement`). ``error`` is
    set (and nothing applied) when the core itself failed on the event: a bug,
    which the worker reports instead of stopping. ``also`` are the other
    decisions this input brought about, each with at most its own trigger: the
    customer's deadlines that fell before the event (fired first), and the
    decisions of later events that a late event's correction changed.
    """

    state: CustomerState
    applied: bool
    signals: tuple[Signal, ...] = ()
    trigger: Trigger | None = None
    snapshot: Context | None = None
    suppressed: tuple[tuple[str, Suppression], ...] = ()
    behind: timedelta | None = None
    beyond: bool = False
    error: Exception | None = None
    also: tuple[Outcome, ...] = ()


def _by_cause(signals: tuple[Signal, ...]) -> list[tuple[str, tuple[Signal, ...]]]:
    """Signals grouped by the event that raised them, in the order they came."""
    groups: dict[str, list[Signal]] = {}
    for signal in signals:
        groups.setdefault(signal.caused_by or "", []).append(signal)
    return [(cause, tuple(found)) for cause, found in groups.items()]


class Batch(NamedTuple):
    """A batch's result: the newest state of every customer it changed, and each
    input's outcome in input order."""

    states: dict[str, CustomerState]
    outcomes: list[Outcome]


class Engine:
    def __init__(self, config: EngineConfig, rules: RuleSet) -> None:
        self.config = config
        self.rules = rules
        self._bounds = Bounds(
            window=config.reorder_window,
            max_events=config.reorder_max_events,
            max_bytes=config.reorder_max_bytes,
            journey_window=config.journey_window,
            search_window=config.search_frustration_window,
            search_count=config.search_frustration_count,
        )

    def process(self, state: CustomerState | None, event: Event, now: datetime) -> Outcome:
        """Apply ``event``; first fire the deadlines that fell before it.

        A deadline the event's ``time`` has passed fires before the event is
        applied, as it would have, had the event come when it happened: after an
        outage, a backlog's events must not cancel deadlines they came too late to
        cancel. ``now`` is when the engine decides (staleness, trigger times).
        """
        before = state if state is not None else self.new_profile(event)
        if event.id in before.seen_ids:
            return Outcome(before, applied=False)
        also: list[Outcome] = []
        if state is not None:
            also.extend(self._expire_until(before, now, event.time - _EARLIER))
            if also:
                before = also[-1].state
        placed = place(before, event, now, self._bounds)
        after = placed.state
        if after.parts:  # a profile of several identifiers: the event's own part too
            key = f"{event.subjecttype}:{event.subject}"
            part = after.parts.get(key)
            if part is not None:
                part = place(part, event, now, self._bounds).state
                after = after._replace(parts={**after.parts, key: part})
        own: Outcome | None = None
        # one decision per event: the late one's own, and those of later events it changed
        for cause, signals in _by_cause(placed.signals):
            decided = self._decide(after, signals, now)
            after = decided.state
            if decided.trigger is not None:
                after = mark_fired(after, cause)
            if cause == event.id:
                own = decided
            else:
                also.append(decided)
        if own is None:
            own = Outcome(after, True)
        return Outcome(
            after, True, own.signals, own.trigger, own.snapshot, own.suppressed,
            placed.behind, placed.beyond, None, tuple(also),
        )  # fmt: skip

    def _expire_until(
        self, state: CustomerState, now: datetime, until: datetime
    ) -> tuple[Outcome, ...]:
        """Fire, earliest first, the deadlines of ``state`` due up to ``until``, at ``now``."""
        fired: list[Outcome] = []
        while (due := self.next_wakeup(state)) is not None and due <= until:
            outcome = self.expire(state, max(now, due))
            if outcome is None:  # pragma: no cover - next_wakeup said one was due
                break
            state = outcome.state
            fired.append(outcome)
        return tuple(fired)

    def new_profile(self, event: Event) -> CustomerState:
        """The state of a subject seen for the first time: a profile of its own."""
        if event.subjecttype == CUSTOMER:
            return CustomerState.new(event.subject)
        return CustomerState.named(Identifier(event.subjecttype, event.subject), event.time)

    # --- identity operations (contract §10; the protocol is adapters/identity.py) ---------

    def absorb(
        self,
        target: CustomerState | None,
        profile_id: str,
        shipments: Sequence[profile.Shipment],
        now: datetime,
    ) -> Outcome:
        """``target`` joined by ``shipments``; a signal the combined timeline reveals
        (say the login on mobile after an anonymous web cart) is decided now."""
        state, signals = profile.absorb(target, profile_id, shipments, now, self._bounds)
        return self._settle(state, signals, now)

    def _settle(self, after: CustomerState, signals: tuple[Signal, ...], now: datetime) -> Outcome:
        """One decision per causing event, as for a late event's correction: the first is
        the outcome, the others its ``also``; an event whose trigger went out is marked."""
        decided: list[Outcome] = []
        for cause, found in _by_cause(signals):
            outcome = self._decide(after, found, now)
            after = outcome.state
            if outcome.trigger is not None:
                after = mark_fired(after, cause)
            decided.append(outcome)
        if not decided:
            return Outcome(after, True)
        first, *rest = decided
        return first._replace(state=after, also=tuple(rest))

    def split(
        self, state: CustomerState, leaving: Collection[str], now: datetime
    ) -> tuple[CustomerState | None, dict[str, CustomerState]]:
        """The rest of ``state`` without the identifiers ``leaving``, and their parts."""
        return profile.split(state, leaving, now, self._bounds)

    def promote(
        self, part: CustomerState, identity: Identity, version: int, now: datetime
    ) -> CustomerState:
        """A part that left as a profile of its own."""
        return profile.promote(part, identity, version, now, self._bounds)

    def process_batch(
        self, states: Mapping[str, CustomerState | None], events: Iterable[Event], now: datetime
    ) -> Batch:
        """Apply ``events`` in order; ``states`` holds (at least) every subject's state,
        keyed by ``event.profile`` when the adapter resolved one, else by the subject."""
        changed: dict[str, CustomerState] = {}
        outcomes: list[Outcome] = []
        for event in events:
            subject = event.profile or event.subject  # a profile's state key, or the customer id
            state = changed.get(subject)
            if state is None:
                state = states.get(subject)
            try:
                outcome = self.process(state, event, now)
            except Exception as error:  # a bug: reported per event, the rest goes on
                outcome = Outcome(state or CustomerState.new(subject), False, error=error)
            if outcome.applied:
                changed[subject] = outcome.state
            outcomes.append(outcome)
        return Batch(changed, outcomes)

    def next_wakeup(self, state: CustomerState) -> datetime | None:
        """When ``state`` has a deadline pending, the earliest one; else None."""
        return next_wakeup(
            state,
            cart_abandon_after=self.config.cart_abandon_after,
            checkout_stall_after=self.config.checkout_stall_after,
        )

    def expire(self, state: CustomerState, now: datetime) -> Outcome | None:
        """Fire the earliest deadline due at ``now``; None when nothing is due."""
        fired = expire(
            state,
            now,
            cart_abandon_after=self.config.cart_abandon_after,
            checkout_stall_after=self.config.checkout_stall_after,
        )
        if fired is None:
            return None
        after, signal = fired
        return self._decide(after, (signal,), now)

    def expire_batch(
        self, states: Mapping[str, CustomerState], now: datetime, until: datetime | None = None
    ) -> Batch:
        """Fire every deadline of ``states`` due up to ``until`` (default ``now``),
        earliest first."""
        changed: dict[str, CustomerState] = {}
        outcomes: list[Outcome] = []
        for subject, state in states.items():
            fired = self._expire_until(state, now, now if until is None else until)
            if fired:
                changed[subject] = fired[-1].state
                outcomes.extend(fired)
        return Batch(changed, outcomes)

    def _decide(
        self,
        after: CustomerState,
        signals: tuple[Signal, ...],
        now: datetime,
        behind: timedelta | None = None,
        beyond: bool = False,
    ) -> Outcome:
        config = self.config
        decision = decide(
            self.rules,
            after,
            signals,
            now,
            journey_window=config.journey_window,
            cooldown=config.trigger_cooldown,
            max_signal_age=config.max_signal_age,
        )
        if decision.winner is None:
            return Outcome(after, True, signals, None, None, decision.suppressed, behind, beyond)
        trigger = build(decision.winner, after.context, now)
        return Outcome(
            record_trigger(after, trigger.record, trigger.moment),
            True,
            signals,
            trigger,
            after.context,
            decision.suppressed,
            behind,
            beyond,
        )
