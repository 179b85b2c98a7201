"""Side-by-side benchmark: the floor, nextbest and Quix Streams on one broker.

    make bench                                   # or, in .dev/bench/venv:
    python -m bench.compare [--quick] [--arms floor,nextbest,quix] [--repeat 3]

Each repetition runs every arm on a fresh, dedicated Kafka + Redis (the dev
stack on ports 19092/16379 under ``.dev/bench/stack``, wiped between arms, so
nothing of yours is touched and no arm inherits another's data):

1. **Max throughput.** ``--events`` simulated records are written first; the
   arm then starts and drains them. Throughput is records / (time the last
   record's effect is visible - time the first one's is): the rate at which
   the arm shrinks a backlog, i.e. the most it can sustain. CPU-seconds per
   1,000 records are the arm process's CPU over the same span.
2. **Latency at fixed offered loads** (1k/s, 5k/s and 50 % of this arm's
   median max), open loop: record *i* is due at ``start + i/rate`` and latency
   is measured from that intended time to the moment the harness reads the
   effect: the output record (floor) or the trigger whose ``caused_by`` is that
   record (nextbest, Quix). Mirror lag is from the newest applied record's
   intended time to the moment its context document is published by Redis;
   for nextbest also from the worker's own histogram
   (``nextbest_context_mirror_lag_seconds``: change applied -> Redis ack,
   the contract's 50 ms), read from /metrics before and after the window.
   Each load starts once the arm and the broker are idle again (after a
   drain, RocksDB flushes and the like go on for seconds), then a warm-up
   precedes the measured window; a load the arm cannot keep up with is
   reported as such, with how far behind it ended.
3. **Every event a switch** (``--switches``): customers who viewed a help page
   on web each open a chat, so every event fires ``agent_handoff`` — the
   trigger-heavy mix of a retailer's peak. The warm-up is applied first; the
   arm is stopped, the chats written, and the restarted arm drains them:
   throughput and CPU per 1,000 as in 1., outputs being the triggers.
4. **Changelog recovery** (nextbest): a new worker with an empty data dir
   restores the table; records restored / seconds to ready.

Peak RSS is the arm process's high-water mark. Results go to
``bench/results/latest.json`` and ``latest.md``; figures are medians over the
repetitions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from redis.asyncio import Redis

from bench.arms.floor import OUTPUT_TOPIC
from bench.procstat import cpu_seconds, peak_rss_bytes
from bench.report import render
from bench.workload import Sent, Switches, Workload, open_loop, preload, send_all
from nextbest.adapters.clients import kafka_client_options, redis_client
from nextbest.adapters.projection import KEY_PREFIX, UPDATES_PREFIX
from nextbest.adapters.topics import changelog_topic
from nextbest.bootstrap import ensure_topics
from nextbest.devstack import DevStack, stack
from nextbest.settings import Settings
from nextbest.simulator.journeys import Journeys

ROOT = Path(__file__).resolve().parent.parent
STACK_ENV = {
    "NEXTBEST_DEV_KAFKA_PORT": "19092",
    "NEXTBEST_DEV_CONTROLLER_PORT": "19093",
    "NEXTBEST_DEV_REDIS_PORT": "16379",
}
WORKER_PORT = 16066
ARMS = ("floor", "nextbest", "quix")
COMMANDS = {
    "floor": [sys.executable, "-m", "bench.arms.floor"],
    "nextbest": [sys.executable, "-m", "nextbest.cli", "worker"],
    "quix": [sys.executable, "-m", "bench.arms.quix"],
}


def say(text: str) -> None:
    print(f"bench: {text}", flush=True)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Plan:
    events: int
    warmup: float
    seconds: float
    repeat: int
    customers: int
    catch_up: float
    profile: bool = False
    loads: bool = True
    rates: tuple[float, ...] = (1000.0, 5000.0)
    half_load: bool = True
    # contract v0.2: the simulator's --identities journeys (cookies, app installs, phones,
    # loyalty cards, logins); and whether nextbest has caught up is then read from its own
    # count of applied events (a profile's document is no longer one per customer id)
    identities: bool = False
    by_metrics: bool = False
    switches: int = 20_000  # the trigger-heavy mix: customers who each open a chat


@dataclass
class LoadResult:
    label: str
    offered: float
    sent: int
    sender_late_max_ms: float
    caught_up: bool
    behind_after_s: float | None  # how long after the last send the arm had caught up
    latency_ms: dict[str, float | None]
    samples: int
    mirror_lag_ms: dict[str, float | None]
    mirror_samples: int
    above_max: bool = False  # not run: the arm's measured max is lower
    settled_after_s: float | None = None  # how long the arm took to go idle before the load
    # nextbest's own mirror-lag histogram over the window: the bucket bound holding its p99
    worker_mirror_p99_ms: float | None = None

    @classmethod
    def not_run(cls, label: str, rate: float) -> LoadResult:
        none: dict[str, float | None] = {"p50": None, "p99": None, "p99.9": None}
        return cls(label, rate, 0, 0.0, False, None, none, 0, none, 0, above_max=True)


@dataclass
class RunResult:
    arm: str
    rep: int
    events: int
    drain_seconds: float
    events_per_s: float
    cpu_s_per_1k: float
    kafka_cpu_s_per_1k: float  # the broker's, for the same records
    redis_cpu_s_per_1k: float
    first_output_after_s: float
    loads: list[LoadResult] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    recovery: dict[str, float] | None = None
    switches: SwitchResult | None = None


@dataclass
class SwitchResult:
    """The trigger-heavy mix: a backlog of channel switches, each firing a trigger."""

    events: int
    outputs: int  # triggers (nextbest, Quix) or copies (floor) seen for them
    seconds: float
    events_per_s: float
    cpu_s_per_1k: float


class Arm:
    """One arm's process, with the settings every arm reads (``NEXTBEST_*``)."""

    def __init__(self, name: str, settings_env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.env = settings_env
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.runs = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}-{self.runs}.log"

    def start(self, data_dir: Path) -> None:
        self.runs += 1
        log = self.log_path.open("wb")
        env = {**os.environ, **self.env, "NEXTBEST_DATA_DIR": str(data_dir)}
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(  # noqa: S603 - our own fixed commands
            COMMANDS[self.name],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} arm exited with status {self.process.returncode}; "
                f"see {self.workdir}/{self.name}-{self.runs}.log"
            )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def restore_seconds(log: Path) -> float:
    """How long faust spent reading the changelog, from its own log lines."""
    stamps: dict[str, datetime] = {}
    for line in log.read_text(errors="replace").splitlines():
        for key, marker in (
            ("start", "Restoring state from changelog topics"),
            ("end", "Done reading from changelog topics"),
        ):
            if marker in line and key not in stamps:
                stamps[key] = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
    if len(stamps) < 2:
        raise RuntimeError(f"no recovery start/end lines in {log}")
    return (stamps["end"] - stamps["start"]).total_seconds()


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class Watch:
    """Asks the broker and Redis how far an arm has got."""

    def __init__(
        self,
        arm: str,
        settings: Settings,
        redis: Redis,
        workload: Workload,
        by_metrics: bool = False,
    ) -> None:
        self.arm = arm
        self.settings = settings
        self.redis = redis
        self.workload = workload
        self.by_metrics = by_metrics
        self._offsets: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> Watch:
        self._offsets = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=None,
            **kafka_client_options(self.settings),
        )
        await self._offsets.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._offsets is not None:
            await self._offsets.stop()

    async def _output_count(self) -> int:
        return await self.end_offsets([OUTPUT_TOPIC])

    async def end_offsets(self, topics: list[str]) -> int:
        """The sum of the end offsets of every partition of ``topics``."""
        assert self._offsets is not None
        ends = await self._offsets.end_offsets(
            [TopicPartition(t, p) for t in topics for p in range(self.workload.partitions)]
        )
        return sum(ends.values())

    async def leaders(self, topics: list[str]) -> None:
        """Wait until every partition of new ``topics`` has a leader (no producer retries)."""
        assert self._offsets is not None
        wanted = [TopicPartition(t, p) for t in topics for p in range(self.workload.partitions)]
        for _ in range(100):
            try:
                await self._offsets.end_offsets(wanted)
                return
            except KafkaError:
                await asyncio.sleep(0.1)
        raise RuntimeError("the new topics got no leaders within 10 s")

    async def started(self) -> bool:
        if self.arm == "floor":
            return await self._output_count() > 0
        return int(await self.redis.dbsize()) > 0

    async def caught_up(self) -> bool:
        """Has the arm applied the last record sent to every topic partition?"""
        if self.arm == "floor":
            return await self._output_count() >= self.workload.sent
        if self.by_metrics and self.arm == "nextbest":
            return await asyncio.to_thread(_applied_events) >= self.workload.sent
        finals = self.workload.final_versions()
        names = list(finals)
        documents = await self.redis.mget([KEY_PREFIX + name for name in names])
        for name, document in zip(names, documents, strict=True):
            if document is None or orjson.loads(document)["version"] < finals[name]:
                return False
        return True


