"""The WebSocket server every face runs on: listeners, handshakes, sessions, graceful shutdown.

Theory of operation
-------------------
:meth:`SessionServer.run` keeps two nurseries, the way websockets' Trio server does:
the *listener* nursery accepts TCP connections, and the *handler* nursery, outside it,
holds one task per connection. Stopping the listeners therefore does not touch the
sessions, which is what a graceful shutdown needs: stop accepting, let the faces
finish their work within a grace period, then close what is left with 1001.

Each connection task wraps the stream with trio-websocket's ``wrap_server_stream``
(whose reader task lives in the connection's own nursery), waits for the opening
handshake under ``handshake_timeout_s``, asks the face's :class:`Router` what to do
(:class:`Accept` with a :class:`~antiphon.engine.SessionHandler`, or :class:`Reject`
with an HTTP status), and runs the :class:`~antiphon.engine.Session`. Whatever happens
on one connection, including a bug in a face, is logged and contained there: the
server and the other sessions carry on.
"""

from __future__ import annotations

import logging
from typing import Final, Protocol

import trio
import trio_websocket
from attrs import field, frozen

from antiphon.engine.session import (
    Session,
    SessionConfig,
    SessionHandler,
)
from antiphon.errors import ConfigError
from antiphon.proto.close import CloseCode

__all__ = ["Accept", "HandshakeRequest", "Reject", "Router", "ServerConfig", "SessionServer"]

log = logging.getLogger("antiphon.engine.server")

MIB: Final = 1024 * 1024


@frozen(kw_only=True)
class ServerConfig:
    """Listener-level settings shared by every face."""

    host: str = "127.0.0.1"
    port: int = 8765
    max_connections: int = 10_000
    handshake_timeout_s: float = 10.0
    max_message_size: int = 1 * MIB
    shutdown_grace_s: float = 10.0
    # trio-websocket buffers this many decoded messages; the receive task drains it
    # continuously, so a handful is enough to keep the reader from stalling.
    message_queue_size: int = 4
    receive_buffer_size: int = 16 * 1024

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: must be between 0 and 65535, got {self.port}")
        if self.max_connections < 1:
            raise ConfigError(f"max_connections: must be at least 1, got {self.max_connections}")
        if self.max_message_size < 1:
            raise ConfigError(f"max_message_size: must be at least 1, got {self.max_message_size}")
        if self.handshake_timeout_s <= 0:
            raise ConfigError(f"handshake_timeout: must be positive, got {self.handshake_timeout_s:g}")
        if self.shutdown_grace_s < 0:
            raise ConfigError(f"shutdown_grace: must not be negative, got {self.shutdown_grace_s:g}")


@frozen
class HandshakeRequest:
    """What a client asked for in its opening handshake."""

    target: str
    headers: tuple[tuple[bytes, bytes], ...]
    subprotocols: tuple[str, ...]
    remote: str

    @property
    def path(self) -> str:
        """The request path, without the query string."""
        return self.target.partition("?")[0] or "/"

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), decoded as Latin-1."""
        key = name.lower().encode()
        for k, v in self.headers:
            if k.lower() == key:
                return v.decode("latin-1")
        return None


@frozen
class Accept:
    """Accept the upgrade and run ``handler`` in a session."""

    handler: SessionHandler
    subprotocol: str | None = None
    session_config: SessionConfig | None = None
    session_id: str | None = None


@frozen
class Reject:
    """Refuse the upgrade with an HTTP ``status``."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = field(default=())


class Router(Protocol):
    """A face's decision for each handshake; ``full`` is True when the server is at capacity."""

    def __call__(self, request: HandshakeRequest, *, full: bool) -> Accept | Reject: ...


