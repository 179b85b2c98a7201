"""Can this process use Kafka and Redis with its credentials? Checked once, at start-up.

A wrong password, a certificate the client does not trust or a missing ACL
would otherwise surface as a stream of retries in faust's, aiokafka's or
redis-py's log, minutes later or (a missing Write on a trigger topic) at the
first trigger. Each check here ends instead in one :class:`AccessError` whose
text is one line naming the server, who this process is to it, the cause and
what to change, e.g.::

    Kafka at localhost:9192: user 'nextbest' (SCRAM-SHA-512) may not Write topic
    triggers.web (TOPIC_AUTHORIZATION_FAILED); grant it with an ACL (README: Security)

The Kafka checks have no side effects: Describe through metadata, Create through
``CreateTopics`` with ``validate_only``, Write through a produce request holding
no record batch (the broker authorizes it, then rejects it as INVALID_RECORD:
nothing is written), Read through a one-byte fetch, the group's Read through
``DescribeGroups``' authorized operations. The Redis checks run what the process
runs: the worker loads the mirror's script and runs it on ``nextbest:context:``
(no customer has an empty id; the key lives a second), the API reads that key
and subscribes to ``nextbest:updates:``.

Nothing here puts a secret, a customer id or a record into a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.coordination import FindCoordinatorRequest
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.protocol.produce import ProduceRequest
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from nextbest.adapters.clients import (
    kafka_address,
    kafka_client_options,
    kafka_user,
    redis_address,
    redis_client,
    redis_user,
)
from nextbest.adapters.projection import WRITE_IF_NOT_OLDER, context_key, updates_channel
from nextbest.adapters.topics import DEADLETTER_TOPIC, event_topic, trigger_topic
from nextbest.settings import Settings

log = logging.getLogger(__name__)

TOPIC_AUTHORIZATION_FAILED = 29
GROUP_AUTHORIZATION_FAILED = 30
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
TRANSACTION_COORDINATOR = 1  # FindCoordinator's key type of a transactional id
UNKNOWN_TOPIC_OR_PARTITION = 3
READ_OPERATION = 3  # bit of Kafka's AclOperation READ in authorized_operations
GRANT_HINT = "grant it with an ACL (README: Security)"
PROBE_DOCUMENT = b'{"version": -1}'  # what the worker's Redis check writes, for a second


class AccessError(Exception):
    """This process may not use a server as configured; ``str(error)`` is one line."""


class Unreachable(AccessError):
    """Nothing answers at the address (it may come up later)."""


@dataclass(frozen=True)
class KafkaNeeds:
    """What a process does on Kafka: topics it reads and writes, its consumer group."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    group: str | None = None
    create_missing: bool = False
    partitions: int = 1
    transactional_id: str | None = None  # one it will use (exactly_once)

    @property
    def topics(self) -> list[str]:
        return sorted(set(self.read) | set(self.write))


def worker_needs(settings: Settings, topics: Iterable[str]) -> KafkaNeeds:
    """The worker's needs, given every topic it uses (``bootstrap.topic_names``)."""
    inputs = {event_topic(channel) for channel in settings.channels}
    outputs = {trigger_topic(channel) for channel in settings.channels} | {DEADLETTER_TOPIC}
    internal = set(topics) - inputs - outputs
    return KafkaNeeds(
        read=tuple(sorted(inputs | internal)),
        write=tuple(sorted(outputs | internal)),
        group=settings.app_id,
        create_missing=True,
        partitions=settings.topic_partitions,
        # adapters/outputs.py: "<app id>-<partition>"; partition 0's stands for them all
        transactional_id=(
            f"{settings.app_id}-0" if settings.processing_guarantee == "exactly_once" else None
        ),
    )


def producer_needs(settings: Settings) -> KafkaNeeds:
    """``nextbest simulate`` writes the events topics."""
    return KafkaNeeds(write=tuple(event_topic(channel) for channel in settings.channels))


