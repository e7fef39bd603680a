"""Smoke test of the benchmark harness: the quick suite's machinery, end to end, on tiny numbers."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NEEDED = ("picows", "uvloop", "matplotlib", "psutil", "websockets")


@pytest.mark.slow
def test_quick_harness_runs_end_to_end_on_tiny_numbers(tmp_path: Path) -> None:
    """`python -m benchmarks --tiny` drives every target through all five scenarios and writes JSON, table and chart."""
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the bench extra is not installed (missing {', '.join(missing)})")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--tiny", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = tmp_path.glob("*.json")
    doc = json.loads(result.read_text())
    rt = doc["summary"]["rt"]
    for target in ("antiphon", "ws-asyncio", "ws-trio", "trio-ws-echo", "tcp-echo"):
        assert rt[target]["10"]["completed"] > 0, target
        assert rt[target]["10"]["errors"] == 0, target
    summary = doc["summary"]
    assert summary["stream"]["antiphon"]["4"]["chunks_per_s"] > 0
    assert summary["idle"]["antiphon"]["20"]["still_open"] == 20
    assert summary["churn"]["antiphon"]["connected"] == summary["churn"]["antiphon"]["attempted"]
    assert summary["slow"]["antiphon"]["stalled"]["completed"] > 0
    assert "antiphon / ws-asyncio" in result.with_suffix(".md").read_text()
    assert result.with_suffix(".png").stat().st_size > 0
