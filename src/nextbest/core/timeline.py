"""One timeline per customer (contract §3 "Order"): events folded in ``time`` order.

Kafka orders nothing across topics, and channel systems deliver late, so a
customer's events may arrive out of ``time`` order. :func:`place` puts one
event where it belongs:

* **in order** (the common case: at or after the newest event): it is applied
  to the context at once; nothing waits for stragglers;
* **late, within the reorder window** (``time`` at most the window behind the
  customer's newest event, and after every event folded into ``base``): it is
  inserted among the kept events and the context is folded again from
  ``base``. Signals are detected on the corrected timeline, and every signal of
  the late event and of the kept events after it is returned to be decided
  again now — except those of an event that has already had its trigger (a
  step marked :data:`FIRED`): the correction may change what a signal decides
  (a switch into the store with the cart a late web event filled). Nothing is
  taken back;
* **later than the window** (or not after every event folded into ``base``,
  which only the size bounds make happen within the window): it is applied at
  the end of ``base``, before the kept events, and raises nothing.

Events are ordered by ``(time, id)``, so every arrival order of the same events
gives the same context. The kept events are bounded: those older than the
window behind the newest, and the oldest beyond ``max_events`` or ``max_bytes``,
are folded into ``base`` (see :class:`Bounds`).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import NamedTuple

from nextbest.core.context import Context, apply, fold
from nextbest.core.envelope import Event
from nextbest.core.signals import SIGNAL_BITS, Signal, detect
from nextbest.core.state import FIRED, SEEN_KEPT, CustomerState, Step, encode_base


class Bounds(NamedTuple):
    """How the timeline is kept: the reorder window, what it may hold, the reducer's windows."""

    window: timedelta
    max_events: int
    max_bytes: int
    journey_window: timedelta
    search_window: timedelta
    search_count: int


class Placement(NamedTuple):
    """Where an event went: the new state, the signals to decide now, and how late it was.

    ``behind`` is how far the event's ``time`` lies behind the customer's newest
    event (None when it is the newest); ``beyond`` is True when it came too late
    to be placed among the kept events and raised nothing.
    """

    state: CustomerState
    signals: tuple[Signal, ...]
    behind: timedelta | None = None
    beyond: bool = False


def _key(event: Event) -> tuple[datetime, str]:
    return event.time, event.id


def _bits(signals: tuple[Signal, ...]) -> int:
    bits = 0
    for signal in signals:
        bits |= SIGNAL_BITS[signal.name]
    return bits


def place(state: CustomerState, event: Event, now: datetime, bounds: Bounds) -> Placement:
    """Apply ``event`` (not a repeat) to ``state`` where its ``time`` puts it."""
    recent = state.recent
    seen_ids = (*state.seen_ids, event.id)[-SEEN_KEPT:]
    newest = state.context.last_event_at
    if (not recent and (newest is None or event.time >= newest)) or (
        recent and _key(event) > _key(recent[-1].event)
    ):
        return _append(state, event, now, bounds, seen_ids)
    assert newest is not None  # something is newer than this event
    behind = newest - event.time
    folded = state.base.last_event_at  # the newest event folded into base
    if behind <= bounds.window and (folded is None or event.time > folded):
        return _replay(state, event, now, bounds, seen_ids, behind)
    base = _fold(state.base, (event,), now, bounds)
    context = _fold(base, (s.event for s in recent), now, bounds)
    context = context.adopt(state.context)
    placed = CustomerState(
        context,
        base,
        encode_base(base),
        recent,
        state.recent_bytes,
        seen_ids,
        state.last_fired,
        state.fired,
        state.parts,
        state.membership,
    )
    return Placement(placed, (), behind, beyond=True)


def _append(
    state: CustomerState,
    event: Event,
    now: datetime,
    bounds: Bounds,
    seen_ids: tuple[str, ...],
) -> Placement:
    """The newest event: applied at once, signals detected on the way."""
    before = state.context
    after = apply(
        before, event, now, search_window=bounds.search_window, search_count=bounds.search_count
    )
    signals = detect(
        before, after, event, journey_window=bounds.journey_window, search_count=bounds.search_count
    )
    base, encoded = state.base, state.base_encoded
    recent, size = state.recent, state.recent_bytes
    if recent and event.time - recent[-1].event.time > bounds.window:
        # every kept event is now beyond the window: base is simply the context so far
        base, recent, size = before, (), 0
        encoded = encode_base(base)
    step = Step.of(event, _bits(signals))
    recent = (*recent, step)
    size += step.size
    if len(recent) > bounds.max_events or size > bounds.max_bytes:
        base, recent, size = _trim(base, recent, size, now, bounds)
        encoded = encode_base(base)
    placed = CustomerState(
        after,
        base,
        encoded,
        recent,
        size,
        seen_ids,
        state.last_fired,
        state.fired,
        state.parts,
        state.membership,
    )
    return Placement(placed, signals)


def _replay(
    state: CustomerState,
    event: Event,
    now: datetime,
    bounds: Bounds,
    seen_ids: tuple[str, ...],
    behind: timedelta,
) -> Placement:
    """Insert ``event`` among the kept events and fold them again from ``base``."""
    recent = list(state.recent)
    position = bisect_right([_key(s.event) for s in recent], _key(event))
    inserted = Step.of(event)
    recent.insert(position, inserted)
    context = state.base
    revealed: list[Signal] = []
    steps: list[Step] = []
    for index, step in enumerate(recent):
        before = context
        context = apply(
            before,
            step.event,
            now,
            search_window=bounds.search_window,
            search_count=bounds.search_count,
        )
        if index < position or step.raised & FIRED:  # unchanged, or its trigger is out
            steps.append(step)
            continue
        found = detect(
            before,
            context,
            step.event,
            journey_window=bounds.journey_window,
            search_count=bounds.search_count,
        )
        revealed.extend(found)  # to be decided (again): the correction may change that
        steps.append(step._replace(raised=step.raised | _bits(found)))
    context = context.adopt(state.context)
    base, encoded = state.base, state.base_encoded
    kept = tuple(steps)
    size = state.recent_bytes + inserted.size
    if len(kept) > bounds.max_events or size > bounds.max_bytes:
        base, kept, size = _trim(base, kept, size, now, bounds)
        encoded = encode_base(base)
    placed = CustomerState(
        context,
        base,
        encoded,
        kept,
        size,
        seen_ids,
        state.last_fired,
        state.fired,
        state.parts,
        state.membership,
    )
    return Placement(placed, tuple(revealed), behind)


def _fold(context: Context, events: Iterable[Event], now: datetime, bounds: Bounds) -> Context:
    return fold(
        context, events, now, search_window=bounds.search_window, search_count=bounds.search_count
    )


def _trim(
    base: Context, recent: tuple[Step, ...], size: int, now: datetime, bounds: Bounds
) -> tuple[Context, tuple[Step, ...], int]:
    """Fold the oldest kept events into ``base`` until the bounds hold again.

    Also those beyond the window behind the newest go while at it; three
    quarters of the bounds are kept, so a busy customer folds in bulk.
    """
    newest = recent[-1].event.time
    cutoff = newest - bounds.window
    events = bounds.max_events * 3 // 4
    space = bounds.max_bytes * 3 // 4
    drop = 0
    last = len(recent) - 1  # the newest event is always kept
    while drop < last and (
        recent[drop].event.time < cutoff or len(recent) - drop > events or size > space
    ):
        size -= recent[drop].size
        drop += 1
    base = _fold(base, (s.event for s in recent[:drop]), now, bounds)
    return base, recent[drop:], size
