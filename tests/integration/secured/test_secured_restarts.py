"""Workers that start, stop and start again on the secured stack, alone on it.

No other worker runs while these do: two consumer groups would both apply the
events, and a second worker's Redis writes or triggers would hide a missing one.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import orjson
import pytest

from tests.integration.harness import Channels, about, applied, read
from tests.integration.secured.conftest import Secured, worker_process

pytestmark = pytest.mark.timeout(240)


def customer_id() -> str:
    return f"sec-{uuid.uuid4().hex[:12]}"


async def test_a_restarted_worker_recovers_its_table_over_sasl_ssl(
    secured: Secured, channels: Channels, tmp_path: Path
) -> None:
    worker = worker_process(secured, tmp_path)
    customer = customer_id()
    worker.start()
    try:
        await channels.send("web", "cart.item_added", customer, {"sku": "A1", "qty": 1, "price": 7})
        await channels.send("web", "product.viewed", customer, {"sku": "B2"})
        await applied(secured.redis_url(), customer, 2)
    finally:
        assert worker.stop() == 0, worker.tail()
    assert worker.data_dir is not None
    shutil.rmtree(worker.data_dir)  # a new machine: only the changelog in Kafka remains
    worker.start(data_dir=tmp_path / "fresh")
    try:
        await channels.send("mobile", "checkout.started", customer)
        document = await applied(secured.redis_url(), customer, 3)
        # the cart and the journey came back from the changelog, read with the worker's ACLs
        assert document["cart"]["items"] == [{"sku": "A1", "qty": 1, "price": 7.0}]
        assert [step["channel"] for step in document["journey"]] == ["web", "mobile"]
    finally:
        assert worker.stop() == 0, worker.tail()


async def test_a_worker_on_mutual_tls(secured: Secured, channels: Channels, tmp_path: Path) -> None:
    """The client certificate (encrypted key, its password from a file) is the user."""
    settings = secured.env("mtls")
    assert settings["NEXTBEST_KAFKA_SECURITY_PROTOCOL"] == "SSL"
    worker = worker_process(secured, tmp_path, role="mtls")
    worker.start()
    try:
        customer = customer_id()
        await channels.send("store", "product.scanned", customer, {"sku": "TV-1"})
        records = await read(
            secured.bootstrap,
            ["triggers.store"],
            about(customer),
            client_options=secured.kafka_options("admin"),
        )
        [record] = records
        assert orjson.loads(record.value)["data"]["action"] == "price_match"
    finally:
        assert worker.stop() == 0, worker.tail()
