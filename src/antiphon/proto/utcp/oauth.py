"""OAuth2 client credentials for UTCP templates, sans-IO: the token request and its reply.

Theory of operation
-------------------
The Trio client asks :func:`oauth2_cache_key` whether it holds a fresh
:class:`OAuth2Token`; if not, it POSTs the :class:`TokenRequest` from
:func:`oauth2_token_request` and feeds the body of the answer, with its clock reading,
to :func:`parse_oauth2_token_response`. Nothing here does I/O or reads a clock.

Where we differ from utcp-websocket 1.2.1: ``scope`` is left out of the form when it is
None (UTCP posts the literal text ``scope=None``); ``expires_in`` is honoured, so a token
is refetched :data:`OAUTH2_EXPIRY_MARGIN_S` before it lapses (UTCP caches it forever);
a reply without ``access_token`` is a located :class:`DecodeError` (UTCP raises
``KeyError``). The cache key is byte-identical to UTCP's ``OAuth2Auth.cache_key()``.
"""

from __future__ import annotations

import json
from typing import Final
from urllib.parse import urlencode

from attrs import frozen

from antiphon.errors import DecodeError
from antiphon.proto.utcp.templates import OAuth2Auth
from antiphon.proto.utcp.urls import check_token_url

__all__ = [
    "OAUTH2_EXPIRY_MARGIN_S",
    "OAuth2Token",
    "TokenRequest",
    "oauth2_cache_key",
    "oauth2_token_request",
    "parse_oauth2_token_response",
]

OAUTH2_EXPIRY_MARGIN_S: Final = 30.0
"""Treat a token as expired this early, so it does not lapse between check and handshake."""


@frozen
class TokenRequest:
    """An HTTP POST to make: ``body`` is ``application/x-www-form-urlencoded``."""

    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


@frozen
class OAuth2Token:
    """An access token and when it expires (``None``: the server did not say)."""

    access_token: str
    expires_at_s: float | None = None

    def is_fresh(self, now_s: float, margin_s: float = OAUTH2_EXPIRY_MARGIN_S) -> bool:
        """True while the token can still be used at ``now_s`` (same clock as ``parse``'s)."""
        return self.expires_at_s is None or now_s + margin_s < self.expires_at_s


def oauth2_cache_key(auth: OAuth2Auth) -> str:
    """The token cache key, identical to UTCP's ``OAuth2Auth.cache_key()``; holds the secret, never log it."""
    return json.dumps([auth.token_url, auth.client_id, auth.client_secret, auth.scope or ""])


def oauth2_token_request(auth: OAuth2Auth) -> TokenRequest:
    """The client-credentials POST (secret in the body, as UTCP sends it); ``scope`` only when set.

    Raises :class:`TemplateError` if ``token_url`` is neither https nor loopback http.
    The caller must refuse redirects that leave the origin (UTCP re-checks each hop).
    """
    form = [("grant_type", "client_credentials"), ("client_id", auth.client_id), ("client_secret", auth.client_secret)]
    if auth.scope is not None:
        form.append(("scope", auth.scope))
    return TokenRequest(
        url=check_token_url(auth.token_url),
        headers=(("Content-Type", "application/x-www-form-urlencoded"), ("Accept", "application/json")),
        body=urlencode(form).encode("ascii"),
    )


def parse_oauth2_token_response(body: str | bytes, *, now_s: float) -> OAuth2Token:
    """Read ``access_token`` and ``expires_in`` from a token endpoint's JSON reply.

    ``now_s`` is the caller's clock when the reply arrived; ``expires_at_s`` is on that
    clock. ``expires_in`` may be a number or a digit string (some issuers send one).
    Raises :class:`DecodeError`, located, for a reply without a usable token, including an
    OAuth2 ``error`` reply.
    """
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"$: token endpoint reply is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise DecodeError("$: token endpoint reply is not a JSON object")
    if "error" in doc:
        detail = doc.get("error_description")
        raise DecodeError(f"$.error: token endpoint refused: {doc['error']}" + (f" ({detail})" if detail else ""))
    token = doc.get("access_token")
    if not isinstance(token, str) or not token:
        raise DecodeError("$.access_token: required non-empty string missing")
    expires_in = doc.get("expires_in")
    if expires_in is None:
        return OAuth2Token(token)
    if isinstance(expires_in, str) and expires_in.isascii() and expires_in.isdigit():
        expires_in = int(expires_in)
    if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) or not 0 <= expires_in < 1e12:
        raise DecodeError(f"$.expires_in: expected a non-negative number of seconds, got {expires_in!r}")
    return OAuth2Token(token, now_s + expires_in)