def demo_needs(settings: Settings) -> KafkaNeeds:
    """``nextbest demo`` writes the events topics and reads the trigger topics."""
    return KafkaNeeds(
        write=tuple(event_topic(channel) for channel in settings.channels),
        read=tuple(trigger_topic(channel) for channel in settings.channels),
    )


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """aiokafka logs each failure it raises: the one line said here is enough."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _tls_cause(error: BaseException) -> str | None:
    """The TLS failure behind ``error``, as a short phrase, if it is one."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"its TLS certificate is not trusted ({seen.verify_message or seen.reason})"
        if isinstance(seen, ssl.SSLError):
            return (
                f"the TLS handshake failed ({seen.reason or seen.strerror or type(seen).__name__})"
            )
        seen = seen.__cause__ or seen.__context__
    text = str(error)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        detail = text.split("certificate verify failed:", 1)[-1].split("(_ssl", 1)[0].strip()
        return f"its TLS certificate is not trusted ({detail or 'verify failed'})"
    if "[SSL" in text:
        return (
            "the TLS handshake failed ("
            + text.split("[SSL", 1)[1].split("]", 1)[-1].strip(". ")
            + ")"
        )
    return None


# --- Kafka ---------------------------------------------------------------------------------


@dataclass
class _Denied:
    operation: str
    resources: list[str] = field(default_factory=list)
    code: str = "TOPIC_AUTHORIZATION_FAILED"


async def check_kafka(settings: Settings, needs: KafkaNeeds, *, within: float = 15.0) -> None:
    """Raise :class:`AccessError` unless this process can do on Kafka what ``needs`` says."""
    with _quiet("aiokafka"):
        try:
            await asyncio.wait_for(_check_kafka(settings, needs), within)
        except TimeoutError:
            raise Unreachable(
                f"Kafka at {kafka_address(settings)}: no answer within {within:.0f} s "
                "(is NEXTBEST_KAFKA_SECURITY_PROTOCOL the listener's protocol?)"
            ) from None


async def _check_kafka(settings: Settings, needs: KafkaNeeds) -> None:
    options = kafka_client_options(settings)
    address = await _connect(settings, options)
    who = kafka_user(settings)
    where = f"Kafka at {address}"
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10_000, **options
    )
    client = AIOKafkaClient(
        bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10_000, **options
    )
    try:
        await admin.start()
        await client.bootstrap()
        denied = await _check_topics(admin, client, needs)
        if needs.group is not None and not denied:
            denied = await _check_group(admin, needs.group)
        if needs.transactional_id is not None and not denied:
            denied = await _check_transactions(client, needs.transactional_id)
    except KafkaConnectionError as error:  # connected, then dropped: another protocol
        raise AccessError(
            f"{where}: {who} was refused ({type(error).__name__}); is "
            f"NEXTBEST_KAFKA_SECURITY_PROTOCOL ({settings.kafka_security_protocol}) the "
            "listener's protocol?"
        ) from None
    except KafkaError as error:
        if not getattr(error, "retriable", False):
            raise AccessError(f"{where}: {who} was refused ({type(error).__name__})") from None
        # a busy or changing cluster (no leader, no controller yet): not a refusal;
        # the clients retry such errors themselves
        log.warning(
            "%s: permissions not checked (%s); starting anyway", where, type(error).__name__
        )
        return
    finally:
        await client.close()
        await admin.close()
    if denied:
        first = denied[0]
        more = sum(len(d.resources) for d in denied) - 1
        also = f" (and {more} more)" if more else ""
        raise AccessError(
            f"{where}: {who} may not {first.operation} {first.resources[0]}{also} "
            f"({first.code}); {GRANT_HINT}"
        )


