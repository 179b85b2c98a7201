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
from nextbest.core.state import CustomerState, record_trigger
from nextbest.core.timeline import Bounds, place
from nextbest.core.timers import expire, next_wakeup
from nextbest.core.triggers import Trigger, build


class Outcome(NamedTuple):
    """What one event or deadline did. ``applied`` is False for a repeated event id.

    ``snapshot`` is the context at decision time, which the trigger carries;
    ``state`` also remembers the trigger. ``behind`` and ``beyond`` say how late
    the event came (see :class:`~nextbest.core.timeline.Placement`). ``error`` is
    set (and nothing applied) when the core itself failed on the event: a bug,
    which the worker reports instead of stopping.
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
        before = state if state is not None else self.new_profile(event)
        if event.id in before.seen_ids:
            return Outcome(before, applied=False)
        placed = place(before, event, now, self._bounds)
        after = placed.state
        if after.parts:  # a profile of several identifiers: the event's own part too
            key = f"{event.subjecttype}:{event.subject}"
            part = after.parts.get(key)
            if part is not None:
                part = place(part, event, now, self._bounds).state
                after = after._replace(parts={**after.parts, key: part})
        if not placed.signals:
            return Outcome(after, True, (), None, None, (), placed.behind, placed.beyond)
        return self._decide(after, placed.signals, now, placed.behind, placed.beyond)

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
        if not signals:
            return Outcome(state, True)
        return self._decide(state, signals, now)

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

    def expire_batch(self, states: Mapping[str, CustomerState], now: datetime) -> Batch:
        """Fire every deadline of ``states`` that is due at ``now``, earliest first."""
        changed: dict[str, CustomerState] = {}
        outcomes: list[Outcome] = []
        for subject, state in states.items():
            while (outcome := self.expire(state, now)) is not None:
                state = outcome.state
                changed[subject] = state
                outcomes.append(outcome)
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
