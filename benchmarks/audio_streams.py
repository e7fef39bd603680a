"""Audio streams per process at real time, and interrupt latency, over real sockets on 127.0.0.1.

::

    python -m benchmarks.audio_streams                 # both variants, ramp to 1600 streams, interrupts; ~3 min
    python -m benchmarks.audio_streams --steps 100,200 --seconds 5 --interrupts 20
    python -m benchmarks.audio_streams --tiny          # ~10 s: the smoke test's run

**Streams.** A server process (pinned to CPU 0) hosts N antiphon
:class:`~antiphon.media.WebsocketServerTransport` instances, one client each (Pipecat's
transports are one client per transport), each with ``audio_out_sample_rate=16000`` and
the default ``realtime`` pacing. When its client connects, each application keeps its
output fed, 2 s ahead, with a 440 Hz tone: at 16 kHz mono (*no resampling*), or at 24
kHz (*resampling*: a TTS's usual rate, converted by soxr HQ on the way out), until the
step ends. The client
side (this process, pinned to CPU 1: picows on uvloop, never importing antiphon) opens N
connections and timestamps every audio frame. A step streams for ``--seconds`` after a
warm-up, then reports:

* ``server_underruns``: chunks the server's pacer sent more than one chunk (40 ms) late
  with audio waiting (``MediaStats.audio_underruns``): the process could not keep up;
* ``client_underruns``: chunks that reached their client after its one chunk of
  lead was used up (a listener with a 40 ms buffer would have heard a gap);
* ``late_p99_ms``: 99th percentile of how late chunks arrived against the ideal schedule;
* ``server_cpu``: the server's CPU time over the step's wall time (1.0 = a full core), and
  ``cpu_ms_per_stream_s``: CPU milliseconds per stream per second of audio, which does
  not depend on what else runs on the machine; ``streams_per_core_at_this_cost`` divides
  a core by it (an estimate for an idle core, not a measurement).

The ramp goes up the ``--steps`` list and stops after the first step with server
underruns. Client-side counts are informative: a stall of the measuring process itself
(likely on a shared machine) shows as one "underrun" in every stream at once.

**Interrupts.** One stream; ``--interrupts`` times, the application sends 2 s of audio,
waits 200-600 ms, and sends an ``InterruptionFrame``, noting ``time.monotonic()`` at the
call (CLOCK_MONOTONIC is shared by the two processes). The client measures the time from
that call to the interruption frame's arrival, to the last audio frame that arrived
before it, and counts audio arriving after it (stale audio: must be 0).

Everything binds 127.0.0.1, every loop is bounded in count and time, and the run stops
by itself. Results are printed as a table and, with ``--json PATH``, written as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import resource
import subprocess
import sys
import time
from typing import Any, Final

MONO_16K_CHUNK: Final = 1280  # bytes in 40 ms of 16 kHz mono
CHUNK_S: Final = 0.040
AUDIO_TAG: Final = 0x12  # protobuf: Frame.audio (field 2, length-delimited)
INTERRUPTION_TAG: Final = 0x2A  # Frame.interruption (field 5)
WARMUP_S: Final = 2.0
CONNECT_CONCURRENCY: Final = 50  # handshakes in flight while a step connects its clients
DEADLINE_S: Final = 600.0  # the whole run, whatever the flags


# ====================================================================== the server process (Trio, antiphon)


def _tone(rate: int, seconds: float) -> bytes:
    import numpy as np

    t = np.arange(int(rate * seconds)) / rate
    return bytes(np.round(8000 * np.sin(2 * math.pi * 440 * t)).astype("<i2").tobytes())


async def _serve(args: argparse.Namespace) -> None:
    import trio

    from antiphon.engine.session import SessionConfig
    from antiphon.media import (
        AudioRawFrame,
        InterruptionFrame,
        WebsocketServerParams,
        WebsocketServerTransport,
    )

    rate = args.source_rate
    second = _tone(rate, 1.0)
    params = WebsocketServerParams(audio_out_sample_rate=16000, session_config=SessionConfig(ping_interval_s=None))
    transports = [WebsocketServerTransport(params, host="127.0.0.1", port=0) for _ in range(args.streams)]
    calls: list[float] = []
    window: dict[str, float] = {}

    stop = trio.Event()

    async def feed(transport: Any) -> None:
        """Keep 1-2 s of audio queued until the driver says stop (bounded by DEADLINE_S)."""
        out = transport.output()
        await out.send(AudioRawFrame(second, rate, 1))
        with trio.move_on_after(DEADLINE_S):
            while not stop.is_set():
                await out.send(AudioRawFrame(second, rate, 1))
                await trio.sleep(1.0)

    async def interrupts(transport: Any, n: int) -> None:
        out = transport.output()
        rng = random.Random(1)
        for _ in range(n):
            await out.send(AudioRawFrame(second + second, rate, 1))
            await trio.sleep(rng.uniform(0.2, 0.6))
            calls.append(time.monotonic())
            await out.send(InterruptionFrame())
            await trio.sleep(0.2)

    async with trio.open_nursery() as nursery:
        for transport in transports:
            await nursery.start(transport.run)

            @transport.event_handler("on_client_connected")
            async def connected(transport: Any, client: Any) -> None:
                if args.interrupts:
                    nursery.start_soon(interrupts, transport, args.interrupts)
                else:
                    nursery.start_soon(feed, transport)

        print(json.dumps({"ports": [t.port for t in transports]}), flush=True)
        # The driver writes one line when the measured window starts and closes stdin at its end.
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        buffer = b""
        while True:
            data = await stdin.receive_some()
            if not data:
                break
            buffer += data
            if b"\n" in buffer and "start" not in window:
                usage = resource.getrusage(resource.RUSAGE_SELF)
                window.update(start=time.monotonic(), cpu=usage.ru_utime + usage.ru_stime,
                              underruns=sum(t.stats.audio_underruns for t in transports))  # fmt: skip
        usage = resource.getrusage(resource.RUSAGE_SELF)
        end, cpu = time.monotonic(), usage.ru_utime + usage.ru_stime
        stop.set()
        result = {
            "server_underruns": sum(t.stats.audio_underruns for t in transports) - window.get("underruns", 0),
            "server_cpu": (cpu - window.get("cpu", 0.0)) / max(1e-9, end - window.get("start", end)),
            "chunks_sent": sum(t.stats.audio_chunks_out for t in transports),
            "converted": sum(t.stats.audio_frames_converted for t in transports),
            "calls": calls,
        }
        print(json.dumps(result), flush=True)
        nursery.cancel_scope.cancel()


# ====================================================================== the client side (picows on uvloop)


class _Listener:
    """Timestamps every frame; built lazily so that the server process never imports picows."""

    @staticmethod
    def factory(arrivals: list[tuple[float, int]]) -> Any:
        from picows import WSFrame, WSListener, WSMsgType, WSTransport

        class Listener(WSListener):  # type: ignore[misc]
            def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
                if frame.msg_type is WSMsgType.BINARY:
                    arrivals.append((time.monotonic(), frame.get_payload_as_bytes()[0]))
                elif frame.msg_type is WSMsgType.CLOSE:
                    transport.disconnect()

        return Listener


def _late(arrivals: list[float], t0: float, t1: float) -> tuple[int, list[float]]:
    """Listener underruns (one chunk of lead used up) and per-chunk lateness, for chunks arriving in [t0, t1]."""
    underruns, late = 0, []
    anchor: float | None = None
    k = 0
    for t in arrivals:
        if anchor is None:
            anchor, k = t, 0
        due_to_arrive = anchor + max(0, k - 1) * CHUNK_S  # the sender's schedule: chunks 0 and 1 together
        due_to_play = anchor + k * CHUNK_S  # when a listener with one chunk of buffer plays it
        if t0 <= t <= t1:
            late.append(t - due_to_arrive)
            if t > due_to_play + 1e-3:
                underruns += 1
        if t > due_to_play + 1e-3:
            anchor, k = t, 0  # the listener ran dry: it starts again from this chunk
        k += 1
    return underruns, late


async def _drive(args: argparse.Namespace, streams: int, source_rate: int, seconds: float, interrupts: int) -> dict[str, Any]:
    from picows import ws_connect

    cmd = [sys.executable, "-m", "benchmarks.audio_streams", "serve", "--streams", str(streams),
           "--source-rate", str(source_rate), "--seconds", str(seconds), "--interrupts", str(interrupts),
           "--warmup", str(args.warmup)]  # fmt: skip
    cpu_affinity = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, {0})) if cpu_affinity else None,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        ports = json.loads(await asyncio.to_thread(proc.stdout.readline))["ports"]
        per_stream: list[list[tuple[float, int]]] = [[] for _ in ports]
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def dial(port: int, arrivals: list[tuple[float, int]]) -> Any:
            async with gate:
                transport, _ = await ws_connect(_Listener.factory(arrivals), f"ws://127.0.0.1:{port}/", enable_auto_ping=False)
                return transport

        transports = await asyncio.gather(*(dial(port, arr) for port, arr in zip(ports, per_stream, strict=True)))
        if interrupts:
            await asyncio.sleep(interrupts * 1.0 + 1.0)
            t0 = t1 = 0.0
        else:
            await asyncio.sleep(args.warmup)
            proc.stdin.write("start\n")
            proc.stdin.flush()
            t0 = time.monotonic()
            await asyncio.sleep(seconds)
            t1 = time.monotonic()
        proc.stdin.close()
        result = json.loads(await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60))
        for transport in transports:
            transport.send_close()
            transport.disconnect()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    calls = result.pop("calls")
    if interrupts:
        result.pop("server_cpu")
        return {**result, **_interrupt_stats(per_stream[0], calls)}
    underruns, late = 0, []
    for arrivals in per_stream:
        u, lateness = _late([t for t, tag in arrivals if tag == AUDIO_TAG], t0, t1)
        underruns += u
        late += lateness
    late.sort()
    return {
        **result,
        "streams": streams,
        "source_rate": source_rate,
        "client_underruns": underruns,
        "chunks_received_in_window": len(late),
        "chunks_expected_in_window": int(streams * seconds / CHUNK_S),
        "late_p50_ms": round(1000 * late[len(late) // 2], 2) if late else None,
        "late_p99_ms": round(1000 * late[int(len(late) * 0.99)], 2) if late else None,
        # Load-independent: the server's CPU per stream, and what one idle core would pace at that cost.
        "cpu_ms_per_stream_s": round(1000 * result["server_cpu"] / streams, 3),
        "streams_per_core_at_this_cost": int(streams / result["server_cpu"]) if result["server_cpu"] > 0 else None,
    }


def _interrupt_stats(arrivals: list[tuple[float, int]], calls: list[float]) -> dict[str, Any]:
    to_frame, to_last_audio, stale = [], [], 0
    for i, call in enumerate(calls):
        nxt = calls[i + 1] if i + 1 < len(calls) else math.inf
        frame_at = next((t for t, tag in arrivals if tag == INTERRUPTION_TAG and t >= call), None)
        if frame_at is None:
            continue
        to_frame.append(frame_at - call)
        before = [t for t, tag in arrivals if tag == AUDIO_TAG and t <= frame_at and t > call - 1.0]
        to_last_audio.append(max(before) - call if before else 0.0)
        # Audio of the interrupted stream after its interruption frame (the next stream starts 200 ms later).
        stale += sum(1 for t, tag in arrivals if tag == AUDIO_TAG and frame_at < t < min(nxt, call + 0.15))

    def pct(values: list[float], q: float) -> float | None:
        values = sorted(values)
        return round(1000 * values[min(len(values) - 1, int(len(values) * q))], 3) if values else None

    return {
        "interrupts": len(to_frame),
        "call_to_frame_p50_ms": pct(to_frame, 0.5),
        "call_to_frame_p99_ms": pct(to_frame, 0.99),
        "call_to_frame_max_ms": pct(to_frame, 1.0),
        "last_audio_after_call_max_ms": pct(to_last_audio, 1.0),
        "stale_audio_after_frame": stale,
    }


def _costs(repeats: int) -> dict[str, float]:
    """CPU microseconds per 40 ms chunk of the codecs on the audio path (process time: robust to a busy machine)."""
    from antiphon.proto.media.g711 import pcm16_to_ulaw, ulaw_to_pcm16
    from antiphon.proto.media.resample import AudioConverter, AudioFormat

    def per_chunk(fn: Any, chunk: bytes) -> float:
        fn(chunk)  # warm up
        start = time.process_time()
        for _ in range(repeats):
            fn(chunk)
        return round((time.process_time() - start) / repeats * 1e6, 2)

    out: dict[str, float] = {}
    pairs = ((24000, 16000, 1), (48000, 16000, 1), (16000, 48000, 1), (8000, 16000, 1), (16000, 8000, 1), (48000, 16000, 2))
    for src, dst, ch in pairs:
        for quality in ("HQ", "QQ"):
            conv = AudioConverter(AudioFormat(src, ch), AudioFormat(dst, 1), quality)  # type: ignore[arg-type]
            out[f"resample {src // 1000}k x{ch} -> {dst // 1000}k {quality}"] = per_chunk(conv.convert, _tone(src, 0.04) * ch)
    out["mu-law encode 8k"] = per_chunk(pcm16_to_ulaw, _tone(8000, 0.04))
    out["mu-law decode 8k"] = per_chunk(ulaw_to_pcm16, bytes(320))
    return out


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    steps = [int(s) for s in args.steps.split(",")]
    out: dict[str, Any] = {"ramps": {}, "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    out["costs_us_per_40ms_chunk"] = _costs(200 if args.tiny else 5000)
    for name, us in out["costs_us_per_40ms_chunk"].items():
        print(f"{name:34} {us:8.2f} us per 40 ms chunk", flush=True)
    for name, rate in (("no_resampling", 16000), ("resampling_24k_to_16k", 24000)):
        ramp = []
        for n in steps:
            step = await _drive(args, n, rate, args.seconds, 0)
            ramp.append(step)
            print(_row(name, step), flush=True)
            if step["server_underruns"]:
                break  # the server fell behind real time: this is the limit
        out["ramps"][name] = ramp
    if args.interrupts:
        out["interrupts"] = await _drive(args, 1, 16000, 0, args.interrupts)
        print("interrupts:", json.dumps(out["interrupts"]), flush=True)
    return out


def _row(name: str, s: dict[str, Any]) -> str:
    return (f"{name:24} streams={s['streams']:5}  server_underruns={s['server_underruns']:4}  "
            f"client_underruns={s['client_underruns']:4}  late p50/p99={s['late_p50_ms']}/{s['late_p99_ms']} ms  "
            f"server_cpu={s['server_cpu']:.2f} ({s['cpu_ms_per_stream_s']} ms/stream/s)  "
            f"chunks {s['chunks_received_in_window']}/{s['chunks_expected_in_window']}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("mode", nargs="?", default="drive", choices=["drive", "serve"])
    p.add_argument("--steps", default="200,400,600,800,1000,1200,1600", help="stream counts to ramp through")
    p.add_argument("--seconds", type=float, default=8.0, help="measured streaming time per step")
    p.add_argument("--interrupts", type=int, default=40, help="interruptions to time (0: skip)")
    p.add_argument("--streams", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--source-rate", type=int, default=16000, help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=float, default=WARMUP_S, help="streaming before each measured window, s")
    p.add_argument("--tiny", action="store_true", help="2 streams, 1 s, 3 interrupts (the smoke test)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    if args.mode == "serve":
        import trio

        from antiphon.tuning import tune_gc

        tune_gc()  # as `antiphon serve` does: no multi-millisecond full collections mid-stream
        trio.run(_serve, args)
        return
    if args.tiny:
        args.steps, args.seconds, args.interrupts, args.warmup = "2", 1.0, 3, 0.5
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})
    import uvloop

    result = uvloop.run(asyncio.wait_for(_main(args), DEADLINE_S))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
