"""The load generator: picows on uvloop, in its own process, the same for every target.

``python -m benchmarks.loadgen '<json spec>'`` runs one scenario against one server and
prints one JSON object (its measurements) as the last line of stdout. It never imports
antiphon: the client is independent of the code under test, and it is cheap per message
(picows parses and masks frames in C; replies are recognised by their first bytes,
never parsed as JSON), so the server is what runs out of CPU first.

Every session is driven by callbacks, not tasks: a reply's last frame records the
latency and sends the next message in the same callback. A turn counts as completed
only when it brought exactly one ``ack`` and then one final event (``response`` or
``stream_end``); an ``error`` event, a final event without its ack or a second ack is
counted apart (``error_events``, ``bad_turns``) and never as a round trip. Modes (``spec["mode"]``):

* ``rt`` - ``conns`` sessions in a closed loop (send, wait for the whole reply, send);
* ``stream`` - the same, each message asking for ``chunks`` streamed chunks;
* ``idle`` - open ``conns`` authenticated sessions and hold them for ``hold_s``;
* ``churn`` - ``busy`` closed-loop sessions, plus new clients at ``rate`` per second that
  connect, authenticate, run one turn and close;
* ``slow`` - ``busy`` closed-loop sessions; halfway, one more client asks for an endless
  stream and stops reading.

Everything is bounded: each phase has a duration, every wait a timeout, and the process
exits by itself. Times in the output are milliseconds; ``phases`` holds wall-clock
timestamps (``time.time()``) so the runner can line up its samples of the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import orjson
import uvloop
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

now = time.perf_counter
TEXT = WSMsgType.TEXT
MSG_TEXT = "The quick brown fox jumps over the lazy dog while the benchmark waits."  # ~100-byte frame
HANDSHAKE_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 3.0

# The first letter of "type" sits at offset 9 of every gateway frame: {"type":"x
ORD_A, ORD_R, ORD_E, ORD_S, ORD_C = ord("a"), ord("r"), ord("e"), ord("s"), ord("c")


def percentiles(samples: list[float]) -> dict[str, float | None]:
    """p50 / p99 / p99.9 / max of latencies in seconds, as milliseconds."""
    if not samples:
        return {"p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None}
    s = sorted(samples)
    n = len(s)

    def at(q: float) -> float:
        return round(s[min(n - 1, int(q * n))] * 1000, 3)

    return {"p50_ms": at(0.5), "p99_ms": at(0.99), "p999_ms": at(0.999), "max_ms": round(s[-1] * 1000, 3)}


class Run:
    """Shared counters of one load-generator run; sessions report into it."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.proto: str = spec["proto"]
        self.secret: str | None = spec.get("secret")
        self.running = False
        self.window = (float("inf"), float("inf"))
        self.latencies: list[float] = []
        self.ttfc: list[float] = []
        self.completed = 0
        self.chunks = 0
        self.errors = 0
        self.error_events = 0  # `error` events answering a message
        self.bad_turns = 0  # final events without exactly one ack before them
        self.reconnects = 0
        self.turns_per_conn: int = spec.get("turns_per_conn", 1000)
        chunks = spec.get("chunks")
        msg: dict[str, Any] = {"type": "message", "id": "@", "payload": {"message": MSG_TEXT}}
        if chunks:
            msg["payload"]["context"] = {"chunks": chunks}
        # Every message gets its own id (gateways may treat a repeated id as a retry).
        if self.proto == "chat":
            self.msg_head, _, self.msg_tail = orjson.dumps(msg).partition(b"@")
        else:
            self.msg_head, self.msg_tail = MSG_TEXT.encode(), b""
        self.message = self.msg_head + self.msg_tail
        self.sent = 0
        self.auth = orjson.dumps({"secret": self.secret}) if self.secret else None

    def in_window(self, t: float) -> bool:
        return self.window[0] <= t < self.window[1]


