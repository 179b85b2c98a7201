"""Settings from the environment (contract §9), validated once at start-up.

Every setting is ``NEXTBEST_<NAME>`` and optional. A bad value raises
:class:`SettingsError` whose message is one line naming the variable; the CLI
prints it and exits with status 2.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    NonNegativeInt,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from nextbest.core.duration import parse_duration
from nextbest.core.envelope import DEFAULT_CHANNELS

ENV_PREFIX = "NEXTBEST_"


class SettingsError(Exception):
    """A setting has a bad value; ``str(error)`` is one line naming it."""


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    return value


def _csv(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]
Csv = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_csv)]
Port = Annotated[int, Field(ge=1, le=65535)]


class Settings(BaseSettings):
    """Everything an operator can set. Defaults are the contract's."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    app_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,100}$")] = "nextbest"
    kafka_bootstrap: str = "localhost:9092"
    redis_url: str = "redis://localhost:6379/0"
    data_dir: Path = Path("data")
    channels: Csv = DEFAULT_CHANNELS
    topic_partitions: PositiveInt = 8
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"

    journey_window: Duration = timedelta(minutes=30)
    cart_abandon_after: Duration = timedelta(minutes=15)
    checkout_stall_after: Duration = timedelta(minutes=10)
    search_frustration_count: PositiveInt = 3
    search_frustration_window: Duration = timedelta(minutes=10)
    trigger_cooldown: Duration = timedelta(minutes=30)
    max_signal_age: Duration = timedelta(minutes=10)
    rules: Path | None = None

    context_ttl: Duration = timedelta(days=30)
    max_event_bytes: PositiveInt = 65536
    api_port: Port = 8080
    worker_port: Port = 6066
    api_tokens: Csv = Field(default=(), repr=False)  # secrets: never in a repr or log
    api_rate_limit: Annotated[float, Field(gt=0)] = 20.0  # requests/s per client
    api_rate_burst: PositiveInt = 40
    api_max_request_bytes: PositiveInt = 16384
    api_keepalive: Duration = timedelta(seconds=15)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Decoded customer states a worker keeps in memory between batches (about
    # 4 KB each, up to ~20 KB for a very busy customer); 0 turns the cache off.
    state_cache_size: NonNegativeInt = 20_000

    # How long the group waits for a worker that stopped answering before its
    # partitions (and their deadlines) move to the others.
    kafka_session_timeout: Duration = timedelta(seconds=10)
    # Static group membership: a stable id per worker (the pod name in a
    # StatefulSet) lets a restarted worker take its partitions back at once,
    # without waiting for the session timeout or a rebalance.
    kafka_group_instance_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,200}$")] | None = None
    # How long a worker may take to stop after SIGTERM before it exits anyway
    # (stopping waits on the broker, which may be gone).
    shutdown_timeout: Duration = timedelta(seconds=30)
    # Replicas of topics the engine creates (1 for a single broker; 3 is usual).
    topic_replication: PositiveInt = 1
    # Standby copies of each table partition kept warm on other workers.
    standby_replicas: NonNegativeInt = 0

    # contract §3 "Order": how late an event may arrive and still take its place
    # in its customer's timeline, and what each customer's state keeps for that.
    reorder_window: Duration = timedelta(minutes=2)
    reorder_max_events: Annotated[int, Field(ge=1, le=1000)] = 50
    reorder_max_bytes: Annotated[int, Field(ge=1024, le=1_048_576)] = 16384

    # Kafka security (contract §9): passed to faust and aiokafka as they are.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    # Redis TLS: use a rediss:// URL; these name the files when not in the system store.
    redis_ssl_ca_certs: Path | None = None

    @field_validator("channels")
    @classmethod
    def _channels_are_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("needs at least one channel")
        for name in value:
            if not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"{name!r} is not a channel name (letters, digits, - and _)")
        if len(set(value)) != len(value):
            raise ValueError("lists a channel twice")
        return value

    @field_validator(
        "journey_window",
        "cart_abandon_after",
        "checkout_stall_after",
        "search_frustration_window",
        "trigger_cooldown",
        "max_signal_age",
        "context_ttl",
        "kafka_session_timeout",
        "api_keepalive",
        "reorder_window",
        "shutdown_timeout",
    )
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than zero")
        return value

    @field_validator("rules")
    @classmethod
    def _rules_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no rules file at {value}")
        return value


def load_settings(**overrides: Any) -> Settings:
    """Read the environment; raise :class:`SettingsError` with one line naming the setting."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"invalid setting {ENV_PREFIX}{field.upper()}: {message}") from None
