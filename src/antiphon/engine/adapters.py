"""trio-websocket at the edge: run any antiphon face on a connection that ``trio_websocket`` accepted.

A Trio program that already serves with ``trio_websocket.serve_websocket`` keeps its
server and hands connections over::

    async def handler(request):                      # trio_websocket's handler
        await serve_trio_websocket_request(request, gateway)    # routed, then accepted or refused

    async def handler(request):
        ws = await request.accept()                  # already accepted
        await serve_trio_websocket(ws, MyHandler(), request=request)

The *target* is a :class:`~antiphon.engine.server.SessionServer` (a face such as the
chat gateway, running with ``listen=False`` or beside its own listeners: the session
counts as one of its own, so its shutdown covers it), a face's
:class:`~antiphon.engine.handshake.Router`, or one
:class:`~antiphon.engine.session.SessionHandler`.

Theory of operation
-------------------
:class:`TrioWebSocketWire` is a :class:`~antiphon.engine.wire.Wire` that uses only
trio-websocket's public API - ``get_message``, ``send_message``, ``ping``, ``aclose``,
``closed`` and the handshake attributes - so the :class:`~antiphon.engine.session.Session`
on top is the same one the engine runs everywhere. Where trio-websocket works
differently, the session behaves differently:

* **Sending**: every write goes through the session's writer task (trio-websocket
  cannot write without waiting), one hand-off per batch instead of the engine's direct
  writes. The byte bounds hold for what waits in the wire: ``send()`` waits above
  ``send_buffer_high_bytes``, ``send_nowait`` closes with 1008 past
  ``send_buffer_max_bytes``; bytes inside trio-websocket and the kernel are not counted.
* **Receiving** is trio-websocket's reader task and its message queue, with its own
  ``max_message_size`` (serve_websocket's argument) and its own RFC checks (wsproto):
  an oversized message gets 1009, a violation 1002 or 1007 from trio-websocket, and the
  session then sees the close trio-websocket reports (1006 after a violation).
* **Heartbeat**: ``ws.ping`` waits for its pong, so each ping runs in a small task of
  the adapter's nursery, and the pong reaches the session as the engine's would. The
  session's ping interval and timeout apply unchanged.
* **Closing**: trio-websocket's ``aclose`` sends the close frame and waits for the
  answer; it runs in a task of the adapter's nursery, after whatever the close flushes.
  The close code the session reports is the one it sent (trio-websocket records 1000
  for any close it starts). Who closed is known for closes the session started; any
  other close is reported as the peer's. ``serve_websocket`` closes the connection
  itself, under its ``disconnect_timeout``, once the handler returns.
* A :class:`~antiphon.engine.handshake.Reject` for a connection already accepted closes
  it instead: 401 with 4401, 503 with 1013, anything else with 1008, the body as reason.
  :func:`serve_trio_websocket_request` routes before accepting, so refusals are HTTP.

trio-websocket is an optional dependency (the ``trio-websocket`` extra); this module
imports it only when a connection is served.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

import trio

from antiphon.engine.handshake import Accept, HandshakeRequest, Reject, Router
from antiphon.engine.server import SessionServer
from antiphon.engine.session import Session, SessionConfig, SessionHandler
from antiphon.engine.wire import Incoming, Pong, Wire, WireClosed
from antiphon.errors import ConfigError
from antiphon.proto.close import CloseCode

__all__ = [
    "CLOSE_REASON_MAX_BYTES",
    "Target",
    "TrioWebSocketWire",
    "WebSocketConnectionLike",
    "WebSocketRequestLike",
    "close_code_for",
    "describe_connection",
    "describe_request",
    "serve_trio_websocket",
    "serve_trio_websocket_request",
]

CLOSE_REASON_MAX_BYTES = 123
"""A close frame's payload is at most 125 bytes, two of them the code."""

Target = SessionServer | Router | SessionHandler


