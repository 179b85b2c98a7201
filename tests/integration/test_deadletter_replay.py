"""``nextbest deadletter replay`` on the real broker with a real worker.

The fix that makes a dead letter valid is a real one: the worker ran with
``NEXTBEST_MAX_EVENT_BYTES=1024`` when a channel started sending richer product
events (1.5 KB), so they were dead-lettered as ``too_large``; the operator raises
the limit, restarts the worker and replays. An ``invalid_data`` record replayed
beside it fails again: it lands in the dead-letter topic again, marked, and the
next replay leaves it alone.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from nextbest.tools.deadletter import place
from tests.integration.harness import (
    Channels,
    WorkerProcess,
    applied,
    cloudevent,
    eventually,
    headers_of,
    nextbest,
    read,
)

pytestmark = pytest.mark.timeout(300)


def moment(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds")


async def test_replay_after_the_fix_and_never_in_a_loop(
    channels: Channels, kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    worker = WorkerProcess(
        kafka_bootstrap, redis_url, tmp_path, env={"NEXTBEST_MAX_EVENT_BYTES": "1024"}
    )
    worker.start()
    try:
        await _replay_scenario(worker, channels, kafka_bootstrap, redis_url)
    finally:
        assert worker.stop() == 0, worker.tail()


async def _replay_scenario(
    worker: WorkerProcess, channels: Channels, kafka_bootstrap: str, redis_url: str
) -> None:
    rich, broken = f"c-{uuid.uuid4().hex[:12]}", f"c-{uuid.uuid4().hex[:12]}"
    began = datetime.now(UTC) - timedelta(seconds=1)
    url = "/p/" + "long-product-path-" * 80  # a richer producer: 1.5 KB events
    await channels.send("web", "product.viewed", rich, {"sku": "RICH-1", "url": url})
    bad = cloudevent("cart.item_added", broken, {"sku": "A1", "qty": 1, "price": 1})
    bad = orjson.dumps({**orjson.loads(bad), "data": {"sku": "A1", "qty": 0, "price": 1}})
    await channels.send_raw("web", bad, key=broken, headers=[("trace", b"t-1")])

    async def letters_of(who: str, count: int, settle: float = 1.0) -> list[Any]:
        return await read(
            kafka_bootstrap, ["events.deadletter"], lambda r: r.key == who.encode(),
            count=count, settle=settle, within=40,
        )  # fmt: skip

    [too_large] = await letters_of(rich, 1)
    [invalid] = await letters_of(broken, 1)
    assert headers_of(too_large)["nextbest.error.reason"] == b"too_large"
    assert headers_of(invalid)["nextbest.error.reason"] == b"invalid_data"
    first = {rich: place(too_large.partition, too_large.offset),
             broken: place(invalid.partition, invalid.offset)}  # fmt: skip
    filters = ["--since", moment(began), "--customer", rich, "--customer", broken]

    def replay(*args: str) -> tuple[int, list[str]]:
        done = nextbest("deadletter", "replay", *filters, *args,
                        bootstrap=kafka_bootstrap, redis_url=redis_url)  # fmt: skip
        assert "Traceback" not in done.stderr, done.stderr
        return done.returncode, done.stdout.splitlines()

    # a dry run says what it would send, and sends nothing
    status, lines = replay("--dry-run")
    assert status == 0
    assert sorted(lines[:-1]) == sorted([
        f"would send {first[rich]} -> events.web (too_large)",
        f"would send {first[broken]} -> events.web (invalid_data)",
    ])  # fmt: skip
    assert re.fullmatch(
        r"replay: 2 would be sent \(dry run: nothing was sent\), 0 not matching the filters; "
        r"\d+ dead letters read",
        lines[-1],
    ), lines[-1]
    assert len(await letters_of(broken, 1, settle=2.0)) == 1

    # the fix: a limit that fits the richer events
    assert worker.stop() == 0, worker.tail()
    worker.env = {"NEXTBEST_MAX_EVENT_BYTES": "65536"}
    worker.start()

    status, lines = replay()
    assert status == 0
    assert sorted(lines[:-1]) == sorted([
        f"sent {first[rich]} -> events.web (too_large)",
        f"sent {first[broken]} -> events.web (invalid_data)",
    ])  # fmt: skip
    assert lines[-1].startswith("replay: 2 sent, 0 not matching the filters; ")

    document = await applied(redis_url, rich, 1)  # the rich event now counts
    assert document["recent_products"] == ["RICH-1"]
    # the broken one is rejected again, marked as a replay of its first dead letter
    _, again = await letters_of(broken, 2)
    headers = headers_of(again)
    assert again.value == bad
    assert headers["nextbest.error.reason"] == b"invalid_data"
    assert headers["nextbest.replay.from"] == first[broken].encode()
    assert headers["trace"] == b"t-1"  # the producer's headers travel along
    assert [k for k, _ in again.headers].count("nextbest.error.reason") == 1
    second = place(again.partition, again.offset)

    # the next replay leaves the failed one alone, both its dead letters
    duplicates = worker.metric("nextbest_events_duplicate_total", channel="web")
    status, lines = replay()
    assert status == 0
    assert sorted(lines[:-1]) == sorted([
        f"sent {first[rich]} -> events.web (too_large)",
        f"skipped {first[broken]}: its replay was rejected again (--again sends it anyway)",
        f"skipped {second}: it is the replay of {first[broken]}, rejected again "
        "(--again sends it anyway)",
    ])  # fmt: skip
    assert lines[-1].startswith(
        "replay: 1 sent, 2 skipped (already replayed and rejected again; --again sends it anyway), "
    )
    # ... and the applied one, sent twice as the README says, counts once
    await eventually(
        lambda: worker.metric("nextbest_events_duplicate_total", channel="web") > duplicates,
        within=20,
    )
    assert (await applied(redis_url, rich, 1))["version"] == 1
    assert len(await letters_of(broken, 2, settle=2.0)) == 2

    # --again sends a failed replay once more, on request; it fails again, marked again
    filters[1] = moment(datetime.fromtimestamp(again.timestamp / 1000, UTC))
    status, lines = replay("--again")
    assert status == 0
    assert lines[:-1] == [f"sent {second} -> events.web (invalid_data)"]
    *_, third = await letters_of(broken, 3)
    assert headers_of(third)["nextbest.replay.from"] == second.encode()


async def test_replay_usage_errors(kafka_bootstrap: str, redis_url: str) -> None:
    for args in (
        ["--since", "yesterday"],
        ["--until", "2026-11-22T10:00:00"],
        ["--channel", "moon"],
    ):
        done = nextbest(
            "deadletter", "replay", *args, bootstrap=kafka_bootstrap, redis_url=redis_url
        )
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith("nextbest deadletter replay: "), done.stderr
