"""Engine test harness: a SessionServer without listeners, fed memory streams (autojump-safe)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio
import trio.testing

from antiphon.engine.server import (
    Accept,
    HandshakeRequest,
    Reject,
    ServerConfig,
    SessionServer,
)
from antiphon.engine.session import Session, SessionConfig, SessionHandler

__all__ = ["Echo", "streams"]

StreamPair = Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]]


class Echo(SessionHandler):
    """Echoes every message; records the session and how it ended."""

    def __init__(self) -> None:
        self.session: Session | None = None
        self.received: list[str | bytes] = []
        self.closed: tuple[int | None, bool] | None = None

    async def on_open(self, session: Session) -> None:
        self.session = session

    def on_message(self, session: Session, message: str | bytes) -> None:
        self.received.append(message)
        session.send_nowait(message)

    def on_close(self, session: Session) -> None:
        self.closed = (session.close_code, session.closed_by_peer)


@asynccontextmanager
async def streams(
    make_handler: Callable[[], SessionHandler],
    config: SessionConfig | None = None,
    pair: StreamPair = trio.testing.memory_stream_pair,
    server_config: ServerConfig | None = None,
) -> AsyncIterator[tuple[SessionServer, Callable[[], trio.abc.Stream]]]:
    """A SessionServer without listeners; ``connect()`` serves a new stream pair and returns the client's end."""

    def route(request: HandshakeRequest, *, full: bool) -> Accept | Reject:
        return Accept(make_handler())

    server = SessionServer(route, server_config or ServerConfig(port=0), config or SessionConfig(ping_interval_s=None))
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(server.run, listen=False))

        def connect() -> trio.abc.Stream:
            client_stream, server_stream = pair()
            nursery.start_soon(server.serve_stream, server_stream)
            return client_stream

        yield server, connect
        nursery.cancel_scope.cancel()

