"""Running a ``bench`` module as ``make bench`` does, for the e2e tests of the benchmarks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(module: str, *args: str, tmp_path: Path) -> Path:
    """Run ``python -m <module> <args>`` with its work and output under ``tmp_path``.

    Fails the test with the run's last output unless it exits 0; returns the
    folder the results were written to.
    """
    out = tmp_path / "out"
    done = subprocess.run(
        [
            *(sys.executable, "-m", module, *args),
            *("--workdir", str(tmp_path / "work"), "--out", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out
