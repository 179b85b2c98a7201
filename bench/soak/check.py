"""The soak's verdict: everything the engine made of its input, against the oracle.

Reads back every record of the run from the topics (input, dead letters,
triggers, the changelog), the table as a fresh worker restored it, and Redis,
and counts what went wrong (see :mod:`nextbest.oracle`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from redis.asyncio import Redis

from nextbest.adapters.projection import KEY_PREFIX
from nextbest.adapters.table import (
    APPLIED_KEY,
    FAUST_OFFSET_KEY,
    INTERNAL_PREFIX,
    MIRROR_KEY,
    OWNER_HEADER,
    OWNER_KEY,
)
from nextbest.core import state as states
from nextbest.core.engine import Engine
from nextbest.core.envelope import Event, Rejected, parse
from nextbest.oracle import differences, expect, judge_triggers

log = logging.getLogger(__name__)


async def read_all(
    bootstrap: str, topics: list[str], *, committed_only: bool = False
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topics``, from the start to their end as they are now;
    ``committed_only``: as a ``read_committed`` consumer sees them."""
    isolation = "read_committed" if committed_only else "read_uncommitted"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                request_timeout_ms=20_000,
                                isolation_level=isolation)  # fmt: skip
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(await _partitions(consumer, topic))
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        left = {tp for tp, end in ends.items() if end > 0}
        while left:
            batches = await consumer.getmany(*left, timeout_ms=1000, max_records=5000)
            for tp, fetched in batches.items():
                records.extend(fetched)
                if fetched and fetched[-1].offset + 1 >= ends[tp]:
                    left.discard(tp)
            for tp in list(left):  # compacted or marker-ended partitions
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
    finally:
        await consumer.stop()
    return records


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    found = consumer.partitions_for_topic(topic)
    if not found:
        await consumer._client.force_metadata_update()
        found = consumer.partitions_for_topic(topic)
    return set(found or ())


@dataclass
class Input:
    """The run's input, as the engine had to read it."""

    events: list[Event] = field(default_factory=list)
    rejected: set[tuple[str, int, int]] = field(default_factory=set)  # topic, partition, offset
    records: int = 0

    @property
    def event_times(self) -> dict[str, datetime]:
        return {event.id: event.time for event in self.events}


def classify(records: list[ConsumerRecord[bytes, bytes]], max_bytes: int) -> Input:
    """Parse every input record exactly as the worker does."""
    found = Input(records=len(records))
    far = datetime.now(UTC) + timedelta(days=1)  # no clamping of times ahead: none are
    for record in records:
        channel = record.topic.removeprefix("events.")
        headers = [(k, v) for k, v in record.headers or ()]
        try:
            found.events.append(parse(record.value, headers, channel, now=far, max_bytes=max_bytes))
        except Rejected:
            found.rejected.add((record.topic, record.partition, record.offset))
    return found


def dead_lettered(records: list[ConsumerRecord[bytes, bytes]]) -> set[tuple[str, int, int]]:
    """Where each dead letter came from, when it carries its reason headers."""
    found = set()
    for record in records:
        headers = {k: v for k, v in record.headers or ()}
        if headers.get("nextbest.error.reason"):
            found.add((
                headers["nextbest.error.topic"].decode(),
                int(headers["nextbest.error.partition"]),
                int(headers["nextbest.error.offset"]),
            ))  # fmt: skip
    return found


def restored_table(data_dir: Path) -> dict[int, dict[bytes, bytes]]:
    """Every partition's RocksDB as a stopped worker left it: key -> value (raw),
    without the mirror's local note of the last batches written (``MIRROR_KEY``:
    never in the changelog, so never restored)."""
    from rocksdict import AccessType, Options, Rdict

    tables: dict[int, dict[bytes, bytes]] = {}
    for path in sorted(data_dir.rglob("contexts-*.db")):
        partition = int(path.name.removeprefix("contexts-").removesuffix(".db"))
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            tables[partition] = {bytes(k): bytes(v) for k, v in db.items() if k != MIRROR_KEY}
        finally:
            db.close()
    return tables


def changelog_latest(records: list[ConsumerRecord[bytes, bytes]]) -> dict[int, dict[bytes, bytes]]:
    """What replaying the changelog gives: the newest value of each key (None deletes),
    leaving out what a worker wrote after another claimed the partition (a zombie's)."""
    latest: defaultdict[int, dict[bytes, bytes]] = defaultdict(dict)
    claims: dict[int, bytes] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        if record.key is None:
            continue
        if record.key == OWNER_KEY and record.value is not None:
            claims[record.partition] = record.value
        owner = dict(record.headers or ()).get(OWNER_HEADER)
        claim = claims.get(record.partition)
        if owner is not None and claim is not None and owner != claim:
            continue
        if record.value is None:
            latest[record.partition].pop(record.key, None)
        else:
            latest[record.partition][record.key] = record.value
    return latest


@dataclass
class Verdict:
    figures: dict[str, Any] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)


async def judge(
    *,
    engine: Engine,
    bootstrap: str,
    redis_url: str,
    app_id: str,
    channels: tuple[str, ...],
    data_dir: Path,
    until: datetime,
) -> Verdict:
    verdict = Verdict()
    figures = verdict.figures
    config = engine.config
    inputs = classify(
        await read_all(bootstrap, [f"events.{c}" for c in channels]), config.max_event_bytes
    )
    figures["input_records"] = inputs.records
    figures["valid_events"] = len(inputs.events)
    figures["malformed_records"] = len(inputs.rejected)
    letters = dead_lettered(await read_all(bootstrap, ["events.deadletter"]))
    undelivered = inputs.rejected - letters
    figures["malformed_not_dead_lettered"] = len(undelivered)
    expected = expect(engine, inputs.events, until)
    figures["customers"] = len(expected.states)

    # the table, as a fresh worker restored it from the changelog, and the changelog itself
    restored = restored_table(data_dir)
    changelog = changelog_latest(await read_all(bootstrap, [f"{app_id}-contexts-changelog"]))
    figures["restored_partitions"] = len(restored)
    unequal = [
        p
        for p in range(len(changelog))
        if {k: v for k, v in restored.get(p, {}).items() if k != FAUST_OFFSET_KEY}
        != changelog.get(p, {})
    ]
    figures["restored_partitions_unlike_changelog"] = len(unequal)
    table: dict[str, Any] = {}
    for partition in restored.values():
        for key, value in partition.items():
            if key.startswith(INTERNAL_PREFIX) or key in (APPLIED_KEY, FAUST_OFFSET_KEY):
                continue
            table[key.decode()] = states.decode(value)

    lost = doubled = 0
    differing: list[str] = []
    for customer, state in expected.states.items():
        actual = table.get(customer)
        have = 0 if actual is None else actual.context.version
        want = state.context.version
        lost += max(0, want - have)
        doubled += max(0, have - want)
        document = None if actual is None else orjson.loads(states.encode_document(actual.context))
        if differences(state, document):
            differing.append(customer)
    figures["events_lost"] = lost
    figures["events_applied_twice"] = doubled
    figures["contexts_differing_table"] = len(differing)
    verdict.examples["contexts_differing_table"] = differing[:5]

    redis_differing = await _redis_differences(redis_url, expected.states)
    figures["contexts_differing_redis"] = len(redis_differing)
    verdict.examples["contexts_differing_redis"] = redis_differing[:5]

    triggers = [orjson.loads(r.value) for r in await read_all(
        bootstrap, [f"triggers.{c}" for c in channels])]  # fmt: skip
    judgement = judge_triggers(
        expected.triggers,
        triggers,
        event_times=inputs.event_times,
        cooldown=config.trigger_cooldown,
    )
    figures["triggers_expected"] = judgement.expected
    figures["triggers_delivered"] = judgement.delivered
    figures["triggers_missing"] = len(judgement.missing)
    figures["triggers_replaced"] = len(judgement.replaced)
    figures["triggers_extra"] = judgement.extra
    figures["trigger_deliveries_repeated"] = judgement.repeated
    figures["trigger_deliveries_repeated_share"] = judgement.repeated_share
    verdict.examples["triggers_missing"] = [
        f"{t.subject} {t.action} ({t.signal} at {t.moment.isoformat()}, caused by {t.caused_by})"
        for t in (expected.triggers[i] for i in judgement.missing[:5])
    ]
    return verdict


async def _redis_differences(url: str, expected: dict[str, Any]) -> list[str]:
    client: Redis = Redis.from_url(url, socket_connect_timeout=5)
    differing = []
    try:
        names = list(expected)
        for start in range(0, len(names), 500):
            chunk = names[start : start + 500]
            raws = await client.mget([KEY_PREFIX + c for c in chunk])
            for customer, raw in zip(chunk, raws, strict=True):
                document = None if raw is None else orjson.loads(raw)
                if differences(expected[customer], document):
                    differing.append(customer)
    finally:
        await client.aclose()
    return differing
