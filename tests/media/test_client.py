"""The client transport against a `websockets` server (real sockets) and, for reconnects, over memory streams."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from websockets.trio.server import serve

from antiphon.engine.session import SessionConfig
from antiphon.errors import HandshakeError, HandshakeRejected, LocalProtocolError
from antiphon.media import (
    CLIENT_EVENTS,
    AudioRawFrame,
    InterruptionFrame,
    MessageFrame,
    TextFrame,
    TranscriptionFrame,
    WebsocketClientParams,
    WebsocketClientTransport,
    WebsocketServerParams,
    WebsocketServerTransport,
)
from tests.media import pb_schema as pb
from tests.media.conftest import Recorder
from tests.media.test_server_socket import PCM_40MS, wav_file


async def test_client_exchanges_every_kind_with_a_websockets_server() -> None:
    """Frames of every kind both ways; audio goes out paced as raw PCM, bad input is skipped, 1000 ends input()."""
    received: list[tuple[str, Any]] = []
    request_headers: dict[str, str] = {}

    async def handler(conn: Any) -> None:
        request_headers.update((k.lower(), v) for k, v in conn.request.headers.raw_items())
        for message in (
            pb.text("hello"),
            b"\x00garbage",
            pb.audio(wav_file(PCM_40MS, 16000, 1), 16000, 1),
            "a text message",
            pb.audio(PCM_40MS, 16000, 1),
            pb.transcription("hi", "user-1", "2026-01-01T00:00:00Z"),
            pb.message({"type": "bot-ready"}),
            pb.interruption(),
        ):
            await conn.send(message)
        for _ in range(6):
            received.append(pb.decode(await conn.recv()))
        await conn.aclose(1000)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(lambda task_status: serve(handler, 0, host="127.0.0.1", task_status=task_status))
        port = server.listeners[0].socket.getsockname()[1]
        params = WebsocketClientParams(additional_headers={"X-Token": "secret"}, reconnect=True)
        transport = WebsocketClientTransport(f"ws://127.0.0.1:{port}/bot", params)
        rec = Recorder(transport, CLIENT_EVENTS)
        async with transport:
            with trio.fail_after(10):
                await transport.connect()
                assert transport.is_connected and not transport.is_closing
                assert await transport.send(TextFrame("hi"))
                assert await transport.send(TranscriptionFrame("hi", "bot", "2026-01-01T00:00:01Z"))
                assert await transport.send(MessageFrame({"type": "client-ready"}))
                assert await transport.send(InterruptionFrame())
                await transport.output().send(AudioRawFrame(PCM_40MS * 2, 16000, 1))
                frames = [frame async for frame in transport.input()]  # ends: the server closed with 1000
            await rec.wait_for("on_disconnected")
            assert not transport.is_connected
            with pytest.raises(LocalProtocolError):
                await transport.connect()
        await server.aclose()
    assert frames == [
        TextFrame("hello"),
        AudioRawFrame(PCM_40MS, 16000, 1),
        AudioRawFrame(PCM_40MS, 16000, 1),
        TranscriptionFrame("hi", "user-1", "2026-01-01T00:00:00Z"),
        MessageFrame({"type": "bot-ready"}),
        InterruptionFrame(),
    ]
    assert [k for k, _ in received] == ["text", "transcription", "message", "interruption", "audio", "audio"]
    assert received[0][1].text == "hi" and received[2][1].data == '{"type": "client-ready"}'
    # Raw PCM by default: a stock Pipecat 1.14 server does not strip WAV headers (issue 10 #13).
    assert [sub.audio for k, sub in received if k == "audio"] == [PCM_40MS] * 2
    assert request_headers["x-token"] == "secret"
    assert rec.names[0] == "on_connected" and rec.names[-1] == "on_disconnected"
    # Two interruptions: our send(InterruptionFrame()) and the server's InterruptionFrame.
    assert sorted(e[2][1].source for e in rec.events if e[0] == "on_interruption") == ["application", "peer"]
    assert dict(transport.stats.skipped_in) == {"malformed": 1, "wrong_message_type": 1}


async def test_connect_to_a_closed_port_raises_handshake_error() -> None:
    """connect() raises HandshakeError when nothing listens, and the transport can still try again."""
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with WebsocketClientTransport(f"ws://127.0.0.1:{port}") as transport:
        for _ in range(2):
            with pytest.raises(HandshakeError):
                await transport.connect()
        assert not transport.is_connected
        assert not await transport.send(TextFrame("nobody"))
    assert transport.stats.dropped_out["not_connected"] == 1


async def test_refused_upgrade_raises_handshake_rejected() -> None:
    """An HTTP 403 answer to the upgrade is HandshakeRejected with the status."""

    def refuse(conn: Any, request: Any) -> Any:
        return conn.respond(403, "no\n")

    async with trio.open_nursery() as nursery:
        server = await nursery.start(lambda task_status: serve(lambda c: None, 0, host="127.0.0.1", process_request=refuse, task_status=task_status))
        port = server.listeners[0].socket.getsockname()[1]
        async with WebsocketClientTransport(f"ws://127.0.0.1:{port}") as transport:
            with pytest.raises(HandshakeRejected) as info:
                await transport.connect()
        assert info.value.status_code == 403
        await server.aclose()


class MemoryDialer:
    """``open_stream`` for the client: serves each stream with a server transport; fails the attempts it is told to."""

    def __init__(self, server: WebsocketServerTransport, nursery: trio.Nursery, fail: set[int]) -> None:
        self.server, self.nursery, self.fail = server, nursery, fail
        self.attempts: list[float] = []

    async def __call__(self) -> trio.abc.Stream:
        self.attempts.append(trio.current_time())
        if len(self.attempts) in self.fail:
            raise OSError("connection refused")
        client_stream, server_stream = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.server.serve_stream, server_stream)
        return client_stream


async def test_reconnect_backs_off_exponentially_and_resumes(autojump_clock: Any) -> None:
    """Dropped with 1011 at +5 s, the client retries at +1, +2, +4 s after the drop (two refusals), then is connected again."""
    server = WebsocketServerTransport(WebsocketServerParams(session_timeout=5), port=0)

    @server.event_handler("on_session_timeout")
    async def drop_first(transport: Any, client: Any) -> None:
        client.close(1011, "server restarting")

    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: server.run(listen=False, task_status=task_status))
        dialer = MemoryDialer(server, nursery, fail={2, 3})
        params = WebsocketClientParams(reconnect=True, open_stream=dialer)
        transport = WebsocketClientTransport("ws://media.test/bot", params)
        rec = Recorder(transport, CLIENT_EVENTS)
        async with transport:
            await transport.connect()
            await rec.wait_for("on_connected", 2)
            assert transport.is_connected
            await transport.output().send(TextFrame("back"))
            assert (await server.input().receive()).text == "back"
            await transport.disconnect()
            assert [f async for f in transport.input()] == []
        nursery.cancel_scope.cancel()
    t0 = dialer.attempts[0]
    assert [a - t0 for a in dialer.attempts] == [0.0, 6.0, 8.0, 12.0]
    assert rec.names == ["on_connected", "on_disconnected", "on_connected", "on_disconnected"]
    assert rec.events[1][2][0].close_code == 1011


async def test_reconnect_gives_up_after_max_attempts_and_ends_input(autojump_clock: Any) -> None:
    """With reconnect_max_attempts=2 and a server gone for good, two retries (1 s, 2 s) and input() ends."""
    server = WebsocketServerTransport(WebsocketServerParams(session_timeout=5), port=0)

    @server.event_handler("on_session_timeout")
    async def drop(transport: Any, client: Any) -> None:
        client.close(1001, "going away")

    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: server.run(listen=False, task_status=task_status))
        dialer = MemoryDialer(server, nursery, fail={2, 3, 4, 5})
        params = WebsocketClientParams(reconnect=True, reconnect_max_attempts=2, open_stream=dialer)
        async with WebsocketClientTransport("ws://media.test/", params) as transport:
            await transport.connect()
            assert [f async for f in transport.input()] == []
            assert not transport.is_connected
        nursery.cancel_scope.cancel()
    t0 = dialer.attempts[0]
    assert [a - t0 for a in dialer.attempts] == [0.0, 6.0, 8.0]


async def test_no_reconnect_after_a_normal_close(autojump_clock: Any) -> None:
    """A server's 1000 close is a deliberate goodbye: no reconnect, and input() ends."""
    server = WebsocketServerTransport(WebsocketServerParams(session_timeout=5), port=0)

    @server.event_handler("on_session_timeout")
    async def bye(transport: Any, client: Any) -> None:
        client.close(1000, "bye")

    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: server.run(listen=False, task_status=task_status))
        dialer = MemoryDialer(server, nursery, fail=set())
        params = WebsocketClientParams(reconnect=True, open_stream=dialer, session_config=SessionConfig())
        async with WebsocketClientTransport("ws://media.test/", params) as transport:
            await transport.connect()
            assert [f async for f in transport.input()] == []
            await trio.sleep(100)
        nursery.cancel_scope.cancel()
    assert len(dialer.attempts) == 1
