"""Resume and persistence over real sockets and real server processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import trio
import websockets.sync.client

from antiphon.chat import Turn, open_chat
from antiphon.chat.store import SqliteStore, read_run
from antiphon.proto.chat.messages import Resumed, StreamChunk, StreamEnd
from tests.chat.conftest import SECRET, connector, tcp_gateway

URL_LINE = re.compile(r"listening on (ws://\S+)")


async def test_library_client_resumes_by_itself_and_delivers_each_event_once() -> None:
    """Cut mid-stream, the client reconnects, resumes, and the app sees every chunk exactly once, in order."""
    release = trio.Event()

    async def gated(turn: Turn) -> AsyncIterator[str]:
        yield "one "
        await release.wait()
        for word in ("two ", "three ", "four"):
            yield word

    async with tcp_gateway(connector(gated)) as gateway, open_chat(gateway.url, secret=SECRET) as chat:
        run_id = chat.session_id
        await chat.send("go", id="t")
        seen: list[Any] = []
        while not any(isinstance(e, StreamChunk) for e in seen):
            seen.append(await chat.receive())
        # The network goes: the client's TCP stream is cut, no close frame either way.
        await chat._session.wire.aclose()  # type: ignore[union-attr]  # the TCP connection drops, no close frame
        release.set()
        with trio.fail_after(10):
            while not isinstance(seen[-1], StreamEnd):
                seen.append(await chat.receive())
        assert chat.session_id == run_id
        resumed = [e for e in seen if isinstance(e, Resumed)]
        assert len(resumed) == 1 and resumed[0].complete and resumed[0].connector_run_id == run_id, seen
        chunks = [e.chunk for e in seen if isinstance(e, StreamChunk)]
        assert chunks == ["one ", "two ", "three ", "four"]
        assert seen[-1].full_response == "one two three four" and seen[-1].status == "completed"
        assert chat.last_seq == 7
        reply = await chat.ask("after the drop")
        assert (reply.text, reply.status) == ("one two three four", "completed")


async def test_message_is_stored_before_its_ack(tmp_path: Path) -> None:
    """By the time a client holds the ack, the message is in the SQLite store."""
    store = SqliteStore(tmp_path / "t.db")
    try:
        async with tcp_gateway(store=store) as gateway, open_chat(gateway.url, secret=SECRET) as chat:
            await chat.send("remember me", id="m1", context={"k": 1})
            ack = await chat.receive()
            assert getattr(ack, "message_number", None) == 1
            found = await store.get_run(chat.session_id)
            assert found is not None
            [turn] = found[1]
            assert (turn.message_id, turn.message, turn.context) == ("m1", "remember me", {"k": 1})
    finally:
        await store.aclose()


@contextlib.contextmanager
def running_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`antiphon serve` in a subprocess storing in tmp_path/t.db; yields it and its URL."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        [sys.executable, "-m", "antiphon", "serve", "--port", "0", "--no-auth", "--store", str(tmp_path / "t.db")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    ) as proc:
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                match = URL_LINE.search(line)
                if match:
                    yield proc, match.group(1)
                    break
            else:
                raise AssertionError("the server printed no URL")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=15)


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=15)


def _one_turn(url: str, text: str, *, wait_reply: bool = True) -> str:
    with websockets.sync.client.connect(url, open_timeout=5) as ws:
        run_id = json.loads(ws.recv(timeout=5))["connector_run_id"]
        ws.send(json.dumps({"type": "message", "id": "m1", "payload": {"message": text}}))
        assert json.loads(ws.recv(timeout=5))["type"] == "ack"
        if wait_reply:
            while json.loads(ws.recv(timeout=5))["type"] != "stream_end":
                pass
        return str(run_id)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "antiphon", *args], capture_output=True, text=True, timeout=30)


def test_kill_9_after_an_ack_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL right after the ack: the acked message is in the store when the process is gone."""
    with running_server(tmp_path) as (proc, url):
        run_id = _one_turn(url, "do not lose me", wait_reply=False)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    found = read_run(tmp_path / "t.db", run_id)
    assert found is not None and found[1][0].message == "do not lose me"


