"""The batch consumer keeps faust's guarantees while it hands over whole batches.

faust-streaming is pinned (pyproject.toml): these tests pin each behaviour the
consumer takes over from faust's per-record fetch loop, on faust's own consumer
object (never started: no broker is needed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import faust
import pytest

from nextbest.adapters import consumer as consumer_module
from nextbest.adapters.consumer import BatchConsumer, use_batch_consumer
from tests.unit.fakes import FakeRecord, faust_table, tp

TOPICS = frozenset({"events.web", "events.chat", "app-ticks"})


class Sink:
    def __init__(self) -> None:
        self.topics = TOPICS
        self.clocks = frozenset({"app-ticks"})
        self.watermarks: list[float] = []
        self.handled: list[tuple[int, list[tuple[Any, list[int]]]]] = []
        self.restored: list[tuple[Any, list[int]]] = []
        self.fail = False
        self.gate: asyncio.Event | None = None

    async def handle(
        self, partition: int, batch: Sequence[tuple[Any, Sequence[Any]]], watermark: float
    ) -> None:
        self.watermarks.append(watermark)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ConnectionError("broker gone")
        self.handled.append((partition, [(t, [r.offset for r in rs]) for t, rs in batch]))

    def restore(self, tp_: Any, records: Sequence[Any]) -> bool:
        self.restored.append((tp_, [r.offset for r in records]))
        return True


@pytest.fixture
def app(tmp_path: Path) -> faust.App:
    app, _ = faust_table(tmp_path)  # its table's changelog: nextbest-test-contexts-changelog
    return app


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
async def consumer(app: faust.App, sink: Sink) -> AsyncIterator[BatchConsumer]:
    use_batch_consumer(app, sink)  # nothing connects until the app starts
    made = app.consumer
    assert isinstance(made, BatchConsumer)
    made.highwater = lambda tp_: 1000  # type: ignore[method-assign]
    made.assignment = lambda: set()  # type: ignore[method-assign]
    yield made
    made._thread.thread_loop.close()  # the loop its (never started) Kafka thread was given


def fetched(topic: str, partition: int, *offsets: int) -> tuple[Any, list[FakeRecord]]:
    return tp(topic, partition), [FakeRecord(topic, partition, o, b"") for o in offsets]


async def deliver(consumer: BatchConsumer, *parts: tuple[Any, list[FakeRecord]]) -> None:
    assert consumer.sink is not None
    await consumer._deliver(consumer.sink, dict(parts), None)


async def test_a_fetch_goes_to_the_sink_a_partition_at_a_time(
    consumer: BatchConsumer, sink: Sink
) -> None:
    changelog = "nextbest-test-contexts-changelog"
    await deliver(
        consumer,
        fetched("events.web", 0, 5, 6),
        fetched("events.chat", 0, 1),
        fetched("events.web", 3, 9),
        fetched(changelog, 0, 40, 41),
    )
    assert sink.handled == [
        (0, [(tp("events.web", 0), [5, 6]), (tp("events.chat", 0), [1])]),
        (3, [(tp("events.web", 3), [9])]),
    ]
    assert sink.restored == [(tp(changelog, 0), [40, 41])]
    assert consumer.app.conf.stream_wait_empty  # revokes and stops wait for the batch


async def test_handled_batches_set_the_commit_and_read_offsets(consumer: BatchConsumer) -> None:
    web = tp("events.web", 0)
    await deliver(consumer, fetched("events.web", 0, 5, 9, 20))  # gaps: compaction, markers
    assert consumer._read_offset[web] == 21
    assert consumer._filter_committable_offsets([web]) == {web: 21}  # no gap holds it back
    consumer._committed_offset[web] = 21
    await deliver(consumer, fetched("events.web", 0, 3))  # read again: below the read offset
    assert consumer._filter_committable_offsets([web]) == {}


async def test_faust_never_commits_at_or_below_its_committed_offset(
    consumer: BatchConsumer,
) -> None:
    web = tp("events.web", 0)
    consumer._committed_offset[web] = 50
    consumer._read_offset[web] = None  # as after an assignment, before any seek
    await deliver(consumer, fetched("events.web", 0, 30, 31))
    assert consumer._filter_committable_offsets([web]) == {}


async def test_records_read_again_after_a_seek_are_handed_over_again(
    consumer: BatchConsumer, sink: Sink
) -> None:
    await deliver(consumer, fetched("events.web", 0, 5, 6))
    consumer._read_offset[tp("events.web", 0)] = 6  # faust's seek sets the next offset
    await deliver(consumer, fetched("events.web", 0, 5, 6, 7))
    assert sink.handled[-1] == (0, [(tp("events.web", 0), [6, 7])])


async def test_nothing_is_handed_over_once_a_rebalance_begins(
    consumer: BatchConsumer, sink: Sink
) -> None:
    async def rebalance_after_first(partition: int, batch: Any, watermark: float) -> None:
        sink.handled.append((partition, []))
        consumer.app.consumer_generation_id += 1

    sink.handle = rebalance_after_first  # type: ignore[method-assign]
    await deliver(consumer, fetched("events.web", 0, 1), fetched("events.web", 1, 1))
    assert [p for p, _ in sink.handled] == [0]
    assert consumer._filter_committable_offsets([tp("events.web", 1)]) == {}
    consumer.stop_flow()
    await deliver(consumer, fetched("events.web", 2, 1))
    assert [p for p, _ in sink.handled] == [0]


async def test_a_failed_batch_is_not_acknowledged_and_is_read_again(
    consumer: BatchConsumer, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumer_module, "RETRY_DELAYS", (0.0,))
    seeks: list[tuple[Any, int]] = []

    async def seek(partition: Any, offset: int) -> None:
        seeks.append((partition, offset))

    consumer.seek = seek  # type: ignore[method-assign]
    consumer.assignment = lambda: {tp("events.web", 0), tp("events.chat", 0)}  # type: ignore[method-assign]
    sink.fail = True
    await deliver(consumer, fetched("events.web", 0, 7, 8), fetched("events.chat", 0, 3))
    assert consumer._filter_committable_offsets([tp("events.web", 0)]) == {}
    assert seeks == [(tp("events.web", 0), 7), (tp("events.chat", 0), 3)]


async def test_commit_every_triggers_a_commit_and_the_monitor_sees_progress(
    consumer: BatchConsumer,
) -> None:
    commits: list[bool] = []

    async def commit(*args: Any, **kwargs: Any) -> bool:
        commits.append(True)
        return True

    consumer.commit = commit  # type: ignore[method-assign]
    consumer._commit_every = 3
    await deliver(consumer, fetched("events.web", 0, 1, 2))
    assert commits == []
    await deliver(consumer, fetched("events.web", 0, 3))
    assert commits == [True]
    monitor = consumer.app.monitor
    assert tp("events.web", 0) in monitor.stream_inbound_time
    assert monitor.messages_received_by_topic["events.web"] == 3


async def test_a_revoke_waits_for_the_batch_in_flight_which_a_cancel_does_not_cut(
    consumer: BatchConsumer, sink: Sink
) -> None:
    committed: list[bool] = []

    async def commit_and_end_transactions() -> None:
        committed.append(sink.handled != [])

    consumer.commit_and_end_transactions = commit_and_end_transactions  # type: ignore[method-assign]
    sink.gate = asyncio.Event()
    fetch = asyncio.ensure_future(deliver(consumer, fetched("events.web", 0, 1)))
    await asyncio.sleep(0.01)
    fetch.cancel()  # the fetcher is stopped in the middle of the batch
    with pytest.raises(asyncio.CancelledError):
        await fetch
    waiting = asyncio.ensure_future(consumer.wait_empty())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    sink.gate.set()
    await waiting
    assert committed == [True]  # committed after the batch, which completed
    assert consumer._filter_committable_offsets([tp("events.web", 0)]) == {tp("events.web", 0): 2}


async def test_each_batch_comes_with_its_partitions_watermark(
    consumer: BatchConsumer, sink: Sink
) -> None:
    """The time up to which every source topic of the partition is read: a topic read
    to its end counts as now; ticks (a clock) do not count."""
    web, chat, ticks = tp("events.web", 0), tp("events.chat", 0), tp("app-ticks", 0)
    consumer.assignment = lambda: {web, chat, ticks, tp("events.web", 1)}  # type: ignore[method-assign]
    ends = {web: 10, chat: 5, ticks: 99}
    consumer.highwater = lambda tp_: ends.get(tp_, 0)  # type: ignore[method-assign]
    records = [FakeRecord("events.web", 0, 3, b"", timestamp=50_000)]
    await consumer._deliver(sink, {web: records}, None)
    assert sink.watermarks[-1] == 0.0  # nothing read yet of events.chat[0]
    chat_records = [FakeRecord("events.chat", 0, 4, b"", timestamp=40_000)]
    await consumer._deliver(sink, {chat: chat_records}, None)
    assert sink.watermarks[-1] == 50.0  # chat read to its end; web up to its last record
    web_records = [FakeRecord("events.web", 0, 9, b"", timestamp=70_000)]
    await consumer._deliver(sink, {web: web_records}, None)
    assert sink.watermarks[-1] > 1_000_000_000  # both read to their end: now


@pytest.mark.parametrize(
    ("committed", "sought"),
    [
        (None, [(tp("events.web", 0), 5)]),  # a new group: back to the first not handed over
        (0, [(tp("events.web", 0), 0)]),  # aiokafka seeks only above 0
        (40, []),  # faust's seek to the committed offset did it
    ],
)
async def test_records_fetched_while_paused_are_read_again_after_the_recovery(
    consumer: BatchConsumer, sink: Sink, committed: int | None, sought: list[tuple[Any, int]]
) -> None:
    """A recovery pauses the stream partitions, but a fetch made before the pause
    still brings their records: they are not handed over, and the seek that ends
    the recovery brings the partition back to them, committed offset or not."""
    web, chat = tp("events.web", 0), tp("events.chat", 0)
    consumer.assignment = lambda: {web, chat}  # type: ignore[method-assign]
    seeks: list[tuple[Any, int]] = []

    async def seek(partition: Any, offset: int) -> None:
        seeks.append((partition, offset))

    async def seek_to_committed() -> dict[Any, int | None]:
        return {web: committed, chat: 7}

    consumer.seek = seek  # type: ignore[method-assign]
    consumer.seek_to_committed = seek_to_committed  # type: ignore[method-assign]
    paused: set[Any] = {chat}  # web paused: not among the active partitions
    await consumer._deliver(sink, dict([fetched("events.web", 0, 5, 6)]), paused)
    await consumer._deliver(sink, dict([fetched("events.web", 0, 7)]), paused)
    assert sink.handled == []
    await consumer.perform_seek()
    assert seeks == sought
    seeks.clear()
    await consumer.perform_seek()  # once: what was dropped is forgotten with the seek
    assert seeks == []
