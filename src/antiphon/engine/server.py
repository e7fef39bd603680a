"""The WebSocket server every face runs on: listeners, handshakes, sessions, graceful shutdown.

Theory of operation
-------------------
:meth:`SessionServer.run` keeps two nurseries, the way websockets' Trio server does:
the *listener* nursery accepts TCP connections, and the *handler* nursery, outside it,
holds one task per connection. Stopping the listeners therefore does not touch the
sessions, which is what a graceful shutdown needs: close the listening sockets first
(new clients are refused by the kernel at once, and a replacement server can bind the
port), let the faces finish their work within a grace period, then close what is left
with 1001.

The listeners are plain non-blocking sockets, accepted with Trio's low-level
``wait_readable``; each accepted socket becomes a
:class:`~antiphon.engine.transport.SocketTransport` (or, with ``ssl``, a TLS stream). The
connection's task reads the opening request with websockets' ``ServerProtocol`` under
``handshake_timeout_s``, asks the face's :class:`~antiphon.engine.handshake.Router`
what to do (:class:`Accept` with a :class:`~antiphon.engine.session.SessionHandler`,
or :class:`Reject`: any plain HTTP response, a refusal or a health check's 200), and
runs the :class:`~antiphon.engine.session.Session` in that same task. Whatever happens
on one connection, a bug in a face included, is logged and contained there: the server
and the other sessions carry on. A connection upgraded elsewhere - by a trio-websocket
server, through :mod:`antiphon.engine.adapters` - asks :meth:`SessionServer.route`
the same question and joins through :meth:`SessionServer.serve_wire`, counted like
the server's own. With ``ssl`` the TLS handshake runs first, under the
same ``handshake_timeout_s``; a peer that fails it costs its connection only.

Two plain HTTP requests (no ``Upgrade: websocket``) are the engine's own, answered before
any face sees them: ``GET /healthz`` (200 ``ok`` while accepting, 503 ``draining`` during
a shutdown) and ``GET /metrics`` (the Prometheus text format of :mod:`.metrics`; off with
``ServerConfig(metrics=False)``). A WebSocket upgrade to those paths still goes to the face.

Logs: one INFO line per session opened and closed (remote, path, face, close code,
duration) and per refused handshake (remote, path, status, reason); the path is logged
without its query string, where a secret may travel, and websockets' own protocol
logging is quieted (see :data:`~antiphon.engine.wire.PROTOCOL_LOGGER`). Health checks,
scrapes, timeouts and broken handshakes are DEBUG. The fields also travel as the
record's ``extra`` attributes (``remote``, ``path``, ``face``, ``close_code``,
``duration_s``, ``status``) for JSON logs.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from typing import Final, Self

import trio
from attrs import field, frozen
from prometheus_client import CollectorRegistry
from websockets.extensions.permessage_deflate import enable_server_permessage_deflate
from websockets.server import ServerProtocol

from antiphon.engine.handshake import (
    Accept,
    HandshakeFailed,
    HandshakeRequest,
    Reject,
    Router,
    describe,
    read_request,
    reject,
    write_pending,
)
from antiphon.engine.listen import LISTEN_BACKLOG, open_tcp_listeners
from antiphon.engine.metrics import (
    HEALTH_PATH,
    METRICS_CONTENT_TYPE,
    METRICS_PATH,
    ServerCollector,
    ServerCounters,
    new_registry,
    render,
)
from antiphon.engine.session import Session, SessionConfig
from antiphon.engine.transport import (
    SocketTransport,
    StreamTransport,
    Transport,
    TransportBroken,
)
from antiphon.engine.wire import PROTOCOL_LOGGER, WebSocketWire, Wire
from antiphon.errors import ConfigError
from antiphon.proto.close import CloseCode

__all__ = [
    "ACCEPT_BATCH",
    "LISTEN_BACKLOG",
    "MIB",
    "Accept",
    "HandshakeRequest",
    "Reject",
    "Router",
    "ServerConfig",
    "SessionServer",
    "open_tcp_listeners",
]

log = logging.getLogger("antiphon.server")

MIB: Final = 1024 * 1024
ACCEPT_BATCH: Final = 64
"""Connections accepted per wake-up of a listener: a burst of clients costs one wait, not one each."""


@frozen(kw_only=True)
class ServerConfig:
    """Listener-level settings shared by every face."""

    host: str = "127.0.0.1"
    port: int = 8765
    max_connections: int = 10_000
    max_handshakes: int = 1_000
    """TCP connections still in their opening handshake (TLS included); past it a newcomer is closed at once."""
    handshake_timeout_s: float = 10.0
    max_message_size: int = 1 * MIB
    shutdown_grace_s: float = 10.0
    compression: str | None = None
    """``"deflate"`` offers permessage-deflate (inflation bounded by ``max_message_size``); None never does."""
    ssl: ssl.SSLContext | None = field(default=None, eq=False)
    """Serve ``wss://`` with this server-side context; None serves plain ``ws://``."""
    reuse_port: bool = False
    """Bind with SO_REUSEPORT: several processes listen on one port, the kernel spreads connections among them."""
    metrics: bool = True
    """Answer ``GET /metrics`` with the Prometheus text format; False leaves the path to the face."""

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: must be between 0 and 65535, got {self.port}")
        if self.max_connections < 1:
            raise ConfigError(f"max_connections: must be at least 1, got {self.max_connections}")
        if self.max_handshakes < 1:
            raise ConfigError(f"max_handshakes: must be at least 1, got {self.max_handshakes}")
        if self.max_message_size < 1:
            raise ConfigError(f"max_message_size: must be at least 1, got {self.max_message_size}")
        if self.handshake_timeout_s <= 0:
            raise ConfigError(f"handshake_timeout: must be positive, got {self.handshake_timeout_s:g}")
        if self.shutdown_grace_s < 0:
            raise ConfigError(f"shutdown_grace: must not be negative, got {self.shutdown_grace_s:g}")
        if self.compression not in (None, "deflate"):
            raise ConfigError(f"compression: must be 'deflate' or none, got {self.compression!r}")


