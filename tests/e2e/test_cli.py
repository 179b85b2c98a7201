"""``nextbest worker`` as an operator starts it: bad configuration stops it with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.integration.harness import free_port


def run_worker(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nextbest.cli", "worker"],
        env={**os.environ, "NEXTBEST_DATA_DIR": str(tmp_path / "data"), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )


def test_a_bad_setting_stops_start_up_with_one_line(tmp_path: Path) -> None:
    done = run_worker(tmp_path, NEXTBEST_JOURNEY_WINDOW="half an hour")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("nextbest: invalid setting NEXTBEST_JOURNEY_WINDOW: ")


def test_a_bad_rules_file_stops_start_up_naming_the_line(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rule]]\nsignal = "payment_failed"\naction = "payment_help"\n'
        'target = "event.channel"\npriority = 80\n\n'
        '[[rule]]\nsignal = "moon_phase"\naction = "howl"\ntarget = "web"\npriority = 1\n'
    )
    done = run_worker(tmp_path, NEXTBEST_RULES=str(rules))
    assert done.returncode == 2
    assert done.stderr == (
        f"nextbest: {rules}:8: rule 2: signal: 'moon_phase' is not a signal (known: "
        "channel_switch, cart_abandoned, checkout_stalled, payment_failed, "
        "search_frustration, contact_abandoned, showrooming)\n"
    )


def test_a_missing_rules_file_is_named(tmp_path: Path) -> None:
    done = run_worker(tmp_path, NEXTBEST_RULES=str(tmp_path / "nope.toml"))
    assert done.returncode == 2
    assert "NEXTBEST_RULES" in done.stderr
    assert "nope.toml" in done.stderr


def test_an_unreachable_broker_is_named(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    done = run_worker(tmp_path, NEXTBEST_KAFKA_BOOTSTRAP=address)
    assert done.returncode == 1
    assert done.stderr == f"nextbest: Kafka at {address}: nothing answers (Connection refused)\n"
