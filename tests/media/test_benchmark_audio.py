"""Smoke test of benchmarks/audio_streams.py: both ramps and the interrupt timing run end to end on tiny numbers."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.slow
def test_audio_benchmark_runs_end_to_end_on_tiny_numbers(tmp_path: Path) -> None:
    """`--tiny` streams to 2 clients with and without resampling, times 3 interrupts, and writes its JSON."""
    missing = [m for m in ("picows", "uvloop") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the bench extra is not installed (missing {', '.join(missing)})")
    out = tmp_path / "audio.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.audio_streams", "--tiny", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    for name in ("no_resampling", "resampling_24k_to_16k"):
        first = doc["ramps"][name][0]
        assert first["streams"] == 2 and first["chunks_received_in_window"] > 0
    assert doc["ramps"]["resampling_24k_to_16k"][0]["converted"] > 0
    assert doc["interrupts"]["interrupts"] == 3 and doc["interrupts"]["stale_audio_after_frame"] == 0
