"""A Trio client for the chat protocol that survives dropped connections.

::

    async with open_chat("ws://127.0.0.1:8765", secret="...") as chat:
        reply = await chat.ask("Hello!")
        print(reply.text, reply.token_usage)

        await chat.send("Tell me more")
        async for event in chat:          # every event, as it arrives
            ...

Each connection is a session on the engine. When one drops without a proper close
(no close frame, a dead server, 1011-1014), the client reconnects with backoff,
authenticates, sends ``resume`` with the last ``seq`` it received, and the gateway
replays what was missed. Events reach the application exactly once and in order:
numbered events are de-duplicated by ``seq``; messages whose ack never arrived are sent
again, and the gateway's idempotent ids make that safe. A ``resumed`` event tells the
application a reconnect happened (``complete`` is False if some events were lost);
``on_reconnect`` hears of each attempt before its delay (:class:`Reconnecting`), for a
status line.

``open_chat(url, resume_run=RUN_ID, last_seq=N)`` continues an earlier conversation
from another process: after ``connected`` it sends ``resume`` and the gateway replays
the events after ``N``, behind a ``resumed`` event.

Without a secret the client asks the gateway an application ``ping`` first: a gateway
that needs no secret has greeted with ``connected`` before it reads it, and one waiting
for a secret answers it with ``pong``, so a missing secret fails at once
(:class:`ChatError` ``auth_required``) instead of after the gateway's auth timeout.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final, Literal
from urllib.parse import urlencode

import attrs
import trio
from attrs import frozen

from antiphon.chat.reconnect import NO_RECONNECT, RECONNECT_CODES, Reconnecting, ReconnectPolicy
from antiphon.engine._util import open_nursery_unwrapped
from antiphon.engine.connect import DEFAULT_CONNECT_TIMEOUT_S, open_client_websocket
from antiphon.engine.session import Session, SessionConfig, SessionHandler
from antiphon.errors import (
    ChatError,
    ConnectionClosed,
    DecodeError,
    HandshakeError,
    HandshakeRejected,
    LocalProtocolError,
    OperationTimeout,
)
from antiphon.proto.chat.messages import (
    Ack,
    Auth,
    Cancel,
    Connected,
    ErrorCode,
    ErrorEvent,
    MessageId,
    Ping,
    Pong,
    Response,
    Resume,
    Resumed,
    ServerEvent,
    StreamChunk,
    StreamEnd,
    TokenUsage,
    UserMessage,
    decode_server_frame,
    encode_client_message,
)
from antiphon.proto.close import CloseCode

__all__ = [
    "EVENT_BUFFER_SIZE",
    "HANDSHAKE_EVENTS",
    "NO_RECONNECT",
    "RECONNECT_CODES",
    "ChatClient",
    "ReconnectPolicy",
    "Reconnecting",
    "Reply",
    "open_chat",
]

log = logging.getLogger("antiphon.chat.client")

EVENT_BUFFER_SIZE: Final = 1024
"""Events held for the application before the client stops reading (TCP then slows the server)."""

HANDSHAKE_EVENTS: Final = 16
"""Events held while connecting; a server that sends more before ``connected`` is not speaking the protocol."""

@frozen(kw_only=True)
class Reply:
    """A finished turn: the whole text, its token usage and how it ended."""

    id: MessageId
    agent: str
    text: str
    token_usage: TokenUsage
    status: str = "completed"


class _Connection(SessionHandler):
    """One connection's handler: handshake events to the supervisor, the rest to the application."""

    def __init__(self, client: ChatClient) -> None:
        self.client = client
        self.handshake_in, self.handshake_out = trio.open_memory_channel[ServerEvent](HANDSHAKE_EVENTS)
        self.handshaking = True
        self.probing = False  # our secret-less ping is out and its pong has not come back
        self.greeted = False  # `connected` arrived

    def on_message(self, session: Session, message: str | bytes) -> None:
        try:
            event, seq = decode_server_frame(message)
        except DecodeError as exc:
            log.warning("skipping an event that does not decode: %s", exc)
            return
        if self.probing and isinstance(event, Pong):
            # The answer to our probe, never the application's: after `connected` it is dropped.
            self.probing = False
            if not self.greeted:
                self._handshake_event(event)
            return
        if self.handshaking and isinstance(event, (Connected, Resumed, ErrorEvent)):
            if isinstance(event, Connected):
                self.greeted = True
            if isinstance(event, Resumed):
                # In order with the replay that follows it in the same read: the app
                # sees `resumed` first, then the missed events.
                self.handshaking = False
                self.client._deliver(event, None, session)
            self._handshake_event(event)
            return
        self.client._deliver(event, seq, session)

    def _handshake_event(self, event: ServerEvent) -> None:
        try:
            self.handshake_in.send_nowait(event)
        except (trio.WouldBlock, trio.ClosedResourceError):
            log.warning("dropping a %s event that arrived while connecting", event.type)

    def on_close(self, session: Session) -> None:
        self.handshake_in.close()


