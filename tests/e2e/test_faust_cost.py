"""``bench/faust_cost.py`` end to end, small: every mode drains what it was given.

Several batches per mode (a drain is timed from its first batch to its last).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_each_mode_drains_every_record_and_is_timed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench.faust_cost", "--events", "5000"),
            *("--workdir", str(tmp_path / "work"), "--out", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = orjson.loads((out / "faust_cost.json").read_bytes())
    assert list(report["results"]) == ["consume", "iterate", "eager", "send", "table"]
    for figures in report["results"].values():
        assert figures["records"] >= 5000
        assert figures["seconds"] > 0
        assert figures["cpu_s_per_1k"] > 0
    markdown = (out / "faust_cost.md").read_text()
    assert "| faust agent, + table write (RocksDB + changelog) |" in markdown
    assert "| the same, nextbest's eager delivery |" in markdown
