"""Durations as the contract writes them: ``15m``, ``2s``, ``500ms``, ``30d`` or plain seconds."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(text: str) -> timedelta:
    """Parse ``text`` into a non-negative ``timedelta``; raise ``ValueError`` naming the form."""
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration (write e.g. 15m, 2s, 500ms, 30d or plain seconds)"
        )
    number, unit = match.groups()
    return float(number) * _UNITS[unit or "s"]
