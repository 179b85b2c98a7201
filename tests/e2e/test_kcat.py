"""The shell producer of the README: kcat (Debian's) sends, a real worker applies.

A binary-mode event (attributes in ce_* headers, data as the value) and a
structured one, both produced by kcat as a channel team would from a shell;
the trigger they cause is read back with kcat too, and kcat's own capture of
the binary-mode record passes ``nextbest validate``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from tests import contract
from tests.integration.harness import WorkerProcess, applied, eventually, nextbest

pytestmark = pytest.mark.timeout(240)


def kcat(*args: str, stdin: bytes | None = None) -> bytes:
    binary = shutil.which("kcat")
    if binary is None:
        pytest.fail("kcat is missing: apt-get install kcat (deploy/tools/install.sh does it)")
    done = subprocess.run(
        [binary, *args], input=stdin, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


@pytest.fixture
def worker(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    process = WorkerProcess(kafka_bootstrap, redis_url, tmp_path)
    process.start()
    yield process
    assert process.stop() == 0, process.tail()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def records(bootstrap: str, topic: str, key: str) -> list[dict[str, object]]:
    """What ``kcat -C -J`` shows of ``topic`` for ``key``, from the beginning."""
    lines = kcat("-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q", "-J")
    # kcat writes a value that is not UTF-8 into the line as it is
    text = lines.decode("utf-8", "surrogateescape")
    found = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [record for record in found if record.get("key") == key]


async def test_a_kcat_binary_mode_event_is_applied_by_the_worker(
    worker: WorkerProcess, kafka_bootstrap: str, redis_url: str
) -> None:
    customer = f"c-{uuid.uuid4().hex[:12]}"
    added = f"kcat-{uuid.uuid4().hex[:8]}"
    # binary content mode: the README's kcat line
    kcat(
        "-P", "-b", kafka_bootstrap, "-X", "topic.partitioner=murmur2_random",
        "-t", "events.web", "-k", customer,
        "-H", "ce_specversion=1.0", "-H", f"ce_id={added}", "-H", "ce_source=/shell/kcat",
        "-H", "ce_type=cart.item_added", "-H", f"ce_time={now()}", "-H", f"ce_subject={customer}",
        "-H", "content-type=application/json",
        stdin=b'{"sku": "KCAT-1", "qty": 2, "price": 4.5}\n',
    )  # fmt: skip
    document = await applied(redis_url, customer, 1)
    assert document["cart"] == {"items": [{"sku": "KCAT-1", "qty": 2, "price": 4.5}], "value": 9.0}
    assert document["current_channel"] == "web"

    # structured content mode, one event per line
    switched = f"kcat-{uuid.uuid4().hex[:8]}"
    event = {
        "specversion": "1.0", "id": switched, "source": "/shell/kcat",
        "type": "session.started", "time": now(), "subject": customer, "data": {},
    }  # fmt: skip
    kcat(
        "-P", "-b", kafka_bootstrap, "-t", "events.mobile", "-k", customer,  # rekeyed on arrival
        "-H", "content-type=application/cloudevents+json",
        stdin=orjson.dumps(event) + b"\n",
    )  # fmt: skip
    assert (await applied(redis_url, customer, 2))["current_channel"] == "mobile"

    # subscribing to triggers with kcat, as a channel app's shell would
    async def trigger() -> list[dict[str, object]]:
        return records(kafka_bootstrap, "triggers.mobile", customer)

    [found] = await eventually(trigger, within=30, every=0.5)
    body = json.loads(str(found["payload"]))
    contract.check("trigger.json", body)
    assert (body["data"]["action"], body["data"]["caused_by"]) == ("resume_cart", switched)

    # kcat's capture of the binary-mode record is what `nextbest validate` reads
    [captured] = records(kafka_bootstrap, "events.web", customer)
    assert ["ce_id", added] == captured["headers"][2:4]  # type: ignore[index]
    done = await asyncio.to_thread(
        nextbest, "validate", "-", stdin=orjson.dumps(captured) + b"\n",
        bootstrap=kafka_bootstrap, redis_url=redis_url,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == f"line 1: ok (cart.item_added, id {added}, channel web)\n"
