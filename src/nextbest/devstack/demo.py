"""What ``make run`` shows: a short omnichannel journey and a live tail of triggers."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

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


async def send_journey(bootstrap: str, customer: str | None = None) -> str:
    """Walk one demo customer across web, mobile and the contact center."""
    customer = customer or f"demo-{uuid.uuid4().hex[:6]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
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


async def tail_triggers(bootstrap: str, channels: tuple[str, ...]) -> None:
    """Print every trigger as it arrives, one line each, until cancelled."""
    consumer = AIOKafkaConsumer(
        *(f"triggers.{c}" for c in channels),
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="latest",
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


async def show(bootstrap: str, channels: tuple[str, ...], customer: str | None = None) -> None:
    tail = asyncio.create_task(tail_triggers(bootstrap, channels))
    await asyncio.sleep(2.0)
    await send_journey(bootstrap, customer)
    await tail
