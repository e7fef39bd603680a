"""Smoke test of the benchmark harness: the quick suite's machinery, end to end, on tiny numbers.

It measures nothing, so it asserts nothing that depends on speed: on a loaded machine a tiny
window may see no round trip at all. It checks what the machinery must do whatever the load:
drive every target through every scenario without a failure or an error, finish work bounded
by count (the churn scenario's connections), write its results, stop every process it started
and remove the temporary files that hold the benchmark secret.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NEEDED = ("picows", "uvloop", "matplotlib", "psutil", "websockets")
BUDGET_S = 600
"""A bound for a hung harness, not a measurement: the tiny suite takes about 16 s on an idle machine."""
TARGETS = ("antiphon", "ws-asyncio", "ws-trio", "engine-probe", "trio-ws-echo", "tcp-echo")


def _harness(out: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    """Run the tiny suite in a process group of its own; whatever happens, nothing of it outlives this call."""
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "--tiny", "--out", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=BUDGET_S)
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    finally:
        # The harness, its servers and its load generators share this group.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@pytest.mark.slow
def test_quick_harness_runs_end_to_end_on_tiny_numbers(tmp_path: Path) -> None:
    """`python -m benchmarks --tiny` drives every target through all five scenarios, writes JSON, table and chart, and cleans up."""
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the bench extra is not installed (missing {', '.join(missing)})")
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    tmp.mkdir()
    done = _harness(out, tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "failed:" not in done.stderr, done.stderr[-3000:]
    (result,) = out.glob("*.json")
    doc = json.loads(result.read_text())
    raw, summary = doc["raw"], doc["summary"]
    for target in TARGETS:
        (rt,) = raw["rt"][target]
        assert rt["10"]["errors"] == 0 and rt["10"]["failed_to_connect"] == 0, target
        assert rt["10"]["error_events"] == 0 and rt["10"]["bad_turns"] == 0, target
        assert not rt.get("killed_on_stop"), f"{target} did not stop on SIGINT"
    for scenario in ("stream", "idle", "churn", "slow"):
        (run,) = raw[scenario]["antiphon"]
        assert "failed" not in run, (scenario, run)
    stream = raw["stream"]["antiphon"][0]["4"]
    assert stream["errors"] == stream["error_events"] == stream["bad_turns"] == 0
    assert raw["idle"]["antiphon"][0]["20"]["conns"] == 20
    churn = summary["churn"]["antiphon"]
    # Bounded by count, not time: each churn connection gets up to 30 s to connect and finish a turn.
    assert churn["connected"] == churn["attempted"] > 0 and churn["churn_errors"] == 0
    assert "antiphon / ws-asyncio" in result.with_suffix(".md").read_text()
    assert result.with_suffix(".png").stat().st_size > 0
    assert list(tmp.iterdir()) == [], "temporary files (they hold the benchmark secret) were left behind"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_harness_leaves_no_server_behind(tmp_path: Path, signum: signal.Signals) -> None:
    """Killed mid-run, the harness takes its servers with it; on SIGTERM it also removes its secret-holding files."""
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the bench extra is not installed (missing {', '.join(missing)})")
    import psutil

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    argv = [sys.executable, "-m", "benchmarks", "--tiny", "--targets", "antiphon", "--scenarios", "idle", "--out", str(tmp_path)]
    # Its own session, so that SIGKILL reaches the harness alone, as when an OOM killer or CI picks it.
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp)}, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        harness = psutil.Process(proc.pid)
        servers: list[psutil.Process] = []
        for _ in range(600):  # until the server is up: bounded polling, not a measurement
            servers = [c for c in harness.children(recursive=True) if "serve" in c.cmdline()]
            if servers and list(tmp.glob("*.toml")):
                break
            psutil.wait_procs([harness], timeout=0.1)
        assert servers, "the harness never started a server"
        proc.send_signal(signum)
        proc.wait(timeout=BUDGET_S)
        gone, alive = psutil.wait_procs(servers, timeout=30)
        assert alive == [], f"servers left running: {alive}"
        if signum == signal.SIGTERM:
            assert list(tmp.iterdir()) == [], "temporary files were left behind"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
