"""What ``make run`` shows: a short omnichannel journey and a live tail of triggers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

JOURNEY: tuple[tuple[str, str, dict[str, object]], ...] = (
    ("web", "consent.updated", {"email": True, "mobile": True}),
    ("web", "product.viewed", {"sku": "SHOE-42", "price": 89.0}),
    ("web", "cart.item_added", {"sku": "SHOE-42", "qty": 1, "price": 89.0}),
    ("mobile", "session.started", {}),
    ("mobile", "checkout.started", {}),
    ("mobile", "payment.failed", {"reason": "card declined"}),
    ("contact-center", "call.started", {"reason": "payment"}),
)


async def send_journey(
    bootstrap: str, customer: str | None = None, client_options: Mapping[str, Any] | None = None
) -> str:
    """Walk one demo customer across web, mobile and the contact center.

    ``client_options``: TLS/SASL, from ``nextbest.adapters.clients.kafka_client_options``.
    """
    customer = customer or f"demo-{uuid.uuid4().hex[:6]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **(client_options or {}))
    await producer.start()
    try:
        for channel, kind, data in JOURNEY:
            event = {
                "specversion": "1.0",
                "id": uuid.uuid4().hex,
                "source": f"/demo/{channel}",
                "type": kind,
                "time": datetime.now(UTC).isoformat(),
                "subject": customer,
                "data": data,
            }
            await producer.send_and_wait(
                f"events.{channel}", orjson.dumps(event), key=customer.encode()
            )
            await asyncio.sleep(0.5)
    finally:
        await producer.stop()
    return customer


async def tail_triggers(
    bootstrap: str, channels: tuple[str, ...], client_options: Mapping[str, Any] | None = None
) -> None:
    """Print every trigger as it arrives, one line each, until cancelled."""
    consumer = AIOKafkaConsumer(
        *(f"triggers.{c}" for c in channels),
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="latest",
        **(client_options or {}),
    )
    await consumer.start()
    try:
        async for record in consumer:
            trigger = orjson.loads(record.value)
            data = trigger["data"]
            print(
                f"trigger -> {trigger['channel']:<15} {data['action']:<17} "
                f"({data['signal']}) {data['reason']}",
                flush=True,
            )
    finally:
        await consumer.stop()


async def show(
    bootstrap: str,
    channels: tuple[str, ...],
    customer: str | None = None,
    client_options: Mapping[str, Any] | None = None,
) -> None:
    tail = asyncio.create_task(tail_triggers(bootstrap, channels, client_options))
    await asyncio.sleep(2.0)
    await send_journey(bootstrap, customer, client_options)
    await tail