class ChatClient(WSListener):
    """One WebSocket session: authenticate, then round trips while the run lasts."""

    def __init__(self, run: Run, loop: asyncio.AbstractEventLoop, closed_loop: bool = True) -> None:
        self.run = run
        self.closed_loop = closed_loop
        self.transport: WSTransport | None = None
        self.ready = loop.create_future()
        self.turn_done: asyncio.Future[float] | None = None
        self.sent_at = 0.0
        self.first_chunk = True
        self.acks = 0
        self.turns = 0
        self.closing = False
        self.closed = False
        self.close_code: int | None = None

    # picows callbacks ------------------------------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        if self.run.proto != "chat":
            self.ready.set_result(now())
        elif self.run.auth is not None:
            transport.send(TEXT, self.run.auth)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        mt = frame.msg_type
        if mt is TEXT:
            if self.run.proto != "chat":
                self._done(now())
                return
            p = frame.get_payload_as_bytes()
            kind = p[9]
            if kind == ORD_A:
                self.acks += 1
            elif kind == ORD_R:
                self._final(now())
            elif kind == ORD_E:
                if not self.ready.done():  # an error before `connected`: auth failed
                    self.ready.set_exception(ConnectionError(p.decode()))
                    return
                self.run.error_events += 1
                self._done(now(), counted=False)
            elif kind == ORD_S:
                sub = p[16]
                if sub == ORD_C:
                    t = now()
                    if self.first_chunk:
                        self.first_chunk = False
                        if self.run.in_window(t):
                            self.run.ttfc.append(t - self.sent_at)
                    if self.run.in_window(t):
                        self.run.chunks += 1
                elif sub == ORD_E:
                    self._final(now())
            elif kind == ORD_C and not self.ready.done():
                self.ready.set_result(now())
        elif mt is WSMsgType.CLOSE:
            self.close_code = frame.get_close_code()
            if not self.closing:
                self.closing = True
                transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        if not self.closing:
            self.run.errors += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("disconnected before ready"))
        if self.turn_done is not None and not self.turn_done.done():
            self.turn_done.set_exception(ConnectionError("disconnected during the turn"))

    # driving -----------------------------------------------------------------------
    def send(self) -> None:
        assert self.transport is not None
        run = self.run
        self.first_chunk = True
        self.acks = 0
        run.sent += 1
        message = run.msg_head + str(run.sent).encode() + run.msg_tail if run.msg_tail else run.msg_head
        self.sent_at = now()
        self.transport.send(TEXT, message)

    def _final(self, t: float) -> None:
        if self.acks == 1:
            self._done(t)
        else:
            self.run.bad_turns += 1
            self._done(t, counted=False)

    def _done(self, t: float, counted: bool = True) -> None:
        run = self.run
        if counted and run.in_window(t):
            run.completed += 1
            run.latencies.append(t - self.sent_at)
        self.turns += 1
        if self.turn_done is not None and not self.turn_done.done():
            if counted:
                self.turn_done.set_result(t)
            else:
                self.turn_done.set_exception(ConnectionError("the turn ended without one ack and one final event"))
        if not (self.closed_loop and run.running) or self.closed:
            return
        if self.turns >= run.turns_per_conn:
            asyncio.get_running_loop().create_task(_reconnect(self))
        else:
            self.send()

    def close(self) -> None:
        if self.transport is not None and not self.closed and not self.closing:
            self.closing = True
            self.transport.send_close(WSCloseCode.OK)
            self.transport.disconnect()


class TcpClient(asyncio.Protocol):
    """Raw TCP echo: send the bytes, wait until as many come back."""

    def __init__(self, run: Run, loop: asyncio.AbstractEventLoop) -> None:
        self.run = run
        self.ready = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.pending = 0
        self.sent_at = 0.0
        self.closed = False
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.ready.set_result(now())

    def data_received(self, data: bytes) -> None:
        self.pending -= len(data)
        if self.pending > 0:
            return
        t = now()
        if self.run.in_window(t):
            self.run.completed += 1
            self.run.latencies.append(t - self.sent_at)
        if self.run.running:
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.closing:
            self.run.errors += 1

    def send(self) -> None:
        assert self.transport is not None
        self.pending = len(self.run.message)
        self.sent_at = now()
        self.transport.write(self.run.message)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closing = True
            self.transport.close()


Client = ChatClient | TcpClient


async def _open(run: Run, closed_loop: bool = True) -> Client:
    loop = asyncio.get_running_loop()
    url: str = run.spec["url"]
    if run.proto == "tcp":
        host, _, port = url.removeprefix("tcp://").rpartition(":")
        tcp = TcpClient(run, loop)
        await loop.create_connection(lambda: tcp, host, int(port))
        return tcp
    _, client = await ws_connect(
        lambda: ChatClient(run, loop, closed_loop),
        url,
        websocket_handshake_timeout=HANDSHAKE_TIMEOUT_S,
        enable_auto_ping=False,
        max_frame_size=64 * 1024 * 1024,
    )
    assert isinstance(client, ChatClient)
    await asyncio.wait_for(client.ready, HANDSHAKE_TIMEOUT_S)
    return client


