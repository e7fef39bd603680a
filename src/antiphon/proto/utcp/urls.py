"""Which URLs a UTCP call template may point at: ``wss://`` anywhere, ``ws://`` only to loopback.

Theory of operation
-------------------
Plain ``ws://`` carries API keys and tool arguments in clear text, so it is allowed only
when the peer is this machine. "This machine" is decided by *parsing* the URL and looking
at its host, never by string prefix: the prefix test that utcp-websocket shipped before
GHSA-ppx3-28rw-8fpf let ``ws://localhost.evil.com`` and ``ws://127.0.0.1.attacker.example``
through. :func:`is_loopback_host` mirrors the released ``utcp_websocket._security``
(``_ip_is_loopback_like``) exactly: ``localhost`` (with or without the trailing dot of an
absolute name), any 127.0.0.0/8 address, ``::1``, the unspecified addresses ``0.0.0.0`` and
``::`` (which the kernel routes to the local host), IPv4-mapped IPv6 forms of those, and the
shorthand, integer, octal and hex IPv4 spellings that ``inet_aton`` accepts (``127.1``,
``2130706433``, ``0177.0.0.1``, ``0x7f000001``) and ``ipaddress`` does not.

Where we are stricter than UTCP: a URL holding a backslash, whitespace or an ASCII
control character is refused outright. ``urllib`` and WHATWG parsers disagree about
``ws://evil.example\\@localhost/`` (``urllib`` sees host ``localhost``, a browser-style
parser sees ``evil.example``), and no legitimate WebSocket URL needs those characters.
We do *not* validate the port: templates say ``ws://localhost:${PORT}/ws`` before
variable substitution, and UTCP accepts that too.

The client must call :func:`check_ws_url` again right before it connects, on the URL it
is really about to dial (after ``$VAR`` substitution and after query-string auth was
appended), exactly as UTCP's ``_get_connection`` re-checks.
"""

from __future__ import annotations

import re
import socket
from ipaddress import IPv6Address, ip_address
from typing import Final
from urllib.parse import urlsplit

from antiphon.errors import TemplateError

__all__ = [
    "WS_URL_RULE",
    "check_token_url",
    "check_ws_url",
    "is_loopback_host",
    "is_loopback_url",
]

_LOOPBACK_NAMES: Final = frozenset({"localhost", "::1", "[::1]", "0.0.0.0", "::"})
"""Hosts that are loopback by name, before any address parsing (as in utcp-websocket)."""

_RESOLVER_IPV4_LITERAL: Final = re.compile(r"^[0-9a-fx.]+$")
"""An IPv4 literal in any spelling ``inet_aton`` might accept; the resolver gets the final say."""

_UNSAFE_CHARS: Final = re.compile(r"[\x00-\x20\x7f\\]")
"""Characters on which URL parsers disagree; never needed in a WebSocket URL."""

WS_URL_RULE: Final = (
    "WebSocket URL must use wss://, or ws:// to a loopback host "
    "(localhost, 127.0.0.0/8, ::1)"
)


def is_loopback_host(host: str) -> bool:
    """True when ``host`` (a parsed hostname, not a URL) names this machine in any spelling.

    Case-insensitive; a trailing dot is ignored; IPv6 may come with or without brackets.
    Never resolves names through DNS: ``localhost.evil.com`` is *not* loopback.
    """
    host = host.lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        return False
    if host in _LOOPBACK_NAMES:
        return True
    try:
        addr = ip_address(host)
    except ValueError:
        if not _RESOLVER_IPV4_LITERAL.match(host):
            return False
        try:
            addr = ip_address(socket.inet_ntoa(socket.inet_aton(host)))
        except (OSError, ValueError):
            return False
    if addr.is_loopback or addr.is_unspecified:
        return True
    if isinstance(addr, IPv6Address):
        mapped = addr.ipv4_mapped
        return mapped is not None and (mapped.is_loopback or mapped.is_unspecified)
    return False


def _split(url: object) -> tuple[str, str] | None:
    """(scheme, host) of ``url`` lower-cased, or None when it is not a parseable URL."""
    if not isinstance(url, str) or not url or _UNSAFE_CHARS.search(url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    host = parts.hostname or ""
    if not host:
        return None
    return parts.scheme.lower(), host


def is_loopback_url(url: str) -> bool:
    """True when ``url`` parses and its host is loopback (any scheme)."""
    split = _split(url)
    return split is not None and is_loopback_host(split[1])


def check_ws_url(url: str) -> str:
    """Return ``url`` unchanged if it may be dialled: ``wss://`` to any host, ``ws://`` to loopback.

    Raises :class:`TemplateError` whose message quotes the URL; the message does not
    name a field, so a codec can locate it (``$.url: ...``).
    """
    split = _split(url)
    if split is not None:
        scheme, host = split
        if scheme == "wss" or (scheme == "ws" and is_loopback_host(host)):
            return url
    raise TemplateError(f"{WS_URL_RULE}; got {url!r}")


def check_token_url(url: str) -> str:
    """Return ``url`` if an OAuth2 client secret may be posted to it: ``https://``, or loopback ``http://``.

    Raises :class:`TemplateError` quoting the URL. Mirrors UTCP's ``ensure_secure_url``.
    """
    split = _split(url)
    if split is not None:
        scheme, host = split
        if scheme == "https" or (scheme == "http" and is_loopback_host(host)):
            return url
    raise TemplateError(
        f"OAuth2 token URL must use https://, or http:// to a loopback host; got {url!r}"
    )
