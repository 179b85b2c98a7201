"""How long identity operations take to show (contract v0.2 §10, §11), on a real worker.

    python -m bench.identity_latency [--merges 200] [--erasures 100] [--load 300]

Starts one ``nextbest worker`` (an app id of its own) against the Kafka and
Redis of ``NEXTBEST_KAFKA_BOOTSTRAP`` / ``NEXTBEST_REDIS_URL``, and while
``--load`` events/s of the simulator's ``--identities`` journeys go on in the
background, measures one person at a time:

* **merge**: an anonymous web session (applied), then ``identity.linked`` on
  mobile; from the link's send to the merged document (both identifiers) being
  published by Redis (``nextbest:updates:<customer>``);
* **split**: then ``identity.unlinked`` of the cookie; from its send to the
  customer's document without it;
* **erasure**: then ``customer.erased`` by the phone linked with it; from its
  send to the moment neither the customer's context nor the phone's identity
  key exists in Redis.

Prints p50/p95/p99/max of each and writes ``bench/results/identity_latency.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis
from tests.integration.harness import start_at_end

from nextbest.core.envelope import DEFAULT_CHANNELS
from nextbest.simulator.journeys import Journeys
from nextbest.simulator.sender import simulate

OUT = Path(__file__).resolve().parent / "results"
PORT = 16169


def event(type_: str, subject: str, data: dict[str, Any], kind: str | None = None) -> bytes:
    document: dict[str, Any] = {
        "specversion": "1.0", "id": uuid.uuid4().hex, "source": "/bench", "type": type_,
        "time": datetime.now(UTC).isoformat(),
        "subject": subject, "data": data,
    }  # fmt: skip
    if kind is not None:
        document["subjecttype"] = kind
    return orjson.dumps(document)


class Worker:
    def __init__(self, bootstrap: str, redis_url: str) -> None:
        self.app_id = f"bench-identity-{uuid.uuid4().hex[:6]}"
        asyncio.run(start_at_end(bootstrap, self.app_id))
        self.dir = Path(tempfile.mkdtemp(prefix="nextbest-identity-bench-"))
        env = {
            **os.environ, "NEXTBEST_APP_ID": self.app_id, "NEXTBEST_KAFKA_BOOTSTRAP": bootstrap,
            "NEXTBEST_REDIS_URL": redis_url, "NEXTBEST_DATA_DIR": str(self.dir / "data"),
            "NEXTBEST_WORKER_PORT": str(PORT),
        }  # fmt: skip
        log = (self.dir / "worker.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nextbest.cli", "worker"], env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, within: float = 120) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                url = f"http://127.0.0.1:{PORT}/readyz"
                with urllib.request.urlopen(url, timeout=1) as answer:
                    if answer.status == 200:
                        return
            time.sleep(0.3)
        raise RuntimeError(f"worker not ready; see {self.dir / 'worker.log'}")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


async def published(redis: Redis, channel: str, done: Any, within: float = 10.0) -> float:
    """Seconds from now until a document published on ``channel`` satisfies ``done``."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(channel)
    started = time.monotonic()
    try:
        while time.monotonic() - started < within:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is not None and message["data"] and done(orjson.loads(message["data"])):
                return time.monotonic() - started
        raise RuntimeError(f"nothing on {channel} within {within} s")
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def until(check: Any, within: float = 10.0) -> None:
    """Poll ``check`` (a coroutine function) until it is true."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            raise RuntimeError(f"not done within {within} s")
        await asyncio.sleep(0.002)


def figures(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    quantiles = statistics.quantiles(ordered, n=100, method="inclusive")
    return {
        "count": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(quantiles[94] * 1000, 1),
        "p99_ms": round(quantiles[98] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


async def measure(bootstrap: str, redis_url: str, merges: int, erasures: int, load: float) -> Any:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    redis: Redis = Redis.from_url(redis_url)
    background = None
    if load > 0:
        journeys = Journeys(customers=5000, seed=11, channels=DEFAULT_CHANNELS, identities=True)
        background = asyncio.create_task(
            simulate(journeys, bootstrap=bootstrap, rate=load, report=lambda _: None)
        )
    samples: dict[str, list[float]] = {"merge": [], "split": [], "erasure": []}
    try:
        await asyncio.sleep(3)  # the load settles
        for n in range(max(merges, erasures)):
            customer, cookie, phone = (f"{p}-{uuid.uuid4().hex[:10]}" for p in ("c", "ck", "h"))

            async def send(channel: str, value: bytes, key: str) -> None:
                await producer.send_and_wait(f"events.{channel}", value, key=key.encode())

            cart = {"sku": "A", "qty": 1, "price": 5}
            await send("web", event("cart.item_added", cookie, cart, "anonymous"), cookie)
            await until(lambda key=f"nextbest:context:anonymous:{cookie}": redis.exists(key))
            link = {"identities": [{"type": "anonymous", "id": cookie},
                                   {"type": "phone", "id": phone}], "method": "login"}  # fmt: skip
            waiting = asyncio.create_task(
                published(
                    redis, f"nextbest:updates:{customer}", lambda d: len(d["identities"]) == 3
                )
            )
            await asyncio.sleep(0.05)  # subscribed
            started = time.monotonic()
            await send("mobile", event("identity.linked", customer, link), customer)
            await waiting
            samples["merge"].append(time.monotonic() - started)
            if n < merges // 2:  # a split, for some
                waiting = asyncio.create_task(
                    published(
                        redis, f"nextbest:updates:{customer}", lambda d: len(d["identities"]) == 2
                    )
                )
                await asyncio.sleep(0.05)
                started = time.monotonic()
                unlink = {"type": "anonymous", "id": cookie}
                await send("mobile", event("identity.unlinked", customer, unlink), customer)
                await waiting
                samples["split"].append(time.monotonic() - started)
            if n < erasures:
                keys = [f"nextbest:context:{customer}", f"nextbest:identity:phone:{phone}"]
                started = time.monotonic()
                await send("contact-center", event("customer.erased", phone, {}, "phone"), phone)
                await until(lambda keys=keys: _none(redis, keys))
                samples["erasure"].append(time.monotonic() - started)
    finally:
        if background is not None:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background
        await producer.stop()
        await redis.aclose()
    return {name: figures(values) for name, values in samples.items() if len(values) > 1}


async def _none(redis: Redis, keys: list[str]) -> bool:
    return not await redis.exists(*keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merges", type=int, default=200)
    parser.add_argument("--erasures", type=int, default=100)
    parser.add_argument("--load", type=float, default=300.0, help="background events/s")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    bootstrap = os.environ.get("NEXTBEST_KAFKA_BOOTSTRAP", "localhost:9092")
    redis_url = os.environ.get("NEXTBEST_REDIS_URL", "redis://localhost:6379/0")
    worker = Worker(bootstrap, redis_url)
    try:
        worker.wait_ready()
        results = asyncio.run(measure(bootstrap, redis_url, args.merges, args.erasures, args.load))
    finally:
        worker.stop()
    machine = f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
    report = {"machine": machine, "load_events_per_s": args.load, "results": results}
    lines = [
        f"Identity operations, link/unlink/erase sent -> visible in Redis, one person at a "
        f"time, {args.load:g} events/s of --identities journeys in the background; {machine}.",
        "",
        "| operation | count | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, f in results.items():
        lines.append(f"| {name} | {f['count']} | {f['p50_ms']} | {f['p95_ms']} | "
                     f"{f['p99_ms']} | {f['max_ms']} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "identity_latency.json").write_bytes(
        orjson.dumps(report, option=orjson.OPT_INDENT_2)
    )
    (args.out / "identity_latency.md").write_text(text)


if __name__ == "__main__":
    main()
