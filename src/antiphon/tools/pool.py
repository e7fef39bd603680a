"""Tool connections on the session engine, and the pool that keeps them per handshake.

Theory of operation
-------------------
UTCP sends a tool call as a bare frame of arguments and reads the first frame back as the
reply: there is no request id to match a reply with its call. So correctness rests on
three rules, all enforced here:

1. **One call in flight per connection.** A :class:`ToolConnection` is leased to one call
   at a time (:class:`PoolEntry` holds a FIFO ``trio.Lock``).
2. **Frames belong to the call that was in flight when they arrived.** Every call opens
   a new *generation*; the receive task tags each frame with the generation in force and
   drops frames that arrive while no call is in flight. A call reads only frames of its
   own generation, so leftovers of an earlier call are never read as its reply.
3. **A call that did not finish cleanly burns its connection.** A timeout, a
   cancellation, a stream the caller left early: the connection is closed and removed
   from the pool, because the reply still on its way would otherwise be read by the
   next call. A call that got its whole reply keeps the connection even when that reply
   is a ``tool_error`` or does not parse as its format: nothing of it is left unread. (This is the bug utcp-websocket
   1.2.1 has: its timed-out socket stays pooled and call *n+1* returns call *n*'s reply.)

The pool key is the whole :class:`~antiphon.proto.utcp.message.Handshake` (URL as dialled,
headers in order, subprotocols): a connection is reused only by a call that would have
opened exactly the same upgrade, so a different API key, bearer token or
``header_fields`` value never rides on someone else's connection. Two concurrent first
calls with the same handshake find the same entry (it is created without a checkpoint)
and the second waits on its lock, then reuses the connection the first one opened.

Every pooled connection is a client :class:`~antiphon.engine.Session` (heartbeat on:
20 s ping, 20 s pong timeout by default) running in the owning client's nursery.
"""

from __future__ import annotations

import logging
import ssl
from collections import OrderedDict, deque
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Final

import trio

from antiphon.engine.connect import open_client_websocket
from antiphon.engine.session import Session, SessionConfig, SessionHandler
from antiphon.engine.wire import WebSocketWire
from antiphon.errors import (
    ClosedWithoutReply,
    ConnectionClosed,
    OperationTimeout,
    ReplyTooLarge,
    connection_closed,
)
from antiphon.proto.close import CloseCode
from antiphon.proto.utcp.message import Handshake

__all__ = [
    "FRAME_BUFFER_SIZE",
    "MAX_POOLED_CONNECTIONS",
    "Opener",
    "PoolEntry",
    "ToolConnection",
    "ToolPool",
    "closed_error",
    "open_handshake",
    "run_connection",
]

log = logging.getLogger("antiphon.tools")

FRAME_BUFFER_SIZE: Final = 64
"""Frames held for a slow stream reader; past this the connection stops reading (TCP slows the server)."""

MAX_POOLED_CONNECTIONS: Final = 64
"""Idle entries beyond this are closed, least recently used first (rotating tokens leave old ones)."""


Opener = Callable[
    [Handshake, float, int], AbstractAsyncContextManager[tuple[trio.Nursery, WebSocketWire]]
]
"""Opens the WebSocket for a handshake: ``opener(handshake, connect_timeout_s, max_message_size)``.

The default, :func:`open_handshake`, dials TCP/TLS. Tests pass one that dials over a
memory stream (``open_client_websocket(..., open_stream=...)``), so timing runs on the
autojump clock.
"""