class SessionServer:
    """Serve WebSocket sessions for one face; see the module docstring."""

    def __init__(self, router: Router, config: ServerConfig | None = None, session_config: SessionConfig | None = None):
        self.router = router
        self.config = config or ServerConfig()
        self.session_config = session_config or SessionConfig()
        self.sessions: set[Session] = set()
        self._connections = 0
        self._listeners: list[trio.SocketListener] = []
        self._address: tuple[str, int] | None = None
        self._listener_scope: trio.CancelScope | None = None
        self._handler_scope: trio.CancelScope | None = None
        self._idle = trio.Event()
        self._idle.set()
        self._stopped = trio.Event()
        self._running = False
        self._shutting_down = False
        self._handler_nursery: trio.Nursery | None = None

    # ------------------------------------------------------------------ queries

    @property
    def port(self) -> int:
        """The bound port (useful with port 0); still known after shutdown."""
        if self._address is None:
            raise RuntimeError("the server is not listening")
        return int(self._address[1])

    @property
    def host(self) -> str:
        if self._address is None:
            raise RuntimeError("the server is not listening")
        return str(self._address[0])

    @property
    def url(self) -> str:
        """``ws://host:port`` of the first listener (IPv6 hosts in brackets)."""
        host = self.host
        return f"ws://[{host}]:{self.port}" if ":" in host else f"ws://{host}:{self.port}"

    @property
    def connections(self) -> int:
        """Connections being handled right now (handshaking or in a session)."""
        return self._connections

    # ------------------------------------------------------------------ lifecycle

    async def run(
        self, *, listen: bool = True, task_status: trio.TaskStatus[SessionServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled or until :meth:`shutdown` has finished.

        With ``listen=False`` no socket is opened: connections come only through
        :meth:`serve_stream` (tests over memory streams).
        """
        self._running = True
        try:
            async with trio.open_nursery() as handlers:
                self._handler_scope = handlers.cancel_scope
                self._handler_nursery = handlers
                async with trio.open_nursery() as listening:
                    self._listener_scope = listening.cancel_scope
                    if listen:
                        self._listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
                        self._address = self._listeners[0].socket.getsockname()[:2]
                        for listener in self._listeners:
                            listening.start_soon(self._accept_loop, listener, handlers)
                    else:
                        listening.start_soon(trio.sleep_forever)
                    task_status.started(self)
                # Listeners are closed; sessions finish in the handler nursery (and
                # connections given to serve_stream, which live elsewhere, are awaited).
                await self._idle.wait()
        finally:
            for listener in self._listeners:
                await trio.aclose_forcefully(listener)
            self._stopped.set()

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Stop accepting, let sessions wind down for ``grace_s``, close the rest with 1001.

        Returns once every connection is gone and :meth:`run` has returned.
        """
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        self._shutting_down = True
        if self._listener_scope is not None:
            self._listener_scope.cancel()
        for session in list(self.sessions):
            session.shutdown()
        with trio.move_on_after(grace):
            await self._idle.wait()
        for session in list(self.sessions):
            session.close(CloseCode.GOING_AWAY, "server shutdown", flush=False)
        with trio.move_on_after(self.session_config.close_timeout_s + 1):
            await self._idle.wait()
        if self._handler_scope is not None:
            self._handler_scope.cancel()
        if self._running:
            await self._stopped.wait()

    async def wait_idle(self) -> None:
        """Return once no connection is being handled (at once if none is)."""
        await self._idle.wait()

    @property
    def handler_tasks(self) -> int:
        """Tasks alive in the handler nursery: one per connection, none when idle."""
        return len(self._handler_nursery.child_tasks) if self._handler_nursery is not None else 0

    # ------------------------------------------------------------------ connections

    async def _accept_loop(self, listener: trio.SocketListener, handlers: trio.Nursery) -> None:
        # trio.serve_listeners would do, but this loop lets a stream be counted
        # before its task starts, so `connections` never under-reports.
        while True:
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                return  # the listener was closed: nothing more to accept
            except OSError as exc:
                # EMFILE and friends: back off rather than spin (as trio.serve_listeners does).
                log.warning("accept failed (%s); pausing 100 ms", exc)
                await trio.sleep(0.1)
                continue
            self._connection_opened()
            handlers.start_soon(self._handle_stream, stream)

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection over an already-open byte stream, until it ends.

        The listeners use this for every TCP connection; tests use it over
        ``trio.testing.memory_stream_pair()``, where the autojump clock is safe.
        """
        self._connection_opened()
        await self._handle_stream(stream)

    def _connection_opened(self) -> None:
        self._connections += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle

    def _connection_closed(self) -> None:
        self._connections -= 1
        if self._connections == 0:
            self._idle.set()

    async def _handle_stream(self, stream: trio.abc.Stream) -> None:
        try:
            async with trio.open_nursery() as nursery:
                try:
                    await self._serve_connection(stream, nursery)
                finally:
                    nursery.cancel_scope.cancel()
        except Exception:
            log.exception("connection failed")
        finally:
            await trio.aclose_forcefully(stream)
            self._connection_closed()

    async def _serve_connection(self, stream: trio.abc.Stream, nursery: trio.Nursery) -> None:
        cfg = self.config
        request: trio_websocket.WebSocketRequest | None = None
        with trio.move_on_after(cfg.handshake_timeout_s):
            request = await trio_websocket.wrap_server_stream(
                nursery,
                stream,
                message_queue_size=cfg.message_queue_size,
                max_message_size=cfg.max_message_size,
                receive_buffer_size=cfg.receive_buffer_size,
            )
        if request is None or self._shutting_down:
            return
        info = HandshakeRequest(
            target=request.path,
            headers=tuple(request.headers),
            subprotocols=request.proposed_subprotocols,
            remote=str(request.remote),
        )
        decision = self.router(info, full=len(self.sessions) >= cfg.max_connections)
        if isinstance(decision, Reject):
            headers = list(decision.headers)
            with trio.move_on_after(cfg.handshake_timeout_s):
                await request.reject(decision.status, extra_headers=headers, body=decision.body or None)
            return
        ws = await request.accept(subprotocol=decision.subprotocol)
        session = Session(ws, decision.session_config or self.session_config, id=decision.session_id)
        self.sessions.add(session)
        try:
            await session.run(decision.handler)
        finally:
            self.sessions.discard(session)

