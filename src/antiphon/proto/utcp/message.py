"""The call side of a UTCP WebSocket tool, as pure functions: what to send, and what came back.

Theory of operation
-------------------
A UTCP WebSocket call is: open a socket to the template's URL with the handshake that
:func:`~antiphon.proto.utcp.handshake.handshake_headers` describes (re-exported here), send
the one TEXT frame :func:`format_message` builds, then read frames and interpret them with
:func:`parse_response` (a plain call) or :func:`interpret_stream_frame` (a streaming call). Discovery sends
:data:`DISCOVERY_REQUEST` and waits for a frame :func:`parse_discovery_reply` accepts.
OAuth2 client credentials are fetched by the caller with the request
:func:`oauth2_token_request` describes (from :mod:`antiphon.proto.utcp.oauth`, re-exported
here). Nothing here does I/O or keeps time: the Trio
client moves the bytes and passes in ``now_s``.

The wire text matches utcp-websocket 1.2.1 byte for byte wherever that plugin is not
buggy: bodies are serialised with the standard library's ``json.dumps`` and its default
``", "`` / ``": "`` separators and ASCII escaping (not antiphon's compact ``dumps``), so
a server sees the same bytes from either client.

Decisions where UTCP is buggy or silent
---------------------------------------
* **Missing argument.** A ``UTCP_ARG_<name>_UTCP_ARG`` whose argument was not passed
  raises :class:`PlaceholderError`; UTCP sends the placeholder text literally. Names are
  runs of non-space characters other than ``"`` and ``\\``.
* **One pass.** Placeholders are replaced in a single scan of the *template*, so an
  argument whose value contains ``UTCP_ARG_other_UTCP_ARG`` is sent as that text. UTCP
  replaces argument by argument with ``str.replace`` and re-scans earlier values.
* **String templates that are JSON** (they parse once every placeholder reads ``null``):
  a placeholder inside a JSON string literal becomes JSON-escaped text without quotes
  (a non-string value's JSON text, escaped), one outside a string becomes the argument's
  JSON value (a string argument gets its quotes). The result is always valid JSON and an
  argument can never add a key. UTCP agrees for string arguments inside quotes and for
  non-string arguments outside quotes; it breaks the JSON for a dict or list inside
  quotes and for a string outside them. A template that starts with ``{``/``[`` but is
  *not* JSON gets UTCP's rule verbatim: strings escaped without quotes, others as JSON.
* **Other string templates:** strings raw, everything else as ``json.dumps`` text (UTCP).
* **Dict templates:** every string leaf is substituted, keys never. A leaf that is
  *exactly* one placeholder takes the argument's JSON value, so ``{"n":
  "UTCP_ARG_n_UTCP_ARG"}`` with ``n=7`` sends ``{"n": 7}``; UTCP sends ``"7"`` and turns a
  dict argument into a string of JSON. A leaf with other text around the placeholder
  follows UTCP (string raw, others as JSON text, all inside the leaf's string).
* **Unserialisable arguments** (a set, NaN, infinity) raise :class:`LocalProtocolError`
  instead of sending ``NaN``, which is not JSON.
* **Responses.** ``json`` that does not parse raises :class:`ResponseFormatError` (UTCP
  logs and returns the raw text). A BINARY frame under ``json``/``text`` is decoded as
  UTF-8 (UTCP returns the bytes whatever the format); ``raw``/None return the frame as
  received. JSON is parsed with the standard library, so big integers stay exact and
  ``NaN`` is accepted, as in UTCP.
* **Streams.** Non-object JSON is a raw frame (UTCP raises ``AttributeError``). UTCP also
  silently drops any object carrying a ``request_id`` (it compares it with an id it never
  sent); we ignore ``request_id``. BINARY frames come back as :class:`StreamRaw` (UTCP
  drops them): the caller decides.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

from attrs import frozen

from antiphon.errors import (
    LocalProtocolError,
    PlaceholderError,
    RemoteProtocolError,
    ResponseFormatError,
)
from antiphon.proto.utcp.handshake import Handshake, handshake_headers
from antiphon.proto.utcp.oauth import (
    OAUTH2_EXPIRY_MARGIN_S,
    OAuth2Token,
    TokenRequest,
    oauth2_cache_key,
    oauth2_token_request,
    parse_oauth2_token_response,
)
from antiphon.proto.utcp.templates import (
    OAuth2Auth,
    ResponseFormat,
    UtcpManual,
    WebSocketCallTemplate,
    decode_manual,
)
from antiphon.proto.utcp.urls import is_loopback_url

__all__ = [
    "DISCOVERY_REQUEST",
    "OAUTH2_EXPIRY_MARGIN_S",
    "Handshake",
    "OAuth2Token",
    "StreamEnd",
    "StreamError",
    "StreamEvent",
    "StreamRaw",
    "StreamResult",
    "TokenRequest",
    "check_discovered_manual",
    "format_message",
    "handshake_headers",
    "interpret_stream_frame",
    "is_discovery_request",
    "oauth2_cache_key",
    "oauth2_token_request",
    "parse_discovery_reply",
    "parse_oauth2_token_response",
    "parse_response",
]

DISCOVERY_REQUEST: Final = '{"type": "utcp"}'
"""The discovery frame, exactly as UTCP's ``json.dumps({"type": "utcp"})`` writes it."""

