"""The secured dev stack's configuration: listeners, users, ACLs, certificates, role settings."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from nextbest import devstack
from nextbest.devstack.secure import (
    API_REDIS_ACL,
    ROLES,
    WORKER_KAFKA_ACLS,
    WORKER_REDIS_ACL,
    client_settings,
)
from nextbest.settings import SECRET_SETTINGS

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def secure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> devstack.SecureDevStack:
    monkeypatch.setenv("NEXTBEST_DEV_DIR", str(tmp_path))
    monkeypatch.setenv("NEXTBEST_DEV_SECURE_KAFKA_PORT", "29192")
    monkeypatch.setenv("NEXTBEST_DEV_SECURE_CONTROLLER_PORT", "29193")
    monkeypatch.setenv("NEXTBEST_DEV_SECURE_MTLS_PORT", "29194")
    monkeypatch.setenv("NEXTBEST_DEV_SECURE_REDIS_PORT", "26479")
    return devstack.secure_stack()


def properties(stack: devstack.SecureDevStack) -> dict[str, str]:
    text = stack.kafka.properties()
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_its_own_dir_and_ports_beside_the_plain_stack(
    secure: devstack.SecureDevStack, tmp_path: Path
) -> None:
    assert secure.root == tmp_path / "secure"
    assert secure.kafka.bootstrap == "localhost:29192"  # the certificate's name
    assert secure.kafka.mtls_bootstrap == "localhost:29194"
    assert secure.redis.url == "rediss://localhost:26479/0"
    assert devstack.stack().root == tmp_path


def test_kafka_listens_with_sasl_ssl_and_mutual_tls_and_authorizes_everything(
    secure: devstack.SecureDevStack,
) -> None:
    lines = properties(secure)
    assert lines["listeners"] == (
        "SASL_SSL://localhost:29192,MTLS://localhost:29194,CONTROLLER://127.0.0.1:29193"
    )
    assert lines["listener.security.protocol.map"] == (
        "CONTROLLER:SASL_PLAINTEXT,SASL_SSL:SASL_SSL,MTLS:SSL"
    )
    assert lines["inter.broker.listener.name"] == "SASL_SSL"
    assert lines["sasl.enabled.mechanisms"] == "SCRAM-SHA-512,SCRAM-SHA-256"
    assert lines["listener.name.mtls.ssl.client.auth"] == "required"
    assert lines["authorizer.class.name"].endswith("StandardAuthorizer")
    assert lines["allow.everyone.if.no.acl.found"] == "false"
    assert lines["super.users"] == "User:admin;User:controller"
    assert lines["auto.create.topics.enable"] == "false"
    assert "PLAINTEXT://" not in lines["listeners"]
    arguments = secure.kafka.format_arguments()
    users = [a.split("[name=")[1].split(",")[0] for a in arguments if a.startswith("SCRAM")]
    assert users == ["admin", "nextbest", "nextbest", "nextbest-limited"]


def test_redis_is_tls_only_with_hashed_passwords(secure: devstack.SecureDevStack) -> None:
    arguments = secure.redis.arguments()
    assert arguments[arguments.index("--port") + 1] == "0"  # no plain-text port
    assert arguments[arguments.index("--tls-port") + 1] == "26479"
    acl = secure.redis.acl_file()
    assert "user default off" in acl
    for name in ("redis-admin", "redis-worker", "redis-api"):
        assert secure.material.password(name) not in acl
    assert "user nextbest-worker on #" in acl
    assert WORKER_REDIS_ACL in acl
    assert API_REDIS_ACL in acl
    assert "%R~nextbest:*" in API_REDIS_ACL  # the API's keys are read-only
    assert "+set" not in API_REDIS_ACL
    assert "+publish" not in API_REDIS_ACL


def test_certificates_chain_to_the_ca_and_keys_are_private(
    secure: devstack.SecureDevStack,
) -> None:
    material = secure.material
    material.make()
    tls = material.tls
    ca = x509.load_pem_x509_certificate((tls / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificates((tls / "server.crt").read_bytes())[0]
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    for private in ("server.key", "client.key", "broker.p12"):
        assert stat.S_IMODE((tls / private).stat().st_mode) == 0o600
    for password in material.secrets.glob("*.password"):
        assert stat.S_IMODE(password.stat().st_mode) == 0o600
    store = pkcs12.load_pkcs12(
        (tls / "broker.p12").read_bytes(), material.password("keystore").encode()
    )
    assert store.cert is not None
    assert store.cert.certificate == server
    assert b"ENCRYPTED PRIVATE KEY" in (tls / "client.key").read_bytes()


@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_its_secrets_as_files(secure: devstack.SecureDevStack, role: str) -> None:
    settings = client_settings(secure.kafka, secure.redis, role)
    for name in SECRET_SETTINGS:
        if name != "redis_url":  # the URL holds no password here: that is in a file
            assert f"NEXTBEST_{name.upper()}" not in settings  # only the _FILE form
    for value in settings.values():
        for password in secure.material.secrets.glob("*.password"):
            assert password.read_text().strip() not in value
    if role == "api":
        assert not [name for name in settings if name.startswith("NEXTBEST_KAFKA")]
        assert settings["NEXTBEST_REDIS_USERNAME"] == "nextbest-api"


def test_the_readme_documents_the_acls_the_stack_uses() -> None:
    text = README.read_text()
    assert WORKER_REDIS_ACL in text
    assert API_REDIS_ACL in text
    for resource, pattern, name, operations in WORKER_KAFKA_ACLS:
        assert f"| {resource} | {pattern} | `{name}` | {', '.join(operations)} |" in text
