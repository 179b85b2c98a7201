"""The floor arm: what Python and Kafka can do at all, with no framework.

A raw aiokafka pass-through over the same topics, partitions and records as
nextbest: consume every ``events.<channel>`` topic, produce each record
unchanged (key, value, headers) to ``bench.floor.out`` on the same partition
number. At-least-once like the others: offsets are committed every 2.8 s (as
faust does), only after the producer has flushed everything consumed so far.

Settings come from the same ``NEXTBEST_*`` variables as the worker.

    python -m bench.arms.floor
"""

from __future__ import annotations

import asyncio
import signal
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from nextbest.adapters.clients import kafka_client_options
from nextbest.settings import Settings

OUTPUT_TOPIC = "bench.floor.out"
COMMIT_INTERVAL = 2.8  # seconds, faust's broker_commit_interval


async def pass_through(settings: Settings, stop: asyncio.Event) -> None:
    security = kafka_client_options(settings)  # the worker's TLS/SASL settings
    consumer = AIOKafkaConsumer(
        *(f"events.{channel}" for channel in settings.channels),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.app_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **security,
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=1, **security)
    await producer.start()
    await consumer.start()
    print("floor arm ready", flush=True)
    next_commit = time.monotonic() + COMMIT_INTERVAL
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=2000)
            for partition, records in batches.items():
                for record in records:
                    await producer.send(
                        OUTPUT_TOPIC,
                        record.value,
                        key=record.key,
                        partition=partition.partition,
                        headers=list(record.headers),
                    )
            if time.monotonic() >= next_commit:
                await producer.flush()
                await consumer.commit()
                next_commit = time.monotonic() + COMMIT_INTERVAL
        await producer.flush()
        await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


def main() -> None:
    settings = Settings()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await pass_through(settings, stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