_PLACEHOLDER: Final = re.compile(r"UTCP_ARG_((?:(?!UTCP_ARG_)[^\s\"\\])+?)_UTCP_ARG")


def _dumps(value: Any, name: str) -> str:
    """``json.dumps`` as UTCP calls it, but refusing what is not JSON."""
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"argument {name!r} cannot be sent as JSON: {exc}") from None


def _arg(args: Mapping[str, Any], name: str) -> Any:
    if name not in args:
        raise PlaceholderError(name)
    return args[name]


def _plain(args: Mapping[str, Any], name: str, *, escaped: bool) -> str:
    """UTCP's rule: a string raw (or JSON-escaped without quotes), anything else as JSON text."""
    value = _arg(args, name)
    if isinstance(value, str):
        return _dumps(value, name)[1:-1] if escaped else value
    return _dumps(value, name)


def _is_json_template(text: str) -> bool:
    try:
        json.loads(_PLACEHOLDER.sub("null", text))
    except (ValueError, RecursionError):
        return False
    return True


def _fill_json_text(text: str, args: Mapping[str, Any]) -> str:
    """Substitute into a JSON template, each placeholder rendered for its string/value context."""
    out: list[str] = []
    in_string = escape = False
    pos = 0
    for match in _PLACEHOLDER.finditer(text):
        for ch in text[pos : match.start()]:
            if escape:
                escape = False
            elif ch == "\\":
                escape = in_string
            elif ch == '"':
                in_string = not in_string
        out.append(text[pos : match.start()])
        name = match.group(1)
        value = _arg(args, name)
        if in_string:
            # Escaped text without quotes; a non-string sits in the string as its JSON text.
            inner = value if isinstance(value, str) else _dumps(value, name)
            out.append(json.dumps(inner)[1:-1])
        else:
            out.append(_dumps(value, name))
        pos = match.end()
    out.append(text[pos:])
    return "".join(out)


def _fill_leaf(leaf: Any, args: Mapping[str, Any]) -> Any:
    if isinstance(leaf, str):
        exact = _PLACEHOLDER.fullmatch(leaf)
        if exact:
            return _arg(args, exact.group(1))
        return _PLACEHOLDER.sub(lambda m: _plain(args, m.group(1), escaped=False), leaf)
    if isinstance(leaf, dict):
        return {k: _fill_leaf(v, args) for k, v in leaf.items()}
    if isinstance(leaf, list):
        return [_fill_leaf(v, args) for v in leaf]
    return leaf


def format_message(template: WebSocketCallTemplate, args: Mapping[str, Any]) -> str:
    """The TEXT frame that calls the tool with ``args``, built from ``template.message``.

    No message: ``json.dumps(args)`` without the ``header_fields`` arguments. A string or
    dict message: placeholders substituted by the rules in the module docstring. Raises
    :class:`PlaceholderError` for a placeholder without its argument and
    :class:`LocalProtocolError` for an argument that is not JSON, nesting too deep to
    serialise, or text that is not valid Unicode (a lone surrogate cannot go in a frame).
    """
    try:
        text = _format(template.message, template.header_fields, args)
    except RecursionError:
        raise LocalProtocolError("the message or its arguments are nested too deeply to send") from None
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise LocalProtocolError("the message holds text that is not valid Unicode (a lone surrogate)") from None
    return text


