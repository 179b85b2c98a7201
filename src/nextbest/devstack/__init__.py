"""Local Kafka and Redis for development and tests, without Docker: ``nextbest dev``.

``up`` fetches Apache Kafka's jars once from Maven Central (``pom.xml`` here
pins the version), starts a single-node KRaft broker and a Redis server on
loopback, and waits until both really answer. ``down`` stops only what ``up``
started (by pid file, checked against the process's command line). State lives
under ``$NEXTBEST_DEV_DIR`` (default ``./.dev``); ports come from
``NEXTBEST_DEV_KAFKA_PORT`` (9092), ``NEXTBEST_DEV_CONTROLLER_PORT`` (9093) and
``NEXTBEST_DEV_REDIS_PORT`` (6379).

With ``--secure`` (``stack(secure=True)``) the same commands run the secured
stack of :mod:`nextbest.devstack.secure` under ``<dev dir>/secure``, on
``NEXTBEST_DEV_SECURE_KAFKA_PORT`` (9192, SASL_SSL),
``NEXTBEST_DEV_SECURE_MTLS_PORT`` (9194, mutual TLS),
``NEXTBEST_DEV_SECURE_CONTROLLER_PORT`` (9193) and
``NEXTBEST_DEV_SECURE_REDIS_PORT`` (6479, TLS): it runs beside the plain one.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from nextbest.devstack.kafka import Kafka
from nextbest.devstack.processes import DevStackError, exclusive, say
from nextbest.devstack.redis import Redis
from nextbest.devstack.secure import Material, SecureKafka, SecureRedis, write_env_files

__all__ = [
    "DevStack",
    "DevStackError",
    "Endpoints",
    "SecureDevStack",
    "down",
    "run",
    "secure_stack",
    "stack",
    "status",
    "up",
]

SERVICES = ("kafka", "redis")


@dataclass(frozen=True)
class Endpoints:
    """Where the running stack answers, and which services the ``up`` call started."""

    kafka_bootstrap: str
    redis_url: str
    started: tuple[str, ...]


@dataclass(frozen=True)
class DevStack:
    root: Path
    kafka: Kafka
    redis: Redis

    def up(self) -> Endpoints:
        """Start what is not running; on failure stop what this call started, then raise."""
        with exclusive(self.root / "lock"):
            self.kafka.check_ports()
            self.redis.check_ports()
            started: list[str] = []
            ran = self._running()
            try:
                if self.kafka.up():
                    started.append("kafka")
                if self.redis.up():
                    started.append("redis")
            except BaseException:
                # also a service a Ctrl-C caught between its start and up()'s return
                self._down([name for name in self._running() if name not in ran])
                raise
            return Endpoints(self.kafka.bootstrap, self.redis.url, tuple(started))

    def _running(self) -> list[str]:
        """The services of ours that run now."""
        services = {"kafka": self.kafka.service, "redis": self.redis.service}
        return [name for name in SERVICES if services[name].pid() is not None]

    def down(self, only: Collection[str] = SERVICES) -> None:
        with exclusive(self.root / "lock"):
            self._down(only)

    def _down(self, only: Collection[str]) -> None:
        if "redis" in only:
            self.redis.down()
        if "kafka" in only:
            self.kafka.down()

    def status(self) -> bool:
        kafka, redis = self.kafka.status(), self.redis.status()
        return kafka and redis


@dataclass(frozen=True)
class SecureDevStack(DevStack):
    """The secured stack: certificates first, settings files for each role after."""

    kafka: SecureKafka
    redis: SecureRedis

    @property
    def material(self) -> Material:
        return self.kafka.material

    def up(self) -> Endpoints:
        with exclusive(self.root / "lock"):
            # a new CA only while neither server runs: a running one keeps its certificate
            stopped = self.kafka.service.pid() is None and self.redis.service.pid() is None
            if stopped or not self.material.complete():
                self.kafka.check_ports()
                self.redis.check_ports()
                self.material.make()
        endpoints = super().up()
        write_env_files(self.kafka, self.redis)
        say(
            f"settings for each role (secrets as *_FILE): {self.material.root}/"
            "{worker,api,admin,limited,mtls}.env (`set -a; . <file>; set +a`)"
        )
        return endpoints


def _port(name: str, default: int) -> int:
    value = os.environ.get(name) or str(default)
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise DevStackError(f"invalid setting {name}: {value!r} is not a port")
    return int(value)


def _dev_dir() -> Path:
    return Path(os.environ.get("NEXTBEST_DEV_DIR") or Path.cwd() / ".dev").absolute()


def secure_stack() -> SecureDevStack:
    """The secured dev stack as the environment configures it."""
    root = _dev_dir() / "secure"
    material = Material(root)
    return SecureDevStack(
        root,
        SecureKafka(
            root,
            _port("NEXTBEST_DEV_SECURE_KAFKA_PORT", 9192),
            _port("NEXTBEST_DEV_SECURE_CONTROLLER_PORT", 9193),
            _port("NEXTBEST_DEV_SECURE_MTLS_PORT", 9194),
            material,
        ),
        SecureRedis(root, _port("NEXTBEST_DEV_SECURE_REDIS_PORT", 6479), material),
    )


def stack(*, secure: bool = False) -> DevStack:
    """The dev stack (or with ``secure`` the secured one) as the environment configures it."""
    if secure:
        return secure_stack()
    root = _dev_dir()
    return DevStack(
        root,
        Kafka(
            root,
            _port("NEXTBEST_DEV_KAFKA_PORT", 9092),
            _port("NEXTBEST_DEV_CONTROLLER_PORT", 9093),
        ),
        Redis(root, _port("NEXTBEST_DEV_REDIS_PORT", 6379)),
    )


def up(*, secure: bool = False) -> Endpoints:
    """Start whatever of Kafka and Redis is not running; raise :class:`DevStackError`."""
    return stack(secure=secure).up()


def down(only: Collection[str] = SERVICES, *, secure: bool = False) -> None:
    """Stop the named services (default both), if ``up`` started them."""
    stack(secure=secure).down(only)


def status(*, secure: bool = False) -> bool:
    """Print each service's state; True when both run."""
    return stack(secure=secure).status()


def run(action: str, *, secure: bool = False) -> int:
    """``nextbest dev up|down|status [--secure]``: 0 done, 1 failed, 3 (status) not both running."""
    try:
        if action == "up":
            up(secure=secure)
            return 0
        if action == "down":
            down(secure=secure)
            return 0
        if action == "status":
            return 0 if status(secure=secure) else 3
        raise DevStackError(f"unknown action {action!r} (up, down, status)")
    except DevStackError as error:
        say(f"error: {error}")
        return 1
    except KeyboardInterrupt:
        say("interrupted (what this call had started is stopped)")
        return 130
