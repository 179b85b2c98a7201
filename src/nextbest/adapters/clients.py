"""Kafka and Redis clients as the settings configure them: TLS, SASL, mutual TLS, Redis ACL users.

The one place that turns ``NEXTBEST_KAFKA_*`` and ``NEXTBEST_REDIS_*`` into
client options, for every process: the worker (faust's consumer, producer and
admin through :func:`faust_credentials`, the start-up admin through
:func:`kafka_client_options`), the API, ``nextbest simulate`` and ``demo``,
and the benchmark tools.

Nothing here logs, and no message or repr made here holds a secret:
:func:`redis_address` and :func:`kafka_address` are what may be shown. At
DEBUG, aiokafka logs every request it sends, SASL authentication included
(with ``PLAIN`` that is the password itself); building Kafka options here also
installs :class:`SaslRedaction` on aiokafka's connection logger.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any
from urllib.parse import urlsplit

import faust
from redis.asyncio import Redis

from nextbest.settings import Settings

TLS_MINIMUM = ssl.TLSVersion.TLSv1_2


class SaslRedaction(logging.Filter):
    """Replace SASL authentication requests and answers in aiokafka's DEBUG lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(_is_sasl(arg) for arg in record.args):
            record.args = tuple(
                f"<{type(arg).__name__}: redacted>" if _is_sasl(arg) else arg for arg in record.args
            )
        return True


def _is_sasl(value: object) -> bool:
    return type(value).__name__.startswith("SaslAuthenticate")


def redact_sasl_in_client_logs() -> None:
    """Once per process: no SASL exchange in aiokafka's log lines, at any level."""
    logger = logging.getLogger("aiokafka.conn")
    if not any(isinstance(f, SaslRedaction) for f in logger.filters):
        logger.addFilter(SaslRedaction())


class ClientConfigError(Exception):
    """A TLS file is unusable; ``str(error)`` is one line naming the setting."""


def _context(
    cafile: str | None,
    setting: str,
    certfile: str | None = None,
    keyfile: str | None = None,
    key_password: str | None = None,
) -> ssl.SSLContext:
    """A client context that checks the server's certificate and host name."""
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (ssl.SSLError, OSError) as error:
        raise ClientConfigError(
            f"invalid setting {setting}: {cafile} holds no usable CA certificate ({_why(error)})"
        ) from None
    context.minimum_version = TLS_MINIMUM
    if certfile is not None:
        try:
            context.load_cert_chain(certfile, keyfile, password=key_password)
        except (ssl.SSLError, OSError) as error:
            raise ClientConfigError(
                "invalid setting NEXTBEST_KAFKA_SSL_CERTFILE/NEXTBEST_KAFKA_SSL_KEYFILE: "
                f"cannot use {certfile} with its key ({_why(error)}; a wrong or missing "
                "NEXTBEST_KAFKA_SSL_KEY_PASSWORD says the same)"
            ) from None
    return context


def _why(error: Exception) -> str:
    if isinstance(error, ssl.SSLError):
        return str(error.reason or type(error).__name__)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return type(error).__name__


def _path(value: object) -> str | None:
    return None if value is None else str(value)


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for Kafka (``SSL``/``SASL_SSL``), with the client certificate if any."""
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    password = settings.kafka_ssl_key_password
    return _context(
        _path(settings.kafka_ssl_cafile),
        "NEXTBEST_KAFKA_SSL_CAFILE",
        certfile=_path(settings.kafka_ssl_certfile),
        keyfile=_path(settings.kafka_ssl_keyfile),
        key_password=password.get_secret_value() if password else None,
    )


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """Security options for an aiokafka client (producer, consumer, admin)."""
    redact_sasl_in_client_logs()
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    context = kafka_ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL"):
        password = settings.kafka_sasl_password
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = password.get_secret_value() if password else None
    return options


def faust_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """faust's credentials: the same protocol, context and SASL user as aiokafka's options.

    faust picks SASL_SSL when ``SASLCredentials`` carries a context and
    SASL_PLAINTEXT when not; settings say the same by construction.
    """
    redact_sasl_in_client_logs()
    context = kafka_ssl_context(settings)
    if settings.kafka_security_protocol.startswith("SASL"):
        password = settings.kafka_sasl_password
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=password.get_secret_value() if password else None,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    return faust.SSLCredentials(context) if context is not None else None


def kafka_address(settings: Settings) -> str:
    """The brokers, as they may be shown: ``host:port[,…]``."""
    return settings.kafka_bootstrap


def kafka_user(settings: Settings) -> str:
    """Who this process is to Kafka, for messages: a SASL user, a certificate, or nobody."""
    if settings.kafka_security_protocol.startswith("SASL"):
        return f"user '{settings.kafka_sasl_username}' ({settings.kafka_sasl_mechanism})"
    if settings.kafka_ssl_certfile is not None:
        return f"the client certificate {settings.kafka_ssl_certfile}"
    return "an anonymous client"


def redis_address(settings: Settings) -> str:
    """Where Redis is, as it may be shown: ``host:port`` without any credentials."""
    parts = urlsplit(settings.redis_url)
    if parts.scheme == "unix":
        return parts.path
    port = parts.port or 6379
    host = parts.hostname or "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def redis_user(settings: Settings) -> str:
    """The Redis ACL user this process authenticates as (``default`` when none is set)."""
    return settings.redis_username or urlsplit(settings.redis_url).username or "default"


def redis_client(settings: Settings, *, timeout: float | None = 2.0) -> Redis:
    """A Redis client for ``NEXTBEST_REDIS_URL`` with its CA, ACL user and password.

    ``lib_name=None``: no ``CLIENT SETINFO`` on connect, which a least-privilege
    ACL user may not run (Redis would log every refusal in its ACL LOG).
    ``timeout=None`` for a client that waits on a subscription.
    """
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "lib_name": None,
        "lib_version": None,
    }
    if urlsplit(settings.redis_url).scheme == "rediss":
        ca = _path(settings.redis_ssl_ca_certs)
        _context(ca, "NEXTBEST_REDIS_SSL_CA_CERTS")  # refuse an unusable CA file now
        options |= {"ssl_ca_certs": ca, "ssl_cert_reqs": "required", "ssl_check_hostname": True}
        options["ssl_min_version"] = TLS_MINIMUM
    if settings.redis_username is not None:
        options["username"] = settings.redis_username
    if settings.redis_password is not None:
        options["password"] = settings.redis_password.get_secret_value()
    client: Redis = Redis.from_url(settings.redis_url, **options)
    return client
