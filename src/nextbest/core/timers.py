"""Absence timers (contract §5): "A not followed by B within T", as pure functions.

Deadlines are not stored: they follow from the customer's state, which is
durable (changelogged) already —

* ``cart_abandoned``: the cart is non-empty; due ``cart_abandon_after`` after
  the newest event time. Any event moves it; an empty cart cancels it.
* ``checkout_stalled``: checkout started; due ``checkout_stall_after`` after
  ``checkout.started_at``. ``order.placed`` ends checkout and cancels it.

What the state stores is the deadline each timer last *fired* for, so a
deadline fires once, also across restarts and rebalances, and a moved deadline
is a new one. The shape is bytewax's ``notify_at`` / ``on_notify``:
:func:`next_wakeup` says when to look again, :func:`expire` fires what is due.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from nextbest.core.signals import Signal, SignalName
from nextbest.core.state import CustomerState


@dataclass(frozen=True, slots=True)
class Deadline:
    signal: SignalName
    due: datetime
    channel: str


def deadlines(
    state: CustomerState, *, cart_abandon_after: timedelta, checkout_stall_after: timedelta
) -> tuple[Deadline, ...]:
    """The pending deadlines of ``state``: computed, minus those already fired."""
    context = state.context
    found: list[Deadline] = []
    checkout = context.checkout
    if checkout.state == "started" and checkout.started_at is not None and checkout.channel:
        found.append(
            Deadline(
                SignalName.CHECKOUT_STALLED,
                checkout.started_at + checkout_stall_after,
                checkout.channel,
            )
        )
    if context.cart.items and context.last_event_at is not None and context.current_channel:
        found.append(
            Deadline(
                SignalName.CART_ABANDONED,
                context.last_event_at + cart_abandon_after,
                context.current_channel,
            )
        )
    return tuple(d for d in found if state.fired.get(d.signal) != d.due)


def next_wakeup(
    state: CustomerState, *, cart_abandon_after: timedelta, checkout_stall_after: timedelta
) -> datetime | None:
    """When this customer next needs looking at, or None when nothing is pending."""
    pending = deadlines(
        state, cart_abandon_after=cart_abandon_after, checkout_stall_after=checkout_stall_after
    )
    return min((d.due for d in pending), default=None)


def expire(
    state: CustomerState,
    now: datetime,
    *,
    cart_abandon_after: timedelta,
    checkout_stall_after: timedelta,
) -> tuple[CustomerState, Signal] | None:
    """Fire the earliest deadline due at ``now`` (or before): the state remembers it fired."""
    due = [
        d
        for d in deadlines(
            state, cart_abandon_after=cart_abandon_after, checkout_stall_after=checkout_stall_after
        )
        if d.due <= now
    ]
    if not due:
        return None
    deadline = min(due, key=lambda d: d.due)
    signal = Signal(
        deadline.signal,
        moment=deadline.due,
        channel=deadline.channel,
        from_channel=None,
        caused_by=None,
    )
    fired = {**state.fired, deadline.signal.value: deadline.due}
    return state._replace(fired=fired), signal
