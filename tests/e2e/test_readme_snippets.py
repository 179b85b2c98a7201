"""The README's "Connecting a channel" snippets, run as written against a real worker.

Each snippet is taken from the README (the block after ``<!-- snippet: NAME -->``);
the only changes are the customer id (a fresh one per test) and, for the trigger
consumer, a fresh group reading from the earliest offset, so that it cannot miss
the trigger whatever the timing of its group join.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nextbest.devstack.kafka import fetch_jars
from tests.integration.harness import Channels, WorkerProcess, applied

pytestmark = pytest.mark.timeout(240)
README = Path(__file__).resolve().parents[2] / "README.md"
SNIPPET = re.compile(r"<!-- snippet: (\S+) -->\n```\w+\n(.*?)\n```", re.S)
PLACEHOLDER = "c-42"


def snippet(name: str, customer: str | None = None) -> str:
    found = dict(SNIPPET.findall(README.read_text()))
    assert name in found, f"no snippet {name!r} in the README"
    if customer is None:
        return found[name]
    assert PLACEHOLDER in found[name]
    return found[name].replace(PLACEHOLDER, customer)


@pytest.fixture(scope="module")
def worker(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    process = WorkerProcess(kafka_bootstrap, redis_url, tmp_path_factory.mktemp("snippets"))
    process.start()
    yield process
    assert process.stop() == 0, process.tail()


@pytest.fixture
def customer() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


def run(command: list[str], kafka_bootstrap: str, cwd: Path | None = None) -> None:
    done = subprocess.run(
        command,
        env={**os.environ, "KAFKA_BOOTSTRAP": kafka_bootstrap},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )
    assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout}\n{done.stderr}"


async def test_the_python_producer(
    worker: WorkerProcess, kafka_bootstrap: str, redis_url: str, customer: str
) -> None:
    code = snippet("python-producer", customer)
    await asyncio.to_thread(run, [sys.executable, "-c", code], kafka_bootstrap)
    document = await applied(redis_url, customer, 2)
    assert document["cart"]["items"] == [{"sku": "SHOE-42", "qty": 1, "price": 89.0}]
    assert document["channels"]["web"]["events"] == 2


async def test_the_java_producer(
    worker: WorkerProcess, kafka_bootstrap: str, redis_url: str, customer: str, tmp_path: Path
) -> None:
    java = shutil.which("java")
    if java is None:
        pytest.fail("java is missing (OpenJDK 17: .ci/run installs it)")
    source = tmp_path / "SendEvents.java"
    source.write_text(snippet("java-producer", customer))
    classpath = f"{await asyncio.to_thread(fetch_jars)}/*"  # kafka-clients and its dependencies
    await asyncio.to_thread(run, [java, "-cp", classpath, str(source)], kafka_bootstrap, tmp_path)
    document = await applied(redis_url, customer, 2)
    assert document["current_channel"] == "store"
    assert document["channels"]["store"]["events"] == 2


async def test_the_kcat_producer(
    worker: WorkerProcess, kafka_bootstrap: str, redis_url: str, customer: str
) -> None:
    if shutil.which("kcat") is None:
        pytest.fail("kcat is missing: apt-get install kcat (deploy/tools/install.sh does it)")
    script = snippet("kcat-producer", customer)
    await asyncio.to_thread(run, ["bash", "-euo", "pipefail", "-c", script], kafka_bootstrap)
    document = await applied(redis_url, customer, 2)
    assert document["current_channel"] == "contact-center"
    assert document["channels"]["contact-center"]["events"] == 2


async def test_the_trigger_consumer(
    worker: WorkerProcess, kafka_bootstrap: str, redis_url: str, customer: str
) -> None:
    code = snippet("python-consumer")
    code = code.replace('"mobile-app-nextbest"', f'"readme-{customer}"')
    code = code.replace('auto_offset_reset="latest"', 'auto_offset_reset="earliest"')
    consumer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "KAFKA_BOOTSTRAP": kafka_bootstrap},
    )  # fmt: skip
    try:
        async with Channels(kafka_bootstrap) as channels:
            cart = {"sku": "R1", "qty": 1, "price": 5}
            await channels.send("web", "cart.item_added", customer, cart)
            await applied(redis_url, customer, 1)
            await channels.send("mobile", "session.started", customer)
        assert consumer.stdout is not None
        while True:
            line = (await asyncio.wait_for(consumer.stdout.readline(), 60)).decode()
            assert line, "the consumer ended"
            if line.startswith(f"{customer} "):
                break
        assert line.startswith(f"{customer} resume_cart ")
    finally:
        consumer.terminate()
        await consumer.wait()
