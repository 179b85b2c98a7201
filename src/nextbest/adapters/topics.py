"""The topics of contract §2 and the engine's own, and creating the missing ones.

Every topic the engine reads has ``NEXTBEST_TOPIC_PARTITIONS`` partitions, so a
customer's partition number is the same everywhere (its events on every channel,
rekey, ticks, and the ``contexts`` table and its changelog).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

log = logging.getLogger(__name__)

DEADLETTER_TOPIC = "events.deadletter"
TABLE = "contexts"
TICK_RETENTION_MS = 3_600_000  # ticks are worthless once handled


def event_topic(channel: str) -> str:
    return f"events.{channel}"


def trigger_topic(channel: str) -> str:
    return f"triggers.{channel}"


def rekey_topic(app_id: str) -> str:
    return f"{app_id}-rekey"


def tick_topic(app_id: str) -> str:
    return f"{app_id}-ticks"


def changelog_topic(app_id: str) -> str:
    """faust's name for the ``contexts`` table's changelog."""
    return f"{app_id}-{TABLE}-changelog"


def partition_for(customer_id: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a record keyed by ``customer_id``."""
    return int(murmur2(customer_id) & 0x7FFFFFFF) % partitions


def _ms(duration: timedelta) -> str:
    return str(int(duration.total_seconds() * 1000))


@dataclass(frozen=True)
class TopicNames:
    """Every topic of one engine (app id) over ``channels``, and how the internal ones
    keep their records (see :meth:`configs`)."""

    app_id: str
    channels: tuple[str, ...]
    compaction_lag: timedelta = timedelta(hours=12)
    tombstone_retention: timedelta = timedelta(days=1)
    rekey_retention: timedelta = timedelta(days=7)

    @property
    def events(self) -> tuple[str, ...]:
        return tuple(event_topic(c) for c in self.channels)

    @property
    def triggers(self) -> Mapping[str, str]:
        return {c: trigger_topic(c) for c in self.channels}

    @property
    def rekey(self) -> str:
        return rekey_topic(self.app_id)

    @property
    def ticks(self) -> str:
        return tick_topic(self.app_id)

    @property
    def changelog(self) -> str:
        return changelog_topic(self.app_id)

    @property
    def deadletter(self) -> str:
        return DEADLETTER_TOPIC

    @property
    def sources(self) -> tuple[str, ...]:
        """What the worker reads, a partition at a time."""
        return (*self.events, self.rekey, self.ticks)

    def all(self) -> list[str]:
        return [*self.events, *self.triggers.values(), self.deadletter, self.rekey, self.ticks,
                self.changelog]  # fmt: skip

    def co_partitioned(self) -> list[str]:
        """Those whose partition count must be ``NEXTBEST_TOPIC_PARTITIONS``."""
        return [*self.events, self.rekey, self.ticks, self.changelog]

    def configs(self, name: str) -> dict[str, str]:
        """The topic configs nextbest creates ``name`` with.

        The changelog is compacted, and bounded (contract §11): a segment rolls
        after ``compaction_lag`` at the latest (the active one is never compacted)
        and a record superseded or deleted is compacted away within another
        ``compaction_lag``; a tombstone itself goes ``tombstone_retention`` after
        that. The rekey topic holds forwarded events and merging profiles'
        states: ``rekey_retention``.
        """
        if name == self.ticks:
            return {"retention.ms": str(TICK_RETENTION_MS), "segment.ms": str(TICK_RETENTION_MS)}
        if name == self.changelog:
            return {
                "cleanup.policy": "compact",
                "segment.ms": _ms(self.compaction_lag),
                "max.compaction.lag.ms": _ms(self.compaction_lag),
                "delete.retention.ms": _ms(self.tombstone_retention),
            }
        if name == self.rekey:
            return {
                "retention.ms": _ms(self.rekey_retention),
                "segment.ms": _ms(min(self.rekey_retention, timedelta(days=1))),
            }
        return {}


class TopicError(Exception):
    """The topics cannot be made ready; one line says why."""


async def create_topics(
    names: TopicNames,
    bootstrap: str,
    partitions: int,
    replication: int,
    client_options: Mapping[str, Any],
) -> None:
    """Create the topics that are missing; refuse mismatched partition counts.

    The table's changelog is created here too, before faust starts: when faust
    creates it itself on a fresh broker, its consumer may keep a metadata
    snapshot with zero partitions and refuse every table write for minutes.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=10_000, **client_options
    )
    try:
        await admin.start()
    except KafkaError as error:
        await admin.close()
        raise TopicError(f"cannot reach Kafka at {bootstrap} ({type(error).__name__})") from None
    try:
        wanted = names.all()
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing:
            with suppress(TopicAlreadyExistsError):  # another worker was quicker
                await admin.create_topics(
                    [
                        NewTopic(n, partitions, replication, topic_configs=names.configs(n))
                        for n in missing
                    ]
                )
            log.info("created %d missing topics", len(missing))
        _check_partitions(await admin.describe_topics(names.co_partitioned()), partitions)
        await _warn_about_configs(admin, names, [n for n in (names.changelog, names.rekey)
                                                 if n not in missing])  # fmt: skip
    finally:
        await admin.close()


async def _warn_about_configs(
    admin: AIOKafkaAdminClient, names: TopicNames, existing: Sequence[str]
) -> None:
    """Topics made before these configs existed keep what they have (aiokafka can only
    replace a topic's whole config): say what differs, and the command that sets it."""
    if not existing:
        return
    try:
        described = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in existing]
        )
    except KafkaError as error:
        log.warning("could not read the configs of %s (%s)", ", ".join(existing),
                    type(error).__name__)  # fmt: skip
        return
    for response in described:
        for _, _, _, name, entries in response.resources:
            found = {entry[0]: entry[1] for entry in entries}
            wanted = names.configs(name)
            differ = {k: v for k, v in wanted.items() if found.get(k) != v}
            if differ:
                settings = ",".join(f"{k}={v}" for k, v in differ.items())
                log.warning(
                    "topic %s was created with other configs than nextbest wants (%s): "
                    "kafka-configs.sh --alter --entity-type topics --entity-name %s "
                    "--add-config %s",
                    name, settings, name, settings,
                )  # fmt: skip


def _check_partitions(descriptions: Sequence[Mapping[str, Any]], partitions: int) -> None:
    for description in descriptions:
        count = len(description.get("partitions", ()))
        if description.get("error_code", 0) == 0 and count != partitions:
            raise TopicError(
                f"topic {description['topic']} has {count} partitions but "
                f"NEXTBEST_TOPIC_PARTITIONS is {partitions}"
            )
