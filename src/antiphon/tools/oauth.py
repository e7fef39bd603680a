"""OAuth2 client credentials on Trio: one form POST over trio streams + h11, and a token cache.

Theory of operation
-------------------
:class:`TokenCache` hands out a bearer token per :func:`oauth2_cache_key` (token URL,
client id, secret and scope, exactly UTCP's key), fetching one with
:func:`fetch_oauth2_token` when it holds none or the one it holds is no longer fresh
(``expires_in`` minus :data:`~antiphon.proto.utcp.oauth.OAUTH2_EXPIRY_MARGIN_S`). A lock per
key makes concurrent first calls share one fetch. Times are ``trio.current_time()``.

Why h11 and not an HTTP client library: the whole exchange is one POST and one small
JSON answer, h11 is small, well kept and sans-I/O like the rest of the engine, and
doing it by hand makes the security rules plain to see: the secret goes only to the URL
:func:`~antiphon.proto.utcp.urls.check_token_url` accepts (https, or http to loopback), and a
redirect is **never followed** - any 3xx is an error, so the secret cannot be bounced to
another origin. The answer is capped at :data:`MAX_TOKEN_RESPONSE_BYTES`.

Errors: :class:`~antiphon.errors.TemplateError` (the token URL is not allowed),
:class:`~antiphon.errors.HandshakeError` (cannot connect, or the endpoint answered with a
non-2xx status, a redirect included; the message names the status and the OAuth2
``error`` code when there is one), :class:`~antiphon.errors.DecodeError` (the 2xx answer
holds no usable token), :class:`~antiphon.errors.OperationTimeout`. A token endpoint
failure is reported as a handshake failure because it is one: without a token the
WebSocket handshake cannot be made. The secret and the cache key never appear in a
message or a log line.
"""

from __future__ import annotations

import json
import ssl
from typing import Final
from urllib.parse import urlsplit

import h11
import trio

from antiphon.errors import HandshakeError, OperationTimeout
from antiphon.proto.utcp.oauth import (
    OAuth2Token,
    oauth2_cache_key,
    oauth2_token_request,
    parse_oauth2_token_response,
)
from antiphon.proto.utcp.templates import OAuth2Auth

__all__ = ["MAX_TOKEN_RESPONSE_BYTES", "TokenCache", "fetch_oauth2_token"]

MAX_TOKEN_RESPONSE_BYTES: Final = 64 * 1024
"""A token answer is a few hundred bytes; anything past this is refused, not buffered."""

_USER_AGENT: Final = "antiphon-tools"


async def fetch_oauth2_token(
    auth: OAuth2Auth,
    *,
    timeout_s: float,
    ssl_context: ssl.SSLContext | None = None,
) -> OAuth2Token:
    """POST the client-credentials form to ``auth.token_url`` and parse the token; no redirects.

    Raises what the module docstring lists; the whole exchange runs under ``timeout_s``.
    """
    request = oauth2_token_request(auth)  # TemplateError for a token URL we may not post to
    parts = urlsplit(request.url)
    host = parts.hostname or ""
    secure = parts.scheme.lower() == "https"
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    shown = f"{parts.scheme}://{parts.netloc}{parts.path}"  # never the query: it may hold secrets
    host_header = (f"[{host}]" if ":" in host else host) + ("" if parts.port is None else f":{port}")
    try:
        with trio.fail_after(timeout_s):
            status, body = await _post(
                host, port, secure, ssl_context, target, host_header, request.headers, request.body, shown
            )
    except trio.TooSlowError:
        raise OperationTimeout(f"OAuth2 token endpoint {shown} did not answer within {timeout_s:g} s") from None
    if not 200 <= status < 300:
        note = " (redirects of the token request are never followed)" if 300 <= status < 400 else ""
        raise HandshakeError(f"OAuth2 token endpoint {shown} answered HTTP {status}{_oauth_error(body)}{note}")
    return parse_oauth2_token_response(body, now_s=trio.current_time())


def _oauth_error(body: bytes) -> str:
    """`: invalid_client` when the refusal carries an OAuth2 error code (RFC 6749 5.2)."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    code = doc.get("error") if isinstance(doc, dict) else None
    return f": {code}" if isinstance(code, str) and code.isascii() and len(code) < 100 else ""


async def _post(
    host: str,
    port: int,
    secure: bool,
    ssl_context: ssl.SSLContext | None,
    target: str,
    host_header: str,
    headers: tuple[tuple[str, str], ...],
    body: bytes,
    shown: str,
) -> tuple[int, bytes]:
    try:
        if secure:
            ctx = ssl_context or ssl.create_default_context()
            stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=ctx)
        else:
            stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise HandshakeError(f"cannot connect to OAuth2 token endpoint {shown}: {exc}") from None
    conn = h11.Connection(h11.CLIENT)
    all_headers = [
        ("Host", host_header),
        *headers,
        ("Content-Length", str(len(body))),
        ("User-Agent", _USER_AGENT),
        ("Connection", "close"),
    ]
    try:
        async with stream:
            await stream.send_all(
                conn.send(h11.Request(method="POST", target=target, headers=all_headers))
                + conn.send(h11.Data(data=body))
                + conn.send(h11.EndOfMessage())
            )
            status = 0
            chunks: list[bytes] = []
            size = 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(16384)))
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > MAX_TOKEN_RESPONSE_BYTES:
                        raise HandshakeError(
                            f"OAuth2 token endpoint {shown}: answer larger than {MAX_TOKEN_RESPONSE_BYTES} bytes"
                        )
                    chunks.append(bytes(event.data))
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return status, b"".join(chunks)
    except (h11.ProtocolError, trio.BrokenResourceError, OSError) as exc:
        raise HandshakeError(f"OAuth2 token endpoint {shown}: bad HTTP exchange ({type(exc).__name__})") from None


class TokenCache:
    """Bearer tokens by OAuth2 credentials, each kept until shortly before it expires."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._tokens: dict[str, OAuth2Token] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._ssl_context = ssl_context
        self.fetches = 0
        """How many token requests were made (for tests and metrics)."""

    async def token(self, auth: OAuth2Auth, *, timeout_s: float) -> str:
        """A fresh access token for ``auth``, fetched (once, under a lock) when none is cached."""
        key = oauth2_cache_key(auth)
        lock = self._locks.setdefault(key, trio.Lock())
        async with lock:
            cached = self._tokens.get(key)
            if cached is not None and cached.is_fresh(trio.current_time()):
                return cached.access_token
            self.fetches += 1
            token = await fetch_oauth2_token(auth, timeout_s=timeout_s, ssl_context=self._ssl_context)
            self._tokens[key] = token
            return token.access_token

    def forget(self, auth: OAuth2Auth) -> None:
        """Drop the cached token for ``auth`` (say, after the server refused it)."""
        self._tokens.pop(oauth2_cache_key(auth), None)

    def clear(self) -> None:
        """Drop every cached token."""
        self._tokens.clear()