def test_first_turn_is_read_back_after_a_server_restart(tmp_path: Path) -> None:
    """Restarting between two turns: the first is in the store, readable with `antiphon sessions show`."""
    with running_server(tmp_path) as (proc, url):
        run_id = _one_turn(url, "before the restart")
        assert _stop(proc) == 0
    with running_server(tmp_path) as (proc, url):
        with websockets.sync.client.connect(url, open_timeout=5) as ws:
            ws.recv(timeout=5)
            ws.send(json.dumps({"type": "resume", "connector_run_id": run_id, "last_seq": 2}))
            assert json.loads(ws.recv(timeout=5))["code"] == "unknown_run"
        second = _one_turn(url, "after the restart")
        assert _stop(proc) == 0
    shown = _cli("sessions", "show", run_id, "--store", str(tmp_path / "t.db"), "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    [turn] = doc["turns"]
    assert (turn["message"], turn["status"]) == ("before the restart", "completed")
    assert turn["reply"] == "Turn 1. You said: 'before the restart'. This is the first message of our conversation."
    listed = _cli("sessions", "list", "--store", str(tmp_path / "t.db"))
    assert listed.returncode == 0 and run_id in listed.stdout and second in listed.stdout
    assert listed.stdout.splitlines()[0].split()[:3] == ["RUN", "ID", "CONNECTOR"]
    text = _cli("sessions", "show", run_id, "--store", str(tmp_path / "t.db")).stdout
    assert "#1 [m1]" in text and "before the restart" in text and "(completed," in text


def test_sessions_show_unknown_run_exits_1(tmp_path: Path) -> None:
    """`antiphon sessions show` of a run the store lacks says so and exits 1."""
    with running_server(tmp_path) as (proc, _):
        assert _stop(proc) == 0
    result = _cli("sessions", "show", "nope", "--store", str(tmp_path / "t.db"))
    assert result.returncode == 1 and "no run 'nope'" in result.stderr


async def test_cancel_and_resent_id_over_a_real_socket() -> None:
    """Over TCP: cancel stops a stream with status `cancelled`; resending its id does not run it again."""
    started = 0
    go_on = trio.Event()

    async def endless_until_told(turn: Turn) -> AsyncIterator[str]:
        nonlocal started
        started += 1
        yield "partial "
        await go_on.wait()
        yield "never"

    async with tcp_gateway(connector(endless_until_told)) as gateway, open_chat(gateway.url, secret=SECRET) as chat:
        await chat.send("go", id="t")
        while not isinstance(await chat.receive(), StreamChunk):
            pass
        await chat.cancel("t")
        end = await chat.receive()
        assert isinstance(end, StreamEnd)
        assert (end.status, end.full_response) == ("cancelled", "partial ")
        await chat._send_text('{"type": "message", "id": "t", "payload": {"message": "go"}}')
        await chat.ping()
        # The gateway acks the resent id again; the client, which saw that ack already,
        # delivers it once only - so the next event the application sees is the pong.
        with trio.fail_after(5):
            assert type(await chat.receive()).__name__ == "Pong"
        assert started == 1


async def test_client_ends_quietly_when_reconnects_fail() -> None:
    """With the gateway gone, the client's reconnect attempts run out and receive() raises ConnectionClosed."""
    from antiphon.chat.client import ReconnectPolicy
    from antiphon.errors import ConnectionClosed

    async with tcp_gateway() as gateway:
        async with open_chat(gateway.url, secret=SECRET, reconnect=ReconnectPolicy(max_attempts=2, initial_delay_s=0.01)) as chat:
            gateway.close_listeners()  # nobody will accept a reconnect
            await chat._session.wire.aclose()  # type: ignore[union-attr]  # the TCP connection drops, no close frame
            with trio.fail_after(10):
                try:
                    while True:
                        await chat.receive()
                except ConnectionClosed as exc:
                    assert exc.code == 1006