def _applied_events() -> float:
    """Events the nextbest arm applied (or ignored as repeats), from its /metrics."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{WORKER_PORT}/metrics", timeout=2) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError):
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("nextbest_events_total{", "nextbest_events_duplicate_total{"))
    )


async def wait_until(check: Any, *, within: float, arm: Arm, every: float = 0.1) -> float | None:
    """Poll ``check`` until true; the monotonic time it became true, or None on timeout."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        arm.check_alive()
        if await check():
            return time.monotonic()
        await asyncio.sleep(every)
    return None


class Effects:
    """Reads what an arm produces during a measured load, timing each arrival."""

    def __init__(self, arm: str, settings: Settings, workload: Workload):
        self.arm = arm
        self.partitions = workload.partitions
        channels = workload.channels
        self.settings = settings
        self.topics = [OUTPUT_TOPIC] if arm == "floor" else [f"triggers.{c}" for c in channels]
        self.intended: dict[str, float] = {}
        self.window = (0.0, 0.0)  # intended times measured: after the warm-up
        self.latencies: list[float] = []
        self.mirror: list[float] = []
        self._tasks: list[asyncio.Task[None]] = []

    def sent(self, record: Sent) -> None:
        if self.window[0] <= record.intended <= self.window[1]:
            self.intended[record.id] = record.intended

    async def __aenter__(self) -> Effects:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=None,
            **kafka_client_options(self.settings),
        )
        await consumer.start()
        partitions = [TopicPartition(t, p) for t in self.topics for p in range(self.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_end()
        for partition in partitions:
            await consumer.position(partition)
        self._tasks.append(asyncio.create_task(self._records(consumer)))
        if self.arm != "floor":
            redis = redis_client(self.settings, timeout=None)  # subscribed: waits are long
            pubsub = redis.pubsub()
            await pubsub.psubscribe(UPDATES_PREFIX + "*")
            self._tasks.append(asyncio.create_task(self._updates(redis, pubsub)))
        return self

    async def __aexit__(self, *_: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _records(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=100)
                arrived = time.time()
                for records in batches.values():
                    for record in records:
                        self._record(record.value, arrived)
        finally:
            await consumer.stop()

    def _record(self, value: bytes | None, arrived: float) -> None:
        if value is None:
            return
        document = orjson.loads(value)
        cause = document["id"] if self.arm == "floor" else document["data"].get("caused_by")
        intended = self.intended.get(cause) if cause is not None else None
        if intended is not None:
            self.latencies.append(arrived - intended)

    async def _updates(self, redis: Redis, pubsub: Any) -> None:
        low, high = self.window
        try:
            async for message in pubsub.listen():
                if message["type"] != "pmessage":
                    continue
                arrived = time.time()
                applied = datetime.fromisoformat(orjson.loads(message["data"])["last_event_at"])
                moment = applied.timestamp()
                if low <= moment <= high:
                    self.mirror.append(arrived - moment)
        finally:
            await pubsub.aclose()
            await redis.aclose()


class MirrorHistogram:
    """The worker's ``nextbest_context_mirror_lag_seconds`` buckets, from its /metrics."""

    NAME = "nextbest_context_mirror_lag_seconds_bucket"

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"

    def read(self) -> dict[float, float]:
        """Cumulative count per bucket upper bound (seconds)."""
        with urllib.request.urlopen(self.url, timeout=5) as answer:  # noqa: S310 - our http URL
            text = answer.read().decode()
        buckets: dict[float, float] = {}
        for line in text.splitlines():
            if line.startswith(self.NAME + "{"):
                labels, value = line.rsplit(" ", 1)
                bound = labels.split('le="', 1)[1].split('"', 1)[0]
                buckets[float(bound)] = float(value)
        return buckets

    @staticmethod
    def p99_ms(start: dict[float, float], end: dict[float, float]) -> float | None:
        """The upper bound (ms) of the bucket that holds the window's 99th percentile."""
        counts = sorted((bound, end[bound] - start.get(bound, 0.0)) for bound in end)
        if not counts or counts[-1][1] <= 0:
            return None
        total = counts[-1][1]
        for bound, cumulative in counts:
            if cumulative >= 0.99 * total:
                return None if bound == float("inf") else round(bound * 1000, 1)
        return None


def quantiles_ms(values: list[float]) -> dict[str, float | None]:
    def ms(q: float) -> float | None:
        value = percentile(values, q)
        return None if value is None else round(value * 1000, 2)

    return {"p50": ms(0.5), "p99": ms(0.99), "p99.9": ms(0.999)}


class Bench:
    def __init__(self, plan: Plan, arms: list[str], workdir: Path) -> None:
        self.plan = plan
        self.arms = arms
        self.workdir = workdir
        self.results: list[RunResult] = []

    async def run(self) -> None:
        for rep in range(1, self.plan.repeat + 1):
            for name in self.arms:
                say(f"rep {rep}/{self.plan.repeat}: {name}")
                self.results.append(await self.run_arm(name, rep))

    def max_rate(self, name: str) -> float:
        rates = [r.events_per_s for r in self.results if r.arm == name]
        return statistics.median(rates)

    async def run_arm(self, name: str, rep: int) -> RunResult:
        services = stack()
        services.down()
        shutil.rmtree(services.root, ignore_errors=True)
        endpoints = services.up()
        app_id = f"bench-{name}-{uuid.uuid4().hex[:6]}"
        env = {
            "NEXTBEST_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap,
            "NEXTBEST_REDIS_URL": endpoints.redis_url,
            "NEXTBEST_APP_ID": app_id,
            "NEXTBEST_WORKER_PORT": str(WORKER_PORT),
        }
        settings = Settings(**{k.removeprefix("NEXTBEST_").lower(): v for k, v in env.items()})
        await ensure_topics(settings)
        await self._create(settings, OUTPUT_TOPIC)
        journeys = Journeys(customers=self.plan.customers, seed=rep, channels=settings.channels,
                            identities=self.plan.identities)  # fmt: skip
        workload = Workload(journeys, settings.channels, settings.topic_partitions)
        redis = redis_client(settings, timeout=None)
        arm = Arm(name, env, self.workdir)
        try:
            async with Watch(name, settings, redis, workload, self.plan.by_metrics) as watch:
                await watch.leaders([OUTPUT_TOPIC, *(f"events.{c}" for c in settings.channels)])
                security = kafka_client_options(settings)
                await preload(workload, settings.kafka_bootstrap, self.plan.events, security)
                result = await self._drain(arm, watch, rep, services)
                say(
                    f"  {name}: {result.events_per_s:,.0f} events/s, "
                    f"{result.cpu_s_per_1k:.3f} CPU-s/1k "
                    f"(Kafka {result.kafka_cpu_s_per_1k:.3f}, "
                    f"Redis {result.redis_cpu_s_per_1k:.3f})"
                )
                half = 0.5 * (self.max_rate(name) if rep > 1 else result.events_per_s)
                loads = [(f"{r:,.0f}/s", r) for r in self.plan.rates]
                loads += [("50% of max", round(half, -1))] if self.plan.half_load else []
                for label, rate in loads if self.plan.loads else []:
                    if rate > result.events_per_s:
                        # latency at a load above the max only grows with the run's length
                        result.loads.append(LoadResult.not_run(label, rate))
                        say(f"  {name} at {rate:,.0f}/s: above its max, not run")
                        continue
                    settled = await self._settle(arm, services)
                    load = await self._load(arm, watch, workload, settings, label, rate)
                    load.settled_after_s = settled
                    result.loads.append(load)
                    say(
                        f"  {name} at {rate:,.0f}/s: latency {load.latency_ms} "
                        f"(n={load.samples}), mirror {load.mirror_lag_ms}, "
                        f"caught up {load.caught_up}"
                    )
                result.peak_rss_mb = round(peak_rss_bytes(arm.pid) / 2**20, 1)
                if self.plan.switches:
                    switches = Switches(journeys, settings.channels, settings.topic_partitions)
                    result.switches = await self._switches(arm, watch, switches, settings, rep)
                    say(f"  {name}, every event a switch: {result.switches}")
            arm.stop()
            if name == "nextbest" and self.plan.loads:
                result.recovery = await self._recovery(arm, settings)
                say(f"  recovery: {result.recovery}")
        finally:
            arm.stop()
            await redis.aclose()
            services.down()
        return result

    async def _create(self, settings: Settings, topic: str) -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap, **kafka_client_options(settings)
        )
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, settings.topic_partitions, 1)])
        finally:
            await admin.close()

    async def _drain(self, arm: Arm, watch: Watch, rep: int, services: DevStack) -> RunResult:
        arm.start(self.workdir / f"data-{arm.name}-{rep}")
        first = await wait_until(watch.started, within=120, arm=arm, every=0.02)
        if first is None:
            raise RuntimeError(f"{arm.name} produced nothing within 120 s")
        cpu_first = cpu_seconds(arm.pid)
        kafka, redis = services.kafka.service.pid(), services.redis.service.pid()
        if kafka is None or redis is None:
            raise RuntimeError("the bench's Kafka or Redis is not running")
        kafka_first, redis_first = cpu_seconds(kafka), cpu_seconds(redis)
        profiler = self._profile(arm, rep)
        try:
            done = await wait_until(watch.caught_up, within=1800, arm=arm, every=0.1)
        finally:
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                profiler.wait(60)
        if done is None:
            raise RuntimeError(f"{arm.name} did not drain {self.plan.events} records in 30 min")
        cpu = cpu_seconds(arm.pid) - cpu_first
        kafka_cpu = cpu_seconds(kafka) - kafka_first
        redis_cpu = cpu_seconds(redis) - redis_first
        seconds = done - first
        return RunResult(
            arm=arm.name,
            rep=rep,
            events=self.plan.events,
            drain_seconds=round(seconds, 2),
            events_per_s=round(self.plan.events / seconds, 1),
            cpu_s_per_1k=round(cpu / self.plan.events * 1000, 4),
            kafka_cpu_s_per_1k=round(kafka_cpu / self.plan.events * 1000, 4),
            redis_cpu_s_per_1k=round(redis_cpu / self.plan.events * 1000, 4),
            first_output_after_s=round(first - arm.started_at, 2),
        )

    async def _outputs(self, watch: Watch, arm: str) -> int:
        """Records so far on the arm's output topics: the floor's copies, or triggers."""
        channels = watch.settings.channels
        topics = [OUTPUT_TOPIC] if arm == "floor" else [f"triggers.{c}" for c in channels]
        return await watch.end_offsets(topics)

    async def _switches(
        self, arm: Arm, watch: Watch, switches: Switches, settings: Settings, rep: int
    ) -> SwitchResult:
        """Every event a channel switch that fires ``agent_handoff``, as a backlog.

        ``plan.switches`` customers view a help page on web (applied by the running
        arm before anything is measured); the arm is stopped, each customer's
        ``chat.started`` is written, and the restarted arm drains them: events / (last
        output - first output), where an output is the trigger (the floor: the copy).
        """
        count = self.plan.switches
        security = kafka_client_options(settings)
        before = await self._outputs(watch, arm.name)
        await send_all(switches.warm(count, time.time()), settings.kafka_bootstrap, security)
        if arm.name == "floor":
            warmed = await wait_until(
                lambda: self._at_least(watch, arm.name, before + count), within=300, arm=arm
            )
        else:
            warmed = await wait_until(
                Watch(arm.name, settings, watch.redis, switches).caught_up,
                within=300,
                arm=arm,
            )
        if warmed is None:
            raise RuntimeError(f"{arm.name} did not apply {count:,} help page views in 300 s")
        arm.stop()
        base = await self._outputs(watch, arm.name)
        moment = time.time()
        records = (switches.record(moment) for _ in range(count))
        await send_all(records, settings.kafka_bootstrap, security)
        arm.start(self.workdir / f"data-{arm.name}-{rep}")
        first = await wait_until(
            lambda: self._at_least(watch, arm.name, base + 1), within=120, arm=arm, every=0.02
        )
        if first is None:
            raise RuntimeError(f"{arm.name} emitted nothing for the switches within 120 s")
        cpu_first = cpu_seconds(arm.pid)
        done = await wait_until(
            lambda: self._at_least(watch, arm.name, base + count), within=600, arm=arm
        )
        outputs = await self._outputs(watch, arm.name) - base
        if done is None:
            raise RuntimeError(f"{arm.name}: {outputs:,} outputs for {count:,} switches in 600 s")
        cpu = cpu_seconds(arm.pid) - cpu_first
        seconds = max(done - first, 1e-3)
        return SwitchResult(
            events=count,
            outputs=outputs,
            seconds=round(seconds, 2),
            events_per_s=round(count / seconds, 1),
            cpu_s_per_1k=round(cpu / count * 1000, 4),
        )

    async def _at_least(self, watch: Watch, arm: str, wanted: int) -> bool:
        return await self._outputs(watch, arm) >= wanted

    def _profile(self, arm: Arm, rep: int) -> subprocess.Popen[bytes] | None:
        """With ``--profile``: py-spy samples the arm while it drains (collapsed stacks)."""
        if not self.plan.profile:
            return None
        spy = Path(sys.executable).parent / "py-spy"
        output = self.workdir / f"{arm.name}-{rep}.collapsed"
        return subprocess.Popen(  # noqa: S603 - our own fixed command
            [str(spy), "record", "--pid", str(arm.pid), "--format", "raw", "-o", str(output)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def _settle(self, arm: Arm, services: DevStack, within: float = 30.0) -> float | None:
        """Wait for a second in which the arm used under 10 % of a CPU and the broker
        under 25 % (idle, a worker's timer ticks use 3-8 %, a broker 2-15 % here).

        Returns how long that took, or None if they were still busy after ``within``.
        """
        kafka = services.kafka.service.pid()
        limits = {arm.pid: 0.1, **({kafka: 0.25} if kafka is not None else {})}
        started = time.monotonic()
        while time.monotonic() - started < within:
            arm.check_alive()
            before = {pid: cpu_seconds(pid) for pid in limits}
            await asyncio.sleep(1.0)
            if all(cpu_seconds(pid) - before[pid] < limit for pid, limit in limits.items()):
                return round(time.monotonic() - started, 1)
        return None

    async def _load(
        self,
        arm: Arm,
        watch: Watch,
        workload: Workload,
        settings: Settings,
        label: str,
        rate: float,
    ) -> LoadResult:
        effects = Effects(arm.name, settings, workload)
        start = time.time()
        effects.window = (start + self.plan.warmup, start + self.plan.warmup + self.plan.seconds)
        sent_before = workload.sent
        histogram = MirrorHistogram(WORKER_PORT) if arm.name == "nextbest" else None
        async with effects:
            window = asyncio.create_task(self._window(histogram))
            late = await open_loop(
                workload,
                settings.kafka_bootstrap,
                rate=rate,
                seconds=self.plan.warmup + self.plan.seconds,
                on_sent=effects.sent,
                client_options=kafka_client_options(settings),
            )
            worker_p99 = await window
            finished = time.monotonic()
            done = await wait_until(watch.caught_up, within=self.plan.catch_up, arm=arm)
            await asyncio.sleep(0.5)  # the last triggers and publishes in flight
        return LoadResult(
            label=label,
            offered=rate,
            sent=workload.sent - sent_before,
            sender_late_max_ms=round(late * 1000, 1),
            caught_up=done is not None,
            behind_after_s=None if done is None else round(done - finished, 2),
            latency_ms=quantiles_ms(effects.latencies),
            samples=len(effects.latencies),
            mirror_lag_ms=quantiles_ms(effects.mirror),
            mirror_samples=len(effects.mirror),
            worker_mirror_p99_ms=worker_p99,
        )

    async def _window(self, histogram: MirrorHistogram | None) -> float | None:
        """Read the worker's histogram at the start and the end of the measured window."""
        if histogram is None:
            return None
        await asyncio.sleep(self.plan.warmup)
        start = await asyncio.to_thread(histogram.read)
        await asyncio.sleep(self.plan.seconds)
        end = await asyncio.to_thread(histogram.read)
        return histogram.p99_ms(start, end)

    async def _recovery(self, arm: Arm, settings: Settings) -> dict[str, float]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=None,
            **kafka_client_options(settings),
        )
        await consumer.start()
        try:
            topic = changelog_topic(settings.app_id)
            changelog = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
            ends = await consumer.end_offsets(changelog)
            begins = await consumer.beginning_offsets(changelog)
        finally:
            await consumer.stop()
        records = sum(ends.values()) - sum(begins.values())
        arm.start(self.workdir / f"data-recovery-{uuid.uuid4().hex[:6]}")
        became = await wait_until(
            lambda: asyncio.to_thread(ready, WORKER_PORT), within=600, arm=arm
        )
        if became is None:
            raise RuntimeError("the recovering worker was not ready within 600 s")
        seconds = became - arm.started_at
        arm.stop()
        restoring = restore_seconds(arm.log_path)
        return {
            "records": records,
            "seconds_to_ready": round(seconds, 2),
            "restore_seconds": round(restoring, 2),
            "records_per_s": round(records / restoring, 1),
        }


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = 0
    with contextlib.suppress(OSError):
        memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(memory / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "note": "broker, Redis, arm and load generator all share these CPUs",
    }


def summarise(results: list[RunResult]) -> dict[str, Any]:
    """Medians per arm over the repetitions."""
    summary: dict[str, Any] = {}
    for name in dict.fromkeys(r.arm for r in results):
        runs = [r for r in results if r.arm == name]
        entry: dict[str, Any] = {
            "events_per_s": statistics.median(r.events_per_s for r in runs),
            "events_per_s_range": [
                min(r.events_per_s for r in runs),
                max(r.events_per_s for r in runs),
            ],
            "kafka_cpu_s_per_1k": statistics.median(r.kafka_cpu_s_per_1k for r in runs),
            "cpu_s_per_1k": statistics.median(r.cpu_s_per_1k for r in runs),
            "peak_rss_mb": statistics.median(r.peak_rss_mb for r in runs),
            "loads": [],
        }
        for index, first in enumerate(runs[0].loads):
            loads = [r.loads[index] for r in runs if len(r.loads) > index]
            entry["loads"].append(
                {
                    "label": first.label,
                    "offered": statistics.median(x.offered for x in loads),
                    "caught_up": all(x.caught_up for x in loads),
                    "above_max": any(x.above_max for x in loads),
                    **{
                        f"{q}_ms": _median(x.latency_ms[q] for x in loads)
                        for q in ("p50", "p99", "p99.9")
                    },
                    "mirror_p99_ms": _median(x.mirror_lag_ms["p99"] for x in loads),
                    "worker_mirror_p99_ms": _median(x.worker_mirror_p99_ms for x in loads),
                    "samples": sum(x.samples for x in loads),
                }
            )
        switches = [r.switches for r in runs if r.switches]
        if switches:
            entry["switches_per_s"] = statistics.median(x.events_per_s for x in switches)
            entry["switches_cpu_s_per_1k"] = statistics.median(x.cpu_s_per_1k for x in switches)
            entry["switches_events"] = switches[0].events
        recoveries = [r.recovery for r in runs if r.recovery]
        if recoveries:
            entry["recovery_records_per_s"] = statistics.median(
                x["records_per_s"] for x in recoveries
            )
            entry["recovery_records"] = statistics.median(x["records"] for x in recoveries)
            entry["recovery_seconds_to_ready"] = statistics.median(
                x["seconds_to_ready"] for x in recoveries
            )
        summary[name] = entry
    return summary


def _median(values: Iterator[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--quick", action="store_true", help="one short repetition")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per load")
    parser.add_argument("--profile", action="store_true", help="py-spy each arm's drain")
    parser.add_argument(
        "--drain-only", action="store_true", help="throughput only: no loads, no recovery"
    )
    parser.add_argument(
        "--rates",
        default="1000,5000",
        help="fixed offered loads, events/s (50%% of each arm's max is added)",
    )
    parser.add_argument(
        "--identities", action="store_true",
        help="the simulator's --identities journeys (implies --by-metrics)",
    )  # fmt: skip
    parser.add_argument(
        "--by-metrics", action="store_true",
        help="nextbest has drained when its applied-event count reaches the records sent",
    )  # fmt: skip
    parser.add_argument(
        "--stack-ports", default=None,
        help="Kafka,controller,Redis ports of the bench's own stack (default 19092,19093,16379)"
        " — another on the machine may be using those",
    )  # fmt: skip
    parser.add_argument(
        "--switches",
        type=int,
        default=20_000,
        help="customers in the trigger-heavy mix (every event a switch); 0 skips it",
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / ".dev" / "bench")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS)
    if unknown:
        parser.error(f"unknown arms {sorted(unknown)}; choose from {', '.join(ARMS)}")
    plan = Plan(
        events=args.events if not args.quick else min(args.events, 20_000),
        warmup=5.0,
        seconds=5.0 if args.quick else args.seconds,
        repeat=1 if args.quick else args.repeat,
        customers=20_000,
        catch_up=60.0,
        profile=args.profile,
        loads=not args.drain_only,
        rates=tuple(float(r) for r in args.rates.split(",") if r),
        identities=args.identities,
        by_metrics=args.by_metrics or args.identities,
        switches=0 if args.drain_only else min(args.switches, 5_000 if args.quick else 10**9),
    )
    # the dedicated stack, for every stack() call
    ports = dict(STACK_ENV)
    if args.stack_ports:
        ports = dict(zip(STACK_ENV, args.stack_ports.split(","), strict=True))
    os.environ.update({**ports, "NEXTBEST_DEV_DIR": str(args.workdir / "stack")})
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # retried metadata races
    workdir = args.workdir / f"run-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    workdir.mkdir(parents=True)
    bench = Bench(plan, arms, workdir)
    started = time.monotonic()
    try:
        asyncio.run(bench.run())
    finally:
        stack().down()
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "plan": asdict(plan),
        "wall_seconds": round(time.monotonic() - started, 1),
        "summary": summarise(bench.results),
        "runs": [asdict(r) for r in bench.results],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "quick" if args.quick else "latest"
    (args.out / f"{name}.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    markdown = render(report)
    (args.out / f"{name}.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
