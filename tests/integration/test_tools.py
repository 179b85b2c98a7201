"""The command-line tools against the real broker, Redis and a real worker.

``validate`` is held against the worker itself: the same hostile lines go through
both, and the verdicts must be the same line for line.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import uuid
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from nextbest.tools import capture
from tests.integration.harness import (
    Channels,
    WorkerProcess,
    about,
    applied,
    cloudevent,
    free_port,
    headers_of,
    nextbest,
    read,
)

pytestmark = pytest.mark.timeout(240)
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture
def customer() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


def binary_record(subject: str | None, data: bytes) -> bytes:
    headers = ["ce_specversion", "1.0", "ce_id", uuid.uuid4().hex, "ce_source", "/tests/kcat",
               "ce_type", "search.performed", "ce_time", "2026-11-22T11:59:30.250+01:00",
               "content-type", "application/json"]  # fmt: skip
    if subject is not None:
        headers += ["ce_subject", subject]
    return orjson.dumps({"topic": "events.web", "headers": headers, "payload": data.decode()})


def hostile_lines(prefix: str) -> list[tuple[bytes, str]]:
    """(line, expected verdict): every reason of contract §4 a producer can cause, and fine ones."""
    cart = {"sku": "A1", "qty": 1, "price": 2}
    ok = orjson.loads(cloudevent("cart.item_added", f"{prefix}-a", cart))
    other = {**ok, "id": "e-2", "subject": f"{prefix}-b", "type": "points.earned", "data": [1]}
    return [
        (orjson.dumps(ok), "ok"),
        (b"\xff\xfe{\"specversion\": \"1.0\"}", "not_utf8"),
        (b"{\"specversion\": \"1.0\", ", "invalid_json"),
        (orjson.dumps({**ok, "id": "big", "data": {**cart, "pad": "x" * 70_000}}), "too_large"),
        (orjson.dumps({k: v for k, v in ok.items() if k != "subject"}), "invalid_envelope"),
        (orjson.dumps({**ok, "time": "yesterday"}), "invalid_envelope"),
        (orjson.dumps([ok]), "invalid_envelope"),
        (orjson.dumps({**ok, "data": {**cart, "qty": 0}}), "invalid_data"),
        (orjson.dumps({**ok, "type": "page.viewed", "data": {"page_type": "x"}}), "invalid_data"),
        (orjson.dumps({**ok, "channel": "store"}), "channel_mismatch"),
        (orjson.dumps(other), "ok"),
        (binary_record(f"{prefix}-c", b'{"query": "red", "results": 0}'), "ok"),
        (binary_record(None, b'{"query": "red", "results": 0}'), "invalid_envelope"),
        (binary_record(f"{prefix}-d", b'{"query": "red"}'), "invalid_data"),
    ]  # fmt: skip


async def test_validate_says_what_the_worker_does_with_a_hostile_file(
    worker: WorkerProcess,
    channels: Channels,
    kafka_bootstrap: str,
    redis_url: str,
    tmp_path: Path,
    unique_name: str,
) -> None:
    cases = hostile_lines(unique_name)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(line for line, _ in cases) + b"\n\n")  # a blank line is skipped
    done = nextbest("validate", str(path), "--channel", "web",
                    bootstrap=kafka_bootstrap, redis_url=redis_url)  # fmt: skip
    assert done.returncode == 1, done.stderr
    said = [re.match(r"line (\d+): (\w+)", line) for line in done.stdout.splitlines()]
    assert [(int(m[1]), m[2]) for m in said if m] == [
        (n, expected) for n, (_, expected) in enumerate(cases, start=1)
    ]
    assert done.stderr.strip().splitlines()[-1] == (
        f"validate: {len(cases)} records: 3 ok, {len(cases) - 3} rejected (channel_mismatch 1, "
        "invalid_data 3, invalid_envelope 4, invalid_json 1, not_utf8 1, too_large 1)"
    )

    # the worker, given the same records on events.web
    for number, (line, _) in enumerate(cases, start=1):
        record = capture.read(line) or capture.Record(value=line)
        key = f"{unique_name}-{number}".encode()
        await channels.send_raw("web", record.value, key=key, headers=list(record.headers))
    rejected = sum(expected != "ok" for _, expected in cases)
    letters = await read(
        kafka_bootstrap,
        ["events.deadletter"],
        lambda r: r.key is not None and r.key.startswith(f"{unique_name}-".encode()),
        count=rejected,
        within=60,
        settle=1.0,
    )
    by_line = {
        int(r.key.decode().rsplit("-", 1)[1]): headers_of(r)["nextbest.error.reason"].decode()
        for r in letters
    }
    for suffix in ("a", "b", "c"):  # the valid ones were applied
        await applied(redis_url, f"{unique_name}-{suffix}", 1)
    worker_said = [by_line.get(n, "ok") for n in range(1, len(cases) + 1)]
    assert worker_said == [expected for _, expected in cases]


async def test_validate_usage_errors_exit_2(kafka_bootstrap: str, redis_url: str) -> None:
    for args in (["/no/such/file"], ["-", "--channel", "moon"], []):
        done = nextbest("validate", *args, bootstrap=kafka_bootstrap, redis_url=redis_url)
        assert done.returncode == 2, (args, done.stderr)
        assert "Traceback" not in done.stderr


async def test_send_then_context(
    worker: WorkerProcess, kafka_bootstrap: str, redis_url: str, customer: str
) -> None:
    def run(*args: str) -> tuple[int, str, str]:
        done = nextbest(*args, bootstrap=kafka_bootstrap, redis_url=redis_url)
        return done.returncode, done.stdout, done.stderr

    status, out, err = run("send", "web", "cart.item_added", "--customer", customer,
                           "--data", '{"sku": "S1", "qty": 2, "price": 3.5}')  # fmt: skip
    assert status == 0, err
    added = out.strip()
    assert UUID.match(added)
    assert re.fullmatch(r"sent cart.item_added to events\.web\[\d+\]@\d+\n", err)
    [record] = await read(kafka_bootstrap, ["events.web"], about(customer))
    assert orjson.loads(record.value)["id"] == added
    assert headers_of(record)["content-type"] == b"application/cloudevents+json"
    await applied(redis_url, customer, 1)

    # refused before sending: nothing reaches the worker
    status, out, err = run("send", "web", "cart.item_added", "--customer", customer,
                           "--data", '{"sku": "S1", "qty": 0, "price": 3.5}')  # fmt: skip
    assert (status, out) == (1, "")
    assert err == (
        "nextbest send: not sent, the worker would reject it: invalid_data: "
        "data.qty of cart.item_added must be an integer >= 1\n"
    )
    for args in (["moon", "x"], ["web", "x", "--data", "{nope"]):
        status, out, err = run("send", *args, "--customer", customer)
        assert status == 2, err

    status, out, err = run("send", "mobile", "session.started", "--customer", customer, "--binary")
    assert status == 0, err
    switched = out.strip()
    [record] = await read(kafka_bootstrap, ["events.mobile"], about(customer))
    assert headers_of(record)["ce_id"] == switched.encode()
    assert record.value == b"{}"
    document = await applied(redis_url, customer, 2)  # 2: the refused one never counted
    assert document["current_channel"] == "mobile"
    [trigger] = await read(kafka_bootstrap, ["triggers.mobile"], about(customer))
    assert orjson.loads(trigger.value)["data"]["caused_by"] == switched

    status, out, err = run("context", customer)
    assert status == 0, err
    assert json.loads(out)["version"] == 2
    assert json.loads(out) == document
    assert out.startswith('{\n  "customer_id": ')  # pretty-printed

    status, out, err = run("context", f"{customer}-nobody")
    assert (status, out) == (1, "")
    assert (
        err == f"nextbest context: no context for '{customer}-nobody' in Redis (none, or expired)\n"
    )


async def test_context_by_another_identifier(
    worker: WorkerProcess, channels: Channels, kafka_bootstrap: str, redis_url: str, customer: str
) -> None:
    """Contract §10: nextbest:identity:<type>:<id> names the profile."""
    await channels.send("web", "session.started", customer)
    document = await applied(redis_url, customer, 1)
    phone = uuid.uuid4().hex  # hashed, as channel apps send it
    client: Redis = Redis.from_url(redis_url)
    try:
        await client.set(f"nextbest:identity:phone:{phone}", customer, ex=60)
    finally:
        await client.aclose()
    done = nextbest(
        "context", phone, "--type", "phone", bootstrap=kafka_bootstrap, redis_url=redis_url
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == document
    done = nextbest(
        "context", phone, "--type", "email", bootstrap=kafka_bootstrap, redis_url=redis_url
    )
    assert done.returncode == 1
    assert done.stderr == f"nextbest context: no profile has the email identifier '{phone}'\n"


async def test_tools_name_an_unreachable_service_in_one_line(
    kafka_bootstrap: str, redis_url: str
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    secret = f"redis://user:s3cret@{nowhere}/0"
    done = nextbest("context", "c-1", bootstrap=kafka_bootstrap, redis_url=secret)
    assert (done.returncode, done.stderr) == (
        1,
        "nextbest context: cannot read Redis (ConnectionError)\n",
    )
    done = nextbest("send", "web", "session.started", "--customer", "c-1",
                    bootstrap=nowhere, redis_url=redis_url)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == f"nextbest send: cannot reach Kafka at {nowhere} (KafkaConnectionError)\n"


async def start_tail(kafka_bootstrap: str, *args: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nextbest.cli", "tail", *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NEXTBEST_KAFKA_BOOTSTRAP": kafka_bootstrap},
    )  # fmt: skip
    assert process.stderr is not None
    status = await asyncio.wait_for(process.stderr.readline(), 60)
    assert status.startswith(b"tail: following "), status
    return process


async def next_line(process: asyncio.subprocess.Process, within: float = 30.0) -> str:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), within)
    return line.decode()


async def test_tail_follows_one_customers_triggers_and_stops_on_ctrl_c(
    worker: WorkerProcess, channels: Channels, kafka_bootstrap: str, redis_url: str, customer: str
) -> None:
    tail = await start_tail(kafka_bootstrap, "--channel", "mobile", "--customer", customer)
    try:
        cart = {"sku": "T1", "qty": 1, "price": 9.0}
        other = f"{customer}-other"
        for who in (other, customer):  # the other customer's trigger comes first
            await channels.send("web", "cart.item_added", who, cart)
            await applied(redis_url, who, 1)
            await channels.send("mobile", "session.started", who)
        line = await next_line(tail)
        expected = (
            rf"\S+Z mobile +{customer}  resume_cart \(channel_switch from web, priority 40\): "
        )
        assert re.fullmatch(expected + r".+\.\n", line), line
        tail.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(tail.wait(), 30) == 0
        assert tail.stderr is not None
        rest = (await tail.stderr.read()).decode()
        assert "Traceback" not in rest
        assert "KeyboardInterrupt" not in rest
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()

    # from the beginning, that trigger is there without anything new being sent
    args = ["--from-beginning", "--channel", "mobile", "--customer", customer, "--json"]
    done = nextbest("tail", *args, "--count", "1", bootstrap=kafka_bootstrap, redis_url=redis_url)
    assert done.returncode == 0, done.stderr
    trigger = json.loads(done.stdout)
    assert (trigger["subject"], trigger["data"]["action"]) == (customer, "resume_cart")


async def test_tail_deadletter_json_feeds_validate(
    worker: WorkerProcess, channels: Channels, kafka_bootstrap: str, redis_url: str, customer: str
) -> None:
    tail = await start_tail(kafka_bootstrap, "--deadletter", "--json", "--customer", customer,
                            "--reason", "invalid_data", "--count", "1")  # fmt: skip
    try:
        await channels.send_raw("web", b"{oops", key=customer)  # another reason: filtered out
        bad = cloudevent("cart.item_added", customer, {"sku": "A1", "qty": 1, "price": 1})
        value = orjson.dumps({**orjson.loads(bad), "data": {"sku": "A1", "qty": "two", "price": 1}})
        await channels.send_raw("web", value, key=customer, headers=[("trace", b"t-9")])
        line = await next_line(tail)
        assert await asyncio.wait_for(tail.wait(), 30) == 0  # --count 1
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()
    record = capture.read(line.encode())
    assert record is not None
    assert (record.topic, record.key, record.value) == (
        "events.deadletter",
        customer.encode(),
        value,
    )
    assert record.header("trace") == b"t-9"
    assert record.header("nextbest.error.reason") == b"invalid_data"
    again = nextbest(
        "validate", "-", stdin=line.encode(), bootstrap=kafka_bootstrap, redis_url=redis_url
    )
    assert again.returncode == 1
    assert (
        again.stdout
        == "line 1: invalid_data: data.qty of cart.item_added must be an integer >= 1\n"
    )

    readable = nextbest("tail", "--deadletter", "--from-beginning", "--customer", customer,
                        "--count", "2", bootstrap=kafka_bootstrap, redis_url=redis_url)  # fmt: skip
    assert readable.returncode == 0, readable.stderr
    first, second = readable.stdout.splitlines()
    where = rf"\S+Z events\.web\[\d+\]@\d+  key {customer}  "
    assert re.fullmatch(where + "invalid_json: .+", first)
    assert re.fullmatch(
        where + r"invalid_data: data\.qty of cart\.item_added must be an integer >= 1", second
    )
