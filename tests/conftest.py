"""Real Kafka and Redis for the integration and end-to-end tiers; tiers as markers.

Where the services come from, in order:

1. ``NEXTBEST_KAFKA_BOOTSTRAP`` / ``NEXTBEST_REDIS_URL`` when set (``make test``
   sets them for the stack it brought up);
2. testcontainers, when a Docker engine answers;
3. the local stack of ``nextbest dev up`` (started here when not running, and
   then stopped at the end of the session).

Before an address is handed out it must answer (a Kafka metadata request, a
Redis PING). A service that cannot be had fails the tests that need it, saying
which and where. Nothing is skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from nextbest.devstack.probes import kafka_problem

TIERS = ("unit", "integration", "e2e")
NEEDS_SERVICES = ("integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier: the name of its folder under tests/."""
    root = Path(__file__).parent
    for item in items:
        path = Path(str(item.path))
        if path.is_relative_to(root) and path.relative_to(root).parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, path.relative_to(root).parts[0]))


@dataclass(frozen=True)
class Services:
    kafka_bootstrap: str
    redis_url: str
    origin: str


def _redis_problem(url: str) -> str | None:
    """None when Redis at ``url`` answers PING within a few seconds, else why not."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
    except Exception as error:  # any failure is the answer
        return f"{type(error).__name__}: {error}"
    finally:
        client.close()
    return None


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _from_docker(stop: list[Callable[[], object]]) -> Services:
    try:
        from testcontainers.community.kafka import KafkaContainer
        from testcontainers.community.redis import RedisContainer
    except ImportError:  # testcontainers < 4.13
        from testcontainers.kafka import KafkaContainer
        from testcontainers.redis import RedisContainer

    # testcontainers' KafkaContainer drives Confluent's image; cp-kafka 7.9 is Kafka 3.9.
    kafka = (
        KafkaContainer("confluentinc/cp-kafka:7.9.0")
        .with_kraft()
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
    )
    redis_container = RedisContainer("redis:7")
    kafka.start()
    stop.append(kafka.stop)
    redis_container.start()
    stop.append(redis_container.stop)
    host = redis_container.get_container_host_ip()
    port = redis_container.get_exposed_port(6379)
    return Services(kafka.get_bootstrap_server(), f"redis://{host}:{port}/0", "Docker")


def _from_dev_stack(stop: list[Callable[[], object]]) -> Services:
    from nextbest import devstack

    try:
        endpoints = devstack.up()
    except devstack.DevStackError as error:
        pytest.fail(f"no Kafka/Redis for the tests: `nextbest dev up` failed: {error}")
    if endpoints.started:
        stop.append(lambda: devstack.down(endpoints.started))
    return Services(endpoints.kafka_bootstrap, endpoints.redis_url, "nextbest dev up")


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    bootstrap = os.environ.get("NEXTBEST_KAFKA_BOOTSTRAP")
    redis_url = os.environ.get("NEXTBEST_REDIS_URL")
    stop: list[Callable[[], object]] = []
    try:
        if bootstrap and redis_url:
            found = Services(bootstrap, redis_url, "the environment")
        else:
            found = _from_docker(stop) if _docker_answers() else _from_dev_stack(stop)
            found = Services(
                bootstrap or found.kafka_bootstrap, redis_url or found.redis_url, found.origin
            )
        problem = kafka_problem(found.kafka_bootstrap, within=10)
        if problem:
            pytest.fail(
                f"Kafka at {found.kafka_bootstrap} (from {found.origin}) is unreachable: {problem}"
            )
        problem = _redis_problem(found.redis_url)
        if problem:
            pytest.fail(
                f"Redis at {found.redis_url} (from {found.origin}) is unreachable: {problem}"
            )
        yield found
    finally:
        for halt in reversed(stop):
            with contextlib.suppress(Exception):
                halt()


@pytest.fixture(scope="session")
def kafka_bootstrap(services: Services) -> str:
    return services.kafka_bootstrap


@pytest.fixture(scope="session")
def redis_url(services: Services) -> str:
    return services.redis_url


def _broker_answers(bootstrap: str, within: float = 2.0) -> str | None:
    """None when some broker of ``bootstrap`` accepts a TCP connection, else the error."""
    problem = "no address"
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), within):
                return None
        except (OSError, ValueError) as error:
            problem = f"{type(error).__name__}: {error}"
    return problem


def _needs_services(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(tier) for tier in NEEDS_SERVICES)


CHECKED_CONTEXTS: list[tuple[int, int]] = []  # (checked, broken) per session


@pytest.fixture(scope="session")
def _contexts_in_redis_conform(redis_url: str) -> Iterator[None]:
    """At the end of the session, every context the session's workers left in Redis
    (``nextbest:context:*`` written since it began) matches context.json."""
    import redis

    from tests import contract

    began = datetime.now(UTC) - timedelta(seconds=5)
    yield
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    problems: list[str] = []
    checked = broken = 0
    try:
        keys = list(client.scan_iter(match="nextbest:context:*", count=1000))
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            for key, raw in zip(chunk, client.mget(chunk), strict=True):
                if raw is None:  # expired or erased meanwhile
                    continue
                document = orjson.loads(raw)
                updated = document.get("updated_at") if isinstance(document, dict) else None
                if isinstance(updated, str) and datetime.fromisoformat(updated) < began:
                    continue  # an earlier session's
                checked += 1
                found = contract.errors("context.json", document)
                broken += bool(found)
                problems += [f"{key.decode()}: {problem}" for problem in found]
    finally:
        client.close()
    CHECKED_CONTEXTS.append((checked, broken))
    assert not problems, "contexts in Redis that break context.json:\n" + "\n".join(problems[:20])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for checked, broken in CHECKED_CONTEXTS:
        terminalreporter.write_line(
            f"contract: {checked} context documents in Redis checked against context.json, "
            f"{broken} broke it"
        )


@pytest.fixture(autouse=True)
def _broker_still_answers(request: pytest.FixtureRequest) -> None:
    """Integration and e2e tests: fail fast, saying so, when Kafka went away mid-run."""
    if not _needs_services(request.node):
        return
    request.getfixturevalue("_contexts_in_redis_conform")
    bootstrap: str = request.getfixturevalue("kafka_bootstrap")
    problem = _broker_answers(bootstrap)
    if problem:
        pytest.fail(f"Kafka at {bootstrap} stopped answering ({problem})", pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """When a test that needs the broker fails, say so if the broker is gone too."""
    report = yield
    if report.failed and call.when == "call" and _needs_services(item):
        bootstrap = getattr(item, "funcargs", {}).get("kafka_bootstrap")
        problem = _broker_answers(bootstrap) if isinstance(bootstrap, str) else None
        if problem:
            report.sections.append(
                ("nextbest", f"Kafka at {bootstrap} stopped answering ({problem})")
            )
    return report


@pytest.fixture
def unique_name() -> str:
    """A name no other test uses: for topics, groups, customers."""
    return f"t-{uuid.uuid4().hex[:12]}"
