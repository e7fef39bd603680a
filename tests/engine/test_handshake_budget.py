"""Connections that never finish their opening handshake are bounded apart from sessions (`max_handshakes`)."""

from __future__ import annotations

import trio
from wsproto.events import TextMessage

from antiphon.engine.server import Accept, HandshakeRequest, Reject, ServerConfig, SessionServer
from antiphon.engine.session import SessionConfig
from tests.engine.harness import Echo
from tests.helpers import RawClient


async def test_squatters_past_max_handshakes_are_closed_at_accept_and_sessions_still_open() -> None:
    """Two half-open connections fill a budget of 2: a third is closed at once; a finished upgrade frees a slot."""

    def route(request: HandshakeRequest, *, full: bool) -> Accept | Reject:
        return Accept(Echo())

    server = SessionServer(route, ServerConfig(port=0, max_handshakes=2), SessionConfig(ping_interval_s=None))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        squatters = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(2)]
        with trio.fail_after(5):
            while server.connections < 2:
                await trio.sleep(0.01)  # both squatters accepted (real sockets: wait for the listener)
        with trio.fail_after(5):
            third = await trio.open_tcp_stream("127.0.0.1", server.port)
            assert await third.receive_some(100) == b""  # closed at accept, before any byte
        await third.aclose()
        assert server.counters.handshakes.get("overload") == 1
        # A squatter that finishes its upgrade becomes a session and frees its handshake slot.
        await squatters[0].aclose()
        with trio.fail_after(5):
            while server.connections > 1:
                await trio.sleep(0.01)  # the server has seen the squatter go
        upgraded = RawClient(await trio.open_tcp_stream("127.0.0.1", server.port))
        with trio.fail_after(5):
            await upgraded.handshake("/")
        await upgraded.send_text("still serving")
        echo = await upgraded.next_event()
        assert isinstance(echo, TextMessage) and echo.data == "still serving"
        for s in (squatters[1], upgraded.stream):
            await s.aclose()
        nursery.cancel_scope.cancel()