class WebSocketConnectionLike(Protocol):
    """What the adapter uses of a ``trio_websocket.WebSocketConnection`` (its public API only)."""

    @property
    def closed(self) -> Any: ...
    @property
    def path(self) -> str | None: ...
    @property
    def subprotocol(self) -> str | None: ...
    @property
    def handshake_headers(self) -> Sequence[tuple[bytes, bytes]]: ...
    @property
    def remote(self) -> Any: ...
    async def get_message(self) -> str | bytes: ...
    async def send_message(self, message: str | bytes) -> None: ...
    async def ping(self, payload: bytes | None = None) -> None: ...
    async def aclose(self, code: int = 1000, reason: str | None = None) -> None: ...


class WebSocketRequestLike(Protocol):
    """What the adapter uses of a ``trio_websocket.WebSocketRequest``."""

    @property
    def path(self) -> str: ...
    @property
    def headers(self) -> Sequence[tuple[bytes, bytes]]: ...
    @property
    def proposed_subprotocols(self) -> Sequence[str]: ...
    @property
    def remote(self) -> Any: ...
    async def accept(
        self, *, subprotocol: str | None = None, extra_headers: list[tuple[bytes, bytes]] | None = None
    ) -> Any: ...
    async def reject(
        self, status_code: int, *, extra_headers: list[tuple[bytes, bytes]] | None = None, body: bytes | None = None
    ) -> None: ...


def _remote(endpoint: Any) -> str:
    address, port = getattr(endpoint, "address", None), getattr(endpoint, "port", None)
    if address is None or port is None:
        return str(endpoint)
    return f"[{address}]:{port}" if ":" in str(address) else f"{address}:{port}"


def _connection_closed_type() -> type[Exception]:
    try:
        from trio_websocket import ConnectionClosed
    except ImportError:  # pragma: no cover - the caller holds a trio-websocket connection
        raise ConfigError(
            "serving a trio-websocket connection needs trio-websocket: pip install 'antiphon[trio-websocket]'"
        ) from None
    return ConnectionClosed


