"""What runs beside the worker's batches: timer ticks, the Redis mirror, lag, restore watch.

Each is a small piece of work the bootstrap schedules on the faust app; an
exception escaping a faust timer would crash the app, so each is guarded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import mode

from nextbest.adapters.consumer import BatchConsumer
from nextbest.adapters.pages import readiness
from nextbest.adapters.projection import RedisMirror
from nextbest.adapters.recovery import RecoveryWatch
from nextbest.adapters.table import Sender
from nextbest.failures import log_failure
from nextbest.metrics import Metrics

log = logging.getLogger(__name__)

RECOVERY_STALL_AFTER = 10.0  # seconds a partition's restore may stand still before a re-read

Work = Callable[[], Awaitable[None]]


def guarded(name: str, work: Work) -> Work:
    """An exception escaping a faust timer crashes the whole app: log it instead."""

    async def run() -> None:
        try:
            await work()
        except Exception as error:
            log_failure(log, error, "%s failed; trying again at its next interval", name)

    return run


def tick_sender(producer: Sender, topic: str, owned: Callable[[], set[int]]) -> Work:
    """A tick to every partition this worker owns: its deadlines are looked at in order
    with its events."""

    async def send_ticks() -> None:
        for partition in sorted(owned()):
            await producer.send(topic, None, b"", partition, None, None)

    return send_ticks


def mirror_service(mirror: RedisMirror) -> type[mode.Service]:
    class MirrorService(mode.Service):
        """Runs the Redis mirror beside the agents; drains it on shutdown."""

        @mode.Service.task
        async def _write(self) -> None:
            await mirror.run()

        async def on_stop(self) -> None:
            if not await mirror.drained(within=5.0):
                log.warning("stopping with %d context(s) not yet in Redis", mirror.pending)

    return MirrorService


def closing(close: Work) -> type[mode.Service]:
    class Closing(mode.Service):
        """Closes something of the worker's as the app stops."""

        async def on_stop(self) -> None:
            await close()

    return Closing


def every_second(work: Work) -> mode.Service:
    class EverySecond(mode.Service):
        """Started with the app's own services, before its first table recovery."""

        @mode.Service.timer(1.0)
        async def _tick(self) -> None:
            await work()

    return EverySecond()


def lag_updater(
    app: faust.App,
    metrics: Metrics,
    owned: Callable[[], set[int]],
    report_pending: Callable[[set[int]], None],
) -> Work:
    async def update_lag() -> None:
        consumer = app.consumer
        if not isinstance(consumer, BatchConsumer):
            raise TypeError("the worker runs on nextbest's BatchConsumer")
        changelogs = app.tables.changelog_topics  # restored, not consumed: no lag to speak of
        metrics.consumer_lag.clear()  # partitions move: report only the ones owned now
        for tp in consumer.assignment():
            if tp.topic in changelogs:
                continue
            end = consumer.highwater(tp)
            if end is None:  # not fetched yet after an assignment
                continue
            done = consumer.committed(tp)  # ours, or as found at assignment
            metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, end - done))
        partitions = owned()
        metrics.partitions.set(len(partitions))
        report_pending(partitions)
        metrics.ready.set(1 if readiness(app)["ready"] else 0)

    return update_lag


def recovery_watcher(app: faust.App) -> Work:
    """Seek a partition whose table restore stands still back to where it stands.

    See :mod:`nextbest.adapters.recovery`: faust's restore can wait forever on
    a partition it received nothing for; reading it again unblocks it.
    """
    watch: RecoveryWatch[Any] = RecoveryWatch(RECOVERY_STALL_AFTER)

    async def check() -> None:
        recovery = app.tables.recovery  # type: ignore[attr-defined]
        if not recovery.in_recovery:
            watch.clear()
            return
        behind = {}
        for tp, highwater in recovery.active_highwaters.items():
            offset = recovery.active_offsets.get(tp)
            if highwater is not None and offset is not None and highwater > offset:
                behind[tp] = (offset, highwater)
        for stall in watch.stalled(behind, time.monotonic()):
            tp = stall.partition
            position = await app.consumer.position(tp)
            log.warning(
                "table restore of %s[%d] made no progress for %.0f s (restored to offset %d "
                "of %d, fetch position %s): reading it again from there",
                tp.topic,
                tp.partition,
                stall.seconds,
                stall.offset,
                stall.highwater,
                position,
            )
            app.consumer.resume_partitions({tp})
            await app.consumer.seek_wait({tp: max(stall.offset, 0)})

    return check
