"""``bench/compare.py`` end to end, small: the harness measures what it says it does.

Runs the floor and nextbest arms (the Quix arm needs ``make bench``'s own venv)
on the bench's dedicated Kafka and Redis, with a tiny backlog and one low load.
It checks that every figure the report prints was really measured (records
drained, triggers and mirror updates timed, changelog restored), not how fast:
speed is the benchmark's business, not a test's.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.e2e.bench_run import run_bench

pytestmark = pytest.mark.e2e


def test_the_benchmark_measures_every_figure_it_reports(tmp_path: Path) -> None:
    out = run_bench(
        "bench.compare",
        *("--quick", "--arms", "floor,nextbest"),
        *("--events", "2000", "--rates", "200", "--seconds", "3", "--switches", "500"),
        tmp_path=tmp_path,
    )
    report = orjson.loads((out / "quick.json").read_bytes())
    floor, ours = report["summary"]["floor"], report["summary"]["nextbest"]
    for arm in (floor, ours):
        assert arm["events_per_s"] > 0
        assert arm["cpu_s_per_1k"] > 0
        assert arm["peak_rss_mb"] > 0
        low = arm["loads"][0]
        assert low["label"] == "200/s"
        assert low["caught_up"]
        assert low["samples"] > 0
        assert 0 < low["p50_ms"] <= low["p99_ms"]
        assert arm["switches_per_s"] > 0
    assert floor["loads"][0]["samples"] >= 200 * 3 * 0.9  # every record passes through
    assert ours["loads"][0]["mirror_p99_ms"] > 0
    assert ours["loads"][0]["worker_mirror_p99_ms"] > 0  # read off the worker's /metrics
    assert floor["loads"][0]["worker_mirror_p99_ms"] is None
    # one changelog record per customer per batch: some, never more than the events
    [run] = [r for r in report["runs"] if r["arm"] == "nextbest"]
    sent = run["events"] + sum(load["sent"] for load in run["loads"]) + 2 * 500
    # every chat.started after a help page view is a switch that fires agent_handoff
    assert run["switches"]["outputs"] >= run["switches"]["events"] == 500
    assert 0 < ours["recovery_records"] <= sent
    assert ours["recovery_records_per_s"] > 0
    markdown = (out / "quick.md").read_text()
    assert "| max throughput, events/s (min-max) |" in markdown
    assert "| max throughput ≥ 0.35 x floor |" in markdown
    assert "| every event a switch firing a trigger: events/s |" in markdown
