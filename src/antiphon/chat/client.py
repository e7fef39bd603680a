"""A Trio client for the chat protocol, itself a session on the engine.

::

    async with open_chat("ws://127.0.0.1:8765", secret="...") as chat:
        reply = await chat.ask("Hello!")
        print(reply.text, reply.token_usage)

        await chat.send("Tell me more")
        async for event in chat:          # every event, as it arrives
            ...
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal
from urllib.parse import urlencode

import trio
from attrs import frozen

from antiphon.connect import DEFAULT_CONNECT_TIMEOUT_S, open_client_websocket
from antiphon.engine import CLOSE_NORMAL, Session, SessionConfig, SessionHandler
from antiphon.errors import ChatError, ConnectionClosed, DecodeError, LocalProtocolError, OperationTimeout
from antiphon.proto.chat import (
    Auth,
    Connected,
    ErrorEvent,
    MessageId,
    Ping,
    Response,
    ServerEvent,
    StreamChunk,
    StreamEnd,
    TokenUsage,
    UserMessage,
    decode_server_event,
    encode_client_message,
)

__all__ = ["ChatClient", "Reply", "open_chat"]

log = logging.getLogger("antiphon.chat.client")

EVENT_BUFFER_SIZE = 1024
"""Events held for the application before the client stops reading (TCP then slows the server)."""


@frozen(kw_only=True)
class Reply:
    """A finished turn: the whole text and its token usage."""

    id: MessageId
    agent: str
    text: str
    token_usage: TokenUsage


class _ClientHandler(SessionHandler):
    def __init__(self, events: trio.MemorySendChannel[ServerEvent]) -> None:
        self.events = events

    async def on_message(self, session: Session, message: str | bytes) -> None:
        try:
            event = decode_server_event(message)
        except DecodeError as exc:
            log.warning("skipping an event that does not decode: %s", exc)
            return
        await self.events.send(event)

    def on_close(self, session: Session) -> None:
        self.events.close()


class ChatClient:
    """A connected, authenticated chat session; made by :func:`open_chat`."""

    def __init__(self, session: Session, events: trio.MemoryReceiveChannel[ServerEvent]) -> None:
        self._session = session
        self._events = events
        self._held: deque[ServerEvent] = deque()
        self._ids = itertools.count(1)
        self._ask_lock = trio.Lock()
        self.connected: Connected | None = None

    @property
    def session_id(self) -> str:
        """The ``connector_run_id`` (alias ``session_id``) the gateway assigned."""
        if self.connected is None:
            raise LocalProtocolError("not connected yet")
        return self.connected.connector_run_id

    async def send(
        self,
        message: str,
        *,
        id: MessageId | None = None,
        context: Mapping[str, Any] | None = None,
        agent: str | None = None,
    ) -> MessageId:
        """Send a user message and return its id (one is made up when not given)."""
        mid = id if id is not None else f"c{next(self._ids)}"
        await self._send_text(encode_client_message(UserMessage(message, mid, context or {}, agent)))
        return mid

    async def ping(self) -> None:
        """Send an application ``ping``; its ``pong`` arrives as an event."""
        await self._send_text(encode_client_message(Ping()))

    async def receive(self) -> ServerEvent:
        """The next event from the gateway.

        Raises :class:`ConnectionClosed` once the connection is closed and every event
        that arrived before the close was delivered.
        """
        if self._held:
            return self._held.popleft()
        try:
            return await self._events.receive()
        except trio.EndOfChannel:
            s = self._session
            raise ConnectionClosed(s.close_code or 1006, s.close_reason) from None

    def __aiter__(self) -> AsyncIterator[ServerEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ServerEvent]:
        while True:
            try:
                yield await self.receive()
            except ConnectionClosed:
                return

    async def ask(self, message: str, **kwargs: Any) -> Reply:
        """Send ``message`` and wait for its whole reply (streamed or not).

        Raises :class:`ChatError` when the gateway answers the turn with an ``error``
        event, :class:`ConnectionClosed` when the connection ends first. Events of
        other turns that arrive meanwhile stay available to :meth:`receive`.
        """
        async with self._ask_lock:
            mid = await self.send(message, **kwargs)
            last: ServerEvent | None = None
            async for last in self._turn_events(mid):
                pass
            return _reply(last)

    async def stream(self, message: str, **kwargs: Any) -> AsyncIterator[str]:
        """Send ``message`` and yield its reply's chunks as they arrive (one chunk when not streaming)."""
        async with self._ask_lock:
            mid = await self.send(message, **kwargs)
            async for event in self._turn_events(mid):
                if isinstance(event, StreamChunk):
                    yield event.chunk
                elif isinstance(event, Response):
                    yield event.response

    async def _turn_events(self, mid: MessageId) -> AsyncIterator[ServerEvent]:
        # Yields the events of turn `mid` up to its last one; sets aside the others.
        others: list[ServerEvent] = []
        try:
            while True:
                try:
                    event = await self._events.receive()
                except trio.EndOfChannel:
                    s = self._session
                    raise ConnectionClosed(s.close_code or 1006, s.close_reason) from None
                if getattr(event, "id", None) != mid:
                    others.append(event)
                    continue
                if isinstance(event, ErrorEvent):
                    raise ChatError(event.code, event.message, event.id)
                yield event
                if isinstance(event, (StreamEnd, Response)):
                    return
        finally:
            self._held.extend(others)

    async def _send_text(self, text: str) -> None:
        if self._session.closing:
            s = self._session
            raise ConnectionClosed(s.close_code or 1006, s.close_reason)
        await self._session.send(text)

    async def aclose(self) -> None:
        """Close the connection normally (1000) and wait until it is closed."""
        self._session.close(CLOSE_NORMAL, "client closed")
        await self._session.done.wait()


