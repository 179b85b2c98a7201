"""One event (or one deadline) through the whole core: dedupe, apply, detect, decide, build.

:class:`Engine` binds the configuration and the rules. The stream adapter calls
:meth:`Engine.process` per event, :meth:`Engine.expire` when a customer's
:meth:`Engine.next_wakeup` has come.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from nextbest.core.config import EngineConfig
from nextbest.core.context import Context
from nextbest.core.envelope import Event
from nextbest.core.rules import RuleSet, Suppression, decide
from nextbest.core.signals import Signal, detect
from nextbest.core.state import CustomerState, apply, is_duplicate, record_trigger
from nextbest.core.timers import expire, next_wakeup
from nextbest.core.triggers import Trigger, build


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one event did. ``applied`` is False for a repeated event id (nothing changed).

    ``snapshot`` is the context at decision time, which the trigger carries;
    ``state`` also remembers the trigger.
    """

    state: CustomerState
    applied: bool
    signals: tuple[Signal, ...] = ()
    trigger: Trigger | None = None
    snapshot: Context | None = None
    suppressed: tuple[tuple[str, Suppression], ...] = ()


class Engine:
    def __init__(self, config: EngineConfig, rules: RuleSet) -> None:
        self.config = config
        self.rules = rules

    def process(self, state: CustomerState | None, event: Event, now: datetime) -> Outcome:
        before = state if state is not None else CustomerState.new(event.subject)
        if is_duplicate(before, event):
            return Outcome(before, applied=False)
        config = self.config
        after = apply(
            before,
            event,
            now,
            search_window=config.search_frustration_window,
            search_count=config.search_frustration_count,
        )
        signals = detect(
            before,
            after,
            event,
            journey_window=config.journey_window,
            search_count=config.search_frustration_count,
        )
        return self._decide(after, signals, now)

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

    def _decide(self, after: CustomerState, signals: tuple[Signal, ...], now: datetime) -> Outcome:
        if not signals:
            return Outcome(after, applied=True)
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
            return Outcome(after, True, signals, suppressed=decision.suppressed)
        trigger = build(decision.winner, after.context, now)
        return Outcome(
            record_trigger(after, trigger.record),
            True,
            signals,
            trigger,
            after.context,
            decision.suppressed,
        )
