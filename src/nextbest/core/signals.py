"""Signals (contract §5): what just happened to a customer that a rule may act on.

:func:`detect` compares the context before and after one event, both folded in
``time`` order. Timer signals (``cart_abandoned``, ``checkout_stalled``) are the
same :class:`Signal` with a deadline as ``moment`` and no ``caused_by``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import NamedTuple

from nextbest.core.context import Context
from nextbest.core.envelope import Event


class SignalName(StrEnum):
    CHANNEL_SWITCH = "channel_switch"
    CART_ABANDONED = "cart_abandoned"
    CHECKOUT_STALLED = "checkout_stalled"
    PAYMENT_FAILED = "payment_failed"
    SEARCH_FRUSTRATION = "search_frustration"
    CONTACT_ABANDONED = "contact_abandoned"
    SHOWROOMING = "showrooming"


# a bit per signal, for remembering compactly which signals an event raised
SIGNAL_BITS = {name: 1 << index for index, name in enumerate(SignalName)}


class Signal(NamedTuple):
    """``moment`` is the event time or the deadline; ``channel`` where it happened.

    ``context`` is the customer's context right after the event that raised it
    (None: the caller's current context), which the rules' conditions read: a
    signal revealed by a late event is judged by the moment it belongs to.
    """

    name: SignalName
    moment: datetime
    channel: str
    from_channel: str | None = None
    caused_by: str | None = None
    event_type: str | None = None
    context: Context | None = None


_BY_TYPE = {
    "payment.failed": SignalName.PAYMENT_FAILED,
    "call.abandoned": SignalName.CONTACT_ABANDONED,
    "chat.abandoned": SignalName.CONTACT_ABANDONED,
    "product.scanned": SignalName.SHOWROOMING,
}


def detect(
    before: Context,
    after: Context,
    event: Event,
    *,
    journey_window: timedelta,
    search_count: int,
) -> tuple[Signal, ...]:
    """The signals that applying ``event`` to ``before`` (giving ``after``) raises."""
    previous = before.current_channel
    moment = event.time
    channel = event.channel
    found: list[Signal] = []
    last_at = before.last_event_at
    if (
        previous is not None
        and previous != channel
        and last_at is not None
        and abs(moment - last_at) < journey_window
    ):
        found.append(
            Signal(
                SignalName.CHANNEL_SWITCH, moment, channel, previous, event.id, event.type, after
            )
        )
    by_type = _BY_TYPE.get(event.type)
    if by_type is not None:
        found.append(Signal(by_type, moment, channel, previous, event.id, event.type, after))
    if (
        event.type == "search.performed"
        and event.data["results"] == 0
        and len(after.zero_searches) == search_count
    ):
        found.append(
            Signal(
                SignalName.SEARCH_FRUSTRATION,
                moment,
                channel,
                previous,
                event.id,
                event.type,
                after,
            )
        )
    return tuple(found)
