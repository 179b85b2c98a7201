"""Settings from the environment (contract §9), validated once at start-up.

Every setting is ``NEXTBEST_<NAME>`` and optional. A bad value raises
:class:`SettingsError` whose message is one line naming the variable; the CLI
prints it and exits with status 2.

Every setting that holds a secret (:data:`SECRET_SETTINGS`) may instead name a
file that holds it, ``NEXTBEST_<NAME>_FILE`` (a Kubernetes Secret mounted as a
volume), read once here; setting both is an error. No secret is ever part of
an error message or a repr.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    Field,
    NonNegativeInt,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from nextbest.core.duration import parse_duration
from nextbest.core.envelope import DEFAULT_CHANNELS, TYPE_NAME
from nextbest.core.identity import DEFAULT_TYPES

ENV_PREFIX = "NEXTBEST_"
# Settings holding a secret: each may come from the file NEXTBEST_<NAME>_FILE names.
SECRET_SETTINGS = (
    "kafka_sasl_password",
    "kafka_ssl_key_password",
    "redis_url",
    "redis_password",
    "api_tokens",
    "erasure_secret",
)
SECRET_FILE_MAX_BYTES = 65536


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


def _variable(name: str) -> str:
    return f"{ENV_PREFIX}{name.upper()}"


def _read_secret(path: Path, variable: str) -> str:
    """The secret in ``path``, without a trailing line break; never says what it read."""
    try:
        with path.open("rb") as handle:
            content = handle.read(SECRET_FILE_MAX_BYTES + 1)
    except OSError as error:
        raise ValueError(f"{variable}: cannot read {path} ({error.strerror})") from None
    if len(content) > SECRET_FILE_MAX_BYTES:
        raise ValueError(f"{variable}: {path} is larger than {SECRET_FILE_MAX_BYTES} bytes")
    try:
        text = content.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ValueError(f"{variable}: {path} is not UTF-8 text") from None
    if not text.strip():
        raise ValueError(f"{variable}: {path} is empty")
    return text


def _readable_file(value: Path | None) -> Path | None:
    if value is None:
        return None
    if not value.is_file():
        raise ValueError(f"no file at {value}")
    if not os.access(value, os.R_OK):
        raise ValueError(f"{value} is not readable by this user")
    return value


class Settings(BaseSettings):
    """Everything an operator can set. Defaults are the contract's."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="ignore",
        hide_input_in_errors=True,  # an input may be a secret: errors never show one
    )

    app_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,100}$")] = "nextbest"
    kafka_bootstrap: str = "localhost:9092"
    # may carry a password (redis://user:password@host): never in a repr or log
    redis_url: str = Field(default="redis://localhost:6379/0", repr=False)
    redis_url_file: Path | None = None
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
    api_tokens_file: Path | None = None  # one token per line (or comma-separated)
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

    # contract v0.2 §10: the kinds of identifier subjecttype may name (customer always),
    # and how many of one kind a profile may hold
    identity_types: Csv = DEFAULT_TYPES
    identity_max_per_type: Annotated[int, Field(ge=1, le=100)] = 5
    # §11: how long an erased person's identifiers stay suppressed, and the key of the
    # keyed hash (HMAC-SHA-256) that is all the engine keeps of them; without it the
    # app id is the key, which anyone who knows it can test guessed identifiers against
    erasure_suppress: Duration = timedelta(days=30)
    erasure_secret: SecretStr | None = Field(default=None, repr=False)
    erasure_secret_file: Path | None = None
    # How long a superseded or erased state may stay in the changelog before the
    # broker compacts it away (segment.ms and max.compaction.lag.ms of the changelog),
    # and how long a tombstone stays after that (delete.retention.ms). The README
    # states the bound this gives.
    changelog_compaction_lag: Duration = timedelta(hours=12)
    changelog_tombstone_retention: Duration = timedelta(days=1)
    # retention.ms of <app id>-rekey, which carries forwarded events and, while two
    # profiles merge, their states: long enough to outlast an outage of every worker
    rekey_retention: Duration = timedelta(days=7)

    # Kafka security (contract §9), for every client: faust's consumer, producer
    # and admin, the start-up checks, the simulator, the demo, the benchmarks.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_sasl_password_file: Path | None = None
    kafka_ssl_cafile: Path | None = None  # else the system's trusted CAs
    kafka_ssl_certfile: Path | None = None  # mutual TLS: the client certificate (PEM)
    kafka_ssl_keyfile: Path | None = None  # its key, if not in the certificate file
    kafka_ssl_key_password: SecretStr | None = None  # for an encrypted key
    kafka_ssl_key_password_file: Path | None = None
    # Redis: TLS with a rediss:// URL; ACL user and password here or in the URL.
    redis_ssl_ca_certs: Path | None = None  # else the system's trusted CAs
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_password_file: Path | None = None

    # Widget tokens (see nextbest.api.widget_tokens): JWTs signed with Ed25519
    # (EdDSA). The API verifies them with the public key(s); `nextbest token`
    # signs with the private key, which the API never needs.
    widget_token_public_key_file: Path | None = None
    widget_token_private_key_file: Path | None = None
    widget_token_audience: Annotated[str, Field(min_length=1, max_length=200)] = "nextbest"  # noqa: S105 - a name, not a secret
    widget_token_max_ttl: Duration = timedelta(hours=1)

    @field_validator("identity_types")
    @classmethod
    def _identity_types_are_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not TYPE_NAME.match(name):
                raise ValueError(f"{name!r} is not a type name (a-z, 0-9, _ and -, at most 32)")
        if "customer" not in value:
            raise ValueError("must include customer (the type of a subject without subjecttype)")
        if len(set(value)) != len(value):
            raise ValueError("lists a type twice")
        return value

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
        "widget_token_max_ttl",
        "erasure_suppress",
        "changelog_compaction_lag",
        "changelog_tombstone_retention",
        "rekey_retention",
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

    @field_validator(
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        "redis_ssl_ca_certs",
        "widget_token_public_key_file",
        "widget_token_private_key_file",
    )
    @classmethod
    def _file_is_readable(cls, value: Path | None) -> Path | None:
        return _readable_file(value)

    @field_validator("redis_url")
    @classmethod
    def _redis_url_is_a_redis_url(cls, value: str) -> str:
        # the URL may hold a password: the message never repeats it
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError("is not a URL") from None
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// (TLS) or unix://")
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("names no host")
        return value

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        """``NEXTBEST_<NAME>_FILE`` -> the secret it holds, for each of SECRET_SETTINGS."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name in SECRET_SETTINGS:
            path = data.get(f"{name}_file")
            if path is None or path == "":
                continue
            variable = _variable(name)
            if data.get(name) not in (None, "", ()):
                raise ValueError(f"{variable}_FILE: {variable} is set too; set only one of them")
            secret = _read_secret(Path(path), f"{variable}_FILE")
            if name == "api_tokens":  # one per line, or comma-separated
                secret = ",".join(secret.splitlines())
            data[name] = secret
        return data

    @model_validator(mode="after")
    def _security_settings_agree(self) -> Self:
        """Combinations that would not do what the operator meant stop start-up."""
        protocol = self.kafka_security_protocol
        said = f"NEXTBEST_KAFKA_SECURITY_PROTOCOL is {protocol}"
        if protocol.startswith("SASL"):
            if not self.kafka_sasl_username:
                raise ValueError(f"NEXTBEST_KAFKA_SASL_USERNAME: needed because {said}")
            if self.kafka_sasl_password is None or not self.kafka_sasl_password.get_secret_value():
                raise ValueError(
                    "NEXTBEST_KAFKA_SASL_PASSWORD (or NEXTBEST_KAFKA_SASL_PASSWORD_FILE): "
                    f"needed because {said}"
                )
        else:
            for name in ("kafka_sasl_username", "kafka_sasl_password", "kafka_sasl_mechanism"):
                if name in self.model_fields_set and getattr(self, name) is not None:
                    raise ValueError(f"{_variable(name)}: set, but {said}, which uses no SASL")
        if protocol not in ("SSL", "SASL_SSL"):
            for name in (
                "kafka_ssl_cafile",
                "kafka_ssl_certfile",
                "kafka_ssl_keyfile",
                "kafka_ssl_key_password",
            ):
                if getattr(self, name) is not None:
                    raise ValueError(f"{_variable(name)}: set, but {said}, which uses no TLS")
        if self.kafka_ssl_keyfile is not None and self.kafka_ssl_certfile is None:
            raise ValueError("NEXTBEST_KAFKA_SSL_KEYFILE: set without NEXTBEST_KAFKA_SSL_CERTFILE")
        if self.kafka_ssl_key_password is not None and self.kafka_ssl_certfile is None:
            raise ValueError(
                "NEXTBEST_KAFKA_SSL_KEY_PASSWORD: set without NEXTBEST_KAFKA_SSL_CERTFILE"
            )
        parts = urlsplit(self.redis_url)
        if self.redis_ssl_ca_certs is not None and parts.scheme != "rediss":
            raise ValueError(
                "NEXTBEST_REDIS_SSL_CA_CERTS: set, but NEXTBEST_REDIS_URL is not rediss:// (TLS)"
            )
        for name, in_url in (
            ("redis_username", parts.username),
            ("redis_password", parts.password),
        ):
            if getattr(self, name) is not None and in_url:
                raise ValueError(f"{_variable(name)}: NEXTBEST_REDIS_URL holds one too; use one")
        return self


def load_settings(**overrides: Any) -> Settings:
    """Read the environment; raise :class:`SettingsError` with one line naming the setting."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        first = error.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        if not first["loc"]:  # a check across settings: its message names them
            raise SettingsError(f"invalid setting {message}") from None
        field = str(first["loc"][0])
        raise SettingsError(f"invalid setting {_variable(field)}: {message}") from None
