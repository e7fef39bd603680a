"""Opening client connections: one place that turns trio-websocket's failures into antiphon's.

Every client face (chat, tools, media) dials through :func:`connect_websocket`. It never
follows a redirect of the upgrade: a 3xx answer is a :class:`HandshakeRejected` like any
other status, so credentials sent with the handshake cannot be forwarded elsewhere.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

import trio
import trio_websocket

from antiphon.errors import ConfigError, HandshakeError, HandshakeRejected, OperationTimeout

__all__ = ["connect_websocket"]

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
) -> trio_websocket.WebSocketConnection:
    """Open a WebSocket to ``url``; its reader task runs in ``nursery``.

    Raises :class:`HandshakeRejected` (the server answered with an HTTP status, a
    redirect included), :class:`HandshakeError` (no connection, or a bad URL scheme),
    :class:`OperationTimeout` (no handshake within ``timeout_s``), :class:`ConfigError`
    (the URL cannot be parsed).
    """
    if not url.startswith(("ws://", "wss://")):
        raise ConfigError(f"url: expected ws:// or wss://, got {url!r}")
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    try:
        with trio.fail_after(timeout_s):
            return await trio_websocket.connect_websocket_url(
                nursery,
                url,
                ssl_context=ssl_context,
                subprotocols=list(subprotocols) or None,
                extra_headers=extra or None,
                max_message_size=max_message_size,
                message_queue_size=message_queue_size,
            )
    except trio.TooSlowError:
        raise OperationTimeout(f"no WebSocket handshake with {_safe(url)} within {timeout_s:g} s") from None
    except trio_websocket.ConnectionRejected as exc:
        status = exc.status_code or 0
        note = " (redirects of the upgrade are never followed)" if 300 <= status < 400 else ""
        raise HandshakeRejected(status, f"{_safe(url)} rejected the WebSocket upgrade with HTTP {status}{note}") from None
    except trio_websocket.HandshakeError as exc:
        raise HandshakeError(f"WebSocket handshake with {_safe(url)} failed: {exc!r}") from None
    except (OSError, trio.BrokenResourceError) as exc:
        raise HandshakeError(f"cannot connect to {_safe(url)}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"url: {exc}") from None


def _safe(url: str) -> str:
    # Query strings can carry secrets (?secret=...): never put them in an error message.
    return url.partition("?")[0]
