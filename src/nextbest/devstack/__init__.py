"""Local Kafka and Redis for development and tests, without Docker: ``nextbest dev``.

``up`` fetches Apache Kafka's jars once from Maven Central (``pom.xml`` here
pins the version), starts a single-node KRaft broker and a Redis server on
loopback, and waits until both really answer. ``down`` stops only what ``up``
started (by pid file, checked against the process's command line). State lives
under ``$NEXTBEST_DEV_DIR`` (default ``./.dev``); ports come from
``NEXTBEST_DEV_KAFKA_PORT`` (9092), ``NEXTBEST_DEV_CONTROLLER_PORT`` (9093) and
``NEXTBEST_DEV_REDIS_PORT`` (6379).
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from nextbest.devstack.kafka import Kafka
from nextbest.devstack.processes import DevStackError, exclusive, say
from nextbest.devstack.redis import Redis

__all__ = ["DevStack", "DevStackError", "Endpoints", "down", "run", "stack", "status", "up"]

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
            try:
                if self.kafka.up():
                    started.append("kafka")
                if self.redis.up():
                    started.append("redis")
            except BaseException:
                self._down(started)
                raise
            return Endpoints(self.kafka.bootstrap, self.redis.url, tuple(started))

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


def _port(name: str, default: int) -> int:
    value = os.environ.get(name) or str(default)
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise DevStackError(f"invalid setting {name}: {value!r} is not a port")
    return int(value)


def stack() -> DevStack:
    """The dev stack as the environment configures it."""
    root = Path(os.environ.get("NEXTBEST_DEV_DIR") or Path.cwd() / ".dev").absolute()
    return DevStack(
        root,
        Kafka(
            root,
            _port("NEXTBEST_DEV_KAFKA_PORT", 9092),
            _port("NEXTBEST_DEV_CONTROLLER_PORT", 9093),
        ),
        Redis(root, _port("NEXTBEST_DEV_REDIS_PORT", 6379)),
    )


def up() -> Endpoints:
    """Start whatever of Kafka and Redis is not running; raise :class:`DevStackError`."""
    return stack().up()


def down(only: Collection[str] = SERVICES) -> None:
    """Stop the named services (default both), if ``up`` started them."""
    stack().down(only)


def status() -> bool:
    """Print each service's state; True when both run."""
    return stack().status()


def run(action: str) -> int:
    """``nextbest dev up|down|status``: 0 done, 1 failed, 3 (status) not both running."""
    try:
        if action == "up":
            up()
            return 0
        if action == "down":
            down()
            return 0
        if action == "status":
            return 0 if status() else 3
        raise DevStackError(f"unknown action {action!r} (up, down, status)")
    except DevStackError as error:
        say(f"error: {error}")
        return 1
    except KeyboardInterrupt:
        say("interrupted (what this call had started is stopped)")
        return 130