async def _connect(settings: Settings, options: dict[str, Any]) -> str:
    """Open one connection with the configured security; the address that answered."""
    who = kafka_user(settings)
    unreachable: list[tuple[str, str]] = []
    for address in settings.kafka_bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            connection = await create_conn(
                host.strip("[]"), int(port), request_timeout_ms=10_000, **options
            )
        except SaslAuthenticationFailed:
            raise AccessError(
                f"Kafka at {address}: authentication failed for {who}; check "
                "NEXTBEST_KAFKA_SASL_USERNAME and NEXTBEST_KAFKA_SASL_PASSWORD(_FILE)"
            ) from None
        except UnsupportedSaslMechanismError as error:
            raise AccessError(
                f"Kafka at {address}: the broker does not offer "
                f"{settings.kafka_sasl_mechanism} ({error}); set NEXTBEST_KAFKA_SASL_MECHANISM"
            ) from None
        except (OSError, KafkaError, ValueError) as error:
            cause = _tls_cause(error)
            if cause is not None:
                raise AccessError(f"Kafka at {address}: {cause}; {_tls_hint(cause)}") from None
            if isinstance(error, KafkaError):  # it accepted the connection, then dropped it
                raise AccessError(
                    f"Kafka at {address}: the broker closed the connection at the first "
                    f"request ({type(error).__name__}); is NEXTBEST_KAFKA_SECURITY_PROTOCOL "
                    f"({settings.kafka_security_protocol}) the listener's protocol?"
                ) from None
            reason = getattr(error, "strerror", None) or type(error).__name__
            unreachable.append((address.strip(), str(reason)))
            continue
        connection.close()
        return address.strip()
    if len(unreachable) == 1:
        why = unreachable[0][1]
    else:
        why = "; ".join(f"{address}: {reason}" for address, reason in unreachable)
    raise Unreachable(f"Kafka at {settings.kafka_bootstrap}: nothing answers ({why})")


def _tls_hint(cause: str) -> str:
    if "not trusted" in cause:
        return "set NEXTBEST_KAFKA_SSL_CAFILE to the CA that signed the broker's certificate"
    said = cause.lower().replace("_", " ")
    if any(alert in said for alert in ("certificate required", "unknown ca", "bad certificate")):
        return (
            "the broker wants a client certificate it trusts: check "
            "NEXTBEST_KAFKA_SSL_CERTFILE and NEXTBEST_KAFKA_SSL_KEYFILE"
        )
    return "check that NEXTBEST_KAFKA_SECURITY_PROTOCOL is the listener's protocol"


async def _check_topics(
    admin: AIOKafkaAdminClient, client: AIOKafkaClient, needs: KafkaNeeds
) -> list[_Denied]:
    # not admin.describe_topics: its metadata request lets a broker with
    # auto.create.topics.enable (Kafka's default) create a missing topic there and then,
    # with the broker's defaults — a changelog without compaction, ticks kept for days —
    # before ensure_topics can create it with its configs
    metadata = await admin._send_request(
        MetadataRequest(needs.topics, allow_auto_topic_creation=False)
    )
    described = metadata.to_object()["topics"]
    errors = {t["topic"]: t["error_code"] for t in described}
    leaders = {
        t["topic"]: p["leader"]
        for t in described
        if t["error_code"] == 0
        for p in t["partitions"]
        if p["partition"] == 0
    }
    unauthorized = sorted(t for t, code in errors.items() if code == TOPIC_AUTHORIZATION_FAILED)
    if unauthorized:
        return [_Denied("Describe topic", unauthorized)]
    missing = sorted(t for t, code in errors.items() if code == UNKNOWN_TOPIC_OR_PARTITION)
    denied: list[_Denied] = []
    # a missing topic is created by the worker, or auto-created by the broker for a
    # producer: only whether this user may create it is checked, and only for the worker
    if missing and needs.create_missing:
        response = await admin.create_topics(
            [NewTopic(name, needs.partitions, 1) for name in missing], validate_only=True
        )
        refused = [e[0] for e in response.topic_errors if e[1] == TOPIC_AUTHORIZATION_FAILED]
        if refused:
            denied.append(_Denied("Create topic (it does not exist yet)", sorted(refused)))
    write = [t for t in needs.write if t in leaders]
    read = [t for t in needs.read if t in leaders]
    refused_writes = await _probe(client, leaders, write, _produce_probe)
    if refused_writes:
        denied.append(_Denied("Write topic", refused_writes))
    refused_reads = await _probe(client, leaders, read, _fetch_probe)
    if refused_reads:
        denied.append(_Denied("Read topic", refused_reads))
    return denied


