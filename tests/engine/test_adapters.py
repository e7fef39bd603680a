"""antiphon sessions inside trio-websocket servers: the chat gateway in serve_websocket, heartbeat, close codes, bounds."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
import websockets.sync.client
from websockets.exceptions import ConnectionClosed, InvalidStatus
from wsproto.events import CloseConnection, TextMessage

from antiphon.chat import ChatGateway
from antiphon.engine import serve_trio_websocket, serve_trio_websocket_request
from antiphon.engine.adapters import close_code_for
from antiphon.engine.server import Accept, HandshakeRequest, Reject, ServerConfig
from antiphon.engine.session import Session, SessionConfig
from antiphon.proto.close import CloseCode
from tests.chat.conftest import SECRET, connector
from tests.engine.harness import Echo
from tests.helpers import RawClient

trio_websocket = pytest.importorskip("trio_websocket", reason="trio-websocket is not installed: pip install -e '.[test]'")

NO_HEARTBEAT = SessionConfig(ping_interval_s=None)


@asynccontextmanager
async def gateway_in_trio_websocket(*, accepted: bool = False) -> AsyncIterator[tuple[ChatGateway, str]]:
    """The chat gateway (no listener of its own) behind a real trio_websocket.serve_websocket on 127.0.0.1."""
    gateway = ChatGateway(connector(streaming=False), ServerConfig(port=0), NO_HEARTBEAT)

    async def handler(request: Any) -> None:
        if accepted:
            await serve_trio_websocket(await request.accept(), gateway, request=request)
        else:
            await serve_trio_websocket_request(request, gateway)

    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(gateway.run, listen=False))
        server = await nursery.start(
            functools.partial(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, ssl_context=None)
        )
        yield gateway, f"ws://127.0.0.1:{server.port}/"
        nursery.cancel_scope.cancel()


def sync_session(url: str, **kwargs: Any) -> websockets.sync.client.ClientConnection:
    ws: websockets.sync.client.ClientConnection = websockets.sync.client.connect(url, open_timeout=5, close_timeout=5, **kwargs)
    return ws


@pytest.mark.parametrize("accepted", [False, True], ids=["request", "accepted-connection"])
async def test_the_chat_gateway_serves_inside_trio_websocket(accepted: bool) -> None:
    """A websockets client authenticates, gets an ack and the reply through serve_websocket; the gateway counts the session."""
    seen: list[int] = []

    def scenario(url: str) -> list[dict[str, Any]]:
        with sync_session(url) as ws:
            ws.send(json.dumps({"secret": SECRET}))
            connected = json.loads(ws.recv(timeout=5))
            seen.append(len(gateway.sessions))
            ws.send(json.dumps({"type": "message", "id": "msg-001", "payload": {"message": "Hi"}}))
            return [connected] + [json.loads(ws.recv(timeout=5)) for _ in range(2)]

    async with gateway_in_trio_websocket(accepted=accepted) as (gateway, url):
        connected, ack, response = await trio.to_thread.run_sync(scenario, url)
        with trio.fail_after(5):
            await gateway.wait_idle()  # the client closed: the session left the gateway
    assert seen == [1]
    assert connected["type"] == "connected"
    assert ack == {"type": "ack", "id": "msg-001", "message_number": 1, "seq": 1}
    assert response["type"] == "response" and response["response"].startswith("Turn 1. You said: 'Hi'.")


async def test_a_refusal_before_accepting_is_the_faces_http_status() -> None:
    """serve_trio_websocket_request answers the gateway's Reject with its HTTP status (401 for a wrong secret)."""

    def scenario(url: str) -> int:
        with pytest.raises(InvalidStatus) as info:
            sync_session(url, additional_headers={"X-Connic-Secret": "wrong"})
        return info.value.response.status_code

    async with gateway_in_trio_websocket() as (_, url):
        assert await trio.to_thread.run_sync(scenario, url) == 401


async def test_a_refusal_after_accepting_is_a_close_code() -> None:
    """An already-accepted connection the gateway refuses is closed with 4401 (401), the body as reason."""

    def scenario(url: str) -> tuple[int | None, str | None]:
        with sync_session(url, additional_headers={"X-Connic-Secret": "wrong"}) as ws:
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=5)
            rcvd = info.value.rcvd
            return (rcvd.code, rcvd.reason) if rcvd else (None, None)

    async with gateway_in_trio_websocket(accepted=True) as (_, url):
        assert await trio.to_thread.run_sync(scenario, url) == (CloseCode.AUTH_FAILED, "invalid secret")


def test_http_refusals_map_to_close_codes() -> None:
    """401 -> 4401, 503 -> 1013, anything else -> 1008; the reason is the body's first line, at most 123 bytes."""
    assert close_code_for(Reject(401, b"invalid secret\n")) == (CloseCode.AUTH_FAILED, "invalid secret")
    assert close_code_for(Reject(503, b"")) == (CloseCode.TRY_AGAIN_LATER, "")
    code, reason = close_code_for(Reject(404, "é".encode() * 100 + b"\nsecond line"))
    assert code == CloseCode.POLICY_VIOLATION and reason == "é" * 61 and len(reason.encode()) == 122


