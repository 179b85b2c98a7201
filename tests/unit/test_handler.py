"""The agent's body with small hand-written fakes: what goes where for each kind of record."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from nextbest.adapters.cache import StateCache
from nextbest.adapters.projection import RedisMirror
from nextbest.adapters.stream import EventHandler, partition_for
from nextbest.core.config import EngineConfig
from nextbest.core.engine import Engine
from nextbest.core.envelope import DEFAULT_CHANNELS
from nextbest.core.rules import load_rules
from nextbest.core.schedule import DueIndex
from nextbest.core.state import decode, encode
from nextbest.metrics import Metrics

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
PARTITIONS = 8
REKEY = "nextbest-rekey"
TICKS = "nextbest-ticks"


@dataclass
class FakeMessage:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    timestamp: float = NOW.timestamp()
    headers: Any = ()


@dataclass
class FakeTopic:
    sent: list[dict[str, Any]] = field(default_factory=list)
    fail: bool = False

    async def send(self, **record: Any) -> None:
        if self.fail:
            raise ConnectionError("broker gone")
        self.sent.append(record)
        if record.get("callback"):
            record["callback"](None)


class FakeTable(dict[bytes, bytes]):
    pass


class ExplodingTable(FakeTable):
    def get(self, key: bytes, default: Any = None) -> bytes | None:
        raise RuntimeError("disk on fire")


@dataclass
class Harness:
    handler: EventHandler
    table: FakeTable
    triggers: dict[str, FakeTopic]
    deadletter: FakeTopic
    rekey: FakeTopic
    mirror: RedisMirror
    metrics: Metrics


def harness(
    table: FakeTable | None = None,
    deadletter: FakeTopic | None = None,
    cache: StateCache | None = None,
) -> Harness:
    rules_text = resources.files("nextbest").joinpath("default_rules.toml").read_text()
    metrics = Metrics(CollectorRegistry())
    table = FakeTable() if table is None else table
    triggers = {c: FakeTopic() for c in DEFAULT_CHANNELS}
    deadletter = deadletter or FakeTopic()
    rekey = FakeTopic()
    # a client that is never used: the mirror only queues until its task runs
    mirror = RedisMirror(Redis(), metrics, ttl=timedelta(days=30))
    handler = EventHandler(
        engine=Engine(EngineConfig(), load_rules(rules_text, channels=DEFAULT_CHANNELS)),
        table=table,
        triggers=triggers,
        deadletter=deadletter,
        rekey=rekey,
        rekey_topic=REKEY,
        tick_topic=TICKS,
        index=DueIndex(),
        mirror=mirror,
        metrics=metrics,
        partitions=PARTITIONS,
        clock=lambda: NOW,
        cache=cache,
    )
    return Harness(handler, table, triggers, deadletter, rekey, mirror, metrics)


def record(
    channel: str, type_: str, subject: str = "c-1", *, data: Any = None, id_: str = "e-1"
) -> FakeMessage:
    value = orjson.dumps(
        {
            "specversion": "1.0",
            "id": id_,
            "source": "/t",
            "type": type_,
            "time": (NOW - timedelta(seconds=1)).isoformat(),
            "subject": subject,
            "data": data or {},
        }
    )
    home = partition_for(subject.encode(), PARTITIONS)
    return FakeMessage(f"events.{channel}", home, 7, value, key=subject.encode())


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_event_is_applied_stored_mirrored_and_triggers() -> None:
    h = harness()
    await h.handler.handle(record("web", "session.started", id_="e-1"))
    await h.handler.handle(record("contact-center", "call.started", id_="e-2"))
    state = decode(h.table[b"c-1"])
    assert state.context.version == 2
    [sent] = h.triggers["contact-center"].sent
    assert sent["key"] == b"c-1"
    assert orjson.loads(sent["value"])["data"]["action"] == "agent_handoff"
    assert sent["headers"] == [("content-type", b"application/cloudevents+json; charset=utf-8")]
    assert h.mirror.pending == 1
    assert sample(h.metrics, "nextbest_events_total", channel="web") == 1
    labels = {"action": "agent_handoff", "channel": "contact-center"}
    assert sample(h.metrics, "nextbest_triggers_total", **labels) == 1
    assert sample(h.metrics, "nextbest_trigger_latency_seconds_count") == 1


async def test_trigger_snapshot_is_the_context_at_decision_time() -> None:
    h = harness()
    await h.handler.handle(record("web", "session.started", id_="e-1"))
    await h.handler.handle(record("chat", "chat.started", id_="e-2"))
    [sent] = h.triggers["chat"].sent
    snapshot = orjson.loads(sent["value"])["data"]["context"]
    assert snapshot["version"] == 2
    assert snapshot["last_triggers"] == []
    assert len(decode(h.table[b"c-1"]).context.last_triggers) == 1


async def test_repeated_event_id_is_counted_and_changes_nothing() -> None:
    h = harness()
    await h.handler.handle(record("web", "session.started", id_="same"))
    stored = h.table[b"c-1"]
    await h.handler.handle(record("web", "session.started", id_="same"))
    assert h.table[b"c-1"] is stored
    assert sample(h.metrics, "nextbest_events_duplicate_total", channel="web") == 1


async def test_record_off_its_customers_partition_is_forwarded_once() -> None:
    h = harness()
    message = record("web", "session.started", "c-1")
    message.partition = (message.partition + 1) % PARTITIONS
    message.key = b"session-9"
    await h.handler.handle(message)
    assert h.table == {}
    [forwarded] = h.rekey.sent
    assert forwarded["key"] == b"c-1"
    assert forwarded["partition"] == partition_for(b"c-1", PARTITIONS)
    assert forwarded["value"] == message.value
    headers = dict(forwarded["headers"])
    assert headers["nextbest.channel"] == b"web"
    assert headers["nextbest.origin.offset"] == b"7"
    # the rekeyed copy is applied where it lands, with its original channel
    rekeyed = FakeMessage(REKEY, forwarded["partition"], 3, forwarded["value"], b"c-1",
                          headers=forwarded["headers"])  # fmt: skip
    await h.handler.handle(rekeyed)
    state = decode(h.table[b"c-1"])
    assert state.context.current_channel == "web"
    assert h.rekey.sent == [forwarded]


async def test_an_internal_failure_is_dead_lettered_not_raised() -> None:
    h = harness(table=ExplodingTable())
    message = record("web", "session.started")
    await h.handler.handle(message)
    [letter] = h.deadletter.sent
    headers = dict(letter["headers"])
    assert headers["nextbest.error.reason"] == b"internal"
    assert b"disk on fire" in headers["nextbest.error.message"]
    assert letter["value"] == message.value
    assert sample(h.metrics, "nextbest_events_rejected_total", channel="web", reason="internal")


async def test_error_log_lines_carry_no_exception_text(caplog: pytest.LogCaptureFixture) -> None:
    h = harness(table=ExplodingTable())
    with caplog.at_level("DEBUG"):
        await h.handler.handle(record("web", "session.started"))
    [error] = [r for r in caplog.records if r.levelname == "ERROR"]
    home = partition_for(b"c-1", PARTITIONS)
    assert error.getMessage() == f"internal error on events.web[{home}]@7 (RuntimeError)"
    assert "disk on fire" not in error.getMessage()
    assert any(r.levelname == "DEBUG" and r.exc_info for r in caplog.records)


async def test_an_unreachable_deadletter_topic_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = harness(deadletter=FakeTopic(fail=True))
    await h.handler.handle(FakeMessage("events.web", 0, 12, b"not json"))
    assert "could not dead-letter events.web[0]@12 (invalid_json)" in caplog.text
    assert sample(h.metrics, "nextbest_events_rejected_total", channel="web", reason="invalid_json")


async def test_handler_does_not_wait_for_redis() -> None:
    h = harness()
    await asyncio.wait_for(h.handler.handle(record("web", "session.started")), 1.0)
    assert h.mirror.pending == 1


async def test_a_replayed_record_puts_its_deadline_back_in_the_index() -> None:
    h = harness()
    cart = {"sku": "A1", "qty": 1, "price": 2}
    await h.handler.handle(record("web", "cart.item_added", data=cart, id_="e-1"))
    h.handler._index.replace(range(PARTITIONS), [])  # as after a crash, before any rebuild
    assert len(h.handler._index) == 0
    await h.handler.handle(record("web", "cart.item_added", data=cart, id_="e-1"))
    assert len(h.handler._index) == 1


class CountingTable(FakeTable):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.writes.append(key)
        super().__setitem__(key, value)


@dataclass
class FakeEvent:
    message: FakeMessage


async def test_a_batch_writes_each_changed_customer_once_as_of_its_last_record() -> None:
    table = CountingTable()
    h = harness(table)
    events = [
        FakeEvent(record("web", "session.started", "c-1", id_="e-1")),
        FakeEvent(record("web", "session.started", "c-2", id_="e-2")),
        FakeEvent(record("chat", "chat.started", "c-1", id_="e-3")),  # sees e-1's state
        FakeEvent(record("chat", "chat.started", "c-1", id_="e-3")),  # a repeat: no change
    ]
    entered: list[FakeEvent] = []
    await h.handler.handle_batch(events, entered.append)
    assert sorted(table.writes) == [b"c-1", b"c-2"]
    assert decode(table[b"c-1"]).context.version == 2
    assert decode(table[b"c-2"]).context.version == 1
    [switch] = h.triggers["chat"].sent
    assert orjson.loads(switch["value"])["data"]["signal"] == "channel_switch"
    # each record entered before it is handled, then each write in its last record's context
    assert entered[:4] == events
    assert sorted(entered[4:], key=id) == sorted([events[1], events[2]], key=id)


async def test_a_failing_record_does_not_lose_the_batch_before_it() -> None:
    table = CountingTable()
    h = harness(table)
    events = [
        FakeEvent(record("web", "session.started", "c-1", id_="e-1")),
        FakeEvent(FakeMessage("events.web", 0, 9, b"not json")),
    ]
    await h.handler.handle_batch(events)
    assert table.writes == [b"c-1"]
    assert len(h.deadletter.sent) == 1


class RefusingTable(CountingTable):
    def __setitem__(self, key: bytes, value: bytes) -> None:
        if key == b"c-1":
            raise OSError("disk full")
        super().__setitem__(key, value)


async def test_a_failed_state_write_is_logged_and_the_others_still_go(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = RefusingTable()
    h = harness(table)
    events = [
        FakeEvent(record("web", "session.started", "c-1", id_="e-1")),
        FakeEvent(record("web", "session.started", "c-2", id_="e-2")),
    ]
    await h.handler.handle_batch(events)
    assert table.writes == [b"c-2"]
    assert "could not store a customer's state (OSError)" in caplog.text
    assert "c-1" not in caplog.text


class ReadCountingTable(CountingTable):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[bytes] = []

    def get(self, key: bytes, default: Any = None) -> bytes | None:
        self.reads.append(key)
        return super().get(key, default)


async def test_a_cached_customer_is_not_read_from_the_table_again() -> None:
    table = ReadCountingTable()
    h = harness(table, cache=StateCache(10))
    await h.handler.handle(record("web", "session.started", id_="e-1"))
    await h.handler.handle(record("chat", "chat.started", id_="e-2"))
    assert table.reads == [b"c-1"]  # the first event found nothing; the second used the cache
    assert sample(h.metrics, "nextbest_state_cache_hits_total") == 1
    assert sample(h.metrics, "nextbest_state_cache_misses_total") == 1
    assert decode(table[b"c-1"]).context.version == 2
    assert len(h.triggers["chat"].sent) == 1  # the switch was seen from the cached state


async def test_forgetting_states_reads_the_table_again() -> None:
    table = ReadCountingTable()
    h = harness(table, cache=StateCache(10))
    await h.handler.handle(record("web", "session.started", id_="e-1"))
    # another worker changed this customer while its partition was away
    state = decode(table[b"c-1"])
    moved = replace(state, context=replace(state.context, version=7))
    dict.__setitem__(table, b"c-1", encode(moved))
    h.handler.forget_states()
    await h.handler.handle(record("web", "page.viewed", data={"page_type": "home"}, id_="e-2"))
    assert table.reads == [b"c-1", b"c-1"]
    assert decode(table[b"c-1"]).context.version == 8


class FlakyTable(CountingTable):
    refuse = False

    def __setitem__(self, key: bytes, value: bytes) -> None:
        if self.refuse:
            raise OSError("disk full")
        super().__setitem__(key, value)


async def test_a_failed_state_write_leaves_no_cached_state_behind() -> None:
    table = FlakyTable()
    h = harness(table, cache=StateCache(10))
    await h.handler.handle(record("web", "session.started", id_="e-1"))
    table.refuse = True
    await h.handler.handle(record("web", "page.viewed", data={"page_type": "home"}, id_="e-2"))
    table.refuse = False
    await h.handler.handle(record("web", "page.viewed", data={"page_type": "home"}, id_="e-3"))
    # e-2 never reached the table: e-3 applies to what the table holds, as without a cache
    assert decode(table[b"c-1"]).context.version == 2