async def _reconnect(old: ChatClient) -> None:
    run = old.run
    old.close()
    run.reconnects += 1
    try:
        new = await _open(run)
    except Exception:
        run.errors += 1
        return
    run.sessions.append(new)  # type: ignore[attr-defined]
    if run.running:
        new.send()


async def _open_many(run: Run, n: int, concurrency: int) -> list[Client]:
    sem = asyncio.Semaphore(concurrency)
    clients: list[Client] = []

    async def one() -> None:
        async with sem:
            try:
                clients.append(await _open(run))
            except Exception:
                run.errors += 1

    await asyncio.gather(*(one() for _ in range(n)))
    return clients


async def _close_all(clients: list[Client]) -> None:
    for c in clients:
        c.close()
    deadline = now() + SETTLE_TIMEOUT_S
    while any(not c.closed for c in clients) and now() < deadline:
        await asyncio.sleep(0.02)


def _start_closed_loop(run: Run, clients: list[Client], warmup_s: float, duration_s: float) -> float:
    t0 = now()
    run.window = (t0 + warmup_s, t0 + warmup_s + duration_s)
    run.running = True
    for c in clients:
        c.send()
    return t0


def _measured(run: Run, duration_s: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "completed": run.completed,
        "per_s": round(run.completed / duration_s, 1),
        "error_events": run.error_events,
        "bad_turns": run.bad_turns,
        **percentiles(run.latencies),
    }
    if run.spec.get("chunks"):
        out["chunks_per_s"] = round(run.chunks / duration_s, 1)
        out["ttfc"] = percentiles(run.ttfc)
    return out


async def mode_closed_loop(run: Run) -> dict[str, Any]:
    spec = run.spec
    phases = {"start": time.time()}
    t = now()
    clients = await _open_many(run, spec["conns"], spec.get("connect_concurrency", 100))
    connected = len(clients)  # before the run: reconnections after turns_per_conn join the list
    run.sessions = clients  # type: ignore[attr-defined]
    connect_s = now() - t
    phases["ready"] = time.time()
    warmup, duration = spec["warmup_s"], spec["duration_s"]
    _start_closed_loop(run, clients, warmup, duration)
    await asyncio.sleep(warmup)
    phases["window_start"] = time.time()
    await asyncio.sleep(duration)
    phases["window_end"] = time.time()
    run.running = False
    await asyncio.sleep(0.2)
    errors_before_close = run.errors
    await _close_all(run.sessions)  # type: ignore[attr-defined]
    return {
        "conns": spec["conns"],
        "failed_to_connect": spec["conns"] - connected,
        "connect_s": round(connect_s, 3),
        **_measured(run, duration),
        "errors": errors_before_close,
        "reconnects": run.reconnects,
        "phases": phases,
    }


async def mode_idle(run: Run) -> dict[str, Any]:
    spec = run.spec
    phases = {"start": time.time()}
    t = now()
    clients = await _open_many(run, spec["conns"], spec.get("connect_concurrency", 100))
    connect_s = now() - t
    phases["ready"] = time.time()
    print("READY", flush=True)
    await asyncio.sleep(spec["hold_s"])
    phases["hold_end"] = time.time()
    still_open = sum(1 for c in clients if not c.closed)
    await _close_all(clients)
    return {
        "conns": len(clients),
        "still_open": still_open,
        "connect_s": round(connect_s, 3),
        "errors": run.errors,
        "phases": phases,
    }