async def test_the_faces_subprotocol_is_the_one_accepted() -> None:
    """A router's Accept(subprotocol=...) is what serve_trio_websocket_request accepts with."""

    def route(request: HandshakeRequest, *, full: bool) -> Accept | Reject:
        assert request.subprotocols == ("v2", "v1")
        return Accept(Echo(), subprotocol="v1", session_config=NO_HEARTBEAT)

    async def handler(request: Any) -> None:
        await serve_trio_websocket_request(request, route)

    def scenario(url: str) -> tuple[str | None, str | bytes]:
        with sync_session(url, subprotocols=["v2", "v1"]) as ws:
            ws.send("echo me")
            return ws.subprotocol, ws.recv(timeout=5)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(functools.partial(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, ssl_context=None))
        assert await trio.to_thread.run_sync(scenario, f"ws://127.0.0.1:{server.port}/") == ("v1", "echo me")
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- over memory streams (autojump)


@asynccontextmanager
async def wrapped(
    handler: Any,
    config: SessionConfig,
    *,
    pair: Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]] = trio.testing.memory_stream_pair,
    answer_pings: bool = True,
) -> AsyncIterator[RawClient]:
    """trio-websocket's server side over a memory stream (wrap_server_stream), the adapter on it, a raw client on the other end."""
    client_stream, server_stream = pair()
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            request = await trio_websocket.wrap_server_stream(nursery, server_stream)
            ws = await request.accept()
            try:
                await serve_trio_websocket(ws, handler, session_config=config)
            finally:
                with trio.move_on_after(1):
                    await ws.aclose()  # what serve_websocket does once its handler returns

        nursery.start_soon(serve)
        client = RawClient(client_stream, answer_pings=answer_pings)
        await client.handshake()
        yield client
        nursery.cancel_scope.cancel()


class Recorder(Echo):
    """Echoes; "bye" closes with 4000; records close times."""

    def __init__(self) -> None:
        super().__init__()
        self.closed_at: float | None = None

    def on_message(self, session: Session, message: str | bytes) -> None:
        if message == "bye":
            session.send_nowait("last words")
            session.close(4000, "bye")
            return
        super().on_message(session, message)

    def on_close(self, session: Session) -> None:
        super().on_close(session)
        self.closed_at = trio.current_time()


async def test_heartbeat_pings_through_trio_websocket_and_pongs_keep_the_session(autojump_clock: Any) -> None:
    """The session's pings go out every ping_interval_s via ws.ping, and answered pings keep it open."""
    handler = Recorder()
    config = SessionConfig(ping_interval_s=5, ping_timeout_s=3)
    async with wrapped(handler, config) as client:
        t0 = trio.current_time()
        await client.send_text("hello")
        assert isinstance(await client.next_event(), TextMessage)
        with trio.move_on_after(16):
            await client.next_event()  # nothing but pings, answered inside next_event
        assert [t - t0 for t in client.pings] == [5.0, 10.0, 15.0]
        assert handler.session is not None and not handler.session.closing


async def test_heartbeat_closes_1011_when_no_pong_comes(autojump_clock: Any) -> None:
    """A peer that does not answer pings is closed with 1011 at ping_interval_s + ping_timeout_s."""
    handler = Recorder()
    config = SessionConfig(ping_interval_s=5, ping_timeout_s=3, close_timeout_s=2)
    async with wrapped(handler, config, answer_pings=False) as client:
        t0 = trio.current_time()
        close = await client.expect_close()
        assert close.code == CloseCode.INTERNAL_ERROR
        assert trio.current_time() - t0 == 8.0
        with trio.fail_after(5):
            while handler.closed is None:
                await trio.sleep(0.5)
    assert handler.closed == (CloseCode.INTERNAL_ERROR, False)


async def test_close_codes_are_the_sessions_both_ways(autojump_clock: Any) -> None:
    """The face's close(4000) reaches the peer as 4000 after the flushed reply; a peer's 1001 is reported as the peer's."""
    ours = Recorder()
    async with wrapped(ours, NO_HEARTBEAT) as client:
        await client.send_text("bye")
        event = await client.next_event()
        assert isinstance(event, TextMessage) and event.data == "last words"
        close = await client.expect_close()
        assert (close.code, close.reason) == (4000, "bye")
        with trio.fail_after(5):
            while ours.closed is None:
                await trio.sleep(0.5)
    assert ours.closed == (4000, False)

    theirs = Recorder()
    async with wrapped(theirs, NO_HEARTBEAT) as client:
        await client.close(1001)
        assert isinstance(await client.next_event(), CloseConnection)
        with trio.fail_after(5):
            while theirs.closed is None:
                await trio.sleep(0.5)
    assert theirs.closed == (1001, True)


async def test_a_stalled_peer_is_closed_1008_within_the_byte_bound(autojump_clock: Any) -> None:
    """Through trio-websocket too, a peer that stops reading gets at most send_buffer_max_bytes plus one message queued, then 1008."""
    sizes: list[int] = []

    class Flood(Recorder):
        async def on_open(self, session: Session) -> None:
            await super().on_open(session)
            for _ in range(1000):
                if not session.send_nowait("x" * 100):
                    break
                sizes.append(session.buffered_bytes)

    handler = Flood()
    config = SessionConfig(ping_interval_s=None, send_buffer_high_bytes=500, send_buffer_max_bytes=1000, close_timeout_s=2)
    async with wrapped(handler, config, pair=trio.testing.lockstep_stream_pair):
        t0 = trio.current_time()  # the client never reads again
        with trio.fail_after(10):
            while handler.closed is None:
                await trio.sleep(0.5)
    assert 1000 < max(sizes) <= 1100
    assert handler.closed == (CloseCode.POLICY_VIOLATION, False)
    assert handler.closed_at is not None and handler.closed_at - t0 == 2.0  # the closing handshake gave up after close_timeout_s
