"""Settings from the environment: the contract's defaults, its duration forms, one-line errors."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from nextbest.cli import main
from nextbest.settings import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: ``make test`` exports NEXTBEST_KAFKA_BOOTSTRAP and friends."""
    for name in list(os.environ):
        if name.startswith("NEXTBEST_"):
            monkeypatch.delenv(name)


def test_defaults_are_the_contracts() -> None:
    settings = load_settings()
    assert settings.kafka_bootstrap == "localhost:9092"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.channels == (
        "web",
        "mobile",
        "store",
        "contact-center",
        "chat",
        "email",
        "social",
    )
    assert settings.topic_partitions == 8
    assert settings.processing_guarantee == "at_least_once"
    assert settings.journey_window == timedelta(minutes=30)
    assert settings.cart_abandon_after == timedelta(minutes=15)
    assert settings.checkout_stall_after == timedelta(minutes=10)
    assert settings.search_frustration_count == 3
    assert settings.trigger_cooldown == timedelta(minutes=30)
    assert settings.max_signal_age == timedelta(minutes=10)
    assert settings.rules is None
    assert settings.context_ttl == timedelta(days=30)
    assert settings.max_event_bytes == 65536
    assert settings.api_port == 8080
    assert settings.worker_port == 6066
    assert settings.api_tokens == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15m", timedelta(minutes=15)),
        ("2s", timedelta(seconds=2)),
        ("500ms", timedelta(milliseconds=500)),
        ("90", timedelta(seconds=90)),
        ("30d", timedelta(days=30)),
        ("1.5h", timedelta(minutes=90)),
    ],
)
def test_durations_take_the_contracts_forms(
    monkeypatch: pytest.MonkeyPatch, text: str, expected: timedelta
) -> None:
    monkeypatch.setenv("NEXTBEST_CART_ABANDON_AFTER", text)
    assert load_settings().cart_abandon_after == expected


def test_channels_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXTBEST_CHANNELS", " web, kiosk ,chat,")
    monkeypatch.setenv("NEXTBEST_API_TOKENS", "a,b")
    settings = load_settings()
    assert settings.channels == ("web", "kiosk", "chat")
    assert settings.api_tokens == ("a", "b")


def test_every_setting_is_read_from_its_nextbest_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXTBEST_KAFKA_BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("NEXTBEST_REDIS_URL", "redis://redis:6379/1")
    monkeypatch.setenv("NEXTBEST_DATA_DIR", "/var/lib/nextbest")
    monkeypatch.setenv("NEXTBEST_PROCESSING_GUARANTEE", "exactly_once")
    settings = load_settings()
    assert settings.kafka_bootstrap == "kafka:9092"
    assert settings.redis_url == "redis://redis:6379/1"
    assert settings.data_dir == Path("/var/lib/nextbest")
    assert settings.processing_guarantee == "exactly_once"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("JOURNEY_WINDOW", "half an hour"),
        ("CART_ABANDON_AFTER", "0"),
        ("CART_ABANDON_AFTER", "-5m"),
        ("CONTEXT_TTL", "10 parsecs"),
        ("TOPIC_PARTITIONS", "0"),
        ("TOPIC_PARTITIONS", "eight"),
        ("SEARCH_FRUSTRATION_COUNT", "-1"),
        ("MAX_EVENT_BYTES", "64k"),
        ("API_PORT", "70000"),
        ("WORKER_PORT", "http"),
        ("PROCESSING_GUARANTEE", "at_most_once"),
        ("CHANNELS", ","),
        ("CHANNELS", "web,web"),
        ("CHANNELS", "web,sms text"),
        ("RULES", "/nonexistent/rules.toml"),
        ("LOG_LEVEL", "LOUD"),
        ("KAFKA_SECURITY_PROTOCOL", "TLS"),
        ("APP_ID", "no spaces allowed"),
    ],
)
def test_a_bad_value_raises_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"NEXTBEST_{name}", value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"invalid setting NEXTBEST_{name}: ")


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.topic_partitions = 4  # type: ignore[misc]
    assert isinstance(settings, Settings)


def test_worker_with_a_bad_setting_exits_2_printing_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NEXTBEST_TOPIC_PARTITIONS", "many")
    assert main(["worker"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("nextbest: invalid setting NEXTBEST_TOPIC_PARTITIONS: ")
