"""``NEXTBEST_PROCESSING_GUARANTEE=exactly_once`` on the real broker.

Each batch's triggers, dead letters, forwards and changelog records go out in one
Kafka transaction with the offsets it consumed (``adapters/outputs.py``). A worker
killed with a transaction open (every record of it acknowledged) leaves records
that a ``read_committed`` reader never sees; restarted, it aborts that
transaction, reads the batch again and commits it once.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from bench.soak.check import read_all

from nextbest.core.envelope import DEFAULT_CHANNELS
from nextbest.oracle import expect
from tests.integration.harness import WorkerProcess
from tests.integration.test_batches import (
    ENGINE,
    assert_as_the_oracle_says,
    dies_of,
    send_journeys,
    until_applied,
)

pytestmark = pytest.mark.timeout(300)
EXACTLY_ONCE = {"NEXTBEST_PROCESSING_GUARANTEE": "exactly_once"}


async def trigger_ids(bootstrap: str, customers: set[str], *, committed_only: bool) -> Counter[str]:
    topics = [f"triggers.{c}" for c in DEFAULT_CHANNELS]
    records = await read_all(bootstrap, topics, committed_only=committed_only)
    return Counter(
        orjson.loads(r.value)["id"]
        for r in records
        if r.key is not None and r.value is not None and r.key.decode() in customers
    )


async def test_a_worker_killed_in_a_transaction_leaves_each_trigger_once(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    worker = WorkerProcess(kafka_bootstrap, redis_url, tmp_path, env=EXACTLY_ONCE)
    worker.start()  # the group starts at the end of the topics: only what follows counts
    assert worker.stop() == 0, worker.tail()
    events = await send_journeys(kafka_bootstrap, 3000, seed=21)
    expected = expect(ENGINE, events, until=datetime.now(UTC))
    await dies_of(worker, {"NEXTBEST_FAULT_DIE_IN_TRANSACTION": "2"})  # in a transaction
    worker.env = EXACTLY_ONCE
    worker.start(data_dir=worker.data_dir)
    try:
        await until_applied(worker, expected, within=120)
    finally:
        assert worker.stop() == 0, worker.tail()
    assert worker.data_dir is not None
    # every state as the oracle says, every expected trigger present
    await assert_as_the_oracle_says(kafka_bootstrap, worker.data_dir, events, expected)

    customers = set(expected.states)
    everything = await trigger_ids(kafka_bootstrap, customers, committed_only=False)
    committed = await trigger_ids(kafka_bootstrap, customers, committed_only=True)
    # the killed transaction's triggers are in the log, sent again after the restart ...
    assert any(n > 1 for n in everything.values()), "the fault struck no transaction"
    # ... and a read_committed reader sees every trigger once
    assert set(expected.triggers) <= set(committed)  # (deadlines fall due meanwhile, too)
    assert [i for i, n in committed.items() if n > 1] == []
