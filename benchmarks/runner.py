"""Runs the suite: starts each target, drives it with the load generator, samples it, keeps medians.

Every target runs in its own process, pinned to core 0; the load generator in another,
pinned to core 1 (when the machine has two cores or more). A sampler thread reads the
server's RSS and CPU time every 100 ms while the load generator runs, and the load
generator reports wall-clock phase times, so memory and CPU are read for exactly the
window that matters. Servers are started fresh for each scenario (and for each size of
the idle scenario, so RSS per session is not flattered by memory an earlier run left).

Repetitions are interleaved (all targets, then all targets again) so that a noisy
minute on the shared machine hits every target alike; the summary keeps the median.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from benchmarks import report

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
PY = sys.executable
SECRET = "bench-secret-0123456789"
READY = re.compile(r"listening on ((?:ws|tcp)://[\d.]+:\d+)")
SERVER_START_TIMEOUT_S = 20.0
SAMPLE_INTERVAL_S = 0.1
STOP_TIMEOUT_S = 3.0  # a server that does not exit on SIGINT within this is killed (and the run says so)
TEMP_PATHS: list[str] = []  # config files (they hold the secret) and store directories, removed when the run ends

# ------------------------------------------------------------------------- targets

CHAT, ECHO, TCP = "chat", "echo", "tcp"


def _peer(module: str) -> Callable[[dict[str, Any]], list[str]]:
    def cmd(opts: dict[str, Any]) -> list[str]:
        args = [PY, "-m", f"benchmarks.targets.{module}", "--secret", SECRET, "--ping-interval", str(opts["ping"])]
        return args + (["--streaming"] if opts["streaming"] else [])

    return cmd


def _ceiling(module: str) -> Callable[[dict[str, Any]], list[str]]:
    return lambda opts: [PY, "-m", f"benchmarks.targets.{module}"]


def _antiphon(store: str = "none") -> Callable[[dict[str, Any]], list[str]]:
    def cmd(opts: dict[str, Any]) -> list[str]:
        return [PY, "-m", "antiphon", "serve", "--config", _antiphon_config(opts, store)]

    return cmd


def _antiphon_config(opts: dict[str, Any], store: str) -> str:
    agent = "benchmarks.agents:stream" if opts["streaming"] else "benchmarks.agents:echo"
    text = f"""\
host = "127.0.0.1"
port = 0
shutdown_grace = 1
max_connections = 20000
ping_interval = {opts["ping"]}
ping_timeout = {opts["ping"]}
store = "{store}"

