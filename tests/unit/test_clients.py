"""Client construction from settings: TLS contexts, SASL, mutual TLS, Redis users; nothing leaks."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import faust
import pytest
from aiokafka.protocol.admin import SaslAuthenticateRequest_v1
from redis.asyncio.connection import SSLConnection

from nextbest.adapters.access import unprotected, worker_needs
from nextbest.adapters.clients import (
    ClientConfigError,
    SaslRedaction,
    faust_credentials,
    kafka_client_options,
    kafka_user,
    redis_address,
    redis_client,
    redis_user,
)
from nextbest.bootstrap import topic_names
from nextbest.devstack import certificates
from nextbest.settings import Settings

PASSWORD = "kafka-pa55word"


@pytest.fixture
def tls(tmp_path: Path) -> dict[str, Path]:
    """A CA, and a client certificate whose key is encrypted with PASSWORD."""
    ca = certificates.new_ca()
    client = certificates.issue(ca, "nextbest", server=False, client=True)
    files = {"ca": tmp_path / "ca.crt", "cert": tmp_path / "c.crt", "key": tmp_path / "c.key"}
    files["ca"].write_bytes(ca.certificate_pem())
    files["cert"].write_bytes(client.certificate_pem())
    files["key"].write_bytes(client.key_pem(PASSWORD.encode()))
    return files


def settings(**values: object) -> Settings:
    return Settings(**values)  # type: ignore[arg-type]


def test_plaintext_has_no_tls_and_no_credentials() -> None:
    plain = settings()
    assert kafka_client_options(plain) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(plain) is None


def test_sasl_ssl_gives_aiokafka_and_faust_the_same_user_and_a_checking_context(
    tls: dict[str, Path],
) -> None:
    secured = settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="nextbest",
        kafka_sasl_password=PASSWORD,
        kafka_ssl_cafile=tls["ca"],
    )
    options = kafka_client_options(secured)
    assert options["security_protocol"] == "SASL_SSL"
    assert (options["sasl_mechanism"], options["sasl_plain_username"]) == (
        "SCRAM-SHA-512",
        "nextbest",
    )
    assert options["sasl_plain_password"] == PASSWORD
    context = options["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    credentials = faust_credentials(secured)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"  # faust picks it from the context
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert PASSWORD not in repr(credentials)
    assert kafka_user(secured) == "user 'nextbest' (SCRAM-SHA-512)"


def test_mutual_tls_loads_an_encrypted_key_with_its_password(tls: dict[str, Path]) -> None:
    mtls = settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=tls["ca"],
        kafka_ssl_certfile=tls["cert"],
        kafka_ssl_keyfile=tls["key"],
        kafka_ssl_key_password=PASSWORD,
    )
    credentials = faust_credentials(mtls)
    assert isinstance(credentials, faust.SSLCredentials)
    assert kafka_client_options(mtls)["security_protocol"] == "SSL"
    wrong = mtls.model_copy(update={"kafka_ssl_key_password": None})
    with pytest.raises(ClientConfigError) as raised:
        kafka_client_options(wrong)
    assert str(raised.value).startswith(
        "invalid setting NEXTBEST_KAFKA_SSL_CERTFILE/NEXTBEST_KAFKA_SSL_KEYFILE: cannot use "
    )
    assert PASSWORD not in str(raised.value)


def test_a_file_that_is_no_ca_is_refused_naming_the_setting(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.crt"
    garbage.write_text("not a certificate\n")
    bad = settings(kafka_security_protocol="SSL", kafka_ssl_cafile=garbage)
    with pytest.raises(ClientConfigError, match=r"^invalid setting NEXTBEST_KAFKA_SSL_CAFILE: "):
        kafka_client_options(bad)
    redis = settings(redis_url="rediss://redis:6380/0", redis_ssl_ca_certs=garbage)
    with pytest.raises(ClientConfigError, match=r"^invalid setting NEXTBEST_REDIS_SSL_CA_CERTS: "):
        redis_client(redis)


def test_redis_client_carries_tls_user_and_password(tls: dict[str, Path]) -> None:
    secured = settings(
        redis_url="rediss://localhost:6380/2",
        redis_username="nextbest-api",
        redis_password=PASSWORD,
        redis_ssl_ca_certs=tls["ca"],
    )
    client = redis_client(secured)
    pool = client.connection_pool
    assert pool.connection_class is SSLConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("nextbest-api", PASSWORD, 2)
    assert kwargs["ssl_ca_certs"] == str(tls["ca"])
    assert kwargs["ssl_cert_reqs"] == "required"
    assert kwargs["ssl_check_hostname"] is True
    assert kwargs["lib_name"] is None  # no CLIENT SETINFO for a least-privilege user
    assert PASSWORD not in repr(client)
    assert redis_user(secured) == "nextbest-api"


@pytest.mark.parametrize(
    ("url", "address", "user"),
    [
        (f"rediss://worker:{PASSWORD}@redis.internal:6380/0", "redis.internal:6380", "worker"),
        (f"redis://:{PASSWORD}@10.0.0.5/1", "10.0.0.5:6379", "default"),
        ("redis://[::1]:6379/0", "[::1]:6379", "default"),
        ("unix:///run/redis.sock", "/run/redis.sock", "default"),
    ],
)
def test_what_may_be_shown_of_redis_has_no_password(url: str, address: str, user: str) -> None:
    configured = settings(redis_url=url)
    assert redis_address(configured) == address
    assert redis_user(configured) == user


def test_aiokafka_debug_lines_never_show_the_sasl_exchange(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("aiokafka.conn")
    logger.addFilter(SaslRedaction())
    try:
        with caplog.at_level(logging.DEBUG, logger="aiokafka.conn"):
            request = SaslAuthenticateRequest_v1(f"\x00nextbest\x00{PASSWORD}".encode())
            logger.debug("Request to %s:%d %d: %s", "kafka", 9093, 3, request)
    finally:
        logger.filters.clear()
    [line] = caplog.messages
    assert PASSWORD not in line
    assert line == "Request to kafka:9093 3: <SaslAuthenticateRequest_v1: redacted>"


def test_the_worker_reads_its_inputs_and_writes_its_outputs() -> None:
    plain = settings(app_id="nextbest", channels="web,chat")
    needs = worker_needs(plain, topic_names(plain).all())
    assert set(needs.read) == {
        "events.web",
        "events.chat",
        "nextbest-rekey",
        "nextbest-ticks",
        "nextbest-contexts-changelog",
    }
    assert set(needs.write) == {
        "triggers.web",
        "triggers.chat",
        "events.deadletter",
        "nextbest-rekey",
        "nextbest-ticks",
        "nextbest-contexts-changelog",
    }
    assert needs.group == "nextbest"


def test_unencrypted_traffic_off_this_host_is_warned_about() -> None:
    assert unprotected(settings(kafka_bootstrap="127.0.0.1:9092")) == []
    warnings = unprotected(
        settings(kafka_bootstrap="kafka-0:9092", redis_url="redis://redis:6379/0")
    )
    assert warnings == [
        "Kafka traffic to kafka-0:9092 is not encrypted (NEXTBEST_KAFKA_SECURITY_PROTOCOL="
        "PLAINTEXT)",
        "Redis traffic to redis:6379 is not encrypted (use rediss://)",
    ]
