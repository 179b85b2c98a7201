"""``nextbest dev up --secure``: Kafka with SASL_SSL and mutual TLS, Redis with TLS and ACL users.

Beside the plain stack (its own dev dir ``<dev dir>/secure`` and ports), for
trying and testing nextbest the way retailers run it:

* **Kafka** 3.9 (KRaft): a ``SASL_SSL`` listener (SCRAM-SHA-512 and -256,
  ``localhost:9192``), a mutual-TLS listener (``SSL`` with client certificates
  required, ``localhost:9194``, the certificate's CN is the user) and a
  ``SASL_PLAINTEXT``/``PLAIN`` controller listener on loopback (KRaft's
  controller cannot use SCRAM). ``StandardAuthorizer``, nobody allowed what
  an ACL does not allow. SCRAM users are created when the storage is
  formatted: ``admin`` (super user), ``nextbest`` (the worker's ACLs below)
  and ``nextbest-limited`` (the same but Write on the output topics: for tests
  of a missing ACL).
* **Redis** 7: TLS only, the ``default`` user off, users ``admin``,
  ``nextbest-worker`` and ``nextbest-api`` with the ACLs below.
* A fresh CA and certificates (``localhost`` server, ``nextbest`` client) each
  time the servers start; passwords generated once per dev dir (Kafka keeps
  SCRAM credentials in its storage). Everything secret is mode 0600 under
  ``<dev dir>/secure/secrets`` and ``…/tls``.

``client_settings(role)`` gives the ``NEXTBEST_*`` settings for each role, with
every secret as a ``*_FILE`` setting; ``up`` also writes them to
``<dev dir>/secure/<role>.env``.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import shutil
import ssl
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nextbest.devstack import certificates
from nextbest.devstack.kafka import Kafka
from nextbest.devstack.processes import DevStackError, refuse_busy, say
from nextbest.devstack.redis import Redis

# --- who may do what ---------------------------------------------------------------

# Kafka ACLs of the worker's user (resource type, pattern type, name, operations).
# A faust app needs: read its input topics, write its outputs, everything on its
# internal topics (changelog, rekey, ticks: the app id's prefix), its consumer
# group and transactional ids (exactly_once); Create where the worker creates a
# missing contract topic at start-up. Test app ids are "nextbest-it-…": same prefix.
WORKER_KAFKA_ACLS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("topic", "prefixed", "events.", ("Read", "Describe", "Create")),
    ("topic", "literal", "events.deadletter", ("Write",)),
    ("topic", "prefixed", "triggers.", ("Write", "Describe", "Create")),
    ("topic", "prefixed", "nextbest-", ("All",)),
    ("group", "prefixed", "nextbest", ("Read",)),
    ("transactional_id", "prefixed", "nextbest", ("Write", "Describe")),
)
# ... and of a user that has them all but Write on the output topics: a worker
# run as it must stop at start-up, not at its first trigger.
LIMITED_KAFKA_ACLS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("topic", "prefixed", "events.", ("Read", "Describe", "Create")),
    ("topic", "prefixed", "triggers.", ("Describe", "Create")),
    ("topic", "prefixed", "nextbest-", ("All",)),
    ("group", "prefixed", "nextbest", ("Read",)),
)

# Redis ACLs (the part after "user <name> on #<password hash>"). The worker
# mirrors contexts through a Lua script (SCRIPT LOAD, EVALSHA; the script's own
# GET, SET and PUBLISH are checked against these too), writes identity keys and
# erases profiles (SET, DEL, UNLINK, EXPIRE): keys under nextbest:*, publishing
# on nextbest:updates:* only. The API reads (GET) and subscribes, nothing else,
# and its key pattern is read-only (%R~).
WORKER_REDIS_ACL = (
    "resetkeys resetchannels ~nextbest:* &nextbest:updates:* -@all "
    "+ping +select +get +mget +exists +set +del +unlink +expire +pexpire "
    "+script|load +script|exists +evalsha +eval +publish"
)
API_REDIS_ACL = (
    "resetkeys resetchannels %R~nextbest:* &nextbest:updates:* -@all "
    "+ping +select +get +mget +exists +subscribe +unsubscribe"
)

_RESOURCE = {"topic": 2, "group": 3, "cluster": 4, "transactional_id": 5}
_PATTERN = {"literal": 3, "prefixed": 4}
_OPERATION = {
    "All": 2, "Read": 3, "Write": 4, "Create": 5, "Delete": 6, "Alter": 7, "Describe": 8,
}  # fmt: skip
_ALLOW = 3

ROLES = ("worker", "api", "admin", "limited", "mtls")


def _password(folder: Path, name: str) -> str:
    """The password stored as ``<folder>/<name>.password``, made on first use."""
    path = folder / f"{name}.password"
    if not path.exists():
        certificates.write_private(path, secrets.token_urlsafe(24).encode())
    return path.read_text().strip()


@dataclass(frozen=True)
class Material:
    """Where the secured stack's passwords, certificates and keys live."""

    root: Path

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def tls(self) -> Path:
        return self.root / "tls"

    def password(self, name: str) -> str:
        return _password(self.secrets, name)

    def password_file(self, name: str) -> Path:
        self.password(name)
        return self.secrets / f"{name}.password"

    @property
    def ca(self) -> Path:
        return self.tls / "ca.crt"

    def complete(self) -> bool:
        names = ("ca.crt", "server.crt", "server.key", "broker.p12", "client.crt", "client.key")
        return all((self.tls / name).exists() for name in names)

    def make(self) -> None:
        """A fresh CA, a server certificate for localhost and a client certificate."""
        ca = certificates.new_ca()
        server = certificates.issue(
            ca, "localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1",), client=True
        )
        client = certificates.issue(ca, "nextbest", server=False, client=True)
        tls = self.tls
        shutil.rmtree(tls, ignore_errors=True)
        tls.mkdir(parents=True)
        (tls / "ca.crt").write_bytes(ca.certificate_pem())
        (tls / "server.crt").write_bytes(server.certificate_pem() + ca.certificate_pem())
        certificates.write_private(tls / "server.key", server.key_pem())
        store = certificates.pkcs12_store(
            server, ca, self.password("keystore").encode(), "localhost"
        )
        certificates.write_private(tls / "broker.p12", store)
        (tls / "client.crt").write_bytes(client.certificate_pem())
        key_password = self.password("client-key").encode()
        certificates.write_private(tls / "client.key", client.key_pem(key_password))
        say(f"made a CA and certificates for localhost in {tls}")


