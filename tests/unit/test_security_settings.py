"""Security settings: secrets from files, combinations that would not do what was meant."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nextbest.cli import main
from nextbest.settings import SECRET_SETTINGS, Settings, SettingsError, load_settings

PASSWORD = "pa55-w0rd-that-must-not-leak"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("NEXTBEST_"):
            monkeypatch.delenv(name)


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    path = tmp_path / "ca.crt"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def secret_file(tmp_path: Path, content: str, name: str = "secret") -> Path:
    path = tmp_path / name
    path.write_text(content)
    return path


def sasl(monkeypatch: pytest.MonkeyPatch, **extra: str) -> None:
    monkeypatch.setenv("NEXTBEST_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("NEXTBEST_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("NEXTBEST_KAFKA_SASL_USERNAME", "nextbest")
    for name, value in extra.items():
        monkeypatch.setenv(f"NEXTBEST_{name}", value)


def error_of(monkeypatch: pytest.MonkeyPatch) -> str:
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert "\n" not in message
    assert PASSWORD not in message
    return message


@pytest.mark.parametrize("name", SECRET_SETTINGS)
def test_every_secret_setting_has_a_file_form(name: str) -> None:
    assert f"{name}_file" in Settings.model_fields


def test_a_password_comes_from_its_file_without_the_line_break(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sasl(monkeypatch, KAFKA_SASL_PASSWORD_FILE=str(secret_file(tmp_path, PASSWORD + "\n")))
    settings = load_settings()
    assert settings.kafka_sasl_password is not None
    assert settings.kafka_sasl_password.get_secret_value() == PASSWORD


def test_api_tokens_file_holds_one_token_per_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NEXTBEST_API_TOKENS_FILE", str(secret_file(tmp_path, "one\ntwo,three\n")))
    assert load_settings().api_tokens == ("one", "two", "three")


def test_redis_url_and_password_from_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = secret_file(tmp_path, f"rediss://worker:{PASSWORD}@redis:6380/0\n", "url")
    monkeypatch.setenv("NEXTBEST_REDIS_URL_FILE", str(url))
    settings = load_settings()
    assert settings.redis_url == f"rediss://worker:{PASSWORD}@redis:6380/0"
    assert PASSWORD not in repr(settings)
    monkeypatch.delenv("NEXTBEST_REDIS_URL_FILE")
    monkeypatch.setenv("NEXTBEST_REDIS_URL", "rediss://redis:6380/0")
    monkeypatch.setenv("NEXTBEST_REDIS_USERNAME", "nextbest-worker")
    monkeypatch.setenv("NEXTBEST_REDIS_PASSWORD_FILE", str(secret_file(tmp_path, PASSWORD)))
    settings = load_settings()
    assert settings.redis_password is not None
    assert settings.redis_password.get_secret_value() == PASSWORD


def test_no_secret_in_the_repr(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sasl(monkeypatch, KAFKA_SASL_PASSWORD=PASSWORD, API_TOKENS=f"{PASSWORD}-token")
    monkeypatch.setenv("NEXTBEST_REDIS_URL", f"rediss://u:{PASSWORD}@redis:6380/0")
    settings = load_settings()
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (
            {"KAFKA_SASL_PASSWORD": PASSWORD, "KAFKA_SASL_PASSWORD_FILE": "{file}"},
            "invalid setting NEXTBEST_KAFKA_SASL_PASSWORD_FILE: NEXTBEST_KAFKA_SASL_PASSWORD is "
            "set too; set only one of them",
        ),
        (
            {"KAFKA_SASL_PASSWORD_FILE": "/nonexistent/password"},
            "invalid setting NEXTBEST_KAFKA_SASL_PASSWORD_FILE: cannot read "
            "/nonexistent/password (No such file or directory)",
        ),
        (
            {"KAFKA_SASL_PASSWORD_FILE": "{empty}"},
            "invalid setting NEXTBEST_KAFKA_SASL_PASSWORD_FILE: {empty} is empty",
        ),
        (
            {"KAFKA_SASL_USERNAME": ""},
            "invalid setting NEXTBEST_KAFKA_SASL_USERNAME: needed because "
            "NEXTBEST_KAFKA_SECURITY_PROTOCOL is SASL_SSL",
        ),
        (
            {},
            "invalid setting NEXTBEST_KAFKA_SASL_PASSWORD (or NEXTBEST_KAFKA_SASL_PASSWORD_FILE): "
            "needed because NEXTBEST_KAFKA_SECURITY_PROTOCOL is SASL_SSL",
        ),
        (
            {"KAFKA_SASL_PASSWORD": PASSWORD, "KAFKA_SSL_CAFILE": "/nonexistent/ca.crt"},
            "invalid setting NEXTBEST_KAFKA_SSL_CAFILE: no file at /nonexistent/ca.crt",
        ),
    ],
)
def test_a_bad_secret_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, setup: dict[str, str], expected: str
) -> None:
    files = {
        "file": str(secret_file(tmp_path, PASSWORD)),
        "empty": str(secret_file(tmp_path, "\n", "empty")),
    }
    sasl(monkeypatch)
    for name, value in setup.items():
        monkeypatch.setenv(f"NEXTBEST_{name}", value.format(**files))
    assert error_of(monkeypatch) == expected.format(**files)


@pytest.mark.parametrize(
    ("protocol", "setting", "expected"),
    [
        ("PLAINTEXT", "KAFKA_SSL_CAFILE", "which uses no TLS"),
        ("SASL_PLAINTEXT", "KAFKA_SSL_CAFILE", "which uses no TLS"),
        ("SSL", "KAFKA_SASL_USERNAME", "which uses no SASL"),
        ("PLAINTEXT", "KAFKA_SASL_PASSWORD", "which uses no SASL"),
        ("SSL", "KAFKA_SSL_KEYFILE", "set without NEXTBEST_KAFKA_SSL_CERTFILE"),
        ("SSL", "KAFKA_SSL_KEY_PASSWORD", "set without NEXTBEST_KAFKA_SSL_CERTFILE"),
    ],
)
def test_settings_that_would_be_ignored_stop_start_up(
    monkeypatch: pytest.MonkeyPatch, ca: Path, protocol: str, setting: str, expected: str
) -> None:
    monkeypatch.setenv("NEXTBEST_KAFKA_SECURITY_PROTOCOL", protocol)
    value = str(ca) if setting.endswith("FILE") else PASSWORD
    monkeypatch.setenv(f"NEXTBEST_{setting}", value)
    if protocol.startswith("SASL"):
        monkeypatch.setenv("NEXTBEST_KAFKA_SASL_USERNAME", "u")
        monkeypatch.setenv("NEXTBEST_KAFKA_SASL_PASSWORD", PASSWORD)
    message = error_of(monkeypatch)
    assert message.startswith(f"invalid setting NEXTBEST_{setting}: ")
    assert expected in message


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"REDIS_URL": f"http://u:{PASSWORD}@redis:6379"}, "NEXTBEST_REDIS_URL: must start with"),
        ({"REDIS_URL": f"redis://u:{PASSWORD}@redis:port/0"}, "NEXTBEST_REDIS_URL: is not a URL"),
        (
            {"REDIS_URL": "redis://", "REDIS_PASSWORD": PASSWORD},
            "NEXTBEST_REDIS_URL: names no host",
        ),
        (
            {"REDIS_URL": "redis://redis:6379/0", "REDIS_SSL_CA_CERTS": "{ca}"},
            "NEXTBEST_REDIS_SSL_CA_CERTS: set, but NEXTBEST_REDIS_URL is not rediss:// (TLS)",
        ),
        (
            {"REDIS_URL": f"rediss://u:{PASSWORD}@redis:6380/0", "REDIS_PASSWORD": "other"},
            "NEXTBEST_REDIS_PASSWORD: NEXTBEST_REDIS_URL holds one too; use one",
        ),
    ],
)
def test_redis_settings_are_checked_without_repeating_the_url(
    monkeypatch: pytest.MonkeyPatch, ca: Path, settings: dict[str, str], expected: str
) -> None:
    for name, value in settings.items():
        monkeypatch.setenv(f"NEXTBEST_{name}", value.format(ca=ca))
    assert expected in error_of(monkeypatch)


def test_the_worker_prints_the_one_line_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sasl(monkeypatch, KAFKA_SASL_PASSWORD_FILE="/nonexistent/password")
    assert main(["worker"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        "nextbest: invalid setting NEXTBEST_KAFKA_SASL_PASSWORD_FILE: cannot read "
        "/nonexistent/password (No such file or directory)\n"
    )
