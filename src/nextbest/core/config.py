"""The engine's tunables, as plain data: built from settings by the bootstrap."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from nextbest.core.envelope import DEFAULT_CHANNELS
from nextbest.core.identity import DEFAULT_TYPES


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Durations and counts of contract §5, and the limits of §3 and §6."""

    channels: tuple[str, ...] = DEFAULT_CHANNELS
    journey_window: timedelta = timedelta(minutes=30)
    cart_abandon_after: timedelta = timedelta(minutes=15)
    checkout_stall_after: timedelta = timedelta(minutes=10)
    search_frustration_count: int = 3
    search_frustration_window: timedelta = timedelta(minutes=10)
    trigger_cooldown: timedelta = timedelta(minutes=30)
    max_signal_age: timedelta = timedelta(minutes=10)
    max_event_bytes: int = 65536
    max_clock_skew: timedelta = timedelta(minutes=5)
    # contract §3 "Order": how late an event may arrive and still take its place
    reorder_window: timedelta = timedelta(minutes=2)
    # what a customer's state keeps to place late events (see core/timeline.py)
    reorder_max_events: int = 50
    reorder_max_bytes: int = 16384
    # contract v0.2 §10: the kinds of identifier subjecttype may name
    subject_types: tuple[str, ...] = DEFAULT_TYPES