[[connectors]]
path = "/"
secret = "{SECRET}"
agent = "{agent}"
streaming = {"true" if opts["streaming"] else "false"}
max_messages = 10000
"""
    if store == "sqlite":
        TEMP_PATHS.append(tempfile.mkdtemp(prefix="antiphon-bench-"))
        text = text.replace('store = "sqlite"', f'store = "{TEMP_PATHS[-1]}/transcripts.db"')
    fd, path = tempfile.mkstemp(prefix="antiphon-bench-", suffix=".toml")
    TEMP_PATHS.append(path)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


TARGETS: dict[str, tuple[str, Callable[[dict[str, Any]], list[str]]]] = {
    "antiphon": (CHAT, _antiphon()),
    "ws-asyncio": (CHAT, _peer("ws_asyncio_gateway")),
    "ws-trio": (CHAT, _peer("ws_trio_gateway")),
    "engine-probe": (CHAT, _peer("engine_subset")),
    "trio-ws-echo": (ECHO, _ceiling("trio_ws_echo")),
    "tcp-echo": (TCP, _ceiling("tcp_echo")),
}
VARIANTS: dict[str, tuple[str, Callable[[dict[str, Any]], list[str]]]] = {
    "antiphon+sqlite": (CHAT, _antiphon(store="sqlite")),
}
PEER = "ws-asyncio"
CEILINGS = ("trio-ws-echo", "tcp-echo")
PROBES = ("engine-probe",)
"""Not servers users would run: they split antiphon's cost (the engine under the peers' chat code)."""

# ------------------------------------------------------------------------- suites

QUICK: dict[str, Any] = {
    "name": "quick",
    "reps": 1,
    "rt": {"levels": [1, 100, 1000], "warmup_s": 0.5, "duration_s": 2.0},
    "stream": {"levels": [100], "chunks": 200, "warmup_s": 0.5, "duration_s": 2.0},
    "idle": {"levels": [1000], "ping_s": 2.0, "settle_s": 1.0, "window_s": 4.0},
    "churn": {"busy": 200, "rate": 40, "warmup_s": 0.5, "duration_s": 3.0},
    "slow": {"busy": 100, "warmup_s": 0.5, "duration_s": 2.0, "stall_s": 4.0},
}
FULL: dict[str, Any] = {
    "name": "full",
    "reps": 3,
    "rt": {"levels": [1, 10, 100, 1000], "warmup_s": 1.0, "duration_s": 5.0},
    "stream": {"levels": [10, 100], "chunks": 200, "warmup_s": 1.0, "duration_s": 5.0},
    "idle": {"levels": [1000, 10000], "ping_s": 5.0, "settle_s": 2.0, "window_s": 10.0},
    "churn": {"busy": 1000, "rate": 50, "warmup_s": 1.0, "duration_s": 8.0},
    "slow": {"busy": 100, "warmup_s": 1.0, "duration_s": 3.0, "stall_s": 8.0},
}
TINY: dict[str, Any] = {
    "name": "tiny",
    "reps": 1,
    "rt": {"levels": [10], "warmup_s": 0.1, "duration_s": 0.25},
    "stream": {"levels": [4], "chunks": 20, "warmup_s": 0.1, "duration_s": 0.25},
    "idle": {"levels": [20], "ping_s": 0.5, "settle_s": 0.1, "window_s": 0.5},
    "churn": {"busy": 4, "rate": 20, "warmup_s": 0.1, "duration_s": 0.3},
    "slow": {"busy": 4, "warmup_s": 0.1, "duration_s": 0.25, "stall_s": 0.5},
    # Scenarios 2-5 on these targets only (round trips run on every target).
    "others_only": ["antiphon", "ws-asyncio"],
}
SCENARIOS = ("rt", "stream", "idle", "churn", "slow")

# ------------------------------------------------------------------------- processes


def _cores() -> tuple[int | None, int | None]:
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None, None
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)


SERVER_CPU, CLIENT_CPU = _cores()


def child_setup(cpu: int | None) -> Callable[[], None]:
    """Run in each child before exec: pin it to ``cpu``, and have it killed if this runner dies."""

    def setup() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if sys.platform == "linux":
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no orphaned servers

    return setup


def _remove_temp_paths() -> None:
    while TEMP_PATHS:
        path = TEMP_PATHS.pop()
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            Path(path).unlink(missing_ok=True)


class Server:
    """One target process: started, waited for until it listens, sampled, stopped."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        log = open(self.log_path, "ab")
        self._offset = log.tell()  # the log is shared by every start of this target
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        cpu = SERVER_CPU
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=child_setup(cpu),
        )
        log.close()
        self.ps = psutil.Process(self.proc.pid)
        self.killed = False
        self.url = self._wait_ready()

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
            with open(self.log_path, "rb") as f:
                f.seek(self._offset)
                match = READY.search(f.read().decode(errors="replace"))
            if match:
                url = match.group(1)
                return url + "/" if url.startswith("ws") else url
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start within {SERVER_START_TIMEOUT_S:g} s")

    def sample(self) -> tuple[float, int, float]:
        t = self.ps.cpu_times()
        return time.time(), self.ps.memory_info().rss, t.user + t.system

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                self.proc.wait()


