"""Fixtures for the chat gateway: over memory streams (for the autojump clock) and over TCP."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from antiphon.chat import ChatGateway, ChatSettings, Connector
from antiphon.chat.store import TranscriptStore
from antiphon.engine.server import ServerConfig
from antiphon.engine.session import SessionConfig
from tests.helpers import RawClient

SECRET = "s3cret"


def connector(agent: Any = None, **settings: Any) -> Connector:
    kwargs: dict[str, Any] = {"settings": ChatSettings(**{"secret": SECRET, **settings})}
    if agent is not None:
        kwargs["agents"] = agent
    return Connector(**kwargs)


@asynccontextmanager
async def memory_gateway(
    conn: Connector | None = None,
    session: SessionConfig | None = None,
    *,
    stream_pair: Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]] = trio.testing.memory_stream_pair,
    answer_pings: bool = True,
    store: TranscriptStore | None = None,
) -> AsyncIterator[tuple[ChatGateway, RawClient]]:
    """A gateway serving one raw client over an in-memory stream pair (more with `connect_raw`)."""
    gateway = ChatGateway(conn or connector(), ServerConfig(port=0), session, store=store)
    client_stream, server_stream = stream_pair()
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(gateway.run, listen=False))
        nursery.start_soon(gateway.serve_stream, server_stream)
        yield gateway, RawClient(client_stream, answer_pings=answer_pings)
        nursery.cancel_scope.cancel()


def connect_raw(gateway: ChatGateway, nursery: trio.Nursery, *, answer_pings: bool = True) -> RawClient:
    """Another raw client of a memory gateway, over a fresh memory stream pair."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(gateway.serve_stream, server_stream)
    return RawClient(client_stream, answer_pings=answer_pings)


@asynccontextmanager
async def tcp_gateway(
    conns: Connector | list[Connector] | None = None,
    server: ServerConfig | None = None,
    session: SessionConfig | None = None,
    store: TranscriptStore | None = None,
) -> AsyncIterator[ChatGateway]:
    """A gateway on 127.0.0.1, port 0."""
    async with trio.open_nursery() as nursery:
        gateway = await nursery.start(
            ChatGateway(conns or connector(), server or ServerConfig(port=0), session, store=store).run
        )
        yield gateway
        nursery.cancel_scope.cancel()
