"""Absence timers at scale: 1,000,000 pending deadlines in one worker process.

Runs the worker's own timer path — EventHandler.tick over the real DueIndex,
Engine and state codec — with an in-memory dict standing in for the RocksDB
table and no-op topics standing in for Kafka (so the figures are the worker's
CPU, not the broker's). Deadlines are spread over ``--spread`` seconds; the
ticks run on the wall clock, 8 partitions every 250 ms as the worker does.

Reports the index rebuild time (what an assignment costs), CPU per tick, and
the fire delay (deadline -> tick that fired it; the Kafka ack adds a few ms).

    python bench/timers.py [--customers 1000000] [--spread 3600] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import time
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from nextbest.adapters.projection import RedisMirror
from nextbest.adapters.stream import EventHandler
from nextbest.core.config import EngineConfig
from nextbest.core.context import Cart, CartItem, Consent, Context
from nextbest.core.engine import Engine
from nextbest.core.envelope import DEFAULT_CHANNELS
from nextbest.core.rules import load_rules
from nextbest.core.schedule import DueIndex
from nextbest.core.state import CustomerState, encode
from nextbest.metrics import Metrics

PARTITIONS = 8
TICK = 0.25


class Sink:
    """A topic that acknowledges at once; counts what it was given."""

    def __init__(self) -> None:
        self.sent = 0

    async def send(self, **record: Any) -> None:
        self.sent += 1
        if record.get("callback"):
            record["callback"](None)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def load(customers: int, spread: float, abandon_after: timedelta) -> dict[bytes, bytes]:
    """Customers with a cart whose abandonment deadlines fall over the next ``spread`` s."""
    now = datetime.now(UTC)
    table: dict[bytes, bytes] = {}
    cart = Cart((CartItem("SKU-1", 1, 10.0),))
    lead = 3 + customers * 45e-6  # the first deadline falls after loading and indexing
    for index in range(customers):
        due = now + timedelta(seconds=lead + spread * index / customers)
        last = due - abandon_after
        context = Context(
            customer_id=f"bench-{index}",
            version=1,
            updated_at=last,
            last_event_at=last,
            current_channel="web",
            cart=cart,
            consent=Consent(mobile=True),
        )
        table[context.customer_id.encode()] = encode(CustomerState(context))
    return table


async def run(customers: int, spread: float, seconds: float) -> None:
    config = EngineConfig()
    rules_text = resources.files("nextbest").joinpath("default_rules.toml").read_text()
    engine = Engine(config, load_rules(rules_text, channels=DEFAULT_CHANNELS))
    metrics = Metrics(CollectorRegistry())

    started = time.perf_counter()
    table = load(customers, spread, config.cart_abandon_after)
    took = time.perf_counter() - started
    print(f"loaded {customers:,} customers with a pending deadline in {took:.1f} s")

    delays: list[float] = []
    clock_now = lambda: datetime.now(UTC)  # noqa: E731
    triggers = {c: Sink() for c in DEFAULT_CHANNELS}
    handler = EventHandler(
        engine=engine,
        table=table,  # type: ignore[arg-type]
        triggers=triggers,  # type: ignore[arg-type]
        deadletter=Sink(),  # type: ignore[arg-type]
        rekey=Sink(),  # type: ignore[arg-type]
        rekey_topic="bench-rekey",
        tick_topic="bench-ticks",
        index=DueIndex(),
        mirror=RedisMirror(Redis(), metrics, ttl=timedelta(days=1)),  # queued, never written
        metrics=metrics,
        partitions=PARTITIONS,
        clock=clock_now,
    )

    cpu, wall = time.process_time(), time.perf_counter()
    handler.rebuild_index(range(PARTITIONS))
    print(
        f"index rebuilt from the table in {time.perf_counter() - wall:.1f} s "
        f"({time.process_time() - cpu:.1f} CPU-s); pending {len(handler._index):,}"
    )

    # the fire delay of each deadline: how long after it passed did its tick fire it
    fired_before = sum(s.sent for s in triggers.values())
    tick_cpu: list[float] = []
    index = handler._index
    first_due = min(filter(None, (index.next_due(p) for p in range(PARTITIONS))))
    wait = max(0.0, (first_due - clock_now()).total_seconds())
    print(f"first deadline due in {wait:.1f} s; measuring {seconds:.0f} s from then")
    end = time.monotonic() + wait + seconds
    next_tick = time.monotonic()
    index = handler._index
    while time.monotonic() < end:
        for partition in range(PARTITIONS):
            earliest = index.next_due(partition)
            before_cpu = time.process_time()
            await handler.tick(partition)
            handler.store_changes()
            tick_cpu.append(time.process_time() - before_cpu)
            fired_at = clock_now()
            if earliest is not None and earliest <= fired_at:
                delays.append((fired_at - earliest).total_seconds())
        next_tick += TICK
        await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
    fired = sum(s.sent for s in triggers.values()) - fired_before
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"ran {len(tick_cpu):,} ticks; fired {fired:,} triggers")
    print(
        f"CPU per tick: mean {statistics.fmean(tick_cpu) * 1e3:.3f} ms, "
        f"p99 {percentile(tick_cpu, 0.99) * 1e3:.3f} ms, max {max(tick_cpu) * 1e3:.3f} ms"
    )
    if delays:
        print(
            f"fire delay (earliest due deadline of a partition -> its tick): "
            f"p50 {percentile(delays, 0.5) * 1e3:.0f} ms, "
            f"p99 {percentile(delays, 0.99) * 1e3:.0f} ms, max {max(delays) * 1e3:.0f} ms"
        )
    print(f"peak RSS {peak_mib:,.0f} MiB (the table is in memory here)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--spread", type=float, default=3600.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    asyncio.run(run(args.customers, args.spread, args.seconds))


if __name__ == "__main__":
    main()