class SecureKafka(Kafka):
    """The broker with SASL_SSL, mutual TLS and ACLs."""

    def __init__(
        self, root: Path, port: int, controller_port: int, mtls_port: int, material: Material
    ) -> None:
        super().__init__(root, port, controller_port)
        self.mtls_port = mtls_port
        self.material = material

    @property
    def bootstrap(self) -> str:
        return f"localhost:{self.port}"  # the certificate's name: clients check it

    @property
    def mtls_bootstrap(self) -> str:
        return f"localhost:{self.mtls_port}"

    def check_ports(self) -> None:
        super().check_ports()
        if self.service.pid() is None:
            refuse_busy((self.mtls_port,), "Kafka (mutual TLS)", "NEXTBEST_DEV_SECURE_MTLS_PORT")

    def prepare(self) -> None:
        # SCRAM credentials live in the formatted storage: without their
        # passwords the storage is useless, so format afresh
        formatted = (self.root / "data" / "meta.properties").exists()
        if formatted and not (self.material.secrets / "kafka-nextbest.password").exists():
            say("Kafka's storage has users whose passwords are gone: formatting it afresh")
            shutil.rmtree(self.root / "data")
            (self.root / "data").mkdir()
            (self.root / "cluster.id").unlink(missing_ok=True)

    def properties(self) -> str:
        m = self.material
        plain = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="controller" password="{m.password("kafka-controller")}" '
            f'user_controller="{m.password("kafka-controller")}";'
        )
        scram = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="admin" password="{m.password("kafka-admin")}";'
        )
        base = super().properties().splitlines()
        replaced = ("listeners=", "advertised.listeners=", "inter.broker.listener.name=",
                    "listener.security.protocol.map=")  # fmt: skip
        lines = [line for line in base if line and not line.startswith(replaced)]
        return "\n".join(
            [
                *lines,
                f"listeners=SASL_SSL://localhost:{self.port},MTLS://localhost:{self.mtls_port},"
                f"CONTROLLER://127.0.0.1:{self.controller_port}",
                f"advertised.listeners=SASL_SSL://localhost:{self.port},"
                f"MTLS://localhost:{self.mtls_port}",
                "inter.broker.listener.name=SASL_SSL",
                "listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,SASL_SSL:SASL_SSL,"
                "MTLS:SSL",
                # KRaft's controller cannot use SCRAM: PLAIN, on loopback only
                "sasl.mechanism.controller.protocol=PLAIN",
                "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
                f"listener.name.controller.plain.sasl.jaas.config={plain}",
                "sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256",
                "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
                f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}",
                f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram}",
                "ssl.keystore.type=PKCS12",
                f"ssl.keystore.location={m.tls / 'broker.p12'}",
                f"ssl.keystore.password={m.password('keystore')}",
                f"ssl.key.password={m.password('keystore')}",
                # a PEM trust store: Java ignores certificates in a PKCS12 store
                # that lack its own "trusted" attribute, which only keytool sets
                "ssl.truststore.type=PEM",
                f"ssl.truststore.location={m.ca}",
                "listener.name.mtls.ssl.client.auth=required",
                # a client certificate's CN is its user: CN=nextbest is User:nextbest
                "ssl.principal.mapping.rules=RULE:^CN=([^,]+),.*$/$1/,DEFAULT",
                "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                "super.users=User:admin;User:controller",
                "allow.everyone.if.no.acl.found=false",
                # a consumer of a missing changelog would create it with 1 partition
                "auto.create.topics.enable=false",
                "",
            ]
        )

    def format_arguments(self) -> list[str]:
        m = self.material
        users = [
            ("SCRAM-SHA-512", "admin", m.password("kafka-admin")),
            ("SCRAM-SHA-512", "nextbest", m.password("kafka-nextbest")),
            ("SCRAM-SHA-256", "nextbest", m.password("kafka-nextbest")),
            ("SCRAM-SHA-512", "nextbest-limited", m.password("kafka-limited")),
        ]
        arguments = []
        for mechanism, name, password in users:
            arguments += ["--add-scram", f"{mechanism}=[name={name},password={password}]"]
        return arguments

    def client_options(self) -> dict[str, Any]:
        """The admin user's options: the readiness probe and the ACLs use them."""
        return {
            "security_protocol": "SASL_SSL",
            "ssl_context": ssl.create_default_context(cafile=str(self.material.ca)),
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "admin",
            "sasl_plain_password": self.material.password("kafka-admin"),
        }

    def after_start(self) -> None:
        bindings = [("nextbest", *acl) for acl in WORKER_KAFKA_ACLS]
        bindings += [("nextbest-limited", *acl) for acl in LIMITED_KAFKA_ACLS]
        with ThreadPoolExecutor(max_workers=1) as pool:
            work = _create_acls(self.bootstrap, self.client_options(), bindings)
            pool.submit(asyncio.run, work).result()
        count = sum(len(binding[-1]) for binding in bindings)
        say(f"Kafka ACLs set for users nextbest and nextbest-limited ({count})")


