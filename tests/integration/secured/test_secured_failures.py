"""Refusals a person can act on: each stops start-up with one line naming the server and the cause.

A wrong password, a certificate the client does not trust, a missing ACL,
against the real secured servers: the process exits with status 1 within
seconds, having printed exactly one line (no retry storm), which names the
server and says what to change, and holds no secret.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nextbest.devstack import certificates
from tests.integration.harness import free_port
from tests.integration.secured.conftest import Secured

pytestmark = pytest.mark.timeout(120)

KAFKA = r"nextbest: Kafka at localhost:\d+: "
REDIS = r"nextbest: Redis at localhost:\d+: "
# role, settings changed, what the one line says (regular expression)
CASES = {
    "kafka-wrong-password": (
        "worker",
        {"NEXTBEST_KAFKA_SASL_PASSWORD_FILE": "{wrong}"},
        KAFKA + r"authentication failed for user 'nextbest' \(SCRAM-SHA-512\); check "
        r"NEXTBEST_KAFKA_SASL_USERNAME and NEXTBEST_KAFKA_SASL_PASSWORD\(_FILE\)$",
    ),
    "kafka-untrusted-certificate": (
        "worker",
        {"NEXTBEST_KAFKA_SSL_CAFILE": "{other_ca}"},
        KAFKA + r"its TLS certificate is not trusted \(self.signed certificate in certificate "
        r"chain\); set NEXTBEST_KAFKA_SSL_CAFILE to the CA that signed the broker's certificate$",
    ),
    "kafka-missing-acl": (
        "limited",
        {},
        KAFKA + r"user 'nextbest-limited' \(SCRAM-SHA-512\) may not Write topic "
        r"events\.deadletter \(and \d+ more\) \(TOPIC_AUTHORIZATION_FAILED\); grant it with "
        r"an ACL \(README: Security\)$",
    ),
    "kafka-mtls-without-certificate": (
        "mtls",
        {
            "NEXTBEST_KAFKA_SSL_CERTFILE": "",
            "NEXTBEST_KAFKA_SSL_KEYFILE": "",
            "NEXTBEST_KAFKA_SSL_KEY_PASSWORD_FILE": "",
        },
        KAFKA + r"the TLS handshake failed \(SSLV3_ALERT_BAD_CERTIFICATE\); the broker wants a "
        r"client certificate it trusts: check NEXTBEST_KAFKA_SSL_CERTFILE and "
        r"NEXTBEST_KAFKA_SSL_KEYFILE$",
    ),
    "redis-wrong-password": (
        "worker",
        {"NEXTBEST_REDIS_PASSWORD_FILE": "{wrong}"},
        REDIS + r"authentication failed for user 'nextbest-worker'; check "
        r"NEXTBEST_REDIS_USERNAME and NEXTBEST_REDIS_PASSWORD\(_FILE\)",
    ),
    "redis-untrusted-certificate": (
        "worker",
        {"NEXTBEST_REDIS_SSL_CA_CERTS": "{other_ca}"},
        REDIS + r"its TLS certificate is not trusted \(self.signed certificate in certificate "
        r"chain\); check NEXTBEST_REDIS_SSL_CA_CERTS$",
    ),
    "redis-missing-acl": (
        "worker",
        {
            "NEXTBEST_REDIS_USERNAME": "nextbest-api",
            "NEXTBEST_REDIS_PASSWORD_FILE": "{api_password}",
        },
        REDIS + r"user 'nextbest-api' may not do what the worker needs \(this user has no "
        r"permissions to run the 'script\|load' command\); give it the ACL in README: Security$",
    ),
    "api-redis-wrong-password": (
        "api",
        {"NEXTBEST_REDIS_PASSWORD_FILE": "{wrong}"},
        REDIS + r"authentication failed for user 'nextbest-api'",
    ),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, secured: Secured) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("refusals")
    wrong = folder / "wrong.password"
    wrong.write_text("not-the-password\n")
    other_ca = folder / "other-ca.crt"
    other_ca.write_bytes(certificates.new_ca("somebody else's CA").certificate_pem())
    api_password = secured.kafka.material.password_file("redis-api")
    return {"wrong": str(wrong), "other_ca": str(other_ca), "api_password": str(api_password)}


def start(
    secured: Secured, role: str, changes: dict[str, str], workdir: Path
) -> tuple[int, str, str, float]:
    command = "api" if role == "api" else "worker"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTBEST_")}
    env |= secured.env(role) | {
        "NEXTBEST_APP_ID": "nextbest-refused",
        "NEXTBEST_DATA_DIR": str(workdir / "data"),
        "NEXTBEST_WORKER_PORT": str(free_port()),
        "NEXTBEST_API_PORT": str(free_port()),
        "NEXTBEST_API_TOKENS": "a-service-token",  # else the API warns that /v1 is open
    }
    for name, value in changes.items():
        if value:
            env[name] = value
        else:
            env.pop(name, None)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "nextbest.cli", command],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_refusal_stops_start_up_with_one_line(
    case: str, secured: Secured, files: dict[str, str], tmp_path: Path
) -> None:
    role, changes, expected = CASES[case]
    changes = {name: value.format(**files) for name, value in changes.items()}
    status, out, err, seconds = start(secured, role, changes, tmp_path)
    lines = (out + err).splitlines()
    print(f"{case} (exit {status}, {seconds:.1f} s): {' | '.join(lines)}")
    assert status == 1, lines
    assert len(lines) == 1, lines  # one line, not a retry storm
    assert re.match(expected, lines[0]), lines[0]
    for secret in secured.secrets():
        assert secret not in lines[0]
    assert seconds < 30
