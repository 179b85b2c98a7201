"""What faust's per-record path costs on this machine: the ceiling under nextbest.

    python -m bench.faust_cost [--events 50000]      # in .dev/bench/venv, or .venv

For each mode, on a fresh Kafka of the bench's own (ports 19092/16379, as
``bench.compare``), ``--events`` simulated records are written to the seven
``events.<channel>`` topics (8 partitions each), then one process drains them
the way the mode says:

* ``consume`` — raw aiokafka ``getmany``, counting only: what reading costs;
* ``iterate`` — a faust agent with ``take_events(1000, 5 ms)`` and uvloop, as
  nextbest's worker runs it, counting only: what faust's stream costs;
* ``send`` — the same, and ``app.producer.send`` of each record to another
  topic (timed until the producer has flushed): what a produce adds;
* ``table`` — the same, and each record written to a RocksDB table with its
  changelog (timed until the changelog is flushed): what a table write adds;
* ``batch`` — nextbest's consumer (``adapters/consumer.py``): each fetch handed
  over a partition at a time, counting only: what faust costs nextbest now;
* ``batch-table`` — the same, and every record of a batch written as nextbest
  writes its states (``adapters/table.py``): changelog records sent and
  acknowledged, then one RocksDB ``WriteBatch`` per partition batch.

Throughput is records / seconds from the first record read to the last one's
effect; CPU is the draining process's (all its threads) over the same span.
Results go to ``bench/results/faust_cost.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

import orjson

from bench.compare import STACK_ENV, machine, say
from bench.workload import Workload, preload
from nextbest.adapters.clients import faust_credentials, kafka_client_options
from nextbest.devstack import stack
from nextbest.settings import Settings
from nextbest.simulator.journeys import Journeys

ROOT = Path(__file__).resolve().parent.parent
MODES = ("consume", "iterate", "send", "table", "batch", "batch-table")
OUTPUT = "bench.cost.out"
TABLE = "cost"


def _cpu() -> float:
    # the process's CPU clock (all threads), to the nanosecond: getrusage counts in
    # scheduler ticks, and a drain handed over in one fetch takes less than one
    return time.process_time()


class Tally:
    """Counts records until ``total``, then writes the figures and ends the process."""

    def __init__(self, total: int, result: Path) -> None:
        self.total = total
        self.result = result
        self.seen = 0
        self.started: tuple[float, float] | None = None

    def first(self) -> None:
        if self.started is None:
            self.started = (time.monotonic(), _cpu())

    def done(self) -> bool:
        return self.seen >= self.total

    def finish(self) -> None:
        assert self.started is not None
        seconds = time.monotonic() - self.started[0]
        cpu = _cpu() - self.started[1]
        self.result.write_bytes(
            orjson.dumps(
                {
                    "records": self.seen,
                    "seconds": round(seconds, 6),  # a drain in one fetch takes well under 1 ms
                    "records_per_s": round(self.seen / seconds, 1),
                    "cpu_s_per_1k": round(cpu / self.seen * 1000, 6),
                }
            )
        )


async def _consume(settings: Settings, tally: Tally) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        *(f"events.{c}" for c in settings.channels),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"cost-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **kafka_client_options(settings),
    )
    await consumer.start()
    try:
        while not tally.done():
            batches = await consumer.getmany(timeout_ms=100, max_records=2000)
            if batches:
                tally.first()
            tally.seen += sum(len(records) for records in batches.values())
        tally.finish()
    finally:
        await consumer.stop()


def _faust(mode: str, settings: Settings, tally: Tally, data_dir: Path) -> None:
    import faust
    import uvloop
    from faust.streams import _current_event

    loop = uvloop.new_event_loop()  # first: faust binds services to the current loop
    asyncio.set_event_loop(loop)
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=faust_credentials(settings),
        store="rocksdb://" if mode in ("table", "batch-table") else "memory://",
        datadir=str(data_dir),
        web_enabled=False,
        topic_disable_leader=True,
        stream_wait_empty=False,
        consumer_auto_offset_reset="earliest",
        producer_linger=0.005,
        topic_partitions=settings.topic_partitions,
    )
    if mode.startswith("batch"):
        _batch_sink(app, mode, settings, tally)
    source = app.topic(
        *(f"events.{c}" for c in settings.channels), key_serializer="raw", value_serializer="raw"
    )
    table = None
    if not mode.startswith("batch"):
        table = app.Table(
            TABLE,
            default=None,
            partitions=settings.topic_partitions,
            key_type=bytes,
            value_type=bytes,
            options={"block_cache_size": 32 * 1024 * 1024},
        )

    async def drain(stream: Any) -> None:
        async for events in stream.take_events(1000, within=0.005):
            tally.first()
            for event in events:
                message = event.message
                if mode == "send":
                    await app.producer.send(
                        OUTPUT, message.key, message.value, message.partition, None, None
                    )
                elif mode == "table" and table is not None:
                    _current_event.set(weakref.ref(event))
                    table[message.key] = message.value
            tally.seen += len(events)
            if tally.done():
                await app.producer.flush()
                tally.finish()
                os._exit(0)

    app.agent(source, name="cost.drain")(drain)
    worker = faust.Worker(app, loop=loop, loglevel="warning")
    worker.spinner = None
    worker.execute_from_commandline()


def _batch_sink(app: Any, mode: str, settings: Settings, tally: Tally) -> None:
    """nextbest's batch consumer, handing each partition batch to a counting sink."""
    from nextbest.adapters.consumer import use_batch_consumer
    from nextbest.adapters.table import ContextTable

    class Sink:
        topics = frozenset(f"events.{c}" for c in settings.channels)
        clocks: frozenset[str] = frozenset()
        table: ContextTable | None = None

        async def handle(self, partition: int, batch: Any, watermark: float) -> None:
            tally.first()
            if self.table is not None:
                changes = {r.key: r.value for _, records in batch for r in records}
                acks = await asyncio.gather(*await self.table.stage(partition, changes, {}))
                self.table.write(partition, changes, {}, acks[-1].offset)
            tally.seen += sum(len(records) for _, records in batch)
            if tally.done():
                tally.finish()
                os._exit(0)

        def restore(self, tp: Any, records: Any) -> bool:
            return False

    sink = Sink()
    use_batch_consumer(app, sink)
    if mode == "batch-table":
        table = app.Table(TABLE, default=None, partitions=settings.topic_partitions,
                          key_type=bytes, value_type=bytes)  # fmt: skip
        changelog = f"{settings.app_id}-{TABLE}-changelog"
        sink.table = ContextTable(table, changelog, app.producer, lambda: app.tables.recovery)


