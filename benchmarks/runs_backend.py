"""What sharing runs through Redis costs: ``--runs redis://...`` against ``memory``, in one run.

``python -m benchmarks.runs_backend`` (the ``bench`` extra, and Debian's redis-server)
starts a throwaway redis-server, then, repetition by repetition and interleaved (memory,
redis, memory, redis...), one ``antiphon serve`` per backend driven by the load generator
(:mod:`benchmarks.loadgen`, picows on uvloop, in its own process):

* ``rt``: 100 sessions in a closed loop, one whole reply per message (ack + response);
* ``stream``: 100 sessions, each message answered with 20 streamed chunks.

It reports round trips (or chunks) per second and p50/p99 latency for each backend,
the medians, and the redis/memory ratios. Then it measures a run's state in Redis: one
session sends messages until its run has logged 1000 events (whole replies, then
streamed ones), and Redis' ``MEMORY USAGE`` of its keys is read while the session is
still connected (a run that ends leaves only a tombstone).

The server is pinned to the first core and the load generator to the second (as the
main harness does); redis-server is not pinned, so on a 2-core machine it competes with
both - which is what a small deployment running Redis beside antiphon looks like, and
why the ratios, not the absolute numbers, are the result.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import psutil

from benchmarks.runner import CLIENT_CPU, SERVER_CPU, child_setup

ROOT: Final = Path(__file__).resolve().parent.parent
PY: Final = sys.executable
SECRET: Final = "bench-secret-0123456789"
READY: Final = re.compile(r"listening on (ws://[\d.]+:\d+)")
START_TIMEOUT_S: Final = 30.0


# ------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[tuple[str, int]]:
    """A redis-server on a free loopback port, in memory only, for the block; yields its URL and pid."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("benchmarks.runs_backend: redis-server is not installed (apt-get install redis-server)")
    base = tempfile.mkdtemp(prefix="antiphon-bench-redis-")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", base, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while _resp(port, "PING") != "PONG":
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit("benchmarks.runs_backend: redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)


def _resp(port: int, *args: str) -> Any:
    """One Redis command over a fresh socket (enough for PING, FLUSHALL, SCAN, XLEN, MEMORY USAGE, STRLEN)."""
    out = b"".join([f"*{len(args)}\r\n".encode()] + [b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(out)
            return _read_reply(sock.makefile("rb"))
    except OSError:
        return None


def _read_reply(f: Any) -> Any:
    line = f.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind in (b"+", b"-"):
        return rest.decode()
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2].decode()
    if kind == b"*":
        return [_read_reply(f) for _ in range(int(rest))]
    raise ValueError(f"unexpected Redis reply {line!r}")


def _config(runs: str, streaming: bool) -> str:
    agent = "benchmarks.agents:stream" if streaming else "benchmarks.agents:echo"
    text = f"""\
host = "127.0.0.1"
port = 0
shutdown_grace = 1
max_connections = 20000
ping_interval = 20
store = "none"
runs = "{runs}"

[[connectors]]
path = "/"
secret = "{SECRET}"
agent = "{agent}"
streaming = {"true" if streaming else "false"}
max_messages = 10000
"""
    fd, path = tempfile.mkstemp(prefix="antiphon-bench-", suffix=".toml")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


@contextmanager
def antiphon(runs: str, streaming: bool) -> Iterator[tuple[str, int]]:
    """``antiphon serve`` with ``runs`` for the block, pinned to the server's core; yields its URL and pid."""
    config = _config(runs, streaming)
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [PY, "-m", "antiphon", "serve", "--config", config],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=child_setup(SERVER_CPU),
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            log.seek(0)
            match = READY.search(log.read().decode(errors="replace"))
            if match:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                sys.exit(f"benchmarks.runs_backend: antiphon serve did not start:\n{log.read().decode(errors='replace')[-2000:]}")
            time.sleep(0.05)
        yield match.group(1) + "/", proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        Path(config).unlink(missing_ok=True)


def loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the load generator once (on the client core) and return its JSON result."""
    out = subprocess.run(
        [PY, "-m", "benchmarks.loadgen", json.dumps({**spec, "cpu": CLIENT_CPU})],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=spec.get("deadline_s", 120) + 30,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        sys.exit(f"benchmarks.runs_backend: the load generator failed ({out.returncode}): {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# ------------------------------------------------------------------------- measurements


SAMPLE_INTERVAL_S: Final = 0.05


def _cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


@contextmanager
def cpu_samples(*pids: int) -> Iterator[list[tuple[float, ...]]]:
    """(wall time, CPU seconds of each pid) every 50 ms while the block runs."""
    samples: list[tuple[float, ...]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                samples.append((time.time(), *(_cpu_s(p) for p in pids)))
            except psutil.Error:
                return
            stop.wait(SAMPLE_INTERVAL_S)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


def _window_cpu(samples: list[tuple[float, ...]], t0: float, t1: float) -> tuple[float, ...]:
    """CPU seconds each process spent between wall times ``t0`` and ``t1`` (nearest samples)."""
    a = min(samples, key=lambda s: abs(s[0] - t0))
    b = min(samples, key=lambda s: abs(s[0] - t1))
    return tuple(y - x for x, y in zip(a[1:], b[1:], strict=True))


def throughput(redis_url: str, redis_pid: int, reps: int, sessions: int, duration_s: float, chunks: int) -> dict[str, Any]:
    """Closed-loop round trips and streams at ``sessions`` sessions, memory and redis interleaved; medians and ratios.

    Besides the load generator's rates and latencies, each run reports the CPU the
    server and redis-server spent per completed turn within the measured window, in
    microseconds.
    """
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    keys = ("per_s", "p50_ms", "p99_ms", "server_us_per_turn", "redis_us_per_turn")
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {s: {"memory": [], "redis": []} for s in ("rt", "stream")}
    for rep in range(reps):
        for backend in ("memory", "redis"):
            _resp(port, "FLUSHALL")
            runs = redis_url if backend == "redis" else "memory"
            for scenario, streaming in (("rt", False), ("stream", True)):
                spec: dict[str, Any] = {
                    "mode": "stream" if streaming else "rt",
                    "proto": "chat",
                    "secret": SECRET,
                    "conns": sessions,
                    "warmup_s": 0.5,
                    "duration_s": duration_s,
                }
                if streaming:
                    spec["chunks"] = chunks
                with antiphon(runs, streaming) as (url, pid), cpu_samples(pid, redis_pid) as samples:
                    result = loadgen({**spec, "url": url})
                if result.get("errors") or result.get("failed_to_connect"):
                    print(f"  warning: {backend} {scenario}: {result.get('errors')} errors", file=sys.stderr)
                phases = result["phases"]
                server_s, redis_s = _window_cpu(samples, phases["window_start"], phases["window_end"])
                result["server_us_per_turn"] = round(server_s / result["completed"] * 1e6, 1)
                result["redis_us_per_turn"] = round(redis_s / result["completed"] * 1e6, 1)
                row = {k: result.get(k) for k in keys}
                if streaming:
                    row["chunks_per_s"] = result.get("chunks_per_s")
                raw[scenario][backend].append(row)
                print(f"  rep {rep + 1} {backend:6} {scenario:6} {row}", file=sys.stderr, flush=True)
    summary: dict[str, Any] = {}
    for scenario, by_backend in raw.items():
        fields = (*keys, "chunks_per_s") if scenario == "stream" else keys
        med = {b: {k: statistics.median(r[k] for r in rows) for k in fields} for b, rows in by_backend.items()}
        ratio = {k: round(med["redis"][k] / med["memory"][k], 2) for k in fields if med["memory"][k]}
        summary[scenario] = {"median": med, "redis_over_memory": ratio, "runs": by_backend}
    return summary


def state_size(redis_url: str, events: int = 1000) -> dict[str, Any]:
    """Bytes Redis holds for one live run after ``events`` events: whole replies, then streamed (8 chunks a turn)."""
    import websockets.sync.client

    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    out: dict[str, Any] = {}
    for label, streaming in (("replies", False), ("streams", True)):
        _resp(port, "FLUSHALL")
        with antiphon(redis_url, streaming) as (url, _), websockets.sync.client.connect(url, max_size=None) as ws:
            ws.send(json.dumps({"secret": SECRET}))
            run_id = json.loads(ws.recv(timeout=10))["connector_run_id"]
            seq, turn = 0, 0
            while seq < events:
                turn += 1
                ws.send(json.dumps({"type": "message", "id": turn, "payload": {"message": "x" * 60, "context": {"chunks": 8}}}))
                while True:
                    event = json.loads(ws.recv(timeout=10))
                    seq = event.get("seq", seq)
                    if event["type"] in ("response", "stream_end"):
                        break
            time.sleep(0.2)  # the last frames are durable before they are sent; the snapshot may follow
            base = f"antiphon:run:{{{run_id}}}:"
            held = _resp(port, "XLEN", base + "events")
            stream_bytes = _resp(port, "MEMORY", "USAGE", base + "events") or 0
            snapshot_bytes = _resp(port, "MEMORY", "USAGE", base + "state") or 0
            lease_bytes = _resp(port, "MEMORY", "USAGE", base + "lease") or 0
            out[label] = {
                "events": seq,
                "events_held": held,
                "stream_bytes": stream_bytes,
                "snapshot_bytes": snapshot_bytes,
                "lease_bytes": lease_bytes,
                "total_bytes": stream_bytes + snapshot_bytes + lease_bytes,
                "bytes_per_1000_events": round((stream_bytes / held) * 1000) if held else None,
            }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.runs_backend", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3; the medians are kept)")
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per run (default 3)")
    parser.add_argument("--chunks", type=int, default=20, help="chunks per streamed reply (default 20)")
    parser.add_argument("--json", metavar="FILE", help="write the results here too")
    args = parser.parse_args(argv)
    with redis_server() as (url, pid):
        print(f"redis-server at {url}; server on cpu {SERVER_CPU}, load generator on cpu {CLIENT_CPU}", file=sys.stderr)
        results = {
            "sessions": args.sessions,
            "throughput": throughput(url, pid, args.reps, args.sessions, args.duration, args.chunks),
            "state": state_size(url),
        }
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    for scenario, data in results["throughput"].items():
        med, ratio = data["median"], data["redis_over_memory"]
        print(f"{scenario}: memory {med['memory']}  redis {med['redis']}  redis/memory {ratio}", file=sys.stderr)
    for label, size in results["state"].items():
        print(f"state ({label}): {size}", file=sys.stderr)


if __name__ == "__main__":
    main()