class TrioWebSocketWire(Wire):
    """A :class:`~antiphon.engine.wire.Wire` over a trio-websocket connection; see the module docstring.

    ``nursery`` holds the adapter's helper tasks (a ping waiting for its pong, the
    closing handshake); it must outlive the session, and be cancelled after it.
    """

    can_try_write = False

    def __init__(self, ws: WebSocketConnectionLike, nursery: trio.Nursery) -> None:
        super().__init__()
        self.ws = ws
        self.subprotocol = ws.subprotocol
        self.remote = _remote(ws.remote)
        self._nursery = nursery
        self._closed_exc = _connection_closed_type()
        self._out: deque[tuple[str | bytes, int]] = deque()
        self._sending = False  # drain() is inside ws.send_message with _out[0]
        self._lock = trio.Lock()  # one sender at a time: the writer task or the closer
        self._pongs: list[Incoming] = []
        self._wake: trio.CancelScope | None = None  # receive() waiting; a pong cancels it
        self._close: tuple[int, str] | None = None
        self._closer_done: trio.Event | None = None
        self._closed: WireClosed | None = None

    # ------------------------------------------------------------------ sending

    def send_message(self, data: str | bytes, *, flush: bool = True) -> None:
        if self._close is not None or self._closed is not None:
            return  # closing: dropped, as the engine's wire drops messages after its close frame
        size = len(data.encode()) if isinstance(data, str) else len(data)
        self._out.append((data, size))
        self.buffered += size

    def send_ping(self, payload: bytes) -> None:
        if self._close is None and self._closed is None:
            self._nursery.start_soon(self._ping, payload)

    async def _ping(self, payload: bytes) -> None:
        try:
            await self.ws.ping(payload)
        except (self._closed_exc, ValueError):
            return  # closed meanwhile (no pong will come), or a ping of that payload is in flight
        self._pongs.append(Pong(payload))
        if self._wake is not None:
            self._wake.cancel()

    def flush(self) -> bool:
        return not self._out  # trio-websocket cannot write without waiting: the writer task does it

    async def drain(self) -> None:
        async with self._lock:
            await self._drain_locked()

    async def _drain_locked(self) -> None:
        out = self._out
        while out and self._closed is None:
            data, size = out[0]
            self._sending = True
            try:
                await self.ws.send_message(data)
            except self._closed_exc as exc:
                self._note_closed(exc)
                out.clear()
                self.buffered = 0
                return
            except trio.Cancelled:
                # Part of it may be on the wire already (trio-websocket framed it before
                # waiting): never send it again. At worst it is lost, never doubled.
                out.popleft()
                self.buffered -= size
                raise
            finally:
                self._sending = False
            out.popleft()
            self.buffered -= size

    def discard_buffer(self) -> None:
        head = self._out[0] if self._out and self._sending else None  # being sent: it goes out whole
        self._out.clear()
        self.buffered = 0
        if head is not None:
            self._out.append(head)
            self.buffered = head[1]

    # ------------------------------------------------------------------ receiving

    async def receive(self) -> list[Incoming]:
        if self._pongs:
            pongs, self._pongs = self._pongs, []
            return pongs
        if self._closed is not None:
            raise self._closed
        with trio.CancelScope() as wake:
            self._wake = wake
            try:
                message = await self.ws.get_message()
            except self._closed_exc as exc:
                self._note_closed(exc)
                raise self._closed_now() from None
            finally:
                self._wake = None
        if wake.cancelled_caught:  # a pong arrived
            pongs, self._pongs = self._pongs, []
            return pongs
        out: list[Incoming] = [message]
        if self._pongs:
            out += self._pongs
            self._pongs = []
        return out

    def _note_closed(self, exc: BaseException | None) -> None:
        if self._closed is not None:
            return
        if self._close is not None:  # we started it: report what we sent
            self._closed = WireClosed(*self._close, by_peer=False)
            return
        why = getattr(exc, "reason", None)  # trio-websocket's CloseReason, or None without a close frame
        code = getattr(why, "code", None)
        self._closed = WireClosed(
            int(code) if code is not None else CloseCode.ABNORMAL, getattr(why, "reason", None) or "", by_peer=True
        )

    def _closed_now(self) -> WireClosed:
        assert self._closed is not None
        return self._closed

    # ------------------------------------------------------------------ closing

    def start_close(self, code: int, reason: str) -> None:
        if self._close is not None or self._closed is not None:
            return
        self._close = (code, reason)
        self._closer_done = trio.Event()
        self._nursery.start_soon(self._closer, code, reason)

    async def _closer(self, code: int, reason: str) -> None:
        assert self._closer_done is not None
        try:
            async with self._lock:  # after the writer: what the close flushes goes first
                await self._drain_locked()
                await self.ws.aclose(code, reason or None)
        finally:
            self._note_closed(None)
            self._closer_done.set()

    @property
    def closed(self) -> WireClosed | None:
        return self._closed

    async def finish(self) -> None:
        if self._closer_done is None:
            self.start_close(CloseCode.NORMAL, "")
        if self._closer_done is not None:
            await self._closer_done.wait()

    async def aclose(self) -> None:
        # Never waits: the closing handshake is bounded by the session, and the owner of
        # the connection (serve_websocket) closes it under its own disconnect timeout.
        if self._closed is None:
            self._closed = WireClosed(CloseCode.ABNORMAL, "closed", by_peer=False)
        await trio.lowlevel.checkpoint()


def describe_connection(ws: WebSocketConnectionLike, request: WebSocketRequestLike | None = None) -> HandshakeRequest:
    """The router's view of an accepted trio-websocket connection.

    trio-websocket keeps neither the request's headers nor the offered subprotocols on a
    server connection: without ``request`` the router sees no headers and only the
    chosen subprotocol.
    """
    if request is not None:
        return describe_request(request)
    return HandshakeRequest(
        target=ws.path or "/",
        headers=tuple((bytes(k), bytes(v)) for k, v in ws.handshake_headers),
        subprotocols=(ws.subprotocol,) if ws.subprotocol else (),
        remote=_remote(ws.remote),
    )