async def _create_acls(
    bootstrap: str,
    options: dict[str, Any],
    bindings: list[tuple[str, str, str, str, tuple[str, ...]]],
) -> None:
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.admin import CreateAclsRequest

    client = AIOKafkaClient(bootstrap_servers=bootstrap, **options)
    await client.bootstrap()
    try:
        node = next(iter(client.cluster.brokers())).nodeId
        for principal, resource, pattern, name, operations in bindings:
            for operation in operations:
                request = CreateAclsRequest(
                    _RESOURCE[resource], name, _PATTERN[pattern], f"User:{principal}", "*",
                    _OPERATION[operation], _ALLOW,
                )  # fmt: skip
                response = await client.send(node, request)
                for code, message in response.creation_responses:
                    if code != 0:
                        raise DevStackError(
                            f"Kafka refused the ACL {operation} on {resource} {name} for "
                            f"{principal}: error {code} {message}"
                        )
    finally:
        await client.close()


class SecureRedis(Redis):
    """Redis with TLS only and ACL users."""

    def __init__(self, root: Path, port: int, material: Material) -> None:
        super().__init__(root, port)
        self.material = material

    @property
    def url(self) -> str:
        return f"rediss://localhost:{self.port}/0"

    def arguments(self) -> list[str]:
        self.root.mkdir(parents=True, exist_ok=True)
        acl = self.root / "users.acl"
        certificates.write_private(acl, self.acl_file().encode())
        tls = self.material.tls
        return ["--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
                "--tls-cert-file", str(tls / "server.crt"), "--tls-key-file",
                str(tls / "server.key"), "--tls-ca-cert-file", str(self.material.ca),
                "--tls-auth-clients", "no", "--aclfile", str(acl), "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--dir", str(self.root)]  # fmt: skip

    def acl_file(self) -> str:
        """Users with password hashes: the file holds no password."""

        def digest(name: str) -> str:
            return "#" + hashlib.sha256(self.material.password(name).encode()).hexdigest()

        return "\n".join(
            [
                "user default off resetkeys resetchannels -@all",
                f"user admin on {digest('redis-admin')} ~* &* +@all",
                f"user nextbest-worker on {digest('redis-worker')} {WORKER_REDIS_ACL}",
                f"user nextbest-api on {digest('redis-api')} {API_REDIS_ACL}",
                "",
            ]
        )

    def answers(self) -> bool:
        import redis

        client = redis.Redis(
            host="localhost",
            port=self.port,
            username="admin",
            password=self.material.password("redis-admin"),
            ssl=True,
            ssl_ca_certs=str(self.material.ca),
            socket_timeout=1,
            socket_connect_timeout=1,
        )
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()


