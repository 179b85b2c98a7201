"""The soak's short form: load, every kind of fault but scaling, and the oracle's verdict.

``make soak`` is the long form (10 minutes by default). This runs ``bench.soak
--quick`` (about 4 minutes) on its own Kafka and Redis and fails on any figure
that misses what it must be — nothing lost, nothing doubled, every expected
trigger emitted, every malformed record dead-lettered, back within the bounds
after each fault — printing the report.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.e2e.bench_run import run_bench

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def test_the_short_soak_loses_nothing_and_recovers_within_its_bounds(tmp_path: Path) -> None:
    out = run_bench("bench.soak", "--quick", tmp_path=tmp_path)  # its report shows on failure
    report = orjson.loads((out / "soak-quick.json").read_bytes())
    failed = [c for c in report["checks"] if not c["ok"]]
    assert failed == [], (out / "soak-quick.md").read_text()
    figures = report["figures"]
    assert figures["valid_events"] > 10_000  # a real load went through
    assert figures["malformed_records"] > 1_000  # broken records and a hostile burst
    assert {f["kind"] for f in report["faults"]} == {"kill9", "pause", "broker", "redis", "burst"}
