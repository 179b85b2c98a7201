"""nextbest simulate against the real broker: the worker applies the journeys, DLQs the rest."""

from __future__ import annotations

import random
from itertools import islice

import pytest
from redis.asyncio import Redis

from nextbest.core.envelope import DEFAULT_CHANNELS
from nextbest.simulator.journeys import Journeys
from nextbest.simulator.sender import simulate
from tests.integration.harness import WorkerProcess, eventually, read

pytestmark = pytest.mark.timeout(180)


async def test_simulated_journeys_reach_the_worker(
    worker: WorkerProcess, kafka_bootstrap: str, redis_url: str
) -> None:
    seed = random.randrange(1, 10**9)
    journeys = Journeys(customers=200, seed=seed, channels=DEFAULT_CHANNELS, malformed=0.05)
    lines: list[str] = []
    progress = await simulate(
        journeys, bootstrap=kafka_bootstrap, rate=400.0, count=600, report=lines.append
    )
    assert progress.sent == 600
    assert progress.acked == 600
    assert progress.errors == 0
    assert lines[-1].startswith("simulate:")

    # the same seed again tells which customers sent at least one valid event
    replay = Journeys(customers=200, seed=seed, channels=DEFAULT_CHANNELS, malformed=0.05)
    events = list(islice(replay.events(400.0), 600))
    valid_customers = {e.customer for e in events if not e.malformed}
    assert progress.malformed == sum(e.malformed for e in events) > 0

    client: Redis = Redis.from_url(redis_url)
    try:

        async def mirrored() -> bool:
            keys = [f"nextbest:context:{c}" for c in valid_customers]
            return bool(await client.exists(*keys) == len(keys))

        await eventually(mirrored, within=60, every=0.5)
    finally:
        await client.aclose()
    prefix = f"sim-{seed}-".encode()
    letters = await read(
        kafka_bootstrap,
        ["events.deadletter"],
        lambda r: r.key is not None and r.key.startswith(prefix),
        count=progress.malformed,
        within=60,
        settle=1.0,
    )
    assert len(letters) == progress.malformed