def _reply(event: ServerEvent | None) -> Reply:
    if isinstance(event, StreamEnd):
        return Reply(id=event.id, agent=event.agent, text=event.full_response, token_usage=event.token_usage)
    assert isinstance(event, Response)
    return Reply(id=event.id, agent=event.agent, text=event.response, token_usage=event.token_usage)


@asynccontextmanager
async def open_chat(
    url: str,
    *,
    secret: str | None = None,
    auth: Literal["message", "header", "query"] = "message",
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    session_config: SessionConfig | None = None,
) -> AsyncIterator[ChatClient]:
    """Connect to a chat gateway, authenticate, and yield a :class:`ChatClient`.

    ``auth`` says how the secret travels: as the first message (the protocol's default),
    as the ``X-Connic-Secret`` header, or as the ``secret`` query parameter.
    Raises :class:`~antiphon.errors.HandshakeRejected` (e.g. 401 for a wrong secret in
    header or query), :class:`ChatError` (the gateway refused the first-message secret),
    :class:`ConnectionClosed` and :class:`OperationTimeout`. The connection is closed
    with 1000 when the block exits.
    """
    headers: list[tuple[str, str]] = []
    if secret is not None and auth == "header":
        headers.append(("X-Connic-Secret", secret))
    elif secret is not None and auth == "query":
        url += ("&" if "?" in url else "?") + urlencode({"secret": secret})
    send_events, receive_events = trio.open_memory_channel[ServerEvent](EVENT_BUFFER_SIZE)
    async with open_client_websocket(url, headers=headers, timeout_s=connect_timeout_s) as (nursery, ws):
        session = Session(ws, session_config)
        client = ChatClient(session, receive_events)
        nursery.start_soon(session.run, _ClientHandler(send_events))
        try:
            if secret is not None and auth == "message":
                await session.send(encode_client_message(Auth(secret)))
            with trio.fail_after(connect_timeout_s):
                first = await client.receive()
            if isinstance(first, ErrorEvent):
                raise ChatError(first.code, first.message, first.id)
            if not isinstance(first, Connected):
                raise LocalProtocolError(f"expected a connected event first, got {first.type!r}")
            client.connected = first
            yield client
        except trio.TooSlowError:
            raise OperationTimeout(f"no connected event within {connect_timeout_s:g} s") from None
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()
