"""The nemesis's schedule: which fault, when, for how long — seeded, so a run can be repeated.

Pure: :func:`schedule` only decides. One fault at a time, each followed by a
recovery window; a burst of hostile records lands in the middle of another
fault, so two overlap.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

KINDS = ("kill9", "pause", "scale", "broker", "redis", "burst")


@dataclass(frozen=True)
class Fault:
    """``at`` seconds after the load began; ``hold`` how long it lasts.

    * ``kill9``: SIGKILL a worker, restart it at once (same instance id, same disk);
    * ``pause``: SIGSTOP a worker for ``hold`` (longer than the session timeout), SIGCONT;
    * ``scale``: one more worker joins, and leaves (SIGTERM) after ``hold``;
    * ``broker``: SIGKILL the broker, restart it (down about ``hold``), and meanwhile
      tell a worker to stop (it must exit within its grace) and start it again;
    * ``redis``: stop Redis for ``hold``, start it again (its data kept);
    * ``burst``: ``count`` hostile records on one channel, as fast as they go.
    """

    at: float
    kind: str
    target: int = 0  # the worker a fault aims at
    hold: float = 0.0
    count: int = 0
    channel: str = "web"


@dataclass(frozen=True)
class Timing:
    session_timeout: float = 10.0
    redis_down: float = 60.0
    broker_down: float = 5.0
    scaled_for: float = 60.0
    burst: int = 10_000
    recovery: float = 30.0  # the window after a fault at whose end the lag must be steady


QUICK = Timing(redis_down=20.0, scaled_for=25.0, burst=2_000, recovery=12.0)


def schedule(
    seed: int,
    seconds: float,
    workers: int,
    timing: Timing,
    *,
    warmup: float = 20.0,
    kinds: tuple[str, ...] = KINDS,
) -> list[Fault]:
    """Every kind of fault once (more in a long run), in a seeded order, spaced evenly
    after ``warmup``; a burst lands during another fault."""
    rng = random.Random(seed)  # noqa: S311 - a repeatable schedule, not a secret
    kinds = tuple(k for k in kinds if k != "burst")
    rounds = max(1, int((seconds - warmup) // 300))  # a long run repeats the faults
    order: list[str] = []
    for _ in range(rounds):
        batch = list(kinds)
        rng.shuffle(batch)
        order += batch
    gap = (seconds - warmup) / (len(order) + 1)
    faults: list[Fault] = []
    for index, kind in enumerate(order):
        at = warmup + index * gap
        target = rng.randrange(workers)
        faults.append(_fault(kind, at, target, timing, seconds, gap))
        if index == 1 or (index > 1 and rng.random() < 0.2):  # overlapping: a burst mid-fault
            channel = rng.choice(["web", "mobile", "store"])
            faults.append(Fault(at + min(5.0, gap / 4), "burst", count=timing.burst,
                                channel=channel))  # fmt: skip
    return sorted(faults, key=lambda f: f.at)


def _fault(kind: str, at: float, target: int, timing: Timing, seconds: float, gap: float) -> Fault:
    if kind == "pause":
        return Fault(at, kind, target, hold=timing.session_timeout + 5.0)
    if kind == "scale":
        return Fault(at, kind, target, hold=min(timing.scaled_for, gap * 0.8))
    if kind == "broker":
        return Fault(at, kind, target, hold=timing.broker_down)
    if kind == "redis":
        return Fault(at, kind, target, hold=min(timing.redis_down, gap * 0.8))
    return Fault(at, kind, target)