async def mode_churn(run: Run) -> dict[str, Any]:
    spec = run.spec
    phases = {"start": time.time()}
    busy = await _open_many(run, spec["busy"], spec.get("connect_concurrency", 100))
    run.sessions = busy  # type: ignore[attr-defined]
    phases["ready"] = time.time()
    warmup, duration, rate = spec["warmup_s"], spec["duration_s"], spec["rate"]
    _start_closed_loop(run, busy, warmup, duration)
    await asyncio.sleep(warmup)
    phases["window_start"] = time.time()
    handshake: list[float] = []
    auth: list[float] = []
    turn: list[float] = []
    churn_errors = 0
    loop = asyncio.get_running_loop()

    async def one() -> None:
        nonlocal churn_errors
        t0 = now()
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                _, c = await ws_connect(
                    lambda: ChatClient(run, loop, closed_loop=False), spec["url"], enable_auto_ping=False
                )
                assert isinstance(c, ChatClient)
                t_hs = now()
                await c.ready
                t_auth = now()
                c.turn_done = loop.create_future()
                c.send()
                t_turn = await c.turn_done
        except Exception:
            churn_errors += 1
            return
        handshake.append(t_hs - t0)
        auth.append(t_auth - t0)
        turn.append(t_turn - t0)
        c.close()

    tasks = []
    t_start = now()
    n = int(rate * duration)
    for i in range(n):
        delay = t_start + i / rate - now()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(one()))
    await asyncio.sleep(max(0.0, t_start + duration - now()))
    phases["window_end"] = time.time()
    run.running = False
    await asyncio.wait(tasks, timeout=HANDSHAKE_TIMEOUT_S)
    errors_before_close = run.errors
    await _close_all(busy)
    return {
        "busy": spec["busy"],
        "busy_rt": _measured(run, duration),
        "attempted": n,
        "connected": len(auth),
        "connects_per_s": round(len(auth) / (now() - t_start), 1),
        "churn_errors": churn_errors,
        "busy_errors": errors_before_close,
        "handshake": percentiles(handshake),
        "handshake_auth": percentiles(auth),
        "turn": percentiles(turn),
        "phases": phases,
    }


async def mode_slow(run: Run) -> dict[str, Any]:
    spec = run.spec
    phases = {"start": time.time()}
    busy = await _open_many(run, spec["busy"], spec.get("connect_concurrency", 100))
    run.sessions = busy  # type: ignore[attr-defined]
    stall_run = Run({**spec, "chunks": 10**7})
    stalled = await _open(stall_run, closed_loop=False)
    assert isinstance(stalled, ChatClient)
    phases["ready"] = time.time()
    warmup, baseline, stall = spec["warmup_s"], spec["duration_s"], spec["stall_s"]
    _start_closed_loop(run, busy, warmup, baseline)
    await asyncio.sleep(warmup)
    phases["baseline_start"] = time.time()
    await asyncio.sleep(baseline)
    before = _measured(run, baseline)
    run.latencies, run.completed = [], 0
    t = now()
    run.window = (t, t + stall)
    phases["stall_start"] = time.time()
    assert stalled.transport is not None
    stalled.transport.underlying_transport.pause_reading()
    stalled.send()  # the endless stream starts; nobody reads it
    await asyncio.sleep(stall)
    phases["stall_end"] = time.time()
    during = _measured(run, stall)
    buffered = await _scrape_send_buffer(spec["url"])  # still stalled: what the server holds for it
    run.running = False
    await asyncio.sleep(0.2)
    errors_before_close = run.errors
    stalled_closed_by_server = stalled.closed
    if not stalled.closed:
        # Read again and close normally (1000): a client that vanished instead might be
        # kept for a resume, and its endless turn with it.
        stalled.transport.underlying_transport.resume_reading()
        stalled.close()
    await _close_all([*busy, stalled])
    return {
        "busy": spec["busy"],
        "baseline": before,
        "stalled": during,
        "stalled_closed_by_server": stalled_closed_by_server,
        "server_send_buffer_bytes": buffered,
        "errors": errors_before_close,
        "phases": phases,
    }


async def _scrape_send_buffer(url: str) -> int | None:
    """The server's ``antiphon_send_buffer_bytes`` from ``GET /metrics`` on its port (None: not an antiphon)."""
    host, _, port = url.removeprefix("ws://").partition("/")[0].rpartition(":")
    try:
        async with asyncio.timeout(SETTLE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            body = await reader.read(-1)
            writer.close()
    except (OSError, TimeoutError):
        return None
    total = None
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("antiphon_send_buffer_bytes{"):
            total = (total or 0) + int(float(line.rsplit(" ", 1)[1]))
    return total


MODES = {"rt": mode_closed_loop, "stream": mode_closed_loop, "idle": mode_idle, "churn": mode_churn, "slow": mode_slow}


async def amain(spec: dict[str, Any]) -> dict[str, Any]:
    run = Run(spec)
    return await asyncio.wait_for(MODES[spec["mode"]](run), spec.get("deadline_s", 300))


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec.get("cpu") is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {spec["cpu"]})
    result = uvloop.run(amain(spec))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