def describe_request(request: WebSocketRequestLike) -> HandshakeRequest:
    """The router's view of a trio-websocket request, before it is accepted."""
    return HandshakeRequest(
        target=request.path or "/",
        headers=tuple((bytes(k), bytes(v)) for k, v in request.headers),
        subprotocols=tuple(request.proposed_subprotocols),
        remote=_remote(request.remote),
    )


def _decide(
    target: Target, request: HandshakeRequest, session_config: SessionConfig | None, session_id: str | None
) -> Accept | Reject:
    if isinstance(target, SessionHandler):
        return Accept(target, session_config=session_config, session_id=session_id)
    decision = target.route(request) if isinstance(target, SessionServer) else target(request, full=False)
    if isinstance(decision, Accept) and (session_config is not None or session_id is not None):
        decision = Accept(
            decision.handler,
            subprotocol=decision.subprotocol,
            session_config=session_config or decision.session_config,
            session_id=session_id or decision.session_id,
        )
    return decision


def close_code_for(decision: Reject) -> tuple[CloseCode, str]:
    """The close code and reason that stand for an HTTP refusal once the upgrade is done."""
    if decision.status == 401:
        code = CloseCode.AUTH_FAILED
    elif decision.status == 503:
        code = CloseCode.TRY_AGAIN_LATER
    else:
        code = CloseCode.POLICY_VIOLATION
    reason = decision.body.decode("utf-8", "replace").strip().splitlines()[0] if decision.body.strip() else ""
    while len(reason.encode()) > CLOSE_REASON_MAX_BYTES:
        reason = reason[:-1]
    return code, reason


async def _serve(ws: WebSocketConnectionLike, target: Target, decision: Accept, info: HandshakeRequest) -> None:
    async with trio.open_nursery() as nursery:
        wire = TrioWebSocketWire(ws, nursery)
        if isinstance(target, SessionServer):
            await target.serve_wire(wire, decision, info)
        else:
            await Session(wire, decision.session_config, id=decision.session_id).run(decision.handler)
        nursery.cancel_scope.cancel()


async def serve_trio_websocket(
    ws: Any,
    target: Target,
    *,
    request: Any = None,
    session_config: SessionConfig | None = None,
    session_id: str | None = None,
) -> None:
    """Run an antiphon session over ``ws``, an accepted ``trio_websocket.WebSocketConnection``, until it ends.

    ``target`` decides as for a handshake (see the module docstring). Pass ``request``,
    the ``WebSocketRequest`` that ``ws`` was accepted from, for a router that reads
    headers (a secret in ``X-Connic-Secret``): trio-websocket keeps none on the
    connection. ``session_config`` and ``session_id``, when given, override the
    decision's. Returns once the session is over; it never raises for the session's
    own failures.
    """
    info = describe_connection(ws, request)
    decision = _decide(target, info, session_config, session_id)
    if isinstance(decision, Reject):
        code, reason = close_code_for(decision)
        with trio.move_on_after((session_config or SessionConfig()).close_timeout_s):
            await ws.aclose(code, reason or None)
        return
    await _serve(ws, target, decision, info)


async def serve_trio_websocket_request(
    request: Any,
    target: Target,
    *,
    session_config: SessionConfig | None = None,
    session_id: str | None = None,
) -> None:
    """Route a ``trio_websocket.WebSocketRequest``; refuse it with the face's HTTP answer, or accept and serve it.

    The accepted connection gets the subprotocol the face chose. Otherwise as
    :func:`serve_trio_websocket`.
    """
    info = describe_request(request)
    decision = _decide(target, info, session_config, session_id)
    if isinstance(decision, Reject):
        headers = [(b"content-type", decision.content_type.encode("latin-1")), *decision.headers]
        await request.reject(decision.status, extra_headers=headers, body=decision.body)
        return
    ws = await request.accept(subprotocol=decision.subprotocol)
    await _serve(ws, target, decision, info)
