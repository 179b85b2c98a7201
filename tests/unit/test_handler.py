"""The worker's handler with a fake producer and faust's own RocksDB store: a batch at a time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from nextbest.adapters.cache import StateCache
from nextbest.adapters.outputs import Direct
from nextbest.adapters.projection import RedisMirror
from nextbest.adapters.stream import EventHandler
from nextbest.adapters.table import (
    APPLIED_KEY,
    FAUST_OFFSET_KEY,
    OWNER_HEADER,
    OWNER_KEY,
    ContextTable,
)
from nextbest.adapters.topics import TopicNames, partition_for
from nextbest.core.config import EngineConfig
from nextbest.core.engine import Engine
from nextbest.core.envelope import DEFAULT_CHANNELS
from nextbest.core.rules import load_rules
from nextbest.core.schedule import DueIndex
from nextbest.core.state import decode
from nextbest.metrics import Metrics
from tests.unit.fakes import FakeProducer, FakeRecord, faust_table, tp

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
PARTITIONS = 8
NAMES = TopicNames("nextbest", DEFAULT_CHANNELS)
HOME = partition_for(b"c-1", PARTITIONS)


@dataclass
class Harness:
    handler: EventHandler
    producer: FakeProducer
    table: Any  # faust's table
    contexts: ContextTable
    mirror: RedisMirror
    metrics: Metrics
    index: DueIndex

    def state(self, customer: str = "c-1") -> Any:
        key = customer.encode()
        raw = self.table.data._db_for_partition(partition_for(key, PARTITIONS)).get(key)
        return None if raw is None else decode(raw)

    def sent_to(self, topic: str) -> list[Any]:
        return self.producer.to(topic)


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return harness(tmp_path)


def harness(
    tmp_path: Path, *, cache: StateCache | None = None, config: EngineConfig | None = None
) -> Harness:
    rules_text = resources.files("nextbest").joinpath("default_rules.toml").read_text()
    metrics = Metrics(CollectorRegistry())
    _, table = faust_table(tmp_path, PARTITIONS)
    producer = FakeProducer()
    contexts = ContextTable(table, NAMES.changelog, producer)
    # a client that is never used: the mirror only queues until its task runs
    mirror = RedisMirror(Redis(), metrics, ttl=timedelta(days=30))
    index = DueIndex()
    handler = EventHandler(
        engine=Engine(config or EngineConfig(), load_rules(rules_text, channels=DEFAULT_CHANNELS)),
        table=contexts,
        outputs=Direct(producer),
        names=NAMES,
        index=index,
        mirror=mirror,
        metrics=metrics,
        partitions=PARTITIONS,
        clock=lambda: NOW,
        cache=cache,
    )
    return Harness(handler, producer, table, contexts, mirror, metrics, index)


_offsets: dict[tuple[str, int], int] = {}


def record(
    channel: str,
    type_: str,
    subject: str = "c-1",
    *,
    data: Any = None,
    id_: str = "e-1",
    minute: float = -1 / 60,
    partition: int | None = None,
    key: bytes | None = None,
) -> FakeRecord:
    value = orjson.dumps(
        {
            "specversion": "1.0",
            "id": id_,
            "source": "/t",
            "type": type_,
            "time": (NOW + timedelta(minutes=minute)).isoformat(),
            "subject": subject,
            "data": data or {},
        }
    )
    topic = f"events.{channel}"
    home = partition_for(subject.encode(), PARTITIONS) if partition is None else partition
    offset = _offsets.get((topic, home), 0)
    _offsets[(topic, home)] = offset + 1
    return FakeRecord(topic, home, offset, value, key or subject.encode(),
                      timestamp=int(NOW.timestamp() * 1000))  # fmt: skip


def batch_of(*records: FakeRecord) -> list[tuple[Any, list[FakeRecord]]]:
    """Records grouped by topic partition, in order, as a fetch returns them."""
    grouped: dict[Any, list[FakeRecord]] = {}
    for item in records:
        grouped.setdefault(tp(item.topic, item.partition), []).append(item)
    return list(grouped.items())


async def handle(h: Harness, *records: FakeRecord) -> None:
    await h.handler.handle(records[0].partition, batch_of(*records))


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_event_is_applied_stored_mirrored_and_triggers(h: Harness) -> None:
    await handle(h, record("web", "session.started", id_="e-1"))
    await handle(h, record("contact-center", "call.started", id_="e-2"))
    assert h.state().context.version == 2
    [sent] = h.sent_to("triggers.contact-center")
    assert sent.key == b"c-1"
    assert orjson.loads(sent.value)["data"]["action"] == "agent_handoff"
    assert sent.headers == [("content-type", b"application/cloudevents+json; charset=utf-8")]
    assert h.mirror.pending == 1
    assert sample(h.metrics, "nextbest_events_total", channel="web") == 1
    labels = {"action": "agent_handoff", "channel": "contact-center"}
    assert sample(h.metrics, "nextbest_triggers_total", **labels) == 1
    assert sample(h.metrics, "nextbest_trigger_latency_seconds_count") == 1


async def test_a_batch_stores_each_changed_customer_once_with_its_applied_offsets(
    h: Harness,
) -> None:
    c2 = "c-22"  # on another partition than c-1: its own batch
    first, second = (
        record("web", "session.started", id_="e-1"),
        record("chat", "chat.started", id_="e-3"),
    )
    await handle(h, first, second, record("chat", "chat.started", id_="e-3"))
    await handle(h, record("web", "session.started", c2, id_="e-2"))
    changelog = h.sent_to(NAMES.changelog)
    # a claim before a partition's first write; per batch, one record per changed
    # customer, then the partition's applied offsets
    assert [s.key for s in changelog] == [
        OWNER_KEY,
        b"c-1",
        APPLIED_KEY,
        OWNER_KEY,
        c2.encode(),
        APPLIED_KEY,
    ]
    assert decode(changelog[1].value).context.version == 2
    assert h.state().context.version == 2
    assert dict(changelog[1].headers)[OWNER_HEADER] == changelog[0].value
    applied = orjson.loads(changelog[2].value)
    assert applied == {"events.web": first.offset + 1, "events.chat": second.offset + 2}
    db = h.table.data._db_for_partition(HOME)
    assert orjson.loads(db.get(APPLIED_KEY)) == applied
    # faust resumes a restore after the last changelog record this write holds
    assert db.get(FAUST_OFFSET_KEY) == b"2"
    assert h.table.data.persisted_offset(tp(NAMES.changelog, HOME)) == 2
    [switch] = h.sent_to("triggers.chat")
    assert orjson.loads(switch.value)["data"]["signal"] == "channel_switch"


async def test_records_the_states_already_hold_are_skipped(h: Harness) -> None:
    """After a crash between the state write and the offset commit, the batch is
    fetched again: its records are skipped by offset, its triggers not sent again."""
    records = [record("web", "session.started", id_="e-1"),
               record("chat", "chat.started", id_="e-2")]  # fmt: skip
    await handle(h, *records)
    sent = len(h.producer.sent)
    h.handler.forget_states()  # a restart: nothing in memory
    await handle(h, *records)
    assert h.state().context.version == 2
    assert h.producer.sent[sent:] == []  # no trigger again, nothing new to store
    assert sample(h.metrics, "nextbest_records_skipped_total") == 2


async def test_batches_that_change_nothing_store_their_offsets_only_now_and_then(
    h: Harness,
) -> None:
    """Ticks and repeats change no state: their offsets are stored with the next change,
    or once UNRECORDED_MAX of them went by (reading them again is harmless)."""
    from nextbest.adapters.stream import UNRECORDED_MAX

    for offset in range(UNRECORDED_MAX - 1):
        await h.handler.handle(HOME, batch_of(FakeRecord(NAMES.ticks, HOME, offset, b"")))
    assert h.sent_to(NAMES.changelog) == []
    await h.handler.handle(HOME, batch_of(FakeRecord(NAMES.ticks, HOME, UNRECORDED_MAX - 1, b"")))
    [claim, stored] = h.sent_to(NAMES.changelog)
    assert claim.key == OWNER_KEY
    assert orjson.loads(stored.value) == {NAMES.ticks: UNRECORDED_MAX}


async def test_nothing_is_stored_until_every_output_is_acknowledged(h: Harness) -> None:
    await handle(h, record("web", "session.started", id_="e-1"))
    h.producer.failing.add("triggers.chat")
    switch = record("chat", "chat.started", id_="e-2")
    with pytest.raises(Exception, match="KafkaTimeoutError"):
        await handle(h, switch)
    assert h.state().context.version == 1  # the batch left nothing behind
    h.producer.failing.clear()
    await handle(h, switch)  # read again: applied once, its trigger sent again
    assert h.state().context.version == 2
    assert len(h.sent_to("triggers.chat")) == 1


async def test_a_failed_batch_leaves_its_deadlines_pending(tmp_path: Path) -> None:
    config = EngineConfig(cart_abandon_after=timedelta(seconds=30))
    h = harness(tmp_path, config=config)
    consent = record("web", "consent.updated", data={"mobile": True}, id_="e-0", minute=-2)
    cart = record("web", "cart.item_added", data={"sku": "A", "qty": 1, "price": 2}, id_="e-1",
                  minute=-1)  # fmt: skip
    await handle(h, consent, cart)
    assert h.index.pending([HOME]) == 1
    tick = FakeRecord(NAMES.ticks, HOME, 0, b"")
    h.producer.failing.add("triggers.mobile")
    with pytest.raises(Exception, match="KafkaTimeoutError"):
        await h.handler.handle(HOME, batch_of(tick))
    assert h.index.pending([HOME]) == 1  # still due
    h.producer.failing.clear()
    await h.handler.handle(HOME, batch_of(FakeRecord(NAMES.ticks, HOME, 1, b"")))
    [reminder] = h.sent_to("triggers.mobile")
    assert orjson.loads(reminder.value)["data"]["action"] == "cart_reminder"
    assert h.index.pending([HOME]) == 0
    assert h.state().fired


async def test_trigger_snapshot_is_the_context_at_decision_time(h: Harness) -> None:
    await handle(h, record("web", "session.started", id_="e-1"))
    await handle(h, record("chat", "chat.started", id_="e-2"))
    [sent] = h.sent_to("triggers.chat")
    snapshot = orjson.loads(sent.value)["data"]["context"]
    assert snapshot["version"] == 2
    assert snapshot["last_triggers"] == []
    assert len(h.state().context.last_triggers) == 1


async def test_repeated_event_id_is_counted_and_changes_nothing(h: Harness) -> None:
    await handle(h, record("web", "session.started", id_="same"))
    await handle(h, record("web", "session.started", id_="same"))
    assert h.state().context.version == 1
    assert sample(h.metrics, "nextbest_events_duplicate_total", channel="web") == 1


async def test_events_of_one_batch_are_applied_in_time_order(h: Harness) -> None:
    """Across topics a fetch has no order: the batch goes by event time."""
    added = record("web", "cart.item_added", data={"sku": "A", "qty": 1, "price": 2},
                   id_="e-1", minute=-2)  # fmt: skip
    removed = record("store", "cart.item_removed", data={"sku": "A", "qty": 1}, id_="e-2",
                     minute=-1)  # fmt: skip
    await handle(h, removed, added)
    assert h.state().context.cart.items == ()
    assert sample(h.metrics, "nextbest_event_lateness_seconds_count", channel="web") == 0


async def test_a_late_event_is_counted_by_how_late_it_is(h: Harness) -> None:
    await handle(h, record("store", "store.visited", data={"store_id": "s"}, id_="e-2"))
    await handle(h, record("web", "product.viewed", data={"sku": "A"}, id_="e-1", minute=-1.5))
    await handle(h, record("web", "product.viewed", data={"sku": "B"}, id_="e-0", minute=-9))
    assert sample(h.metrics, "nextbest_event_lateness_seconds_count", channel="web") == 2
    assert sample(h.metrics, "nextbest_events_late_total", channel="web") == 1  # beyond 2m
    # the late product view revealed the switch into the store: associate_assist
    [assist] = h.sent_to("triggers.store")
    assert orjson.loads(assist.value)["data"]["caused_by"] == "e-2"


async def test_record_off_its_customers_partition_is_forwarded_once(h: Harness) -> None:
    other = (HOME + 1) % PARTITIONS
    message = record("web", "session.started", "c-1", partition=other, key=b"session-9")
    await handle(h, message)
    assert h.state() is None
    [forwarded] = h.sent_to(NAMES.rekey)
    assert forwarded.key == b"c-1"
    assert forwarded.partition == HOME
    assert forwarded.value == message.value
    headers = dict(forwarded.headers)
    assert headers["nextbest.channel"] == b"web"
    assert headers["nextbest.origin.offset"] == str(message.offset).encode()
    # the rekeyed copy is applied where it lands, with its original channel
    rekeyed = FakeRecord(NAMES.rekey, HOME, 3, forwarded.value, b"c-1",
                         headers=forwarded.headers)  # fmt: skip
    await h.handler.handle(HOME, batch_of(rekeyed))
    assert h.state().context.current_channel == "web"
    assert len(h.sent_to(NAMES.rekey)) == 1


async def test_bad_records_are_dead_lettered_with_their_origin(h: Harness) -> None:
    bad = FakeRecord("events.web", HOME, 12, b"not json", b"k")
    await h.handler.handle(HOME, batch_of(bad, record("web", "session.started", id_="e-1")))
    [letter] = h.sent_to("events.deadletter")
    headers = dict(letter.headers)
    assert headers["nextbest.error.reason"] == b"invalid_json"
    assert headers["nextbest.error.offset"] == b"12"
    assert letter.value == b"not json"
    assert h.state().context.version == 1  # the good record beside it is applied
    assert sample(h.metrics, "nextbest_events_rejected_total", channel="web", reason="invalid_json")


async def test_an_unreadable_stored_state_dead_letters_its_events_not_the_partition(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h.table.data._db_for_partition(HOME).put(b"c-1", b"{broken")
    other = "c-3"
    assert partition_for(other.encode(), PARTITIONS) == HOME
    with caplog.at_level("DEBUG"):
        await handle(h, record("web", "session.started", id_="e-1"),
                     record("web", "session.started", other, id_="e-2"))  # fmt: skip
    [letter] = h.sent_to("events.deadletter")
    assert dict(letter.headers)["nextbest.error.reason"] == b"internal"
    assert h.table.data._db_for_partition(HOME).get(b"c-1") == b"{broken"  # left for a person
    assert h.state(other) is not None
    [error] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert (
        error.getMessage() == f"a stored state of partition {HOME} is unreadable (JSONDecodeError)"
    )
    assert "c-1" not in error.getMessage()


async def test_handler_does_not_wait_for_redis(h: Harness) -> None:
    await handle(h, record("web", "session.started"))
    assert h.mirror.pending == 1


async def test_a_cached_customer_is_not_read_from_the_table_again(tmp_path: Path) -> None:
    h = harness(tmp_path, cache=StateCache(10))
    await handle(h, record("web", "session.started", id_="e-1"))
    await handle(h, record("chat", "chat.started", id_="e-2"))
    assert sample(h.metrics, "nextbest_state_cache_hits_total") == 1
    assert sample(h.metrics, "nextbest_state_cache_misses_total") == 1
    assert h.state().context.version == 2
    assert len(h.sent_to("triggers.chat")) == 1  # the switch was seen from the cached state


async def test_forgetting_states_reads_the_table_again(tmp_path: Path) -> None:
    h = harness(tmp_path, cache=StateCache(10))
    await handle(h, record("web", "session.started", id_="e-1"))
    h.handler.forget_states()
    await handle(h, record("web", "page.viewed", data={"page_type": "home"}, id_="e-2"))
    assert sample(h.metrics, "nextbest_state_cache_misses_total") == 2
    assert h.state().context.version == 2


async def test_the_index_is_rebuilt_from_the_stored_states(tmp_path: Path) -> None:
    h = harness(tmp_path, config=EngineConfig(cart_abandon_after=timedelta(minutes=15)))
    await handle(h, record("web", "cart.item_added", data={"sku": "A", "qty": 1, "price": 2}))
    h.index.replace([], [])
    h.handler.rebuild_index([HOME])
    assert h.index.pending([HOME]) == 1


async def test_deadlines_wait_until_every_source_is_read_past_them(tmp_path: Path) -> None:
    """After an outage the backlog goes first: a deadline fires only once the partition's
    topics are read up to it (the batch's watermark), or it might fire on an old state."""
    h = harness(tmp_path, config=EngineConfig(cart_abandon_after=timedelta(seconds=30)))
    consent = record("web", "consent.updated", data={"mobile": True}, id_="e-0", minute=-2)
    cart = record("web", "cart.item_added", data={"sku": "A", "qty": 1, "price": 2}, id_="e-1",
                  minute=-1)  # fmt: skip
    await handle(h, consent, cart)  # due 30 s after the cart: 30 s ago
    behind = (NOW - timedelta(seconds=45)).timestamp()  # the topics are read up to 45 s ago
    await h.handler.handle(HOME, batch_of(FakeRecord(NAMES.ticks, HOME, 0, b"")), behind)
    assert h.sent_to("triggers.mobile") == []
    assert h.index.pending([HOME]) == 1
    await h.handler.handle(HOME, batch_of(FakeRecord(NAMES.ticks, HOME, 1, b"")), NOW.timestamp())
    assert len(h.sent_to("triggers.mobile")) == 1