class SessionServer:
    """Serve WebSocket sessions for one face; see the module docstring.

    ``face`` names the face in logs and metric labels (``chat``, ``tools``, ``media``).
    :attr:`metrics_registry` is the server's own Prometheus registry (None with
    ``metrics=False``); a face registers its collectors there.
    """

    def __init__(
        self,
        router: Router,
        config: ServerConfig | None = None,
        session_config: SessionConfig | None = None,
        *,
        face: str = "engine",
    ):
        self.router = router
        self.config = config or ServerConfig()
        self.session_config = session_config or SessionConfig()
        self.face = face
        self.sessions: set[Session] = set()
        self.counters = ServerCounters()
        self.metrics_registry: CollectorRegistry | None = None
        if self.config.metrics:
            self.metrics_registry = new_registry()
            self.metrics_registry.register(
                ServerCollector(face, self.counters, lambda: self.sessions, lambda: self._connections)
            )
        self._connections = 0
        self._listeners: list[socket.socket] = []
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
        """``ws://host:port`` (``wss://`` with TLS) of the first listener (IPv6 hosts in brackets)."""
        host = self.host
        scheme = "wss" if self.config.ssl is not None else "ws"
        return f"{scheme}://[{host}]:{self.port}" if ":" in host else f"{scheme}://{host}:{self.port}"

    @property
    def connections(self) -> int:
        """Connections being handled right now (handshaking or in a session)."""
        return self._connections

    @property
    def accepting(self) -> bool:
        """True while the server takes new connections (not shutting down)."""
        return self._running and not self._shutting_down

    @property
    def handler_tasks(self) -> int:
        """Tasks alive in the handler nursery: one per connection, none when idle."""
        return len(self._handler_nursery.child_tasks) if self._handler_nursery is not None else 0

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, listen: bool = True, task_status: trio.TaskStatus[Self] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled or until :meth:`shutdown` has finished.

        With ``listen=False`` no socket is opened: connections come only through
        :meth:`serve_stream` (tests over memory streams). Raises
        :class:`~antiphon.errors.ListenError` when the address cannot be bound.
        """
        self._running = True
        try:
            async with trio.open_nursery() as handlers:
                self._handler_scope = handlers.cancel_scope
                self._handler_nursery = handlers
                async with trio.open_nursery() as listening:
                    self._listener_scope = listening.cancel_scope
                    if listen:
                        cfg = self.config
                        self._listeners = await open_tcp_listeners(cfg.host, cfg.port, reuse_port=cfg.reuse_port)
                        self._address = self._listeners[0].getsockname()[:2]
                        for listener in self._listeners:
                            listening.start_soon(self._accept_loop, listener, handlers)
                    else:
                        listening.start_soon(trio.sleep_forever)
                    task_status.started(self)
                # Listeners are closed; sessions finish in the handler nursery (and
                # connections given to serve_stream, which live elsewhere, are awaited).
                await self._idle.wait()
        finally:
            self.close_listeners()
            self._stopped.set()

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Close the listeners, let sessions wind down for ``grace_s``, close the rest with 1001.

        Returns once every connection is gone and :meth:`run` has returned.
        """
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        self._shutting_down = True
        self.close_listeners()  # new clients are refused now, not after the grace
        if self._listener_scope is not None:
            self._listener_scope.cancel()
        for session in list(self.sessions):
            session.shutdown()
        with trio.move_on_after(grace):
            await self._idle.wait()
        if self.sessions:
            await self.grace_expired()
            # What the face sent in grace_expired (final events) goes out before the close frame.
            for session in list(self.sessions):
                session.close(CloseCode.GOING_AWAY, "server shutdown")
            with trio.move_on_after(self.session_config.close_timeout_s + 1):
                await self._idle.wait()
        if self._handler_scope is not None:
            self._handler_scope.cancel()
        if self._running:
            await self._stopped.wait()

    async def grace_expired(self) -> None:
        """Hook: the shutdown grace passed with sessions still open; a face ends its work here.

        Runs before the remaining sessions are closed with 1001 (after what they were
        sent), so a face can still send each its final events. The default does nothing.
        """

    async def wait_idle(self) -> None:
        """Return once no connection is being handled (at once if none is)."""
        await self._idle.wait()

    def close_listeners(self) -> None:
        """Stop accepting: close the listening sockets now (new clients are refused by the kernel)."""
        for listener in self._listeners:
            if listener.fileno() != -1:
                trio.lowlevel.notify_closing(listener)
                listener.close()

    # ------------------------------------------------------------------ connections

    async def _accept_loop(self, listener: socket.socket, handlers: trio.Nursery) -> None:
        while True:
            try:
                await trio.lowlevel.wait_readable(listener)
            except (trio.ClosedResourceError, OSError):
                return  # the listener was closed: nothing more to accept
            for _ in range(ACCEPT_BATCH):
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if listener.fileno() == -1:
                        return
                    if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                        continue  # the client gave up before we accepted it
                    # EMFILE and friends: back off rather than spin (as trio.serve_listeners does).
                    log.warning("accept failed (%s); pausing 100 ms", exc)
                    await trio.sleep(0.1)
                    break
                if self._connections - len(self.sessions) >= self.config.max_handshakes:
                    # Squatters that connect and never finish the upgrade hold a socket and
                    # a task each until handshake_timeout: bound them apart from sessions.
                    sock.close()
                    self.counters.handshake("overload")
                    continue
                self._connection_opened()
                handlers.start_soon(self._handle_socket, sock)

    async def _handle_socket(self, sock: socket.socket) -> None:
        try:
            transport: Transport = SocketTransport(sock)
        except OSError:
            sock.close()
            self._connection_closed()
            return
        if self.config.ssl is not None:
            remote = transport.remote
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
            transport = StreamTransport(trio.SSLStream(stream, self.config.ssl, server_side=True), remote)
        await self._handle(transport)

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection over an already-open byte stream, until it ends.

        Tests use it over ``trio.testing.memory_stream_pair()``, where the autojump clock
        is safe; so can a program that accepts its own connections.
        """
        self._connection_opened()
        await self._handle(StreamTransport(stream, "stream"))

    def _connection_opened(self) -> None:
        self._connections += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle

    def _connection_closed(self) -> None:
        self._connections -= 1
        if self._connections == 0:
            self._idle.set()

    async def _handle(self, transport: Transport) -> None:
        try:
            await self._serve_connection(transport)
        except (HandshakeFailed, TransportBroken, trio.BrokenResourceError) as exc:
            log.debug("connection from %s: %s", transport.remote, exc)
        except Exception:
            log.exception("connection from %s failed", transport.remote)
        finally:
            await trio.aclose_forcefully(_Closer(transport))
            self._connection_closed()

    def _protocol(self) -> ServerProtocol:
        cfg = self.config
        # websockets' recommended settings (a 4 KiB window each way, memLevel 5): ~50 KiB of
        # zlib state per session instead of ~300 KiB at zlib's defaults.
        extensions = enable_server_permessage_deflate(None) if cfg.compression == "deflate" else None
        protocol = ServerProtocol(max_size=cfg.max_message_size, extensions=extensions, logger=PROTOCOL_LOGGER)
        protocol.debug = False  # never log the request's lines: headers and query string can carry secrets
        return protocol

    async def _serve_connection(self, transport: Transport) -> None:
        cfg = self.config
        protocol = self._protocol()
        with trio.move_on_after(cfg.handshake_timeout_s) as scope:
            if isinstance(transport, StreamTransport) and isinstance(transport.stream, trio.SSLStream):
                try:
                    await transport.stream.do_handshake()
                except trio.BrokenResourceError as exc:
                    self.counters.handshake("tls")
                    log.debug("connection from %s: TLS handshake failed: %s", transport.remote, exc.__cause__ or exc)
                    return
            try:
                request, frames = await read_request(protocol, transport)
            except HandshakeFailed:
                self.counters.handshake("invalid")
                raise
        if scope.cancelled_caught:
            self.counters.handshake("timeout")
            log.debug("connection from %s: no handshake within %gs", transport.remote, cfg.handshake_timeout_s)
            return
        info = describe(request, transport.remote)
        own = self._own_request(info)
        if own is not None:
            log.debug("GET %s from %s: %d", _loggable(info.path), info.remote, own.status)
            await self._answer(protocol, transport, own)
            return
        decision = self.route(info)
        if isinstance(decision, Reject):
            await self._refuse(protocol, transport, info, decision)
            return
        if decision.subprotocol is not None:
            protocol.available_subprotocols = [decision.subprotocol]  # type: ignore[list-item]
        response = protocol.accept(request)
        if response.status_code != 101:
            # Not a valid upgrade: websockets answers 400/405/426 itself.
            body = (response.body or b"").decode("utf-8", "replace")
            self._log_refused(info, response.status_code, body)
            protocol.send_response(response)
            with trio.move_on_after(cfg.handshake_timeout_s):
                await write_pending(protocol, transport)
            return
        protocol.send_response(response)
        with trio.move_on_after(cfg.handshake_timeout_s):
            await write_pending(protocol, transport)
        self.counters.handshake("accepted")
        wire = WebSocketWire(protocol, transport, max_message_size=cfg.max_message_size, initial=frames)
        remote, request_path = info.remote, info.path
        # A session may last for days: nothing may keep the handshake (its headers are a
        # few KiB per idle session) while it runs - neither this frame nor websockets'
        # parser, whose generator holds the request it parsed.
        request.headers.clear()
        del request, response, frames, info, own
        await self._run_session(wire, decision, remote, request_path)

    def route(self, request: HandshakeRequest) -> Accept | Reject:
        """The face's decision for ``request``: its router's, told whether the server is full; 503 when draining."""
        if self._shutting_down:
            return Reject(503, b"the server is shutting down\n")
        return self.router(request, full=len(self.sessions) >= self.config.max_connections)

    async def serve_wire(self, wire: Wire, decision: Accept, request: HandshakeRequest | None = None) -> None:
        """Run the session ``decision`` asks for on a connection upgraded elsewhere, until it ends.

        For :mod:`antiphon.engine.adapters`: the connection counts like one of the
        server's own, so :attr:`sessions`, :meth:`shutdown` and :meth:`wait_idle` cover it.
        """
        self._connection_opened()
        try:
            remote, path = (request.remote, request.path) if request is not None else (wire.remote, "/")
            await self._run_session(wire, decision, remote, path)
        finally:
            self._connection_closed()

    async def _run_session(self, wire: Wire, decision: Accept, remote: str, request_path: str) -> None:
        session = Session(wire, decision.session_config or self.session_config, id=decision.session_id)
        self.sessions.add(session)
        opened = trio.current_time()
        path = _loggable(request_path)  # the path only: a query string may carry a secret
        fields = {"remote": remote, "path": path, "face": self.face, "session": session.id}
        log.info("session %s opened: %s %s (%s)", session.id[:8], remote, path, self.face, extra=fields)
        try:
            await session.run(decision.handler)
        finally:
            self.sessions.discard(session)
            self.counters.session_ended(session)
            duration = trio.current_time() - opened
            log.info(
                "session %s closed: %s %s (%s) %s%s%s after %.3fs",
                session.id[:8],
                remote,
                path,
                self.face,
                session.close_code,
                f" {session.close_reason}" if session.close_reason else "",
                " by the peer" if session.closed_by_peer else "",
                duration,
                extra={
                    **fields,
                    "close_code": session.close_code,
                    "close_reason": session.close_reason,
                    "closed_by_peer": session.closed_by_peer,
                    "duration_s": round(duration, 6),
                },
            )

    def _own_request(self, info: HandshakeRequest) -> Reject | None:
        """The answer to a plain ``GET /healthz`` or ``GET /metrics``; None leaves the request to the face."""
        if info.upgrade:
            return None
        if info.path == HEALTH_PATH:
            if self._shutting_down:
                return Reject(503, b"draining\n")
            return Reject(200, b"ok\n")
        if info.path == METRICS_PATH and self.metrics_registry is not None:
            return Reject(200, render(self.metrics_registry), content_type=METRICS_CONTENT_TYPE)
        return None

    async def _refuse(
        self, protocol: ServerProtocol, transport: Transport, info: HandshakeRequest, decision: Reject
    ) -> None:
        reason = decision.body.decode("utf-8", "replace") if decision.content_type.startswith("text/") else ""
        self._log_refused(info, decision.status, reason)
        await self._answer(protocol, transport, decision)

    def _log_refused(self, info: HandshakeRequest, status: int, reason: str) -> None:
        self.counters.handshake(str(status))
        reason = _loggable(" ".join(reason.split())[:200])  # the face's own text, one line, bounded
        path = _loggable(info.path)
        log.info(
            "handshake refused: %s %s (%s) %d%s",
            info.remote,
            path,
            self.face,
            status,
            f" {reason}" if reason else "",
            extra={"remote": info.remote, "path": path, "face": self.face, "status": status, "reason": reason},
        )

    async def _answer(self, protocol: ServerProtocol, transport: Transport, decision: Reject) -> None:
        protocol.send_response(reject(decision))
        with trio.move_on_after(self.config.handshake_timeout_s):
            await write_pending(protocol, transport)


def _loggable(text: str) -> str:
    """``text`` with control characters escaped: a client's path must not write escape codes into a terminal."""
    return text if text.isprintable() else repr(text)[1:-1]


class _Closer(trio.abc.AsyncResource):
    """Lets ``trio.aclose_forcefully`` close a transport (closing is idempotent)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def aclose(self) -> None:
        await self.transport.aclose()
