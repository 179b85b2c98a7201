"""The Redis mirror's queue: newest document wins, lag counts from the oldest change."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry

from nextbest.adapters.projection import RedisMirror
from nextbest.metrics import Metrics


class FakePipeline:
    def __init__(self, calls: list[tuple[Any, ...]]) -> None:
        self.calls = calls

    async def __aenter__(self) -> FakePipeline:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def evalsha(self, *args: Any) -> None:
        self.calls.append(args)

    async def execute(self) -> list[int]:
        return [1 for _ in self.calls]


class FakeRedis:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def script_load(self, script: str) -> str:
        return "sha"

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self.calls)


def lag_sum(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("nextbest_context_mirror_lag_seconds_sum")
    return 0.0 if value is None else value


async def test_the_newest_document_is_written_with_the_oldest_changes_lag() -> None:
    metrics = Metrics(CollectorRegistry())
    redis = FakeRedis()
    mirror = RedisMirror(redis, metrics, ttl=timedelta(days=1), gather=0.0)  # type: ignore[arg-type]
    now = time.time()
    mirror.submit("c-1", 1, b'{"version":1}', applied_at=now - 1.0)
    mirror.submit("c-1", 2, b'{"version":2}', applied_at=now - 0.2)
    mirror.submit("c-1", 1, b'{"version":1}', applied_at=now)  # older version: ignored
    task = asyncio.create_task(mirror.run())
    try:
        assert await mirror.drained(within=2.0)
    finally:
        task.cancel()
    [call] = redis.calls
    assert call[0] == "sha"
    assert call[3:5] == (b'{"version":2}', 2)
    assert lag_sum(metrics) >= 1.0  # measured from the first change it carries
