"""Fixtures for the media transports: a server over TCP or memory streams, and an event recorder."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from antiphon.media import (
    SERVER_EVENTS,
    WebsocketServerParams,
    WebsocketServerTransport,
)
from tests.helpers import RawClient


class Recorder:
    """Registers a handler for every event of a transport and records ``(name, trio time, args)``."""

    def __init__(self, transport: Any, names: tuple[str, ...]) -> None:
        self.events: list[tuple[str, float, tuple[Any, ...]]] = []
        self._changed = trio.Event()
        for name in names:
            transport.add_event_handler(name, self._make(name))

    def _make(self, name: str) -> Callable[..., Any]:
        async def handler(transport: Any, *args: Any) -> None:
            self.events.append((name, trio.current_time(), args))
            self._changed.set()
            self._changed = trio.Event()

        return handler

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.events]

    async def wait_for(self, name: str, count: int = 1, timeout_s: float = 120) -> tuple[str, float, tuple[Any, ...]]:
        """Wait until ``name`` happened ``count`` times; return its last occurrence. Fails after ``timeout_s``."""
        with trio.fail_after(timeout_s):
            while self.names.count(name) < count:
                await self._changed.wait()
        return [e for e in self.events if e[0] == name][-1]


@asynccontextmanager
async def tcp_server(
    params: WebsocketServerParams | None = None,
) -> AsyncIterator[tuple[WebsocketServerTransport, Recorder]]:
    """A server transport on 127.0.0.1, port 0, recording every event; shut down gracefully on exit."""
    transport = WebsocketServerTransport(params or WebsocketServerParams(), host="127.0.0.1", port=0)
    rec = Recorder(transport, SERVER_EVENTS)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        yield transport, rec
        with trio.fail_after(15):
            await transport.shutdown(grace_s=5)


@asynccontextmanager
async def memory_server(
    params: WebsocketServerParams | None = None,
) -> AsyncIterator[tuple[WebsocketServerTransport, Recorder, Callable[[], RawClient]]]:
    """A server transport with no socket; ``new_client()`` serves a RawClient over a memory stream."""
    transport = WebsocketServerTransport(params or WebsocketServerParams(), port=0)
    rec = Recorder(transport, SERVER_EVENTS)
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: transport.run(listen=False, task_status=task_status))

        def new_client() -> RawClient:
            client_stream, server_stream = trio.testing.memory_stream_pair()
            nursery.start_soon(transport.serve_stream, server_stream)
            return RawClient(client_stream)

        yield transport, rec, new_client
        nursery.cancel_scope.cancel()
