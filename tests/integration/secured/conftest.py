"""The secured stack (``nextbest dev up --secure``) for the tests in this folder.

Kafka with SASL_SSL (SCRAM), a mutual-TLS listener and ACLs; Redis with TLS and
the worker's and the API's ACL users. It is started for the session unless it
runs already, and stopped at the end if it was started here; it cannot be
had, the tests fail saying why. Ports: ``NEXTBEST_DEV_SECURE_*``.

The processes under test get their role's settings with every secret as a
``*_FILE`` setting; the harness's own clients (channel apps, trigger readers,
the operator setting offsets) use the ``admin`` user.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nextbest import devstack
from nextbest.adapters.clients import kafka_client_options
from nextbest.api.widget_tokens import mint
from nextbest.devstack.secure import SecureKafka, SecureRedis, client_settings
from nextbest.settings import Settings
from tests.integration.harness import Channels, WorkerProcess

SERVICE_TOKEN = "secured-suite-service-token-7f3a"


@dataclass(frozen=True)
class Secured:
    kafka: SecureKafka
    redis: SecureRedis

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    def env(self, role: str) -> dict[str, str]:
        """``role``'s settings (worker, api, admin, limited, mtls), secrets as files."""
        return client_settings(self.kafka, self.redis, role)

    def settings(self, role: str, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            name.removeprefix("NEXTBEST_").lower(): value for name, value in self.env(role).items()
        }
        return Settings(**(values | overrides))

    def kafka_options(self, role: str = "admin") -> dict[str, Any]:
        return kafka_client_options(self.settings(role))

    def redis_url(self, user: str = "admin", password: str = "redis-admin") -> str:
        """A ``rediss://`` URL with the user's credentials and the CA: for the harness only."""
        secret = quote(self.kafka.material.password(password), safe="")
        ca = quote(str(self.kafka.material.ca), safe="/")
        return f"rediss://{user}:{secret}@localhost:{self.redis.port}/0?ssl_ca_certs={ca}"

    def secrets(self) -> list[str]:
        """Every password of the stack: none may appear in any log line."""
        folder = self.kafka.material.secrets
        return [path.read_text().strip() for path in sorted(folder.glob("*.password"))]


@pytest.fixture(scope="session")
def secured() -> Iterator[Secured]:
    stack = devstack.secure_stack()
    try:
        endpoints = stack.up()
    except devstack.DevStackError as error:
        pytest.fail(f"no secured Kafka/Redis for the tests: `nextbest dev up --secure`: {error}")
    try:
        yield Secured(stack.kafka, stack.redis)
    finally:
        if endpoints.started:
            stack.down(endpoints.started)


@pytest.fixture(scope="session")
def kafka_bootstrap(secured: Secured) -> str:
    """Here the secured broker (the autouse liveness check of tests/conftest.py uses it)."""
    return secured.bootstrap


@pytest.fixture(scope="session")
def redis_url(secured: Secured) -> str:
    return secured.redis_url()


@dataclass(frozen=True)
class WidgetKeys:
    private: Ed25519PrivateKey
    public_file: Path
    audience: str = "nextbest"

    def token(self, customer: str, ttl: float = 900, *, now: float | None = None) -> str:
        return mint(self.private, customer, ttl, audience=self.audience, now=now)


@pytest.fixture(scope="session")
def widget_keys(tmp_path_factory: pytest.TempPathFactory) -> WidgetKeys:
    folder = tmp_path_factory.mktemp("widget-keys")
    private = Ed25519PrivateKey.generate()
    public = folder / "widget.pub"
    public.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return WidgetKeys(private, public)


@pytest.fixture(scope="session")
def service_token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("api-tokens") / "tokens"
    path.write_text(f"some-other-token\n{SERVICE_TOKEN}\n")
    path.chmod(0o600)
    return path


def worker_process(
    secured: Secured, workdir: Path, role: str = "worker", **env: str
) -> WorkerProcess:
    return WorkerProcess(
        secured.bootstrap,
        secured.redis_url(),
        workdir,
        env=secured.env(role) | env,
        client_options=secured.kafka_options("admin"),
    )


def api_process(
    secured: Secured, workdir: Path, widget_keys: WidgetKeys, tokens: Path, **env: str
) -> WorkerProcess:
    return WorkerProcess(
        secured.bootstrap,
        secured.redis_url(),
        workdir,
        command="api",
        env=secured.env("api")
        | {
            "NEXTBEST_API_TOKENS_FILE": str(tokens),
            "NEXTBEST_WIDGET_TOKEN_PUBLIC_KEY_FILE": str(widget_keys.public_file),
            "NEXTBEST_API_KEEPALIVE": "1s",
        }
        | env,
    )


@pytest.fixture
async def channels(secured: Secured) -> AsyncIterator[Channels]:
    """The channel apps, as the admin user (the worker's user may not write events)."""
    async with Channels(secured.bootstrap, secured.kafka_options("admin")) as producer:
        yield producer
