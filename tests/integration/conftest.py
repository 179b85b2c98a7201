"""Fixtures shared by the integration modules."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.integration import logscan
from tests.integration.harness import PROCESS_LOGS, SENT_SUBJECTS, Channels, WorkerProcess


@pytest.fixture(scope="session", autouse=True)
def _no_customer_id_in_any_process_log() -> Iterator[None]:
    """After the whole tier: no log line at INFO or above, of any worker or API process
    a test started, names a customer id a test sent (contract §8).

    The processes run at INFO here, the level production runs at; the secured
    suite's test_personal_data runs a worker and an API at DEBUG and checks
    which level each line is logged at.
    """
    yield
    found = logscan.findings(PROCESS_LOGS, SENT_SUBJECTS, at_least="INFO")
    assert not found, (
        f"customer ids in {len(found)} log line(s) at INFO or above:\n" + logscan.report(found)
    )


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