def open_handshake(
    handshake: Handshake,
    connect_timeout_s: float,
    max_message_size: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> AbstractAsyncContextManager[tuple[trio.Nursery, WebSocketWire]]:
    """The default :data:`Opener`: :func:`~antiphon.engine.connect.open_client_websocket` (no redirects).

    ``ssl_context`` is used for ``wss://`` (None: the system's CAs); bind it with
    ``functools.partial`` to make an :data:`Opener`.
    """
    return open_client_websocket(
        handshake.url,
        headers=handshake.headers,
        subprotocols=handshake.subprotocols,
        timeout_s=connect_timeout_s,
        max_message_size=max_message_size,
        ssl_context=ssl_context,
    )


def closed_error(session: Session | None, what: str, *, limit: int | None, replied: bool = False) -> ConnectionClosed:
    """The error for a connection that closed while a call still expected frames.

    A 1009 that *this* client sent (``closed_by_peer`` false) means a reply frame was
    over our ``max_message_size``: :class:`ReplyTooLarge`, saying so. Any other close is
    :class:`ClosedWithoutReply` before the first frame (``replied`` false), else
    :class:`ConnectionClosed`.
    """
    code = session.close_code if session is not None and session.close_code is not None else CloseCode.ABNORMAL
    reason = session.close_reason if session is not None else None
    by_peer = session.closed_by_peer if session is not None else True
    size = f" ({limit} bytes)" if limit is not None else ""
    if code == CloseCode.MESSAGE_TOO_BIG and not by_peer:
        return ReplyTooLarge(
            code,
            reason,
            f"{what}: a reply frame exceeded this client's max_message_size{size}; raise max_message_size "
            f"or ask the tool for less",
            limit=limit,
        )
    if code == CloseCode.MESSAGE_TOO_BIG:
        text = (
            f"{what}: the server closed the connection with 1009 (message too big):"
            " the call's message exceeded its limit"
        )
    elif replied:
        text = f"{what}: the connection closed with code {code}" + (f" ({reason})" if reason else "")
    else:
        text = f"{what}: the server closed the connection ({code}) without replying"
    return connection_closed(code, reason, text) if replied else ClosedWithoutReply(code, reason, text)


class ToolConnection(SessionHandler):
    """One WebSocket to a tool server; the engine's receive task feeds :meth:`on_message`.

    ``max_message_size`` is only named in errors (the opener enforces it).
    """

    def __init__(self, url: str, max_message_size: int | None = None) -> None:
        self.url = url
        self.max_message_size = max_message_size
        self.session: Session | None = None
        self._generation = 0
        self._active = False
        self._frames: deque[tuple[int, str | bytes]] = deque()
        self._arrived = trio.lowlevel.ParkingLot()
        self._ended = False

    # ------------------------------------------------------------------ engine hooks

    def on_message(self, session: Session, message: str | bytes) -> None:
        if not self._active:
            log.debug("%s: dropping a frame that arrived while no call was in flight", self.url)
            return
        self._frames.append((self._generation, message))
        self._arrived.unpark()
        if len(self._frames) >= FRAME_BUFFER_SIZE:
            session.pause_reading()  # a slow stream reader: let TCP slow the server down

    def on_close(self, session: Session) -> None:
        self._ended = True
        self._arrived.unpark_all()

    # ------------------------------------------------------------------ calls

    @property
    def usable(self) -> bool:
        """True while the connection can take a call."""
        return self.session is not None and not self.session.closing

    def begin(self) -> None:
        """Start a call: frames from now on are this call's."""
        self._generation += 1
        self._active = True

    def end(self) -> None:
        """The call got everything it expects; later frames are dropped."""
        self._active = False

    async def send(self, message: str) -> None:
        """Queue one frame; raises :class:`ConnectionClosed` when the connection is gone."""
        session = self.session
        assert session is not None
        if session.closing:
            raise ConnectionClosed(session.close_code or CloseCode.ABNORMAL, session.close_reason)
        await session.send(message)

    @property
    def in_call(self) -> bool:
        """True between :meth:`begin` and :meth:`end`: a call is waiting for frames."""
        return self._active

    async def receive(
        self, timeout_s: float, what: str, *, replied: bool = False, budget_s: float | None = None
    ) -> str | bytes | None:
        """The next frame of the current call within ``timeout_s``; None when the peer closed after ``replied``.

        Raises :class:`OperationTimeout` (naming ``budget_s``, default ``timeout_s``),
        :class:`ReplyTooLarge` (this client closed 1009) and :class:`ClosedWithoutReply`
        (the connection closed before this call got any frame); see :func:`closed_error`.
        """
        generation = self._generation
        with trio.move_on_after(timeout_s) as scope:
            while True:
                if not self._frames:
                    if self._ended:
                        error = closed_error(self.session, what, limit=self.max_message_size)
                        if replied and not isinstance(error, ReplyTooLarge):
                            return None
                        raise error
                    await self._arrived.park()
                    continue
                tag, frame = self._frames.popleft()
                if len(self._frames) < FRAME_BUFFER_SIZE // 2 and self.session is not None:
                    self.session.resume_reading()
                if tag == generation:
                    return frame
        assert scope.cancelled_caught
        raise OperationTimeout(f"{what}: no reply within {timeout_s if budget_s is None else budget_s:g} s")

    def discard(self, reason: str, code: CloseCode = CloseCode.NORMAL) -> None:
        """Close the connection (``code``, ``reason``); whatever is still on its way is never read."""
        self._active = False
        if self.session is not None:
            self.session.close(code, reason)


async def run_connection(
    conn: ToolConnection,
    handshake: Handshake,
    *,
    connect_timeout_s: float,
    session_config: SessionConfig,
    max_message_size: int,
    opener: Opener = open_handshake,
    task_status: trio.TaskStatus[ToolConnection] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Dial ``handshake`` and run ``conn`` as a client session until it closes.

    For ``nursery.start``: handshake failures (``HandshakeRejected``, ``HandshakeError``,
    ``OperationTimeout``) are raised from ``start`` itself.
    """
    async with opener(handshake, connect_timeout_s, max_message_size) as (nursery, ws):
        session = Session(ws, session_config)
        conn.session = session
        nursery.start_soon(session.run, conn)
        task_status.started(conn)
        await session.done.wait()


class PoolEntry:
    """The connection for one handshake, and the lock that leases it to one call at a time."""

    def __init__(self) -> None:
        self.lock = trio.Lock()
        self.connection: ToolConnection | None = None


class ToolPool:
    """Pooled connections keyed by handshake; owned by a :class:`~antiphon.tools.client.ToolClient`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        session_config: SessionConfig,
        max_message_size: int,
        opener: Opener = open_handshake,
    ) -> None:
        self._nursery = nursery
        self._opener = opener
        self._session_config = session_config
        self._max_message_size = max_message_size
        self._entries: OrderedDict[Handshake, PoolEntry] = OrderedDict()
        self.opened = 0
        """Connections this pool has opened (for tests and metrics)."""

    def entry(self, handshake: Handshake) -> PoolEntry:
        """The entry for ``handshake``, created if new; never checkpoints, so concurrent callers share it."""
        entry = self._entries.get(handshake)
        if entry is None:
            entry = self._entries[handshake] = PoolEntry()
            self._evict()
        self._entries.move_to_end(handshake)
        return entry

    async def connection(self, entry: PoolEntry, handshake: Handshake, connect_timeout_s: float) -> ToolConnection:
        """The entry's live connection, dialled now if it has none; call with ``entry.lock`` held."""
        if entry.connection is not None and entry.connection.usable:
            return entry.connection
        conn = ToolConnection(handshake.url.partition("?")[0], self._max_message_size)
        await self._nursery.start(
            _run_pooled,
            conn,
            handshake,
            connect_timeout_s,
            self._session_config,
            self._max_message_size,
            self._opener,
        )
        self.opened += 1
        entry.connection = conn
        return conn

    def _evict(self) -> None:
        while len(self._entries) > MAX_POOLED_CONNECTIONS:
            for key, entry in self._entries.items():
                if not entry.lock.locked():
                    del self._entries[key]
                    if entry.connection is not None:
                        entry.connection.discard("evicted from the pool")
                    break
            else:
                return

    def close_all(self) -> list[Session]:
        """Close every pooled connection (1000); returns their sessions to wait on."""
        sessions = []
        for entry in self._entries.values():
            conn = entry.connection
            if conn is not None and conn.session is not None:
                conn.discard("client closed")
                sessions.append(conn.session)
        self._entries.clear()
        return sessions


async def _run_pooled(
    conn: ToolConnection,
    handshake: Handshake,
    connect_timeout_s: float,
    session_config: SessionConfig,
    max_message_size: int,
    opener: Opener,
    *,
    task_status: trio.TaskStatus[ToolConnection] = trio.TASK_STATUS_IGNORED,
) -> None:
    await run_connection(
        conn,
        handshake,
        connect_timeout_s=connect_timeout_s,
        session_config=session_config,
        max_message_size=max_message_size,
        opener=opener,
        task_status=task_status,
    )
