"""Opening handshakes, both sides, on websockets' sans-I/O protocol.

The server reads the upgrade request with ``ServerProtocol``'s parser (request line and
header limits are websockets': 8 KiB a line, 128 headers), lets the face's router
decide, and answers with 101 or with a plain HTTP response; the client sends
``ClientProtocol``'s request with the caller's headers and reads the answer. Frames
that arrive in the same read as the request or the response are kept for the session.
Nothing here waits without a bound: callers run these under a handshake timeout.
"""

from __future__ import annotations

import http
from collections.abc import Sequence
from typing import Protocol as TypingProtocol

from attrs import field, frozen
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.frames import Frame
from websockets.http11 import Request, Response
from websockets.protocol import Protocol
from websockets.server import ServerProtocol

from antiphon.engine.session import SessionConfig, SessionHandler
from antiphon.engine.transport import Transport, TransportBroken

__all__ = [
    "Accept",
    "HandshakeFailed",
    "HandshakeRequest",
    "Reject",
    "Router",
    "describe",
    "read_request",
    "read_response",
    "reject",
    "subprotocol_list",
    "write_pending",
]


@frozen
class HandshakeRequest:
    """What a client asked for in its opening handshake."""

    target: str
    headers: tuple[tuple[bytes, bytes], ...]
    subprotocols: tuple[str, ...]
    remote: str
    upgrade: bool = True
    """False for a plain HTTP request (no ``Upgrade: websocket``): a health check, a browser."""

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
    """Answer with a plain HTTP response instead of the upgrade (a refusal, or a health check's 200)."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = field(default=())
    content_type: str = "text/plain; charset=utf-8"


class Router(TypingProtocol):
    """A face's decision for each handshake; ``full`` is True when the server is at capacity."""

    def __call__(self, request: HandshakeRequest, *, full: bool) -> Accept | Reject: ...


class HandshakeFailed(Exception):
    """The peer's handshake was unusable or never finished; internal to the engine."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


async def write_pending(protocol: Protocol, transport: Transport) -> None:
    """Write what the protocol has to send, half-closing if it asks to."""
    eof = False
    data = bytearray()
    for chunk in protocol.data_to_send():
        if chunk:
            data += chunk
        else:
            eof = True
    if data:
        await transport.write(bytes(data))
    if eof:
        await transport.send_eof()


async def _feed_until(protocol: Protocol, transport: Transport, kind: type) -> tuple[object, list[Frame]]:
    while True:
        try:
            data = await transport.read()
        except TransportBroken as exc:
            raise HandshakeFailed(f"connection lost during the handshake: {exc}") from None
        if data:
            protocol.receive_data(data)
        else:
            protocol.receive_eof()
        events = protocol.events_received()
        for i, event in enumerate(events):
            if isinstance(event, kind):
                return event, [e for e in events[i + 1 :] if isinstance(e, Frame)]
        if protocol.handshake_exc is not None:
            raise HandshakeFailed(str(protocol.handshake_exc))
        if not data:
            raise HandshakeFailed("the peer closed the connection during the handshake")


async def read_request(protocol: ServerProtocol, transport: Transport) -> tuple[Request, list[Frame]]:
    """Read the opening request; websockets answers a malformed or oversized one itself (400, 414, 431).

    Raises :class:`HandshakeFailed` when no usable request arrives.
    """
    try:
        request, frames = await _feed_until(protocol, transport, Request)
    except HandshakeFailed:
        await _answer_quietly(protocol, transport)
        raise
    assert isinstance(request, Request)
    return request, frames


async def _answer_quietly(protocol: Protocol, transport: Transport) -> None:
    try:
        await write_pending(protocol, transport)
    except (TransportBroken, OSError):
        pass


def describe(request: Request, remote: str) -> HandshakeRequest:
    """The router's view of ``request``."""
    headers = request.headers
    offered: list[str] = []
    for value in headers.get_all("Sec-WebSocket-Protocol"):
        offered.extend(p.strip() for p in value.split(",") if p.strip())
    upgrade = any(v.strip().lower() == "websocket" for u in headers.get_all("Upgrade") for v in u.split(","))
    return HandshakeRequest(
        target=request.path,
        headers=tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.raw_items()),
        subprotocols=tuple(offered),
        remote=remote,
        upgrade=upgrade,
    )


def reject(decision: Reject) -> Response:
    """The HTTP response for ``decision``."""
    try:
        phrase = http.HTTPStatus(decision.status).phrase
    except ValueError:
        phrase = "Unknown"
    headers = Headers()
    headers["Connection"] = "close"
    headers["Content-Length"] = str(len(decision.body))
    headers["Content-Type"] = decision.content_type
    for name, value in decision.headers:
        headers[name.decode("latin-1")] = value.decode("latin-1")
    return Response(decision.status, phrase, headers, decision.body)


async def read_response(protocol: Protocol, transport: Transport) -> tuple[Response, list[Frame]]:
    """Read the server's answer to our upgrade request.

    Raises :class:`HandshakeFailed` with ``status`` when the server answered with another
    status than 101, without it when the answer was not a valid upgrade or never came.
    """
    response, frames = await _feed_until(protocol, transport, Response)
    assert isinstance(response, Response)
    exc = protocol.handshake_exc
    if isinstance(exc, InvalidStatus):
        raise HandshakeFailed(f"HTTP {exc.response.status_code}", status=exc.response.status_code)
    if isinstance(exc, InvalidHandshake):
        raise HandshakeFailed(f"invalid upgrade response: {exc}")
    return response, frames


def subprotocol_list(value: Sequence[str]) -> list[str] | None:
    """``subprotocols`` as websockets wants them (None when empty)."""
    return list(value) or None