def _produce_probe(topics: list[str]) -> ProduceRequest:
    # no record batch: authorized -> INVALID_RECORD, else TOPIC_AUTHORIZATION_FAILED
    return ProduceRequest(None, 1, 10_000, [(topic, [(0, b"")]) for topic in topics])


def _fetch_probe(topics: list[str]) -> FetchRequest:
    return FetchRequest(0, 0, 1, 0, [(topic, [(0, 0, 1)]) for topic in topics])


async def _probe(
    client: AIOKafkaClient,
    leaders: dict[str, int],
    topics: list[str],
    request: Any,
) -> list[str]:
    """The topics whose partition 0 the broker refused the request for."""
    by_leader: dict[int, list[str]] = defaultdict(list)
    for topic in topics:
        by_leader[leaders[topic]].append(topic)
    refused: list[str] = []
    for node, names in by_leader.items():
        response = await client.send(node, request(names))
        # produce and fetch answers alike: topics [(name, [(partition, error_code, ...)])]
        for topic, partitions in response.topics:
            if any(partition[1] == TOPIC_AUTHORIZATION_FAILED for partition in partitions):
                refused.append(topic)
    return sorted(set(refused))


async def _check_group(
    admin: AIOKafkaAdminClient, group: str, *, within: float = 8.0
) -> list[_Denied]:
    """The group's Read, from DescribeGroups' authorized operations.

    On a new broker the group coordinator is not there until ``__consumer_offsets``
    exists; a retriable error is retried for ``within`` seconds, then the check is
    left to the consumer (it waits for the coordinator itself).
    """
    deadline = time.monotonic() + within
    while True:
        try:
            responses = await admin.describe_consumer_groups(
                [group], include_authorized_operations=True
            )
            break
        except KafkaError as error:
            if "GroupAuthorization" in type(error).__name__:
                return [_Denied("Read group", [group], "GROUP_AUTHORIZATION_FAILED")]
            if not getattr(error, "retriable", False):
                raise
            if time.monotonic() > deadline:
                log.debug("group %s: no coordinator yet (%s)", group, type(error).__name__)
                return []
            await asyncio.sleep(0.25)
    for response in responses:
        for described in response.to_object()["groups"]:
            if described["error_code"] == GROUP_AUTHORIZATION_FAILED:
                return [_Denied("Read group", [group], "GROUP_AUTHORIZATION_FAILED")]
            operations = described.get("authorized_operations", -1)
            if operations >= 0 and not operations & (1 << READ_OPERATION):
                return [_Denied("Read group", [group], "no READ among its operations")]
    return []


async def _check_transactions(client: AIOKafkaClient, transactional_id: str) -> list[_Denied]:
    """Describe on the transactional id, from FindCoordinator (which fences no one, as
    starting a transactional producer would)."""
    node = client.get_random_node()
    response = await client.send(
        node, FindCoordinatorRequest(transactional_id, TRANSACTION_COORDINATOR)
    )
    if response.error_code == TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
        return [
            _Denied(
                "use transactional id (exactly_once)",
                [transactional_id],
                "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
            )
        ]
    return []


# --- Redis ---------------------------------------------------------------------------------


Role = Literal["worker", "api"]


