"""Event -> trigger latency for channel switches, on the real broker, one worker.

Starts a worker (own consumer group), sends N customers through web -> chat
switches at a fixed rate, and reports:

* produce -> trigger record: the trigger's Kafka CreateTime minus the switching
  event's, i.e. the worker's whole path up to handing the trigger to Kafka;
* produce -> trigger seen: wall clock until a consumer here reads the trigger;
* the worker's own histogram nextbest_trigger_latency_seconds (to the ack).

    python bench/switch_latency.py [--customers 500] [--rate 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from tests.integration.harness import Channels, WorkerProcess, applied, cloudevent, eventually


def _caught_up(worker: WorkerProcess) -> bool:
    lags = [
        float(line.rsplit(" ", 1)[1])
        for line in worker.metrics().splitlines()
        if line.startswith("nextbest_consumer_lag{") and 'topic="events.' in line
    ]
    return bool(lags) and sum(lags) == 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(bootstrap: str, redis_url: str, customers: int, rate: float) -> None:
    worker = WorkerProcess(bootstrap, redis_url, Path(tempfile.mkdtemp(prefix="nextbest-bench-")))
    worker.start()
    # a new consumer group reads every topic from the start: measure only once caught up
    await eventually(lambda: _caught_up(worker), within=600, every=1.0)
    consumer = AIOKafkaConsumer(
        "triggers.chat", bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="latest"
    )
    await consumer.start()
    await asyncio.sleep(1.0)
    run = uuid.uuid4().hex[:6]
    sent_at: dict[bytes, float] = {}
    seen: dict[bytes, float] = {}
    produced_gap: list[float] = []
    switch_ts: dict[bytes, int] = {}

    async def listen() -> None:
        async for record in consumer:
            if record.key in sent_at and record.key not in seen:
                seen[record.key] = time.time()
                produced_gap.append((record.timestamp - switch_ts[record.key]) / 1000)
                if len(seen) == customers:
                    return

    listener = asyncio.create_task(listen())
    try:
        async with Channels(bootstrap) as channels:
            names = [f"bench-{run}-{i}" for i in range(customers)]
            for name in names:
                await channels.send("web", "session.started", name)
            # Kafka orders nothing across topics: let every web event land first
            for name in names:
                await applied(redis_url, name, 1)
            start = time.monotonic()
            for index, name in enumerate(names):
                due = start + index / rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                key = name.encode()
                sent_at[key] = time.time()
                metadata = await channels.send_raw(
                    "chat", cloudevent("chat.started", name), key=key
                )
                switch_ts[key] = metadata.timestamp
        await asyncio.wait_for(listener, 60)
    finally:
        listener.cancel()
        await consumer.stop()
        histogram = worker.metrics()
        worker.stop()
    seen_gap = [seen[k] - sent_at[k] for k in seen]
    print(f"channel switches: {customers} at {rate:.0f}/s, one worker, broker {bootstrap}")
    for label, values in (
        ("produce -> trigger record", produced_gap),
        ("produce -> trigger seen", seen_gap),
    ):
        print(
            f"  {label:28s} p50 {percentile(values, 0.5) * 1000:7.1f} ms"
            f"  p99 {percentile(values, 0.99) * 1000:7.1f} ms"
            f"  mean {statistics.fmean(values) * 1000:7.1f} ms"
        )
    print("  worker histogram nextbest_trigger_latency_seconds (cumulative):")
    for line in histogram.splitlines():
        if line.startswith("nextbest_trigger_latency_seconds_bucket"):
            print("   ", line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args()
    bootstrap = os.environ.get("NEXTBEST_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    redis_url = os.environ.get("NEXTBEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    asyncio.run(measure(bootstrap, redis_url, args.customers, args.rate))


if __name__ == "__main__":
    main()
