"""The opening handshake of a UTCP WebSocket call: URL, headers, auth, subprotocol, checked before dialling.

Theory of operation
-------------------
:func:`handshake_headers` turns a call template (and the call's ``header_fields``
arguments, and an OAuth2 bearer token the caller fetched) into a :class:`Handshake`: the
URL really dialled, the extra headers in order, and the subprotocols to offer. Its job is
to make sure that whatever it returns can be put on the wire by the HTTP layer (h11,
under wsproto): nothing that layer would refuse with its own exception, and nothing that
would change the request's meaning (CR/LF injecting a header). A :class:`Handshake` is
also the tool client's pool key. Sans-IO: no sockets, no clock.

Decisions where UTCP is buggy or silent
---------------------------------------
* **header_fields** (never implemented by UTCP) are sent as handshake headers, strings
  raw and other values as JSON text, and are left out of the default body (no
  ``message``) so a per-call secret is not sent twice. A ``message`` template can still
  place one explicitly. A missing header field argument is skipped (tool arguments are
  often optional). A header field may not replace a header the template already sets.
* **Auth.** ``api_key`` is honoured at every ``location``: header, query parameter
  appended to the URL, or a ``Cookie`` (UTCP silently drops query and cookie). An empty
  ``api_key`` raises :class:`TemplateError` where UTCP silently sends no auth. Basic auth
  refuses a username containing ``:`` (RFC 7617). An OAuth2 template needs the caller's
  ``bearer_token``; the token request omits ``scope`` when it is None (UTCP posts the
  literal ``scope=None``) and the token remembers ``expires_in`` (UTCP caches forever).
* **Handshake headers** are validated before anything is dialled: names are HTTP tokens,
  values hold no CR/LF/NUL and only Latin-1 characters (what HTTP/1.1 can carry), lose
  their leading and trailing spaces and tabs (not part of a value, RFC 9110), and
  none may set a header the WebSocket handshake owns (``Upgrade``, ``Sec-WebSocket-*``,
  ...). ``protocol`` must be an HTTP token too (RFC 6455 subprotocol names): CR/LF there
  would inject headers. Each failure is a :class:`TemplateError` naming the field.
* **Non-ASCII URLs.** Non-ASCII characters in the path or query are percent-encoded as
  UTF-8, as aiohttp (yarl) and browsers do, so ``/tools/café`` is dialled as
  ``/tools/caf%C3%A9``; a non-ASCII host is a :class:`TemplateError` (write its punycode
  ``xn--`` form), since it would otherwise reach the ``Host`` header raw.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from attrs import frozen

from antiphon.errors import LocalProtocolError, TemplateError
from antiphon.proto.utcp.templates import (
    ApiKeyAuth,
    BasicAuth,
    OAuth2Auth,
    WebSocketCallTemplate,
)
from antiphon.proto.utcp.urls import check_ws_url

__all__ = ["Handshake", "handshake_headers"]

_HEADER_NAME: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_HEADER_VALUE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_COOKIE_VALUE: Final = re.compile(r"[^\x21-\x7e]|[\";,\\]")
"""RFC 6265 cookie-octets are printable ASCII without ``"``, ``,``, ``;`` and ``\\``."""
_NON_ASCII: Final = re.compile(r"[^\x00-\x7f]+")
_HANDSHAKE_OWNED: Final = frozenset(
    {"host", "upgrade", "connection", "content-length", "transfer-encoding", "sec-websocket-key",
     "sec-websocket-version", "sec-websocket-accept", "sec-websocket-extensions", "sec-websocket-protocol"}
)  # fmt: skip
"""Headers the WebSocket client library writes itself; a template setting them breaks the upgrade."""


def _json_text(value: Any, name: str) -> str:
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise LocalProtocolError(f"argument {name!r} cannot be sent as JSON: {exc}") from None


@frozen
class Handshake:
    """What to open: the URL (query auth appended), extra headers in order, subprotocols to offer."""

    url: str
    headers: tuple[tuple[str, str], ...]
    subprotocols: tuple[str, ...]


def _header_value(name: object, value: object, where: str) -> str:
    """``value`` as it can go on the wire under ``name``; TemplateError (naming ``where``) when it cannot.

    Leading and trailing spaces and tabs are not part of a header value (RFC 9110 5.5):
    they are dropped, as every HTTP parser drops them (h11 refuses to send them).
    """
    if not isinstance(name, str) or not _HEADER_NAME.match(name):
        raise TemplateError(f"{where}: {name!r} is not a valid HTTP header name")
    if name.lower() in _HANDSHAKE_OWNED:
        hint = " (use `protocol` for the subprotocol)" if name.lower() == "sec-websocket-protocol" else ""
        raise TemplateError(f"{where}: {name!r} is written by the WebSocket handshake itself{hint}")
    if not isinstance(value, str):
        raise TemplateError(f"{where}: the value of {name!r} must be a string, got {type(value).__name__}")
    if _BAD_HEADER_VALUE.search(value):
        raise TemplateError(f"{where}: the value of {name!r} holds a control character (CR, LF or NUL)")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise TemplateError(
            f"{where}: the value of {name!r} holds characters outside Latin-1, which an HTTP header "
            f"cannot carry (percent- or base64-encode it)"
        ) from None
    return value.strip(" \t")