async def check_redis(settings: Settings, role: Role, *, within: float = 10.0) -> None:
    """Raise :class:`AccessError` unless the ``role`` can do its work on Redis."""
    client = redis_client(settings)
    where = f"Redis at {redis_address(settings)}"
    who = f"user '{redis_user(settings)}'"
    try:
        await asyncio.wait_for(_check_redis(client, role), within)
    except TimeoutError:
        raise Unreachable(f"{where}: no answer within {within:.0f} s") from None
    except redis_errors.AuthenticationError:
        raise AccessError(
            f"{where}: authentication failed for {who}; check NEXTBEST_REDIS_USERNAME and "
            "NEXTBEST_REDIS_PASSWORD(_FILE) (or the user and password in NEXTBEST_REDIS_URL)"
        ) from None
    except redis_errors.NoPermissionError as error:
        raise AccessError(
            f"{where}: {who} may not do what the {role} needs ({_first_line(error)}); "
            "give it the ACL in README: Security"
        ) from None
    except redis_errors.ResponseError as error:
        if str(error).startswith(("NOAUTH", "WRONGPASS")):
            raise AccessError(
                f"{where}: {who} is not authenticated ({_first_line(error)}); set "
                "NEXTBEST_REDIS_USERNAME and NEXTBEST_REDIS_PASSWORD(_FILE)"
            ) from None
        raise AccessError(f"{where}: {who} was refused ({_first_line(error)})") from None
    except (redis_errors.ConnectionError, OSError) as error:
        cause = _tls_cause(error)
        if cause is not None:
            setting = (
                "NEXTBEST_REDIS_SSL_CA_CERTS" if "not trusted" in cause else "NEXTBEST_REDIS_URL"
            )
            raise AccessError(f"{where}: {cause}; check {setting}") from None
        raise Unreachable(f"{where}: nothing answers ({_first_line(error)})") from None
    finally:
        await client.aclose()


async def _check_redis(client: Redis, role: Role) -> None:
    await client.ping()
    if role == "worker":
        sha = await client.script_load(WRITE_IF_NOT_OLDER)
        await client.evalsha(sha, 1, context_key(""), PROBE_DOCUMENT, -1, 1000, updates_channel(""))
        return
    await client.get(context_key(""))
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(updates_channel(""))
        await pubsub.get_message(timeout=1.0)  # the answer to SUBSCRIBE: a refusal raises
        await pubsub.unsubscribe(updates_channel(""))
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# --- warnings about what is not protected -------------------------------------------------


def unprotected(settings: Settings, *, kafka: bool = True, redis: bool = True) -> list[str]:
    """Why traffic to a non-loopback server would travel unencrypted or unauthenticated."""
    warnings = []
    brokers = [address.rpartition(":")[0] for address in settings.kafka_bootstrap.split(",")]
    kafka_plain = settings.kafka_security_protocol in ("PLAINTEXT", "SASL_PLAINTEXT")
    if kafka and kafka_plain and not _loopback_only(brokers):
        warnings.append(
            f"Kafka traffic to {kafka_address(settings)} is not encrypted "
            f"(NEXTBEST_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol})"
        )
    address = redis_address(settings)
    redis_plain = not settings.redis_url.startswith(("rediss://", "unix://"))
    if redis and redis_plain and not _loopback_only([address.rpartition(":")[0]]):
        warnings.append(f"Redis traffic to {address} is not encrypted (use rediss://)")
    return warnings


def _loopback_only(hosts: Iterable[str]) -> bool:
    return all(h.strip().strip("[]") in ("localhost", "127.0.0.1", "::1") for h in hosts)


# --- what each process checks ---------------------------------------------------------------


async def check_worker(settings: Settings, topics: Iterable[str]) -> None:
    """Kafka must let the worker do its work; Redis must, if it answers at all.

    The worker runs while Redis is down (the mirror catches up, contract §6), so
    an unreachable Redis is a warning; a refusal is not.
    """
    for warning in unprotected(settings):
        log.warning("%s", warning)
    await check_kafka(settings, worker_needs(settings, topics))
    try:
        await check_redis(settings, "worker")
    except Unreachable as error:
        log.warning("%s; starting anyway: the mirror catches up once it answers", error)


async def check_api(settings: Settings) -> None:
    """Redis must let the API read and subscribe, if it answers (else /readyz says 503)."""
    for warning in unprotected(settings, kafka=False):
        log.warning("%s", warning)
    try:
        await check_redis(settings, "api")
    except Unreachable as error:
        log.warning("%s; starting anyway, not ready until it answers", error)
