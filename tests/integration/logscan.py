"""Read the processes' logs line by line with their levels; find values that must not be there.

A record starts with ``[time] [pid] [LEVEL]`` (faust's worker) or ``[time]
[LEVEL]`` (the API); lines without that prefix continue the record above
(tables, tracebacks). A line before any record (``nextbest: …`` on stderr,
Python's last-resort handler) has no known level and counts as WARNING: the
check is strict where it cannot tell.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
RECORD = re.compile(r"^\[[^\]]+\] (?:\[\d+\] )?\[(DEBUG|INFO|WARNING|ERROR|CRITICAL)\]")
UNKNOWN = LEVELS["WARNING"]
# shorter values would match by chance ("c-1" in "abc-1"): tests use long random ids
SHORTEST = 8


@dataclass(frozen=True)
class Line:
    path: Path
    number: int
    level: int
    text: str


def lines(path: Path) -> Iterator[Line]:
    level = UNKNOWN
    text = path.read_text(errors="replace") if path.exists() else ""
    for number, line in enumerate(text.splitlines(), 1):
        match = RECORD.match(line)
        if match:
            level = LEVELS[match.group(1)]
        yield Line(path, number, level, line)


def findings(
    paths: Iterable[Path], values: Iterable[str], *, at_least: str = "INFO"
) -> list[tuple[Line, str]]:
    """Each line at ``at_least`` or above that contains one of ``values``, with the value."""
    wanted = sorted({v for v in values if len(v) >= SHORTEST}, key=len, reverse=True)
    floor = LEVELS[at_least]
    found = []
    for path in paths:
        for line in lines(path):
            if line.level < floor:
                continue
            for value in wanted:
                if value in line.text:
                    found.append((line, value))
                    break
    return found


def report(found: list[tuple[Line, str]], limit: int = 10) -> str:
    return "\n".join(
        f"{line.path.name}:{line.number}: {value!r} in: {line.text[:200]}"
        for line, value in found[:limit]
    )