def run_loadgen(server: Server, spec: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[float, int, float]], float]:
    """Run the load generator once; return its result, the server's samples and the client's CPU seconds."""
    spec = {**spec, "url": server.url, "cpu": CLIENT_CPU}
    budget = spec.get("deadline_s", 300) + 30
    samples: list[tuple[float, int, float]] = []
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            try:
                samples.append(server.sample())
            except psutil.Error:
                return
            stop.wait(SAMPLE_INTERVAL_S)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    client = subprocess.Popen(
        [PY, "-m", "benchmarks.loadgen", json.dumps(spec)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=child_setup(None),
    )
    client_ps = psutil.Process(client.pid)
    client_cpu = 0.0
    try:
        deadline = time.monotonic() + budget
        while client.poll() is None and time.monotonic() < deadline:
            try:
                t = client_ps.cpu_times()
                client_cpu = t.user + t.system
            except psutil.Error:
                pass
            time.sleep(0.1)
        if client.poll() is None:
            client.kill()
        out, _ = client.communicate()
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        stop.set()
        thread.join()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if client.returncode != 0 or not lines:
        raise RuntimeError(f"load generator failed (exit {client.returncode}) against {server.name}")
    return json.loads(lines[-1]), samples, client_cpu


def _at(samples: list[tuple[float, int, float]], t: float) -> tuple[float, int, float]:
    return min(samples, key=lambda s: abs(s[0] - t))


def _cpu_share(samples: list[tuple[float, int, float]], t0: float, t1: float) -> float | None:
    a, b = _at(samples, t0), _at(samples, t1)
    return round((b[2] - a[2]) / (b[0] - a[0]), 3) if b[0] > a[0] else None


# ------------------------------------------------------------------------- scenarios


def scenario_rt(name: str, kind: str, server: Server, cfg: dict[str, Any], mode: str = "rt") -> dict[str, Any]:
    out = {}
    for n in cfg["levels"]:
        spec = {"mode": mode, "proto": kind, "conns": n, "warmup_s": cfg["warmup_s"], "duration_s": cfg["duration_s"]}
        if kind == CHAT:
            spec["secret"] = SECRET
        if mode == "stream":
            spec["chunks"] = cfg["chunks"]
        result, samples, _ = run_loadgen(server, spec)
        ph = result["phases"]
        result["server_cpu"] = _cpu_share(samples, ph["window_start"], ph["window_end"])
        result["server_rss_mib"] = round(max(s[1] for s in samples) / 2**20, 1)
        out[str(n)] = result
    return out


def scenario_idle(name: str, kind: str, start: Callable[[dict[str, Any]], Server], cfg: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for n in cfg["levels"]:
        server = start({"streaming": False, "ping": cfg["ping_s"]})
        try:
            time.sleep(0.3)
            base = server.sample()
            hold = cfg["settle_s"] + cfg["window_s"]
            spec = {"mode": "idle", "proto": kind, "conns": n, "hold_s": hold, "connect_concurrency": 200}
            if kind == CHAT:
                spec["secret"] = SECRET
            result, samples, _ = run_loadgen(server, spec)
        finally:
            server.stop()
        ph = result["phases"]
        w0 = ph["ready"] + cfg["settle_s"]
        w1 = ph["hold_end"]
        settled = _at(samples, w0)
        cpu = _cpu_share(samples, w0, w1) if kind != TCP else None
        result.update(
            {
                "rss_base_mib": round(base[1] / 2**20, 1),
                "rss_open_mib": round(settled[1] / 2**20, 1),
                "rss_per_session_kib": round((settled[1] - base[1]) / max(1, result["conns"]) / 1024, 2),
                "ping_interval_s": cfg["ping_s"],
                "cpu_share_measured": cpu,
                # Each session pings once per interval: scale to the default 20 s interval.
                "heartbeat_cpu_pct_at_20s": None if cpu is None else round(100 * cpu * cfg["ping_s"] / 20.0, 3),
            }
        )
        out[str(n)] = result
    return out


def scenario_churn(name: str, server: Server, cfg: dict[str, Any]) -> dict[str, Any]:
    spec = {"mode": "churn", "proto": CHAT, "secret": SECRET, **cfg}
    result, samples, _ = run_loadgen(server, spec)
    ph = result["phases"]
    result["server_cpu"] = _cpu_share(samples, ph["window_start"], ph["window_end"])
    return result


def scenario_slow(name: str, server: Server, cfg: dict[str, Any]) -> dict[str, Any]:
    spec = {"mode": "slow", "proto": CHAT, "secret": SECRET, **cfg}
    result, samples, _ = run_loadgen(server, spec)
    ph = result["phases"]
    t0, t1 = ph["stall_start"], ph["stall_end"]
    mid = (t0 + t1) / 2
    during = [s for s in samples if t0 <= s[0] <= t1]
    second_half = [s[1] for s in during if s[0] >= mid]
    result.update(
        {
            "rss_at_stall_mib": round(_at(samples, t0)[1] / 2**20, 2),
            "rss_mid_stall_mib": round(_at(samples, mid)[1] / 2**20, 2),
            "rss_end_stall_mib": round(_at(samples, t1)[1] / 2**20, 2),
            # Growth over the second half of the stall: the buffers are full by then.
            "rss_growth_second_half_mib": round((max(second_half) - second_half[0]) / 2**20, 2) if second_half else None,
        }
    )
    return result


# ------------------------------------------------------------------------- the suite


def run_suite(suite: dict[str, Any], targets: list[str], scenarios: list[str], log_dir: Path) -> dict[str, Any]:
    table = {**TARGETS, **VARIANTS}
    raw: dict[str, dict[str, list[Any]]] = {s: {} for s in scenarios}
    for rep in range(suite["reps"]):
        order = targets[rep % len(targets):] + targets[: rep % len(targets)]
        for scenario in scenarios:
            for name in order:
                kind, cmd = table[name]
                if scenario not in ("rt", "idle") and kind != CHAT:
                    continue
                if scenario == "idle" and kind == TCP:
                    continue
                if scenario in ("churn", "slow") and name in PROBES:
                    continue
                if scenario != "rt" and name not in suite.get("others_only", [name]):
                    continue
                if scenario == "idle" and rep > 0:
                    continue  # memory and heartbeat CPU are not noisy: one run
                cfg = suite[scenario]
                print(f"[rep {rep + 1}/{suite['reps']}] {scenario:6} {name}", file=sys.stderr, flush=True)
                results = raw[scenario].setdefault(name, [])

                def start(opts: dict[str, Any], name: str = name, cmd: Any = cmd) -> Server:
                    return Server(name, cmd(opts), log_dir)

                try:
                    if scenario == "idle":
                        results.append(scenario_idle(name, kind, start, cfg))
                        continue
                    server = start({"streaming": scenario in ("stream", "slow"), "ping": 20.0})
                    try:
                        if scenario in ("rt", "stream"):
                            results.append(scenario_rt(name, kind, server, cfg, scenario))
                        elif scenario == "churn":
                            results.append(scenario_churn(name, server, cfg))
                        else:
                            results.append(scenario_slow(name, server, cfg))
                    finally:
                        server.stop()
                    if server.killed:
                        print(f"  {name} did not exit within {STOP_TIMEOUT_S:g} s of SIGINT: killed", file=sys.stderr)
                        results[-1]["killed_on_stop"] = True
                except RuntimeError as exc:
                    print(f"  failed: {exc}", file=sys.stderr, flush=True)
                    results.append({"failed": str(exc)})
    return raw


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("antiphon", "trio", "trio-websocket", "wsproto", "websockets", "orjson", "cattrs", "picows", "uvloop"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "-"
    return out


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "pinning": f"server on core {SERVER_CPU}, load generator on core {CLIENT_CPU}"
        if SERVER_CPU is not None
        else "not pinned (fewer than 2 cores)",
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="antiphon's benchmark suite")
    p.add_argument("--full", action="store_true", help="the full suite (median of 3, bigger loads; ~30 min)")
    p.add_argument("--tiny", action="store_true", help="tiny numbers, for the smoke test")
    p.add_argument("--targets", help="comma-separated subset of: " + ", ".join([*TARGETS, *VARIANTS]))
    p.add_argument("--variants", action="store_true", help="also run antiphon with its default SQLite transcript store")
    p.add_argument("--scenarios", help="comma-separated subset of: " + ", ".join(SCENARIOS))
    p.add_argument("--reps", type=int, help="repetitions (median kept); default 1 quick, 3 full")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the run's JSON, table and chart go")
    p.add_argument("--publish", action="store_true", help="also update BENCHMARKS.md and benchmarks/latest.png")
    args = p.parse_args(argv)
    suite = dict(FULL if args.full else TINY if args.tiny else QUICK)
    if args.reps:
        suite["reps"] = args.reps
    targets = args.targets.split(",") if args.targets else list(TARGETS) + (list(VARIANTS) if args.variants or args.full else [])
    scenarios = args.scenarios.split(",") if args.scenarios else list(SCENARIOS)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    log_dir = args.out / f"{stamp}-logs"
    log_dir.mkdir()
    started = time.time()
    # SIGTERM unwinds like Ctrl-C, so every `finally` stops its server and the temp files go.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        raw = run_suite(suite, targets, scenarios, log_dir)
    finally:
        _remove_temp_paths()
    doc = {
        "suite": suite,
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "machine": _machine(),
        "versions": _versions(),
        "targets": targets,
        "raw": raw,
    }
    doc["summary"] = report.summarize(doc)
    json_path = args.out / f"{stamp}.json"
    json_path.write_text(json.dumps(doc, indent=1))
    chart = args.out / f"{stamp}.png"
    report.chart(doc, chart)
    md = report.markdown(doc, chart_name=chart.name)
    (args.out / f"{stamp}.md").write_text(md)
    print(md)
    print(f"\nwrote {json_path}, {chart} and {json_path.with_suffix('.md')} in {doc['elapsed_s']} s", file=sys.stderr)
    if args.publish:
        report.publish(doc, ROOT / "BENCHMARKS.md", Path(__file__).resolve().parent / "latest.png")