def client_settings(kafka: SecureKafka, redis: SecureRedis, role: str) -> dict[str, str]:
    """The ``NEXTBEST_*`` settings of ``role`` (one of :data:`ROLES`), secrets as files."""
    m = kafka.material
    if role not in ROLES:
        raise DevStackError(f"unknown role {role!r} ({', '.join(ROLES)})")
    settings = dict(_kafka_settings(kafka, role))
    redis_user = {"api": "nextbest-api", "admin": "admin"}.get(role, "nextbest-worker")
    redis_password = {"api": "redis-api", "admin": "redis-admin"}.get(role, "redis-worker")
    settings |= {
        "NEXTBEST_REDIS_URL": redis.url,
        "NEXTBEST_REDIS_USERNAME": redis_user,
        "NEXTBEST_REDIS_PASSWORD_FILE": str(m.password_file(redis_password)),
        "NEXTBEST_REDIS_SSL_CA_CERTS": str(m.ca),
    }
    return settings


def _kafka_settings(kafka: SecureKafka, role: str) -> Iterator[tuple[str, str]]:
    m = kafka.material
    if role == "api":  # the API never talks to Kafka
        return
    yield "NEXTBEST_KAFKA_SSL_CAFILE", str(m.ca)
    if role == "mtls":
        yield "NEXTBEST_KAFKA_BOOTSTRAP", kafka.mtls_bootstrap
        yield "NEXTBEST_KAFKA_SECURITY_PROTOCOL", "SSL"
        yield "NEXTBEST_KAFKA_SSL_CERTFILE", str(m.tls / "client.crt")
        yield "NEXTBEST_KAFKA_SSL_KEYFILE", str(m.tls / "client.key")
        yield "NEXTBEST_KAFKA_SSL_KEY_PASSWORD_FILE", str(m.password_file("client-key"))
        return
    user, password = {
        "admin": ("admin", "kafka-admin"),
        "limited": ("nextbest-limited", "kafka-limited"),
    }.get(role, ("nextbest", "kafka-nextbest"))
    yield "NEXTBEST_KAFKA_BOOTSTRAP", kafka.bootstrap
    yield "NEXTBEST_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"
    yield "NEXTBEST_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"
    yield "NEXTBEST_KAFKA_SASL_USERNAME", user
    yield "NEXTBEST_KAFKA_SASL_PASSWORD_FILE", str(m.password_file(password))


def write_env_files(kafka: SecureKafka, redis: SecureRedis) -> None:
    """``<secure dir>/<role>.env``: ``set -a; . <file>`` gives a shell that role's settings."""
    for role in ROLES:
        lines = [f"{name}={value}" for name, value in client_settings(kafka, redis, role).items()]
        (kafka.material.root / f"{role}.env").write_text("\n".join(lines) + "\n")
