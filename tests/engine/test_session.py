"""The session engine on its own: send queue bounds, close semantics, timers, crash isolation."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from wsproto.events import TextMessage

from antiphon.engine.server import (
    Accept,
    HandshakeRequest,
    Reject,
    ServerConfig,
    SessionServer,
)
from antiphon.engine.session import Session, SessionConfig, SessionHandler
from antiphon.errors import ConfigError
from tests.helpers import RawClient


class Recorder(SessionHandler):
    """Echoes text, closes on "bye", raises on "boom"; records how and when the session ended."""

    def __init__(self) -> None:
        self.closed: tuple[float, int | None, bool] | None = None
        self.timer_fired: list[float] = []
        self.session: Session | None = None

    async def on_open(self, session: Session) -> None:
        self.session = session

    def on_message(self, session: Session, message: str | bytes) -> None:
        if message == "boom":
            raise RuntimeError("a bug in a handler")
        if message == "bye":
            session.send_nowait("last words")
            session.close(4000, "bye")
            return
        if isinstance(message, str) and message.startswith("timer "):
            session.set_timer(float(message.split()[1]))
            return
        session.send_nowait(message)

    def on_timer(self, session: Session) -> None:
        self.timer_fired.append(trio.current_time())

    def on_close(self, session: Session) -> None:
        self.closed = (trio.current_time(), session.close_code, session.closed_by_peer)


@asynccontextmanager
async def engine(
    make_handler: Callable[[], SessionHandler],
    config: SessionConfig | None = None,
    pair: Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]] = trio.testing.memory_stream_pair,
) -> AsyncIterator[tuple[SessionServer, Callable[[], RawClient]]]:
    """A SessionServer without listeners; `connect()` makes a raw client over a new stream pair."""

    def route(request: HandshakeRequest, *, full: bool) -> Accept | Reject:
        return Accept(make_handler())

    server = SessionServer(route, ServerConfig(port=0), config or SessionConfig(ping_interval_s=None))
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(server.run, listen=False))

        def connect() -> RawClient:
            client_stream, server_stream = pair()
            nursery.start_soon(server.serve_stream, server_stream)
            return RawClient(client_stream)

        yield server, connect
        nursery.cancel_scope.cancel()


async def test_close_with_flush_sends_queued_messages_first(autojump_clock: Any) -> None:
    """close() with flush delivers what was queued, then the close frame with its code."""
    async with engine(Recorder) as (_, connect):
        client = connect()
        await client.handshake()
        await client.send_text("bye")
        event = await client.next_event()
        assert isinstance(event, TextMessage) and event.data == "last words"
        assert (await client.expect_close()).code == 4000


async def test_a_failing_handler_closes_only_its_session_with_1011(autojump_clock: Any) -> None:
    """An exception in one session's handler closes it with 1011; another session carries on."""
    handlers: list[Recorder] = []

    def make() -> Recorder:
        handlers.append(Recorder())
        return handlers[-1]

    async with engine(make) as (server, connect):
        a, b = connect(), connect()
        await a.handshake()
        await b.handshake()
        await a.send_text("boom")
        assert (await a.expect_close()).code == 1011
        await b.send_text("still here")
        event = await b.next_event()
        assert isinstance(event, TextMessage) and event.data == "still here"
        assert len(server.sessions) == 1


async def test_peer_close_is_reported(autojump_clock: Any) -> None:
    """A client's close frame ends the session; on_close sees its code and closed_by_peer."""
    handler = Recorder()
    async with engine(lambda: handler) as (server, connect):
        client = connect()
        await client.handshake()
        await client.close(1000)
        await server.wait_idle()
    assert handler.closed is not None and handler.closed[1:] == (1000, True)


async def test_timer_fires_once_and_restarts_by_assignment(autojump_clock: Any) -> None:
    """set_timer(5) fires 5 s later; re-arming it at t+3 moves the deadline to t+3+5."""
    handler = Recorder()
    async with engine(lambda: handler) as (_, connect):
        client = connect()
        await client.handshake()
        t0 = trio.current_time()
        await client.send_text("timer 5")
        await trio.sleep(3)
        await client.send_text("timer 5")
        await trio.sleep(10)
        assert [t - t0 for t in handler.timer_fired] == [8.0]


async def test_slow_consumer_is_closed_1008_and_memory_stays_bounded(autojump_clock: Any) -> None:
    """A peer that stops reading gets at most send_buffer_max_bytes plus one message buffered, then close 1008."""
    sizes: list[int] = []
    payload = "x" * 100  # a 102-byte frame

    class Flood(Recorder):
        async def on_open(self, session: Session) -> None:
            await super().on_open(session)
            for _ in range(1000):
                if not session.send_nowait(payload):
                    break
                sizes.append(session.buffered_bytes)

    handler = Flood()
    config = SessionConfig(ping_interval_s=None, send_buffer_high_bytes=500, send_buffer_max_bytes=1000, close_timeout_s=2)
    async with engine(lambda: handler, config, trio.testing.lockstep_stream_pair) as (server, connect):
        client = connect()
        await client.handshake()  # then never reads again
        t0 = trio.current_time()
        await server.wait_idle()
    assert 1000 < max(sizes) <= 1000 + 102
    assert handler.closed is not None and handler.closed[1] == 1008
    assert handler.closed[0] - t0 == 2.0  # the close handshake gave up after close_timeout_s


async def test_send_waits_for_room_instead_of_growing(autojump_clock: Any) -> None:
    """send() waits once send_buffer_high_bytes are unread by a peer that does not read."""
    progress: list[int] = []

    class Producer(Recorder):
        async def on_open(self, session: Session) -> None:
            await super().on_open(session)

            async def produce() -> None:
                for i in range(100):
                    await session.send("y" * 8)  # a 10-byte frame
                    progress.append(i)

            session.nursery.start_soon(produce)

    handler = Producer()
    config = SessionConfig(ping_interval_s=None, send_buffer_high_bytes=50, send_buffer_max_bytes=1000)
    async with engine(lambda: handler, config, trio.testing.lockstep_stream_pair) as (_, connect):
        client = connect()
        await client.handshake()
        await trio.sleep(60)
        assert handler.session is not None and not handler.session.closing
        assert 50 < handler.session.buffered_bytes <= 60
        assert len(progress) == 6


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"ping_interval_s": 0}, "ping_interval: must be positive, got 0"),
        ({"ping_timeout_s": -1}, "ping_timeout: must be positive, got -1"),
        ({"send_buffer_high_bytes": 0}, "send_buffer_high_bytes: must be at least 1, got 0"),
        (
            {"send_buffer_high_bytes": 100, "send_buffer_max_bytes": 10},
            r"send_buffer_max_bytes: must be at least send_buffer_high_bytes \(100\), got 10",
        ),
        ({"close_timeout_s": 0}, "close_timeout: must be positive, got 0"),
    ],
)
def test_session_config_is_checked(kwargs: dict[str, Any], error: str) -> None:
    """Invalid engine settings raise ConfigError naming the field."""
    with pytest.raises(ConfigError, match=f"^{error}$"):
        SessionConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"port": 70000}, "port: must be between 0 and 65535, got 70000"),
        ({"max_connections": 0}, "max_connections: must be at least 1, got 0"),
        ({"max_message_size": 0}, "max_message_size: must be at least 1, got 0"),
    ],
)
def test_server_config_is_checked(kwargs: dict[str, Any], error: str) -> None:
    """Invalid server settings raise ConfigError naming the field."""
    with pytest.raises(ConfigError, match=f"^{error}$"):
        ServerConfig(**kwargs)