def child(mode: str, total: int, result: Path, data_dir: Path) -> None:
    settings = Settings()
    tally = Tally(total, result)
    if mode == "consume":
        asyncio.run(_consume(settings, tally))
    else:
        _faust(mode, settings, tally, data_dir)


async def _prepare(records: int, app_id: str) -> Settings:
    """A fresh stack with the topics (the table's changelog too: see ensure_topics)."""
    services = stack()
    services.down()
    shutil.rmtree(services.root, ignore_errors=True)
    endpoints = services.up()
    settings = Settings(kafka_bootstrap=endpoints.kafka_bootstrap, app_id=app_id)
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    security = kafka_client_options(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, **security)
    await admin.start()
    try:
        names = [f"events.{c}" for c in settings.channels] + [OUTPUT]
        topics = [NewTopic(n, settings.topic_partitions, 1) for n in names]
        changelog = f"{app_id}-{TABLE}-changelog"
        compact = {"cleanup.policy": "compact"}
        topics.append(NewTopic(changelog, settings.topic_partitions, 1, topic_configs=compact))
        await admin.create_topics(topics)
    finally:
        await admin.close()
    await asyncio.sleep(1.0)  # leaders elected
    journeys = Journeys(customers=20_000, seed=1, channels=settings.channels)
    workload = Workload(journeys, settings.channels, settings.topic_partitions)
    await preload(workload, settings.kafka_bootstrap, records, security)
    return settings


def run(mode: str, records: int, workdir: Path) -> dict[str, Any]:
    settings = asyncio.run(_prepare(records, f"cost-{mode}-{uuid.uuid4().hex[:6]}"))
    result = workdir / f"{mode}.json"
    command = [sys.executable, "-m", "bench.faust_cost", "--child", mode]
    command += ["--events", str(records), "--result", str(result)]
    command += ["--data-dir", str(workdir / f"data-{mode}")]
    env = {
        **os.environ,
        "NEXTBEST_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "NEXTBEST_APP_ID": settings.app_id,
    }
    with (workdir / f"{mode}.log").open("wb") as log:
        done = subprocess.run(  # noqa: S603 - our own command
            command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=900
        )
    if not result.exists():
        raise RuntimeError(f"{mode} wrote no result (exit {done.returncode}); see {log.name}")
    figures: dict[str, Any] = orjson.loads(result.read_bytes())
    return figures


def render(results: dict[str, dict[str, Any]], records: int) -> str:
    """A row per mode; send and table show what they add to the bare iteration."""
    where = machine()
    lines = [
        f"faust's per-record cost, {records:,} backlogged records, one process; "
        f"{where['cpus']} CPUs ({where['cpu_model']}), Python {where['python']}; "
        "the broker shares the CPUs.",
        "",
        "| what the process does per record | records/s | CPU µs per record | added by the step |",
        "|---|---|---|---|",
    ]
    previous: float | None = None
    labels = {
        "consume": "raw aiokafka getmany, count",
        "iterate": "faust agent, take_events, count",
        "send": "faust agent, + app.producer.send",
        "table": "faust agent, + table write (RocksDB + changelog)",
        "batch": "nextbest's batch consumer, count",
        "batch-table": "nextbest's batch consumer, + batch write (changelog acked, WriteBatch)",
    }
    for mode, figures in results.items():
        cost = figures["cpu_s_per_1k"] * 1000  # CPU-s per 1,000 records = ms, so x1000 = µs
        base = mode in ("iterate", "batch")
        added = "-" if previous is None or base or mode == "consume" else f"{cost - previous:+,.0f}"
        rate = figures["records_per_s"]
        lines.append(f"| {labels[mode]} | {rate:,.0f} | {cost:,.0f} | {added} |")
        if base:
            previous = cost
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--workdir", type=Path, default=ROOT / ".dev" / "bench" / "cost")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.events, args.result, args.data_dir)
        return
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    os.environ.update({**STACK_ENV, "NEXTBEST_DEV_DIR": str(args.workdir / "stack")})
    args.workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    try:
        for mode in modes:
            say(f"cost: {mode}")
            results[mode] = run(mode, args.events, args.workdir)
            say(f"  {mode}: {results[mode]}")
    finally:
        stack().down()
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "records": args.events, "results": results}
    (args.out / "faust_cost.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    markdown = render(results, args.events)
    (args.out / "faust_cost.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
