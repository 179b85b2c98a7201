"""``bench/faust_cost.py`` end to end, small: every mode drains what it was given.

Several batches per mode (a drain is timed from its first batch to its last).
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.e2e.bench_run import run_bench

pytestmark = pytest.mark.e2e


def test_each_mode_drains_every_record_and_is_timed(tmp_path: Path) -> None:
    out = run_bench("bench.faust_cost", "--events", "5000", tmp_path=tmp_path)
    report = orjson.loads((out / "faust_cost.json").read_bytes())
    assert list(report["results"]) == [
        "consume",
        "iterate",
        "send",
        "table",
        "batch",
        "batch-table",
    ]
    for figures in report["results"].values():
        assert figures["records"] >= 5000
        assert figures["seconds"] > 0
        assert figures["cpu_s_per_1k"] > 0
    markdown = (out / "faust_cost.md").read_text()
    assert "| faust agent, + table write (RocksDB + changelog) |" in markdown
    assert "| nextbest's batch consumer, + batch write (changelog acked, WriteBatch) |" in markdown
