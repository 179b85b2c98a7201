"""Signals (contract §5): what just happened to a customer that a rule may act on.

:func:`detect` compares the state before and after one event. Timer signals
(``cart_abandoned``, ``checkout_stalled``) are the same :class:`Signal` with a
deadline as ``moment`` and no ``caused_by``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from nextbest.core.envelope import Event
from nextbest.core.state import CustomerState


class SignalName(StrEnum):
    CHANNEL_SWITCH = "channel_switch"
    CART_ABANDONED = "cart_abandoned"
    CHECKOUT_STALLED = "checkout_stalled"
    PAYMENT_FAILED = "payment_failed"
    SEARCH_FRUSTRATION = "search_frustration"
    CONTACT_ABANDONED = "contact_abandoned"
    SHOWROOMING = "showrooming"


@dataclass(frozen=True, slots=True)
class Signal:
    """``moment`` is the event time or the deadline; ``channel`` where it happened."""

    name: SignalName
    moment: datetime
    channel: str
    from_channel: str | None = None
    caused_by: str | None = None
    event_type: str | None = None


_BY_TYPE = {
    "payment.failed": SignalName.PAYMENT_FAILED,
    "call.abandoned": SignalName.CONTACT_ABANDONED,
    "chat.abandoned": SignalName.CONTACT_ABANDONED,
    "product.scanned": SignalName.SHOWROOMING,
}


def detect(
    before: CustomerState,
    after: CustomerState,
    event: Event,
    *,
    journey_window: timedelta,
    search_count: int,
) -> tuple[Signal, ...]:
    """The signals that applying ``event`` to ``before`` (giving ``after``) raises."""
    previous = before.context.current_channel
    base = Signal(
        SignalName.CHANNEL_SWITCH,
        moment=event.time,
        channel=event.channel,
        from_channel=previous,
        caused_by=event.id,
        event_type=event.type,
    )
    found: list[Signal] = []
    last_at = before.context.last_event_at
    if (
        previous is not None
        and previous != event.channel
        and last_at is not None
        and abs(event.time - last_at) < journey_window
    ):
        found.append(base)
    by_type = _BY_TYPE.get(event.type)
    if by_type is not None:
        found.append(_renamed(base, by_type))
    if (
        event.type == "search.performed"
        and event.data["results"] == 0
        and len(after.zero_searches) == search_count
    ):
        found.append(_renamed(base, SignalName.SEARCH_FRUSTRATION))
    return tuple(found)


def _renamed(signal: Signal, name: SignalName) -> Signal:
    return Signal(
        name,
        moment=signal.moment,
        channel=signal.channel,
        from_channel=signal.from_channel,
        caused_by=signal.caused_by,
        event_type=signal.event_type,
    )