class ChatClient:
    """A chat conversation over one or more connections; made by :func:`open_chat`."""

    def __init__(
        self,
        url: str,
        *,
        secret: str | None,
        auth: Literal["message", "header", "query"],
        connect_timeout_s: float,
        session_config: SessionConfig | None,
        reconnect: ReconnectPolicy,
        ssl_context: ssl.SSLContext | None = None,
        resume_run: str | None = None,
        last_seq: int = 0,
        on_reconnect: Callable[[Reconnecting], object] | None = None,
    ) -> None:
        if last_seq < 0:
            raise LocalProtocolError(f"last_seq: must not be negative, got {last_seq}")
        self._url, self._secret, self._auth = url, secret, auth
        self._connect_timeout_s = connect_timeout_s
        self._session_config = session_config
        self._reconnect = reconnect
        self._ssl_context = ssl_context
        self._resume_run = resume_run
        self._on_reconnect = on_reconnect
        self._events: deque[ServerEvent] = deque()
        self._events_ready = trio.lowlevel.ParkingLot()
        self._events_ended = False
        self._held: deque[ServerEvent] = deque()
        self._ids = itertools.count(1)
        # Unique per client: a resumed run has seen another client's c1, c2... (ids are idempotent).
        self._id_suffix = secrets.token_hex(4)
        self._ask_lock = trio.Lock()
        self._session: Session | None = None
        self._live = trio.Event()
        self._closing = False
        self._unacked: dict[MessageId, str] = {}
        self._acked: set[MessageId] = set()
        self.connected: Connected | None = None
        self.last_seq = last_seq
        self.close_code: int | None = None
        self.close_reason: str | None = None

    @property
    def session_id(self) -> str:
        """The ``connector_run_id`` (alias ``session_id``) of the conversation."""
        if self.connected is None:
            raise LocalProtocolError("not connected yet")
        return self.connected.connector_run_id

    # ------------------------------------------------------------------ sending

    async def send(
        self,
        message: str,
        *,
        id: MessageId | None = None,
        context: Mapping[str, Any] | None = None,
        agent: str | None = None,
    ) -> MessageId:
        """Send a user message and return its id (one unique to this client is made up when not given).

        While the client is reconnecting this waits for the new connection; the message
        is sent again after a resume until its ack arrives.
        """
        mid = id if id is not None else f"c{next(self._ids)}-{self._id_suffix}"
        text = encode_client_message(UserMessage(message, mid, context or {}, agent))
        self._unacked[mid] = text
        await self._send_text(text)
        return mid

    async def cancel(self, id: MessageId) -> None:
        """Ask the gateway to stop turn ``id``; it ends with ``status: "cancelled"``."""
        await self._send_text(encode_client_message(Cancel(id)))

    async def ping(self) -> None:
        """Send an application ``ping``; its ``pong`` arrives as an event."""
        await self._send_text(encode_client_message(Ping()))

    async def _send_text(self, text: str) -> None:
        while True:
            session = self._session
            if session is not None and not session.closing and self._live.is_set():
                await session.send(text)
                return
            if self._closing or self.close_code is not None:
                raise ConnectionClosed(self.close_code or CloseCode.ABNORMAL, self.close_reason)
            await self._live.wait()

    # ------------------------------------------------------------------ receiving

    async def receive(self) -> ServerEvent:
        """The next event from the gateway.

        Raises :class:`ConnectionClosed` once the conversation is over (closed, or every
        reconnect attempt failed) and every event that arrived before was delivered.
        """
        if self._held:
            return self._held.popleft()
        return await self._next_event()

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

        Raises :class:`ChatError` when the gateway refuses the message or the agent
        fails, :class:`ConnectionClosed` when the conversation ends first. Events of
        other turns that arrive meanwhile stay available to :meth:`receive`.
        """
        async with self._ask_lock:
            mid = await self.send(message, **kwargs)
            last: ServerEvent | None = None
            async for event in self._turn_events(mid):
                last = event
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
        failure: ErrorEvent | None = None
        try:
            while True:
                event = await self._next_event()
                if getattr(event, "id", None) != mid:
                    others.append(event)
                    continue
                if isinstance(event, ErrorEvent):
                    if event.code != ErrorCode.AGENT_ERROR:
                        raise ChatError(event.code, event.message, event.id)
                    failure = event  # the turn's own end follows
                    continue
                if isinstance(event, (StreamEnd, Response)) and failure is not None:
                    raise ChatError(failure.code, failure.message, failure.id)
                yield event
                if isinstance(event, (StreamEnd, Response)):
                    return
        finally:
            self._held.extend(others)

    async def _next_event(self) -> ServerEvent:
        while not self._events:
            if self._events_ended:
                raise ConnectionClosed(self.close_code or CloseCode.ABNORMAL, self.close_reason)
            await self._events_ready.park()
        event = self._events.popleft()
        session = self._session
        if session is not None and len(self._events) < EVENT_BUFFER_SIZE // 2:
            session.resume_reading()
        return event

    def _deliver(self, event: ServerEvent, seq: int | None, session: Session | None = None) -> None:
        # Exactly once: numbered events by seq, re-acks (unnumbered) by id.
        if seq is not None:
            if seq <= self.last_seq:
                return
            self.last_seq = seq
        if isinstance(event, Ack):
            if event.id in self._acked:
                return
            self._acked.add(event.id)
            self._unacked.pop(event.id, None)
        self._events.append(event)
        self._events_ready.unpark()
        if session is not None and len(self._events) >= EVENT_BUFFER_SIZE:
            session.pause_reading()  # the application is not keeping up: let TCP slow the server

    def _end_events(self) -> None:
        self._events_ended = True
        self._events_ready.unpark_all()

    # ------------------------------------------------------------------ connections

    async def aclose(self) -> None:
        """End the conversation: close the connection normally (1000)."""
        self._closing = True
        session = self._session
        if session is not None:
            session.close(CloseCode.NORMAL, "client closed")
            await session.done.wait()
        self._live.set()  # wake senders waiting for a reconnect; they see _closing

    async def _supervise(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        attempt = 0
        started = False
        try:
            while True:
                session: Session | None = None
                try:
                    session = await self._connect_once(started, task_status)
                    started, attempt = True, 0
                    reason = f"closed {session.close_code} {session.close_reason or ''}".rstrip()
                except (HandshakeError, OperationTimeout, ConnectionClosed) as exc:
                    if not started:
                        raise
                    if isinstance(exc, HandshakeRejected):
                        # Refused outright (a changed secret, a path gone): retrying won't help.
                        log.warning("reconnect refused: %s", exc)
                        self.close_code, self.close_reason = CloseCode.ABNORMAL, str(exc)
                        return
                    log.info("reconnect attempt %d failed: %s", attempt, exc)
                    reason = str(exc)
                if self._closing:
                    return
                if session is not None and session.close_code not in RECONNECT_CODES:
                    self.close_code, self.close_reason = session.close_code, session.close_reason
                    return
                attempt += 1
                policy = self._reconnect
                if attempt > policy.max_attempts:
                    if session is not None:
                        self.close_code, self.close_reason = session.close_code, session.close_reason
                    return
                delay = policy.delay(attempt)
                self._announce(
                    Reconnecting(attempt=attempt, max_attempts=policy.max_attempts, delay_s=delay, reason=reason)
                )
                await trio.sleep(delay)
        finally:
            self._live.set()
            self._end_events()

    def _announce(self, event: Reconnecting) -> None:
        if self._on_reconnect is None:
            return
        try:
            self._on_reconnect(event)
        except Exception:
            log.exception("the on_reconnect callback failed")  # the application's bug; the client carries on

    async def _connect_once(self, resuming: bool, task_status: trio.TaskStatus[None]) -> Session:
        url, headers = self._url, []
        if self._secret is not None and self._auth == "header":
            headers.append(("X-Connic-Secret", self._secret))
        elif self._secret is not None and self._auth == "query":
            url += ("&" if "?" in url else "?") + urlencode({"secret": self._secret})
        async with open_client_websocket(
            url, headers=headers, timeout_s=self._connect_timeout_s, ssl_context=self._ssl_context
        ) as (nursery, ws):
            session = Session(ws, self._session_config)
            handler = _Connection(self)
            nursery.start_soon(session.run, handler)
            try:
                await self._handshake(session, handler, resuming)
                self._session = session
                self._live.set()
                if not resuming:
                    task_status.started()
                await session.done.wait()
            finally:
                self._live = trio.Event() if not self._closing else self._live
                with trio.CancelScope(shield=True):
                    session.close(CloseCode.NORMAL, "client closed")
                    await session.done.wait()
            return session

    async def _handshake(self, session: Session, handler: _Connection, resuming: bool) -> None:
        try:
            with trio.fail_after(self._connect_timeout_s):
                if self._secret is None:
                    handler.probing = True
                    await session.send(encode_client_message(Ping()))
                elif self._auth == "message":
                    await session.send(encode_client_message(Auth(self._secret)))
                first = await self._handshake_event(handler, session)
                if isinstance(first, Pong):
                    raise ChatError(ErrorCode.AUTH_REQUIRED, "the gateway asks for a secret and none was given")
                if not isinstance(first, Connected):
                    raise LocalProtocolError(f"expected a connected event first, got {first.type!r}")
                run_id = self.session_id if resuming else self._resume_run
                if not resuming:
                    self.connected = first
                if run_id is None:
                    handler.handshaking = False
                    return
                await session.send(encode_client_message(Resume(run_id, self.last_seq)))
                answer = await self._handshake_event(handler, session)
        except trio.TooSlowError:
            raise OperationTimeout(f"no connected event within {self._connect_timeout_s:g} s") from None
        if isinstance(answer, ErrorEvent) and not resuming:
            # The run the caller asked for is gone: open_chat fails, this connection's fresh run ends.
            raise ChatError(answer.code, answer.message)
        if isinstance(answer, Resumed) and not resuming:
            run = answer.connector_run_id
            self.connected = attrs.evolve(first, session_id=run, connector_run_id=run)
        if isinstance(answer, ErrorEvent):
            # The run is gone (expired, or the server restarted): the conversation is over.
            self._deliver(answer, None)
            self._closing = True
            session.close(CloseCode.NORMAL, "run not resumable")
            raise ConnectionClosed(CloseCode.NORMAL, "run not resumable")
        assert isinstance(answer, Resumed)  # already delivered, in order, by the connection
        for text in list(self._unacked.values()):
            await session.send(text)

    async def _handshake_event(self, handler: _Connection, session: Session) -> ServerEvent:
        try:
            event = await handler.handshake_out.receive()
        except trio.EndOfChannel:
            raise ConnectionClosed(session.close_code or CloseCode.ABNORMAL, session.close_reason) from None
        if isinstance(event, ErrorEvent):
            if handler.handshaking and event.code == ErrorCode.UNKNOWN_RUN:
                return event
            raise ChatError(event.code, event.message, event.id)
        return event


def _reply(event: ServerEvent | None) -> Reply:
    if isinstance(event, StreamEnd):
        return Reply(
            id=event.id, agent=event.agent, text=event.full_response, token_usage=event.token_usage, status=event.status
        )
    assert isinstance(event, Response)
    return Reply(
        id=event.id, agent=event.agent, text=event.response, token_usage=event.token_usage, status=event.status
    )


@asynccontextmanager
async def open_chat(
    url: str,
    *,
    secret: str | None = None,
    auth: Literal["message", "header", "query"] = "message",
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    session_config: SessionConfig | None = None,
    reconnect: ReconnectPolicy | None = None,
    ssl_context: ssl.SSLContext | None = None,
    resume_run: str | None = None,
    last_seq: int = 0,
    on_reconnect: Callable[[Reconnecting], object] | None = None,
) -> AsyncIterator[ChatClient]:
    """Connect to a chat gateway, authenticate, and yield a :class:`ChatClient`.

    ``auth`` says how the secret travels: as the first message (the protocol's default),
    as the ``X-Connic-Secret`` header, or as the ``secret`` query parameter.
    ``reconnect`` governs resuming after a dropped connection (default
    :class:`ReconnectPolicy`; ``ReconnectPolicy(max_attempts=0)`` turns it off), and
    ``on_reconnect`` is called (from the client's task: it must not block) with a
    :class:`Reconnecting` before each attempt's delay. ``ssl_context`` verifies a
    ``wss://`` gateway (None: the system's CAs and ``SSL_CERT_FILE``). ``resume_run``
    continues that run: the gateway replays its events after ``last_seq`` (behind a
    ``resumed`` event) and :attr:`ChatClient.session_id` is that run's id.

    Raises :class:`~antiphon.errors.HandshakeRejected` (e.g. 401 for a wrong secret in
    header or query), :class:`ChatError` (the gateway refused the first-message secret;
    ``auth_required`` when it asks for one and none was given; ``unknown_run`` when
    ``resume_run`` cannot be resumed), :class:`ConnectionClosed` and
    :class:`OperationTimeout`. The connection is closed with 1000 when the block exits.
    """
    client = ChatClient(
        url,
        secret=secret,
        auth=auth,
        connect_timeout_s=connect_timeout_s,
        session_config=session_config,
        reconnect=reconnect or ReconnectPolicy(),
        ssl_context=ssl_context,
        resume_run=resume_run,
        last_seq=last_seq,
        on_reconnect=on_reconnect,
    )
    async with open_nursery_unwrapped() as nursery:
        await nursery.start(client._supervise)
        try:
            yield client
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()
