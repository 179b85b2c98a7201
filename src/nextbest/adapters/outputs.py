"""Where a batch's records go: straight to the producer, or in one Kafka transaction.

The handler sends everything a batch produces — triggers, dead letters,
forwards to the rekey topic, the changelog records of the changed states —
through the :class:`BatchOutput` that :meth:`Outputs.open` gives it for the
batch's partition, waits for the acknowledgements, then calls
:meth:`BatchOutput.commit` with the source offsets the batch has consumed, and
only after that writes RocksDB.

* ``at_least_once`` (:class:`Direct`): faust's producer; ``commit`` does nothing
  and the consumer commits the offsets as it goes. A crash between the
  acknowledgements and the RocksDB write sends the batch's outputs again (same
  trigger ids); the states skip what they hold by their applied offsets.
* ``exactly_once`` (:class:`Transactional`): a transactional producer per
  partition number this worker owns (``<app id>-<partition>``), and one
  transaction per batch that has anything to send, holding its outputs *and*
  its consumed offsets. A ``read_committed`` reader (every trigger consumer
  should be one) then sees each trigger once, even across crashes; a worker
  that took over a partition fences the previous owner's producer when it
  starts its own (the broker aborts what that one left open, and refuses its
  later writes).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced

from nextbest.adapters.table import Sender

log = logging.getLogger(__name__)


class BatchOutput(Sender, Protocol):
    """The sends of one batch of one partition."""

    async def commit(self, consumed: Mapping[str, int]) -> None:
        """Make the batch's sends visible with ``consumed`` (topic -> next offset)."""

    async def abort(self) -> None:
        """The batch failed: drop what it sent, if that can be done."""


class Outputs(Protocol):
    def open(self, partition: int) -> BatchOutput: ...

    async def own(self, partitions: set[int]) -> None:
        """This worker owns ``partitions`` now (and no others): before their first batch."""

    async def stop(self) -> None: ...


class Direct:
    """``at_least_once``: the batch's records go through faust's producer as they are."""

    def __init__(self, producer: Sender) -> None:
        self._output = _DirectOutput(producer)

    def open(self, partition: int) -> BatchOutput:
        return self._output

    async def own(self, partitions: set[int]) -> None:
        return None

    async def stop(self) -> None:
        return None


class _DirectOutput:
    def __init__(self, producer: Sender) -> None:
        self._producer = producer

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
    ) -> Awaitable[Any]:
        return await self._producer.send(topic, key, value, partition, timestamp, headers)

    async def commit(self, consumed: Mapping[str, int]) -> None:
        return None

    async def abort(self) -> None:
        return None


class TransactionFenced(Exception):
    """Another worker owns this partition's transactions now: this one must not write."""


class Transactional:
    """``exactly_once``: one transactional producer per owned partition number."""

    def __init__(
        self,
        *,
        app_id: str,
        group_id: str,
        bootstrap: str,
        client_options: Mapping[str, Any],
        linger_ms: int,
    ) -> None:
        self._app_id = app_id
        self._group_id = group_id
        self._options = {
            "bootstrap_servers": bootstrap,
            "linger_ms": linger_ms,
            "max_batch_size": 1024 * 1024,
            **client_options,
        }
        self._producers: dict[int, AIOKafkaProducer] = {}
        self._fenced: set[int] = set()

    def transactional_id(self, partition: int) -> str:
        return f"{self._app_id}-{partition}"

    def open(self, partition: int) -> BatchOutput:
        return _Transaction(self, partition)

    async def producer(self, partition: int) -> AIOKafkaProducer:
        """The partition's producer; starting one fences any earlier owner's."""
        if partition in self._fenced:
            raise TransactionFenced(f"partition {partition}'s transactions moved to another worker")
        producer = self._producers.get(partition)
        if producer is None:
            producer = AIOKafkaProducer(
                transactional_id=self.transactional_id(partition), **self._options
            )
            await producer.start()
            self._producers[partition] = producer
        return producer

    async def own(self, partitions: set[int]) -> None:
        """After a rebalance: new producers for ``partitions``, started at once.

        Starting one fences the previous owner's before this worker reads a record
        of the partition. Every producer is new, even for a partition this worker
        kept: it may have lost it while paused, and had its producer fenced since.
        """
        await self.release(set(self._producers) | self._fenced)
        for partition in sorted(partitions):
            await self.producer(partition)

    def is_fenced(self, partition: int) -> bool:
        return partition in self._fenced

    def fenced(self, partition: int) -> None:
        """The broker refused this worker's transactions for ``partition``: until it is
        assigned again, its batches fail (the consumer reads them again later)."""
        log.warning("partition %d: fenced by a newer owner; writing nothing more to it", partition)
        self._fenced.add(partition)

    async def release(self, partitions: set[int]) -> None:
        for partition in partitions:
            self._fenced.discard(partition)
            producer = self._producers.pop(partition, None)
            if producer is not None:
                await _close(producer)

    async def stop(self) -> None:
        await self.release(set(self._producers) | self._fenced)

    @property
    def group_id(self) -> str:
        return self._group_id


class _Transaction:
    """One batch's transaction, begun with its first send."""

    def __init__(self, owner: Transactional, partition: int) -> None:
        self._owner = owner
        self._partition = partition
        self._producer: AIOKafkaProducer | None = None

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
    ) -> Awaitable[Any]:
        producer = self._producer
        if producer is None:
            producer = await self._owner.producer(self._partition)
            await self._guard(producer.begin_transaction())
            self._producer = producer
        sent: Awaitable[Any] = await self._guard(
            producer.send(
                topic,
                value,
                key=key,
                partition=partition,
                timestamp_ms=None if timestamp is None else int(timestamp * 1000),
                headers=list(headers) if headers else None,
            )
        )
        return sent

    async def commit(self, consumed: Mapping[str, int]) -> None:
        producer = self._producer
        if producer is None:  # nothing was sent: the consumer commits the offsets
            return
        offsets = {TopicPartition(t, self._partition): n for t, n in consumed.items()}
        await self._guard(producer.send_offsets_to_transaction(offsets, self._owner.group_id))
        await self._guard(producer.commit_transaction())
        self._producer = None

    async def abort(self) -> None:
        producer, self._producer = self._producer, None
        if producer is None or self._owner.is_fenced(self._partition):
            return
        try:
            await producer.abort_transaction()
        except KafkaError as error:  # a new producer aborts whatever this one left open
            log.warning("partition %d: abort failed (%s); starting a new producer",
                        self._partition, type(error).__name__)  # fmt: skip
            await self._owner.release({self._partition})

    async def _guard(self, step: Awaitable[Any]) -> Any:
        try:
            return await step
        except ProducerFenced as error:
            self._owner.fenced(self._partition)
            raise TransactionFenced(str(error)) from error


async def _close(producer: AIOKafkaProducer) -> None:
    try:
        await producer.stop()
    except Exception as error:  # closing on the way out: say so, go on
        log.warning("a transactional producer did not close cleanly: %s", type(error).__name__)