def _check_protocol(protocol: object) -> str:
    if not isinstance(protocol, str) or not _HEADER_NAME.match(protocol):
        raise TemplateError(
            f"protocol: {protocol!r} is not a valid WebSocket subprotocol name "
            f"(an HTTP token: letters, digits and !#$%&'*+-.^_`|~, no spaces, commas, CR or LF)"
        )
    return protocol


def _ascii_url(url: str) -> str:
    """``url`` with a non-ASCII path or query percent-encoded (UTF-8); TemplateError for a non-ASCII host."""
    if url.isascii():
        return url
    parts = urlsplit(url)
    if not parts.netloc.isascii():
        raise TemplateError(f"url: the host of {url.partition('?')[0]!r} is not ASCII; write its punycode (xn--) form")
    try:
        return _NON_ASCII.sub(lambda m: quote(m.group(), safe=""), url)
    except UnicodeEncodeError:
        raise TemplateError("url: holds characters that are not valid Unicode text (a lone surrogate)") from None


def _set(headers: list[tuple[str, str]], name: str, value: str) -> None:
    """Set ``name``, replacing any header of that name in any case (auth wins over ``headers``)."""
    headers[:] = [(k, v) for k, v in headers if k.lower() != name.lower()]
    headers.append((name, value))


def _with_query(url: str, name: str, value: str) -> str:
    parts = urlsplit(url)
    try:
        query = urlencode([*parse_qsl(parts.query, keep_blank_values=True), (name, value)])
    except UnicodeEncodeError:
        raise TemplateError("auth: var_name or api_key is not valid Unicode text (a lone surrogate)") from None
    return urlunsplit(parts._replace(query=query))


def handshake_headers(
    template: WebSocketCallTemplate,
    args: Mapping[str, Any] | None = None,
    *,
    bearer_token: str | None = None,
) -> Handshake:
    """The handshake for ``template``: static headers, then auth, then ``header_fields`` from ``args``.

    An OAuth2 template needs ``bearer_token`` (fetch it with :func:`oauth2_token_request`);
    passing one for any other template is a :class:`LocalProtocolError`. The returned URL
    has passed :func:`check_ws_url`. Raises :class:`TemplateError` for unusable headers or
    credentials.
    """
    args = args or {}
    url = _ascii_url(template.url)
    subprotocols = (_check_protocol(template.protocol),) if template.protocol else ()
    headers: list[tuple[str, str]] = []
    for name, value in (template.headers or {}).items():
        _set(headers, name, _header_value(name, value, "headers"))
    auth = template.auth
    if bearer_token is not None and not isinstance(auth, OAuth2Auth):
        raise LocalProtocolError("bearer_token was given but the template's auth is not oauth2")
    if isinstance(auth, ApiKeyAuth):
        if not auth.api_key:
            raise TemplateError("auth.api_key: is empty; refusing to connect without the key")
        if auth.location == "header":
            _set(headers, auth.var_name, _header_value(auth.var_name, auth.api_key, "auth"))
        elif auth.location == "query":
            url = _with_query(url, auth.var_name, auth.api_key)
        else:
            if not _HEADER_NAME.match(auth.var_name) or _BAD_COOKIE_VALUE.search(auth.api_key):
                raise TemplateError("auth: cookie name or api_key holds characters a cookie cannot carry")
            cookie = f"{auth.var_name}={auth.api_key}"
            old = next((v for k, v in headers if k.lower() == "cookie"), None)
            _set(headers, "Cookie", f"{old}; {cookie}" if old else cookie)
    elif isinstance(auth, BasicAuth):
        if ":" in auth.username:
            raise TemplateError("auth.username: may not contain ':' in HTTP Basic auth")
        try:
            token = base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()
        except UnicodeEncodeError:
            raise TemplateError("auth: username or password is not valid Unicode text (a lone surrogate)") from None
        _set(headers, "Authorization", f"Basic {token}")
    elif isinstance(auth, OAuth2Auth):
        if bearer_token is None:
            raise LocalProtocolError("the template uses oauth2: fetch a token and pass bearer_token=")
        _set(headers, "Authorization", f"Bearer {_header_value('Authorization', bearer_token, 'oauth2 token')}")
    taken = {k.lower() for k, _ in headers}
    for name in template.header_fields or ():
        if name not in args:
            continue
        if name.lower() in taken:
            raise TemplateError(f"header_fields: {name!r} would replace a header the template already sets")
        value = args[name]
        text = value if isinstance(value, str) else _json_text(value, name)
        headers.append((name, _header_value(name, text, "header_fields")))
    return Handshake(url=check_ws_url(url), headers=tuple(headers), subprotocols=subprotocols)
