"""What the pure core costs per event: parse -> apply -> detect -> decide -> encode.

    python -m bench.core_cost [--events 100000] [--customers 20000] [--repeat 5]

Runs the worker's own core path in one process, no Kafka, no RocksDB: the
simulator's seeded journeys as the bytes producers send, split into partition
batches as the worker's fetches would be (``--batch`` records a fetch, over 8
partitions), each batch parsed, applied by ``Engine.process_batch`` against
states kept in memory (the worker's state cache), and every changed customer
encoded once per batch (the Redis document and the stored state), every
trigger encoded with its context. Two mixes:

* ``journeys``: the simulator's mix (few triggers per event);
* ``switches``: every event a channel switch that fires ``agent_handoff``
  (customers who viewed a help page on web, then each opens a chat).

Prints CPU µs per event (the median of ``--repeat`` runs, each over fresh states)
and where they go, and writes ``bench/results/core_cost.{json,md}``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import orjson

from nextbest.adapters.topics import partition_for
from nextbest.core import state as states
from nextbest.core import triggers as trigger_codec
from nextbest.core.config import EngineConfig
from nextbest.core.engine import Engine
from nextbest.core.envelope import DEFAULT_CHANNELS, Event, parse
from nextbest.core.rules import load_rules
from nextbest.core.state import CustomerState
from nextbest.simulator.journeys import Journeys

PARTITIONS = 8
START = datetime(2026, 12, 1, tzinfo=UTC)
OUT = Path(__file__).resolve().parent / "results"
FAR = START + timedelta(days=365)  # a parse clock that never clamps the simulated times

Record = tuple[str, bytes]  # channel, value


def journeys(events: int, customers: int, rate: float) -> list[Record]:
    """The simulator's events, stamped ``rate`` per second apart in event time."""
    made: list[Record] = []
    population = Journeys(customers=customers, seed=7, channels=DEFAULT_CHANNELS)
    for index, event in enumerate(population.events(rate)):
        if index >= events:
            break
        event.document["time"] = (START + timedelta(seconds=event.at)).isoformat()
        made.append((event.channel, event.value()))
    return made


def switches(events: int, rate: float) -> tuple[list[Record], list[Record]]:
    """Help page views on web (the warm-up), then one chat per customer: all triggers."""

    def one(channel: str, kind: str, customer: int, at: float, data: dict[str, object]) -> Record:
        document = {
            "specversion": "1.0",
            "id": f"{kind}-{customer}",
            "source": f"/bench/{channel}",
            "type": kind,
            "time": (START + timedelta(seconds=at)).isoformat(),
            "subject": f"switch-{customer}",
            "data": data,
        }
        return channel, orjson.dumps(document)

    warm = [one("web", "page.viewed", n, n / rate, {"page_type": "help"}) for n in range(events)]
    later = events / rate
    hot = [one("chat", "chat.started", n, later + n / rate, {}) for n in range(events)]
    return warm, hot


def batches(records: list[Record], size: int) -> Iterator[list[Record]]:
    for start in range(0, len(records), size):
        yield records[start : start + size]


class Stages:
    def __init__(self) -> None:
        self.parse = self.process = self.encode = 0.0
        self.triggers = 0


def run(engine: Engine, records: list[Record], size: int, cache: dict[str, CustomerState],
        stages: Stages) -> None:  # fmt: skip
    """The worker's per-batch core work over ``records``."""
    clock = time.process_time  # CPU time: other processes on the machine do not count
    for fetch in batches(records, size):
        by_partition: dict[int, list[tuple[str, bytes]]] = {}
        for channel, value in fetch:
            subject = orjson.loads(value)["subject"]  # the fetch's key, which Kafka gives for free
            by_partition.setdefault(partition_for(subject.encode(), PARTITIONS), []).append(
                (channel, value)
            )
        for partition_records in by_partition.values():
            started = clock()
            parsed: list[Event] = [
                parse(value, (), channel, now=FAR) for channel, value in partition_records
            ]
            parsed.sort(key=lambda e: e.time)
            now = parsed[-1].time + timedelta(milliseconds=100)  # decided as they arrive
            parsed_at = clock()
            result = engine.process_batch(cache, parsed, now)
            for outcome in result.outcomes:
                if outcome.trigger is not None and outcome.snapshot is not None:
                    document = states.encode_document(outcome.snapshot)
                    trigger_codec.encode(outcome.trigger, document)
                    stages.triggers += 1
            processed_at = clock()
            for subject, customer in result.states.items():
                document = states.encode_document(customer.context)
                states.encode(customer, document)
                cache[subject] = customer
            encoded_at = clock()
            stages.parse += parsed_at - started
            stages.process += processed_at - parsed_at
            stages.encode += encoded_at - processed_at


def measure(
    engine: Engine, warm: list[Record], records: list[Record], size: int
) -> dict[str, float]:
    cache: dict[str, CustomerState] = {}
    run(engine, warm, size, cache, Stages())
    stages = Stages()
    run(engine, records, size, cache, stages)
    count = len(records)
    total = stages.parse + stages.process + stages.encode
    return {
        "us_per_event": total / count * 1e6,
        "parse_us": stages.parse / count * 1e6,
        "process_us": stages.process / count * 1e6,
        "encode_us": stages.encode / count * 1e6,
        "triggers_per_event": stages.triggers / count,
    }


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="event-time spacing, per second")
    parser.add_argument("--batch", type=int, default=1000, help="records per fetch")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rules = load_rules(
        resources.files("nextbest").joinpath("default_rules.toml").read_text(),
        channels=DEFAULT_CHANNELS,
    )
    engine = Engine(EngineConfig(), rules)
    simulated = journeys(args.events, args.customers, args.rate)
    warm, hot = switches(args.events, args.rate)
    results = {
        "journeys": median_of(
            [measure(engine, [], simulated, args.batch) for _ in range(args.repeat)]
        ),
        "switches": median_of([measure(engine, warm, hot, args.batch) for _ in range(args.repeat)]),
    }
    machine = f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
    report = {"events": args.events, "customers": args.customers, "batch": args.batch,
              "repeat": args.repeat, "machine": machine, "results": results}  # fmt: skip
    lines = [
        f"The core per event, {args.events:,} events, fetches of {args.batch:,} over "
        f"{PARTITIONS} partitions, median of {args.repeat}; {machine}.",
        "",
        "| mix | µs per event | parse | apply, detect, decide (+ trigger encode) | encode "
        "| triggers per event |",
        "|---|---|---|---|---|---|",
    ]
    for mix, figures in results.items():
        lines.append(
            f"| {mix} | {figures['us_per_event']:.1f} | {figures['parse_us']:.1f} | "
            f"{figures['process_us']:.1f} | {figures['encode_us']:.1f} | "
            f"{figures['triggers_per_event']:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "core_cost.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    (args.out / "core_cost.md").write_text(text)


if __name__ == "__main__":
    main()