def _format(message: str | dict[str, Any] | None, header_fields: list[str] | None, args: Mapping[str, Any]) -> str:
    if message is None:
        skip = set(header_fields or ())
        return _dumps({k: v for k, v in args.items() if k not in skip}, "args")
    if isinstance(message, dict):
        filled = _fill_leaf(message, args)
        try:
            return json.dumps(filled, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise LocalProtocolError(f"message cannot be sent as JSON: {exc}") from None
    stripped = message.lstrip()
    if stripped[:1] in ("{", "[") and stripped:
        if _is_json_template(message):
            return _fill_json_text(message, args)
        return _PLACEHOLDER.sub(lambda m: _plain(args, m.group(1), escaped=True), message)
    return _PLACEHOLDER.sub(lambda m: _plain(args, m.group(1), escaped=False), message)


# --- replies ----------------------------------------------------------------------------


def _text(frame: str | bytes, what: str) -> str:
    if isinstance(frame, str):
        return frame
    try:
        return frame.decode("utf-8")
    except UnicodeDecodeError:
        raise ResponseFormatError(f"{what}: binary frame is not UTF-8 text") from None


def parse_response(frame: str | bytes, response_format: ResponseFormat | None) -> Any:
    """A tool's reply frame as the template's ``response_format`` says.

    ``json``: the parsed value; ``text``: a str (a binary frame decoded as UTF-8);
    ``raw`` or None: the frame unchanged. Raises :class:`ResponseFormatError` naming the
    format when the frame does not fit it.
    """
    if response_format == "json":
        try:
            return json.loads(_text(frame, "response_format 'json'"))
        except (ValueError, RecursionError) as exc:
            if isinstance(exc, ResponseFormatError):
                raise
            raise ResponseFormatError(f"response_format 'json': reply is not valid JSON ({exc})") from None
    if response_format == "text":
        return _text(frame, "response_format 'text'")
    return frame


@frozen
class StreamResult:
    """A ``{"type": "tool_response", "result": X}`` frame: one streamed value."""

    value: Any


@frozen
class StreamError:
    """A ``{"type": "tool_error", "error": E}`` frame: the tool failed; raise ToolCallError."""

    error: Any


@frozen
class StreamEnd:
    """A ``{"type": "stream_end"}`` frame: the stream is complete."""


@frozen
class StreamRaw:
    """Any other frame, passed on as received (UTCP yields the text; it drops binary frames)."""

    frame: str | bytes


StreamEvent = StreamResult | StreamError | StreamEnd | StreamRaw


def interpret_stream_frame(frame: str | bytes) -> StreamEvent:
    """Classify one frame of a streaming call; never raises."""
    if isinstance(frame, bytes):
        return StreamRaw(frame)
    try:
        doc = json.loads(frame)
    except (ValueError, RecursionError):
        return StreamRaw(frame)
    if isinstance(doc, dict):
        kind = doc.get("type")
        if kind == "tool_response":
            return StreamResult(doc.get("result"))
        if kind == "tool_error":
            return StreamError(doc.get("error", "Unknown error"))
        if kind == "stream_end":
            return StreamEnd()
    return StreamRaw(frame)


# --- discovery --------------------------------------------------------------------------


def is_discovery_request(frame: str | bytes) -> bool:
    """True for a TEXT frame that is a JSON object with ``"type": "utcp"`` (server side)."""
    if not isinstance(frame, str):
        return False
    try:
        doc = json.loads(frame)
    except (ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and doc.get("type") == "utcp"


def parse_discovery_reply(frame: str | bytes) -> UtcpManual | None:
    """The manual in a discovery reply, or None for a frame UTCP would skip while waiting.

    A reply is a TEXT frame holding a JSON object with a ``tools`` key; binary frames,
    non-JSON text and other JSON are skipped. A reply that is one but does not decode
    raises :class:`DecodeError`.
    """
    if not isinstance(frame, str):
        return None
    try:
        doc = json.loads(frame)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or "tools" not in doc:
        return None
    return decode_manual(doc)


def check_discovered_manual(discovery_url: str, manual: UtcpManual) -> None:
    """Refuse a manual from a remote URL whose tools or token URLs point at loopback.

    Mirrors UTCP's ``reject_remote_loopback_tool_urls`` (GHSA-8vxx-v7r9-948g): the ws://
    loopback allowance is for local development, not for a remote server to aim our
    calls at services that trust local callers. A manual read from loopback is exempt.
    Raises :class:`RemoteProtocolError` naming the tool.
    """
    if is_loopback_url(discovery_url):
        return
    for tool in manual.tools:
        template = tool.tool_call_template
        if is_loopback_url(template.url):
            raise RemoteProtocolError(
                f"manual from {discovery_url!r} points tool {tool.name!r} at loopback URL {template.url!r}"
            )
        if isinstance(template.auth, OAuth2Auth) and is_loopback_url(template.auth.token_url):
            raise RemoteProtocolError(
                f"manual from {discovery_url!r} points tool {tool.name!r}'s OAuth2 token URL at loopback"
            )
