"""Fixtures for the tools face: a demo tool app, servers over TCP and memory streams,
a recording ``websockets`` peer, and a tiny OAuth2 token endpoint."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import parse_qsl

import h11
import trio
import trio.testing
from attrs import define, field
from websockets.exceptions import ConnectionClosedError
from websockets.sync.server import ServerConnection, serve

from antiphon.engine.connect import open_client_websocket
from antiphon.engine.server import ServerConfig
from antiphon.engine.wire import WebSocketWire
from antiphon.proto.utcp.message import Handshake
from antiphon.tools import ApiKeyAuth, BasicAuth, ToolApp, ToolServer
from antiphon.tools.pool import Opener

API_KEY = "k3y-123"


def demo_app(auth: ApiKeyAuth | BasicAuth | None = None, **settings: Any) -> ToolApp:
    """Tools for the tests: sync, async, streaming, failing, slow (on Trio's clock)."""
    app = ToolApp(name="demo", auth=auth, **settings)

    @app.tool
    def add(a: int, b: int = 2) -> int:
        """Add two integers.

        The second defaults to 2.
        """
        return a + b

    @app.tool
    async def echo(text: str, n: int = 1) -> dict[str, Any]:
        """Echo the text n times."""
        return {"echo": text * n}

    @app.tool
    async def count(n: int, gap_s: float = 0):
        """Stream {"i": 0..n-1}, gap_s apart."""
        for i in range(n):
            if i and gap_s:
                await trio.sleep(gap_s)
            yield {"i": i}

    @app.tool
    def divide(a: float, b: float) -> float:
        """Divide a by b."""
        return a / b

    @app.tool
    async def slow(seconds: float, tag: str) -> str:
        """Answer `tag` after `seconds`."""
        await trio.sleep(seconds)
        return tag

    @app.tool
    async def broken_stream(n: int):
        """Yield n items then raise."""
        for i in range(n):
            yield i
        raise RuntimeError("secret path /etc/x")

    return app


@asynccontextmanager
async def tcp_tools(app: ToolApp, config: ServerConfig | None = None) -> AsyncIterator[ToolServer]:
    """A tool server on 127.0.0.1, port 0."""
    async with trio.open_nursery() as nursery:
        server = await nursery.start(ToolServer(app, config or ServerConfig(port=0)).run)
        yield server
        nursery.cancel_scope.cancel()


def memory_opener(server: ToolServer, nursery: trio.Nursery, opened: list[Handshake] | None = None) -> Opener:
    """An :data:`Opener` that serves each connection over a fresh memory stream pair."""

    @asynccontextmanager
    async def opener(
        handshake: Handshake, timeout_s: float, max_message_size: int
    ) -> AsyncIterator[tuple[trio.Nursery, WebSocketWire]]:
        if opened is not None:
            opened.append(handshake)
        client_stream, server_stream = trio.testing.memory_stream_pair()
        nursery.start_soon(server.serve_stream, server_stream)

        async def open_stream() -> trio.abc.Stream:
            return client_stream

        async with open_client_websocket(
            handshake.url,
            headers=handshake.headers,
            subprotocols=handshake.subprotocols,
            timeout_s=timeout_s,
            max_message_size=max_message_size,
            open_stream=open_stream,
        ) as (conn_nursery, wire):
            yield conn_nursery, wire

    return opener


# --------------------------------------------------------------------------- websockets peer


@define
class PeerConnection:
    """What one client did on a connection to :class:`WsPeer`."""

    path: str
    headers: list[tuple[str, str]]
    subprotocol: str | None
    frames: list[str | bytes] = field(factory=list)
    close_code: int | None = None
    """The code of the close frame the client sent, once the connection is over."""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


CLOSE = object()
"""A :class:`WsPeer` reply that closes the connection instead of answering."""


@define
class WsPeer:
    """A ``websockets`` (sync) server in a thread that records every handshake and frame.

    ``reply(connection, frame)`` returns a list of frames to send (:data:`CLOSE` in it closes
    the connection there), or :data:`CLOSE`.
    ``redirect_to`` makes it answer every upgrade with a 302 instead.
    """

    reply: Callable[[PeerConnection, str | bytes], Any]
    url: str = ""
    connections: list[PeerConnection] = field(factory=list)
    requests: list[str] = field(factory=list)
    redirect_to: str | None = None

    def handle(self, conn: ServerConnection) -> None:
        request = conn.request
        assert request is not None
        rec = PeerConnection(request.path, list(request.headers.raw_items()), conn.subprotocol)
        self.connections.append(rec)
        try:
            for frame in conn:
                rec.frames.append(frame)
                action = self.reply(rec, frame)
                for out in [CLOSE] if action is CLOSE else action:
                    if out is CLOSE:
                        conn.close()
                        return
                    conn.send(out)
        except ConnectionClosedError:
            pass  # the client closed with an error code (a 1009, say): recorded below
        finally:
            received = conn.protocol.close_rcvd
            rec.close_code = received.code if received is not None else None

    def process_request(self, conn: ServerConnection, request: Any) -> Any:
        self.requests.append(request.path)
        if self.redirect_to is None:
            return None
        response = conn.respond(302, "moved\n")
        response.headers["Location"] = self.redirect_to
        return response


def echo_reply(conn: PeerConnection, frame: str | bytes) -> list[str]:
    """Answer every frame with {"echo": <frame text>}."""
    return [json.dumps({"echo": frame if isinstance(frame, str) else frame.decode()})]


@contextmanager
def ws_peer(reply: Callable[[PeerConnection, str | bytes], Any] = echo_reply, **kwargs: Any) -> Iterator[WsPeer]:
    peer = WsPeer(reply, **kwargs)
    with serve(
        peer.handle,
        "127.0.0.1",
        0,
        select_subprotocol=lambda conn, offered: offered[0] if offered else None,
        process_request=peer.process_request,
    ) as server:
        peer.url = f"ws://127.0.0.1:{server.socket.getsockname()[1]}"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield peer
        finally:
            server.shutdown()
            thread.join(5)


# --------------------------------------------------------------------------- OAuth2 token endpoint


@define
class TokenEndpoint:
    """A tiny HTTP server (Trio + h11) answering every POST with ``status`` and ``body``."""

    status: int = 200
    body: bytes = b'{"access_token": "tok-1", "token_type": "bearer", "expires_in": 3600}'
    headers: list[tuple[str, str]] = field(factory=list)
    url: str = ""
    requests: list[tuple[str, dict[str, str], dict[str, str]]] = field(factory=list)
    """(target, headers, form fields) of every request."""

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        target, headers, body = "", {}, b""
        async with stream:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                if isinstance(event, h11.Request):
                    target = event.target.decode()
                    headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            self.requests.append((target, headers, dict(parse_qsl(body.decode()))))
            out = [("Content-Type", "application/json"), ("Content-Length", str(len(self.body))), *self.headers]
            await stream.send_all(conn.send(h11.Response(status_code=self.status, headers=out)))
            await stream.send_all(conn.send(h11.Data(data=self.body)) + conn.send(h11.EndOfMessage()))


@asynccontextmanager
async def token_endpoint(**kwargs: Any) -> AsyncIterator[TokenEndpoint]:
    endpoint = TokenEndpoint(**kwargs)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, endpoint.handle, 0, host="127.0.0.1"))
        endpoint.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/oauth/token"
        yield endpoint
        nursery.cancel_scope.cancel()
