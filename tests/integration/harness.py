"""Drive a real ``nextbest worker`` process against the real broker and Redis.

Everything crossing the contract here is held against the JSON Schemas
(``tests/contract.py``): each event :func:`cloudevent` builds, each trigger and
dead letter :func:`read` returns, each context :func:`applied` waits for.

:class:`WorkerProcess` starts the worker as users do (``python -m nextbest.cli
worker`` with settings in the environment) under its own consumer group, so
each test gets fresh offsets and a fresh changelog. A new group would read
``events.<channel>`` from the beginning, every earlier test's events included;
so before a new group's first start its offsets are set to the end of those
topics, and the worker sees only what its test sends.

``client_options`` (aiokafka's TLS/SASL options) let the same helpers drive a
secured broker; a ``rediss://user:password@host:port/0?ssl_ca_certs=…`` URL
does the same for Redis.

The customer ids the helpers send and every log a process writes are
remembered (:data:`SENT_SUBJECTS`, :data:`PROCESS_LOGS`): at the end of the
session, tests/integration/conftest.py checks that no log line names one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from nextbest.core.envelope import DEFAULT_CHANNELS
from tests import contract

# every customer id sent through these helpers, and every log a WorkerProcess wrote
SENT_SUBJECTS: set[str] = set()
PROCESS_LOGS: list[Path] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class WorkerProcess:
    """One worker process; ``app_id`` names its consumer group and internal topics.

    With ``command="api"`` it is an API process instead (same settings, its port
    in ``NEXTBEST_API_PORT``).
    """

    bootstrap: str
    redis_url: str
    workdir: Path
    app_id: str = field(default_factory=lambda: f"nextbest-it-{uuid.uuid4().hex[:8]}")
    env: Mapping[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    data_dir: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    runs: int = 0
    command: str = "worker"
    # False when joining a group another WorkerProcess started (its offsets are set)
    new_group: bool = True
    # aiokafka TLS/SASL options for the harness's own clients (setting the group's offsets)
    client_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.app_id}-{self.command}-{self.runs}.log"

    def start(self, *, data_dir: Path | None = None, ready_within: float = 90.0) -> None:
        if self.runs == 0 and self.new_group and self.command == "worker":
            _in_thread(start_at_end(self.bootstrap, self.app_id, self.client_options))
        self.runs += 1
        PROCESS_LOGS.append(self.log_path)
        self.data_dir = data_dir or self.workdir / f"data-{self.runs}"
        env = {
            **os.environ,
            "NEXTBEST_APP_ID": self.app_id,
            "NEXTBEST_KAFKA_BOOTSTRAP": self.bootstrap,
            "NEXTBEST_REDIS_URL": self.redis_url,
            "NEXTBEST_DATA_DIR": str(self.data_dir),
            "NEXTBEST_WORKER_PORT": str(self.port),
            "NEXTBEST_API_PORT": str(self.port),
            **self.env,
        }
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nextbest.cli", self.command],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        try:
            self.wait_ready(ready_within)
        except BaseException:
            self.stop(signal.SIGKILL)  # never leave a half-started process consuming
            raise

    def wait_ready(self, within: float) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.command} exited with {self.process.returncode}:\n{self.tail()}"
                )
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url("/readyz"), timeout=1) as answer,
            ):
                if answer.status == 200:
                    return
            time.sleep(0.3)
        raise AssertionError(f"{self.command} not ready within {within}s:\n{self.tail()}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url("/metrics"), timeout=5) as answer:
            return str(answer.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of the worker's /metrics (0 when absent)."""
        wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
        sample = f"{name}{{{wanted}}}" if labels else name
        for line in self.metrics().splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self, sig: int = signal.SIGTERM, within: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(within)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def _in_thread(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` to completion from sync code, also inside a running event loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, work).result()


async def start_at_end(
    bootstrap: str, group: str, client_options: Mapping[str, Any] | None = None
) -> None:
    """Commit ``group``'s offsets at the current end of every ``events.<channel>`` topic."""
    options = dict(client_options or {})
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        topics = [f"events.{c}" for c in DEFAULT_CHANNELS if f"events.{c}" in existing]
        described = await admin.describe_topics(topics) if topics else []
    finally:
        await admin.close()
    partitions = [
        TopicPartition(topic["topic"], partition["partition"])
        for topic in described
        for partition in topic["partitions"]
    ]
    if not partitions:  # a new broker: nothing to skip
        return
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, **options
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.commit(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


def cloudevent(
    type_: str,
    subject: str,
    data: Mapping[str, Any] | None = None,
    *,
    id_: str | None = None,
    time_: datetime | None = None,
    **attributes: Any,
) -> bytes:
    SENT_SUBJECTS.add(subject)
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": id_ or uuid.uuid4().hex,
        "source": "/tests",
        "type": type_,
        "time": (time_ or datetime.now(UTC)).isoformat(),
        "subject": subject,
        "data": dict(data or {}),
        **attributes,
    }
    contract.check("cloudevent.json", document)  # what the tests send is what the schema says
    return orjson.dumps(document)


class Channels:
    """A producer to ``events.<channel>``, keyed by the customer id unless told otherwise."""

    def __init__(self, bootstrap: str, client_options: Mapping[str, Any] | None = None) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, linger_ms=0, **(client_options or {})
        )

    async def __aenter__(self) -> Channels:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(
        self,
        channel: str,
        type_: str,
        subject: str,
        data: Mapping[str, Any] | None = None,
        *,
        key: bytes | str | None = "subject",
        **attributes: Any,
    ) -> str:
        event_id = attributes.pop("id_", None) or uuid.uuid4().hex
        value = cloudevent(type_, subject, data, id_=event_id, **attributes)
        await self.send_raw(channel, value, key=subject.encode() if key == "subject" else key)
        return str(event_id)

    async def send_raw(
        self,
        channel: str,
        value: bytes | None,
        *,
        key: bytes | str | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Any:
        """Send one record and wait for its ack; returns the RecordMetadata."""
        return await self._producer.send_and_wait(
            f"events.{channel}",
            value,
            key=key.encode() if isinstance(key, str) else key,
            headers=headers or [],
        )


async def read(
    bootstrap: str,
    topics: list[str],
    match: Callable[[ConsumerRecord[bytes, bytes]], bool],
    *,
    count: int = 1,
    within: float = 20.0,
    settle: float = 0.0,
    client_options: Mapping[str, Any] | None = None,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Records of ``topics`` (from the start) for which ``match`` holds.

    Returns once ``count`` matched, then keeps reading ``settle`` more seconds to
    catch any unexpected extra ones. Fails after ``within`` seconds.
    """
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **(client_options or {}),
    )
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + within
        settle_until: float | None = None
        while True:
            now = time.monotonic()
            if settle_until is not None and now >= settle_until:
                for record in found:
                    conforms(record)
                return found
            if now >= deadline:
                raise AssertionError(
                    f"only {len(found)} of {count} records matched on {topics} within {within}s"
                )
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                found.extend(r for r in records if match(r))
            if len(found) >= count and settle_until is None:
                settle_until = time.monotonic() + settle
    finally:
        await consumer.stop()


def conforms(record: ConsumerRecord[bytes, bytes]) -> None:
    """A trigger or a dead letter is what the schemas say it is."""
    if record.topic.startswith("triggers."):
        assert headers_of(record)["content-type"] == b"application/cloudevents+json; charset=utf-8"
        trigger = orjson.loads(record.value)
        contract.check("trigger.json", trigger)
        assert record.topic == f"triggers.{trigger['channel']}"
        assert record.key == trigger["subject"].encode()
    elif record.topic == "events.deadletter":
        contract.check("deadletter-headers.json", contract.header_map(record.headers))


def about(subject: str) -> Callable[[ConsumerRecord[bytes, bytes]], bool]:
    return lambda record: record.key == subject.encode()


def headers_of(record: ConsumerRecord[bytes, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in record.headers}


async def eventually(check: Callable[[], Any], *, within: float = 10.0, every: float = 0.05) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"condition not met within {within}s (last: {last!r})")


async def applied(redis_url: str, customer: str, version: int) -> dict[str, Any]:
    """Wait until the Redis mirror holds ``version`` (or later) of the customer's context."""
    client: Redis = Redis.from_url(redis_url)
    try:

        async def document() -> dict[str, Any] | None:
            raw = await client.get(f"nextbest:context:{customer}")
            found = None if raw is None else orjson.loads(raw)
            return found if found is not None and found["version"] >= version else None

        found: dict[str, Any] = await eventually(document, within=15)
        contract.check("context.json", found)
        return found
    finally:
        await client.aclose()


def nextbest(
    *args: str,
    bootstrap: str,
    redis_url: str,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 90.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``nextbest <args>`` as a user does, with the test services in its settings."""
    done = subprocess.run(
        [sys.executable, "-m", "nextbest.cli", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
        env={
            **os.environ,
            "NEXTBEST_KAFKA_BOOTSTRAP": bootstrap,
            "NEXTBEST_REDIS_URL": redis_url,
            **(env or {}),
        },
    )
    return subprocess.CompletedProcess(
        done.args,
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )
