"""Opening client connections: one place that turns trio-websocket's failures into antiphon's.

Every client face (chat, tools, media) dials through :func:`connect_websocket`. It never
follows a redirect of the upgrade: a 3xx answer is a :class:`HandshakeRejected` like any
other status, so credentials sent with the handshake cannot be forwarded elsewhere.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import trio
import trio_websocket

from antiphon.engine._util import open_nursery_unwrapped
from antiphon.errors import (
    ConfigError,
    HandshakeError,
    HandshakeRejected,
    OperationTimeout,
)

__all__ = ["connect_websocket", "open_client_websocket"]

DEFAULT_CONNECT_TIMEOUT_S = 10.0


async def connect_websocket(
    nursery: trio.Nursery,
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    subprotocols: Sequence[str] = (),
    timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    max_message_size: int = 1024 * 1024,
    message_queue_size: int = 4,
    ssl_context: ssl.SSLContext | None = None,
    open_stream: Callable[[], Awaitable[trio.abc.Stream]] | None = None,
    _streams: list[trio.abc.Stream] | None = None,
) -> trio_websocket.WebSocketConnection:
    """Open a WebSocket to ``url``; its reader task runs in ``nursery``.

    ``open_stream``, when given, supplies the byte stream instead of a TCP connection
    to the URL's host (a memory stream in tests, a tunnel); the URL still gives the
    ``Host`` header and the resource.

    Prefer :func:`open_client_websocket`, which also closes the TCP stream.

    Raises :class:`HandshakeRejected` (the server answered with an HTTP status, a
    redirect included), :class:`HandshakeError` (no connection, or a bad URL scheme),
    :class:`OperationTimeout` (no handshake within ``timeout_s``), :class:`ConfigError`
    (the URL cannot be parsed).
    """
    target = _parse(url)
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    stream: trio.abc.Stream | None = None
    try:
        with trio.fail_after(timeout_s):
            if open_stream is not None:
                stream = await open_stream()
            elif target.secure:
                ctx = ssl_context or ssl.create_default_context()
                stream = await trio.open_ssl_over_tcp_stream(target.host, target.port, ssl_context=ctx, https_compatible=True)
            else:
                stream = await trio.open_tcp_stream(target.host, target.port)
            if _streams is not None:
                _streams.append(stream)
            return await trio_websocket.wrap_client_stream(
                nursery,
                stream,
                target.host_header,
                target.resource,
                subprotocols=list(subprotocols) or None,
                extra_headers=extra or None,
                max_message_size=max_message_size,
                message_queue_size=message_queue_size,
            )
    except BaseException as exc:
        # Refusals arrive through the nursery as a cancellation of this call: either
        # way the stream is ours to close.
        if stream is not None:
            await trio.aclose_forcefully(stream)
        if isinstance(exc, trio.TooSlowError):
            raise OperationTimeout(f"no WebSocket handshake with {_safe(url)} within {timeout_s:g} s") from None
        if isinstance(exc, trio_websocket.ConnectionRejected):
            raise _rejected(url, exc) from None
        if isinstance(exc, trio_websocket.HandshakeError):
            raise HandshakeError(f"WebSocket handshake with {_safe(url)} failed: {exc!r}") from None
        if isinstance(exc, (OSError, trio.BrokenResourceError)):
            raise HandshakeError(f"cannot connect to {_safe(url)}: {exc}") from None
        raise


class _Target:
    __slots__ = ("host", "host_header", "port", "resource", "secure")

    def __init__(self, host: str, port: int, secure: bool, resource: str) -> None:
        self.host, self.port, self.secure, self.resource = host, port, secure, resource
        default = 443 if secure else 80
        shown = f"[{host}]" if ":" in host else host
        self.host_header = shown if port == default else f"{shown}:{port}"


def _parse(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ConfigError(f"url: expected ws:// or wss://, got {_safe(url)!r}")
    if not parts.hostname:
        raise ConfigError(f"url: no host in {_safe(url)!r}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"url: invalid port in {_safe(url)!r}") from None
    secure = parts.scheme == "wss"
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(parts.hostname, port or (443 if secure else 80), secure, resource)

def _safe(url: str) -> str:
    # Query strings can carry secrets (?secret=...): never put them in an error message.
    return url.partition("?")[0]


def _rejected(url: str, exc: trio_websocket.ConnectionRejected) -> HandshakeRejected:
    status = exc.status_code or 0
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
    open_stream: Callable[[], Awaitable[trio.abc.Stream]] | None = None,
) -> AsyncIterator[tuple[trio.Nursery, trio_websocket.WebSocketConnection]]:
    """Connect to ``url`` and yield ``(nursery, ws)``; everything is closed on exit.

    The nursery holds the connection's reader task and takes the caller's session
    tasks too. trio-websocket reports a refused upgrade from its reader task, so the
    refusal surfaces from the nursery, where it is translated like the others; and it
    never closes a client's TCP stream after the server closed first, so the stream is
    closed here. A lone exception from the body escapes unwrapped. Raises what
    :func:`connect_websocket` raises.
    """
    streams: list[trio.abc.Stream] = []
    try:
        async with open_nursery_unwrapped() as nursery:
            try:
                ws = await connect_websocket(
                    nursery,
                    url,
                    headers=headers,
                    subprotocols=subprotocols,
                    timeout_s=timeout_s,
                    max_message_size=max_message_size,
                    ssl_context=ssl_context,
                    open_stream=open_stream,
                    _streams=streams,
                )
                yield nursery, ws
            finally:
                # Close first, cancel last: a checkpoint after the cancel would replace
                # the body's exception with a Cancelled that the nursery then swallows.
                with trio.CancelScope(shield=True):
                    for stream in streams:
                        await trio.aclose_forcefully(stream)
                nursery.cancel_scope.cancel()
    except trio_websocket.ConnectionRejected as exc:
        raise _rejected(url, exc) from None
