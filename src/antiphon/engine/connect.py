"""Opening client connections: the one place that dials, upgrades and translates failures.

Every client face (chat, tools, media) dials through :func:`connect_websocket`: TCP (or
TLS for ``wss://``, with the caller's ``ssl.SSLContext``), then websockets'
``ClientProtocol`` handshake, then a :class:`~antiphon.engine.wire.WebSocketWire` that a
:class:`~antiphon.engine.session.Session` runs on - the same core as the server's.

It never follows a redirect of the upgrade: a 3xx answer is a :class:`HandshakeRejected`
like any other status, so credentials sent with the handshake cannot be forwarded
elsewhere. Headers are checked before anything is dialled: a value with CR, LF or NUL,
or one that Latin-1 cannot encode, is the caller's mistake (:class:`LocalProtocolError`
naming the header), never a garbled request.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Final

import trio
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidURI
from websockets.extensions.permessage_deflate import enable_client_permessage_deflate
from websockets.typing import Subprotocol
from websockets.uri import WebSocketURI, parse_uri

from antiphon.engine._util import open_nursery_unwrapped
from antiphon.engine.handshake import HandshakeFailed, read_response, write_pending
from antiphon.engine.transport import (
    SocketTransport,
    StreamTransport,
    Transport,
    TransportBroken,
)
from antiphon.engine.wire import PROTOCOL_LOGGER, WebSocketWire
from antiphon.errors import (
    ConfigError,
    HandshakeError,
    HandshakeRejected,
    LocalProtocolError,
    OperationTimeout,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "OpenStream",
    "check_headers",
    "connect_websocket",
    "open_client_websocket",
]

DEFAULT_CONNECT_TIMEOUT_S: Final = 10.0
"""How long dialling plus the opening handshake may take by default."""

_TOKEN: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE: Final = re.compile(r"[\r\n\x00]")

OpenStream = Callable[[], Awaitable[trio.abc.Stream]]


def check_headers(headers: Sequence[tuple[str, str]]) -> None:
    """Refuse header names that are not HTTP tokens and values that would break the request.

    Raises :class:`LocalProtocolError` naming the header.
    """
    for name, value in headers:
        if not _TOKEN.match(name):
            raise LocalProtocolError(f"header name {name!r} is not a valid HTTP token")
        if _BAD_VALUE.search(value):
            raise LocalProtocolError(f"header {name!r}: the value contains CR, LF or NUL")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise LocalProtocolError(f"header {name!r}: the value has characters Latin-1 cannot encode") from None


def _safe(url: str) -> str:
    # Query strings can carry secrets (?secret=...): never put them in an error message.
    return url.partition("?")[0]


def _parse(url: str) -> WebSocketURI:
    try:
        return parse_uri(url)
    except InvalidURI:
        raise ConfigError(f"url: expected ws:// or wss:// with a host, got {_safe(url)!r}") from None
    except ValueError:
        raise ConfigError(f"url: invalid port in {_safe(url)!r}") from None


async def _dial(uri: WebSocketURI, ssl_context: ssl.SSLContext | None) -> Transport:
    stream = await trio.open_tcp_stream(uri.host, uri.port)
    if uri.secure:
        ctx = ssl_context or ssl.create_default_context()
        tls = trio.SSLStream(stream, ctx, server_hostname=uri.host, https_compatible=True)
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tls)
            raise
        return StreamTransport(tls, f"{uri.host}:{uri.port}")
    # Plain TCP: take the socket out of Trio's stream and drive it directly.
    sock = socket.socket(fileno=stream.socket.detach())
    return SocketTransport(sock)


async def connect_websocket(
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    subprotocols: Sequence[str] = (),
    timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    max_message_size: int = 1024 * 1024,
    ssl_context: ssl.SSLContext | None = None,
    open_stream: OpenStream | None = None,
    compression: str | None = None,
) -> WebSocketWire:
    """Dial ``url`` and complete the upgrade; the caller runs a Session on the result and closes it.

    ``open_stream``, when given, supplies the byte stream instead of a connection to the
    URL's host (a memory stream in tests, a tunnel); the URL still gives the ``Host``
    header and the resource. ``compression="deflate"`` offers permessage-deflate.

    Raises :class:`HandshakeRejected` (the server answered with an HTTP status, a
    redirect included), :class:`HandshakeError` (no connection, the server hung up or
    answered something that is not an upgrade), :class:`OperationTimeout` (no handshake
    within ``timeout_s``), :class:`ConfigError` (the URL cannot be parsed),
    :class:`LocalProtocolError` (a header cannot be sent).
    """
    uri = _parse(url)
    check_headers(headers)
    for proto in subprotocols:
        if not _TOKEN.match(proto):
            raise LocalProtocolError(f"subprotocol {proto!r} is not a valid HTTP token")
    # websockets' recommended client settings (memLevel 5; the server picks the windows).
    extensions = enable_client_permessage_deflate(None) if compression == "deflate" else None
    offered = [Subprotocol(p) for p in subprotocols] or None
    protocol = ClientProtocol(
        uri, subprotocols=offered, extensions=extensions, max_size=max_message_size, logger=PROTOCOL_LOGGER
    )
    protocol.debug = False  # never log the request's lines: headers and query string can carry secrets
    request = protocol.connect()
    for name, value in headers:
        request.headers[name] = value
    transport: Transport | None = None
    try:
        with trio.fail_after(timeout_s):
            if open_stream is not None:
                transport = StreamTransport(await open_stream(), f"{uri.host}:{uri.port}")
            else:
                transport = await _dial(uri, ssl_context)
            protocol.send_request(request)
            await write_pending(protocol, transport)
            _, frames = await read_response(protocol, transport)
    except BaseException as exc:
        if transport is not None:
            await trio.aclose_forcefully(_Closing(transport))
        if isinstance(exc, trio.TooSlowError):
            raise OperationTimeout(f"no WebSocket handshake with {_safe(url)} within {timeout_s:g} s") from None
        if isinstance(exc, HandshakeFailed):
            if exc.status is not None:
                raise _rejected(url, exc.status) from None
            raise HandshakeError(f"WebSocket handshake with {_safe(url)} failed: {exc}") from None
        if isinstance(exc, (OSError, TransportBroken, trio.BrokenResourceError)):
            raise HandshakeError(f"cannot connect to {_safe(url)}: {_reason(exc)}") from None
        raise
    return WebSocketWire(protocol, transport, max_message_size=max_message_size, initial=frames)


def _reason(exc: BaseException) -> str:
    """What went wrong, in words: a TLS failure's own text, not Trio's empty BrokenResourceError."""
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        hint = "pass ssl_context, or set SSL_CERT_FILE, to trust its CA"
        return f"TLS certificate verify failed: {cause.verify_message} ({hint})"
    if isinstance(cause, ssl.SSLError):
        return f"TLS handshake failed: {cause.reason or cause}"
    return str(cause) or type(cause).__name__


class _Closing(trio.abc.AsyncResource):
    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def aclose(self) -> None:
        await self.transport.aclose()


def _rejected(url: str, status: int) -> HandshakeRejected:
    note = " (redirects of the upgrade are never followed)" if 300 <= status < 400 else ""
    return HandshakeRejected(status, f"{_safe(url)} rejected the WebSocket upgrade with HTTP {status}{note}")


@asynccontextmanager
async def open_client_websocket(
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    subprotocols: Sequence[str] = (),
    timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    max_message_size: int = 1024 * 1024,
    ssl_context: ssl.SSLContext | None = None,
    open_stream: OpenStream | None = None,
    compression: str | None = None,
) -> AsyncIterator[tuple[trio.Nursery, WebSocketWire]]:
    """Connect to ``url`` and yield ``(nursery, wire)``; the connection is closed on exit.

    The nursery takes the caller's session task. A lone exception from the body escapes
    unwrapped. Raises what :func:`connect_websocket` raises.
    """
    wire = await connect_websocket(
        url,
        headers=headers,
        subprotocols=subprotocols,
        timeout_s=timeout_s,
        max_message_size=max_message_size,
        ssl_context=ssl_context,
        open_stream=open_stream,
        compression=compression,
    )
    try:
        async with open_nursery_unwrapped() as nursery:
            try:
                yield nursery, wire
            finally:
                # Close first, cancel last: a checkpoint after the cancel would replace
                # the body's exception with a Cancelled that the nursery then swallows.
                with trio.CancelScope(shield=True):
                    await wire.aclose()
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await wire.aclose()
