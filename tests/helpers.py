"""Test helpers: a raw wsproto client that does only what a test tells it to."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from typing import Any

import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

__all__ = ["RawClient"]


class RawClient:
    """A WebSocket client over any stream, with pongs under the test's control.

    trio-websocket's client always answers pings; a dead peer needs ``answer_pings=False``.
    Every event is stamped with ``trio.current_time()`` when it is read.
    """

    def __init__(self, stream: trio.abc.Stream, *, answer_pings: bool = True) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.answer_pings = answer_pings
        self.pings: list[float] = []
        self._events: deque[Event] = deque()
        self._text: list[str] = []

    async def handshake(self, target: str = "/", headers: Iterable[tuple[str, str]] = ()) -> Event:
        """Send the upgrade; return AcceptConnection or RejectConnection."""
        extra = [(k.encode(), v.encode()) for k, v in headers]
        await self.stream.send_all(self.ws.send(Request(host="localhost", target=target, extra_headers=extra)))
        event = await self.next_event()
        assert isinstance(event, (AcceptConnection, RejectConnection)), event
        return event

    async def next_event(self) -> Event:
        """The next event other than a ping (pings are answered or not, and logged in ``pings``)."""
        while not self._events:
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(data or None)
            for event in self.ws.events():
                if isinstance(event, Ping):
                    self.pings.append(trio.current_time())
                    if self.answer_pings:
                        await self.stream.send_all(self.ws.send(event.response()))
                    continue
                if isinstance(event, TextMessage) and not event.message_finished:
                    self._text.append(event.data)
                    continue
                if isinstance(event, TextMessage) and self._text:
                    event = TextMessage(data="".join(self._text) + event.data)
                    self._text.clear()
                self._events.append(event)
            if not data and not self._events:
                raise EOFError("the server closed the stream")
        return self._events.popleft()

    async def send_json(self, obj: Any) -> None:
        await self.send_text(json.dumps(obj))

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=text)))

    async def send_bytes(self, data: bytes) -> None:
        await self.stream.send_all(self.ws.send(BytesMessage(data=data)))

    async def receive_json(self) -> dict[str, Any]:
        """The next text message, parsed; fails the test on anything else."""
        event = await self.next_event()
        assert isinstance(event, TextMessage), f"expected a text message, got {event!r}"
        return json.loads(event.data)  # type: ignore[no-any-return]

    async def expect_close(self) -> CloseConnection:
        """The next event must be the server's close frame; answer it."""
        event = await self.next_event()
        assert isinstance(event, CloseConnection), f"expected a close frame, got {event!r}"
        try:
            await self.stream.send_all(self.ws.send(event.response()))
        except trio.BrokenResourceError:
            pass
        return event

    async def close(self, code: int = 1000) -> None:
        await self.stream.send_all(self.ws.send(CloseConnection(code=code)))
