"""Small builders of core values for unit tests."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from nextbest.core.envelope import Event

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
_ids = itertools.count(1)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def event(
    type_: str,
    channel: str = "web",
    *,
    minute: float = 0,
    data: dict[str, Any] | None = None,
    subject: str = "c-1",
    id_: str | None = None,
) -> Event:
    return Event(
        id=id_ or f"e-{next(_ids)}",
        source="/test",
        type=type_,
        time=at(minute),
        subject=subject,
        channel=channel,
        data=data or {},
    )
