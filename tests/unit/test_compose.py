"""docker-compose.yml and the Dockerfile agree with the settings and with each other.

Docker is not needed (nor run) here: the files are read as data.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from nextbest.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def settings_fields() -> set[str]:
    return {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}


def test_services_and_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {
        "kafka", "redis", "worker", "api", "simulator", "prometheus", "grafana",
    }  # fmt: skip
    assert services["kafka"]["image"] == "apache/kafka:3.9.1"
    assert services["redis"]["image"] == "redis:7"
    assert services["worker"]["build"] == "."


def test_every_nextbest_variable_is_a_setting(compose: dict[str, Any], dockerfile: str) -> None:
    names = set(compose["services"]["worker"]["environment"])
    names |= set(compose["services"]["api"]["environment"])
    names |= set(compose["services"]["simulator"]["environment"])
    names |= set(re.findall(r"\b(NEXTBEST_[A-Z0-9_]+)=", dockerfile))
    assert {"NEXTBEST_KAFKA_BOOTSTRAP", "NEXTBEST_REDIS_URL", "NEXTBEST_DATA_DIR"} <= names
    assert names <= settings_fields()


def test_the_worker_finds_kafka_and_redis_on_the_network(compose: dict[str, Any]) -> None:
    services = compose["services"]
    environment = services["worker"]["environment"]
    assert environment["NEXTBEST_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert environment["NEXTBEST_REDIS_URL"] == "redis://redis:6379/0"
    kafka = services["kafka"]["environment"]
    assert "INTERNAL://kafka:9092" in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert int(kafka["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"]) == 1
    assert int(kafka["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"]) == 1


def test_the_worker_waits_for_healthy_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("kafka", "redis", "worker"):
        assert services[name]["healthcheck"]["test"], name
    assert services["worker"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }


def test_the_image_runs_the_worker_unprivileged(dockerfile: str) -> None:
    stages = re.findall(r"^FROM (\S+)", dockerfile, flags=re.MULTILINE)
    assert stages == ["python:3.11-slim", "python:3.11-slim"]
    assert re.search(r"^USER 10001", dockerfile, flags=re.MULTILINE)
    assert "NEXTBEST_DATA_DIR=/var/lib/nextbest" in dockerfile
    assert re.search(r"^VOLUME /var/lib/nextbest$", dockerfile, flags=re.MULTILINE)
    entrypoint = re.search(r"^ENTRYPOINT (.+)$", dockerfile, flags=re.MULTILINE)
    command = re.search(r"^CMD (.+)$", dockerfile, flags=re.MULTILINE)
    assert entrypoint
    assert json.loads(entrypoint.group(1)) == ["nextbest"]
    assert command
    assert json.loads(command.group(1)) == ["worker"]


def test_every_service_waits_for_what_it_needs_to_be_healthy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
        for needed, condition in service.get("depends_on", {}).items():
            assert needed in services, (name, needed)
            assert condition == {"condition": "service_healthy"}, (name, needed)
    assert set(services["api"]["depends_on"]) == {"redis", "worker"}


def test_the_api_runs_from_the_worker_image_on_its_port(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert api["image"] == compose["services"]["worker"]["image"]
    assert api["command"] == ["api"]
    port = int(api["environment"]["NEXTBEST_API_PORT"])
    assert port == Settings.model_fields["api_port"].default
    assert f"{port}:{port}" in api["ports"]


def test_monitoring_is_provisioned_from_deploy(compose: dict[str, Any]) -> None:
    mounts = [
        volume.split(":")[0]
        for name in ("prometheus", "grafana")
        for volume in compose["services"][name]["volumes"]
    ]
    for mount in mounts:
        assert (ROOT / mount).exists(), mount
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {
        target
        for job in scrape["scrape_configs"]
        for config in job["static_configs"]
        for target in config["targets"]
    }
    worker_port = Settings.model_fields["worker_port"].default
    assert targets == {f"worker:{worker_port}", "api:8080"}


def test_the_simulator_is_an_optional_profile(compose: dict[str, Any]) -> None:
    from nextbest.cli import _parser

    simulator = compose["services"]["simulator"]
    assert simulator["profiles"] == ["simulator"]
    assert simulator["image"] == compose["services"]["worker"]["image"]
    parsed = _parser().parse_args(simulator["command"])  # the CLI accepts these arguments
    assert (parsed.command, parsed.rate, parsed.customers) == ("simulate", 50.0, 5000)
