"""Fixtures shared by the integration modules."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.integration.harness import Channels, WorkerProcess


@pytest.fixture(scope="module")
def worker_env() -> dict[str, str]:
    """Extra settings of the module's worker; a module overrides this fixture to change them."""
    return {}


@pytest.fixture(scope="module")
def worker(
    kafka_bootstrap: str,
    redis_url: str,
    worker_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerProcess]:
    """One worker for the whole module, under a consumer group of its own."""
    process = WorkerProcess(
        kafka_bootstrap, redis_url, tmp_path_factory.mktemp("worker"), env=worker_env
    )
    process.start()
    yield process
    assert process.stop() == 0, process.tail()


@pytest.fixture
async def channels(kafka_bootstrap: str) -> AsyncIterator[Channels]:
    async with Channels(kafka_bootstrap) as producer:
        yield producer
