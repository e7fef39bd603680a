"""Property tests over every UTCP decoder and serializer: anything in, only antiphon's errors out.

Each test feeds hypothesis-made input to one sans-IO function and allows exactly the
exceptions that function documents. The handshake property goes further: whatever
``handshake_headers`` returns, wsproto (and so h11, the layer whose exceptions used to
escape the tool client) can put on the wire.
"""

from __future__ import annotations

import json
import warnings
from typing import Any
from urllib.parse import urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request

from antiphon.errors import (
    ConfigError,
    DecodeError,
    LocalProtocolError,
    PlaceholderError,
    RemoteProtocolError,
    ResponseFormatError,
    TemplateError,
    TemplateWarning,
)
from antiphon.proto.utcp.message import (
    StreamEnd,
    StreamError,
    StreamRaw,
    StreamResult,
    check_discovered_manual,
    format_message,
    handshake_headers,
    interpret_stream_frame,
    is_discovery_request,
    parse_discovery_reply,
    parse_oauth2_token_response,
    parse_response,
)
from antiphon.proto.utcp.templates import (
    ApiKeyAuth,
    BasicAuth,
    WebSocketCallTemplate,
    decode_manual,
    encode_manual,
    loads_call_template,
    loads_manual,
)
from antiphon.proto.utcp.urls import check_token_url, check_ws_url, is_loopback_host
from antiphon.proto.utcp.variables import substitute_variables

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
_frames = st.text(max_size=40) | st.binary(max_size=40) | _json.map(lambda v: json.dumps(v)) | st.sampled_from(
    ['{"type": "tool_response"}', '{"type": "tool_error"}', '{"type": "stream_end"}', '{"type": "utcp"}',
     '{"tools": []}', '{"tools": [{"name": "t"}]}', "[" * 5000, '{"a":' * 3000]
)  # fmt: skip


@FUZZ
@given(_frames, st.sampled_from(["json", "text", "raw", None]))
def test_reply_parsing_returns_or_raises_response_format_error(frame: str | bytes, fmt: Any) -> None:
    """parse_response: the parsed reply, or ResponseFormatError naming the format."""
    try:
        parse_response(frame, fmt)
    except ResponseFormatError as exc:
        assert repr(fmt) in str(exc) or fmt in str(exc)


@FUZZ
@given(_frames)
def test_stream_frames_always_classify(frame: str | bytes) -> None:
    """interpret_stream_frame never raises, whatever the frame."""
    assert isinstance(interpret_stream_frame(frame), (StreamResult, StreamError, StreamEnd, StreamRaw))


@FUZZ
@given(_frames)
def test_discovery_request_and_reply_parsing_never_escape(frame: str | bytes) -> None:
    """is_discovery_request answers a bool; parse_discovery_reply gives None, a manual, or DecodeError."""
    assert is_discovery_request(frame) in (True, False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TemplateWarning)
            manual = parse_discovery_reply(frame)
    except DecodeError:
        return
    if manual is not None:
        try:
            check_discovered_manual("wss://remote.example/utcp", manual)
        except RemoteProtocolError:
            pass


_tool_template = st.fixed_dictionaries(
    {"url": st.sampled_from(["ws://127.0.0.1:1/t", "wss://h.example/t", "ws://10.0.0.1/", ""]) | _json},
    optional={"name": _json, "message": _json, "protocol": _json, "timeout": _json, "headers": _json,
              "auth": _json, "request_data_template": _json, "request_data_format": _json, "extra": _json},
)  # fmt: skip
_manuals = st.fixed_dictionaries(
    {"tools": st.lists(st.fixed_dictionaries({"name": st.text(max_size=5), "tool_call_template": _tool_template},
                                             optional={"inputs": _json, "tags": _json}), max_size=3) | _json},
    optional={"utcp_version": _json, "manual_version": _json},
)  # fmt: skip


@FUZZ
@given(_manuals)
def test_manual_text_decodes_and_encodes_or_raises_decode_error(doc: dict[str, Any]) -> None:
    """A manual's JSON text decodes (and re-encodes to JSON) or raises DecodeError/ConfigError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TemplateWarning)
        try:
            manual = loads_manual(json.dumps(doc))
        except (DecodeError, ConfigError):
            return
        json.dumps(encode_manual(manual))
        assert decode_manual(json.loads(json.dumps(encode_manual(manual)))) == manual


@FUZZ
@given(st.text(max_size=60) | st.binary(max_size=60))
def test_call_template_text_decodes_or_raises_decode_error(text: str | bytes) -> None:
    """Arbitrary text (not JSON, or JSON of any shape) never escapes loads_call_template as anything else."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TemplateWarning)
        try:
            loads_call_template(text)
        except (DecodeError, ConfigError):
            pass


@FUZZ
@given(st.text(max_size=40))
def test_url_rules_never_escape(url: str) -> None:
    """check_ws_url/check_token_url return the URL or raise TemplateError; is_loopback_host answers a bool."""
    for check in (check_ws_url, check_token_url):
        try:
            assert check(url) == url
        except TemplateError:
            pass
    assert is_loopback_host(url) in (True, False)


_args = st.dictionaries(st.sampled_from(["a", "b", "text", "n"]), _json | st.text(max_size=6), max_size=3)
_messages = st.none() | st.text(max_size=30) | st.sampled_from(
    ["CMD:UTCP_ARG_a_UTCP_ARG;DATA:UTCP_ARG_b_UTCP_ARG", '{"q": "UTCP_ARG_text_UTCP_ARG", "n": UTCP_ARG_n_UTCP_ARG}',
     '[UTCP_ARG_a_UTCP_ARG, "UTCP_ARG_b_UTCP_ARG"]', "{not json UTCP_ARG_a_UTCP_ARG"]
) | st.dictionaries(st.text(max_size=4), st.sampled_from(["UTCP_ARG_a_UTCP_ARG", "x UTCP_ARG_b_UTCP_ARG"]) | _json,
                    max_size=3)  # fmt: skip


@FUZZ
@given(_messages, _args, st.none() | st.lists(st.sampled_from(["a", "b"]), max_size=2))
def test_message_formatting_gives_utf8_text_or_a_documented_error(
    message: Any, args: dict[str, Any], header_fields: list[str] | None
) -> None:
    """format_message returns text a TEXT frame can carry, or PlaceholderError/LocalProtocolError."""
    template = WebSocketCallTemplate(name="t", url="ws://127.0.0.1/t", message=message, header_fields=header_fields)
    try:
        text = format_message(template, args)
    except (PlaceholderError, LocalProtocolError):
        return
    text.encode("utf-8")


_text = st.text(max_size=8)
_auth = st.none() | st.builds(
    ApiKeyAuth, api_key=_text, var_name=_text, location=st.sampled_from(["header", "query", "cookie"])
) | st.builds(BasicAuth, username=_text, password=_text)  # fmt: skip


@FUZZ
@given(
    path=_text,
    query=_text,
    protocol=st.none() | _text,
    headers=st.dictionaries(_text, _text, max_size=3),
    auth=_auth,
    header_args=st.dictionaries(st.sampled_from(["X-A", "b c"]), _text | _json, max_size=2),
)
def test_whatever_handshake_headers_returns_wsproto_can_send(
    path: str, query: str, protocol: str | None, headers: dict[str, str], auth: Any, header_args: dict[str, Any]
) -> None:
    """handshake_headers raises TemplateError/LocalProtocolError, or returns a handshake wsproto encodes without error."""
    try:
        template = WebSocketCallTemplate(
            name="t",
            url=f"ws://127.0.0.1:9/{path}" + (f"?{query}" if query else ""),
            protocol=protocol,
            headers=headers,
            header_fields=["X-A", "b c"],
            auth=auth,
        )
        handshake = handshake_headers(template, header_args)
    except (TemplateError, LocalProtocolError):
        return
    parts = urlsplit(handshake.url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = Request(
        host=parts.netloc,
        target=target,
        extra_headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in handshake.headers],
        subprotocols=list(handshake.subprotocols),
    )
    assert WSConnection(ConnectionType.CLIENT).send(request)


@FUZZ
@given(
    st.dictionaries(st.text(max_size=4), st.text(max_size=6), max_size=3),
    st.sampled_from(["ws://localhost:${PORT}/t", "wss://${HOST}/t", "wss://h/$X", "wss://h/t"]),
    st.sampled_from([None, "my_svc"]),
)
def test_variable_substitution_gives_a_template_or_a_documented_error(
    variables: dict[str, str], url: str, namespace: str | None
) -> None:
    """substitute_variables returns a valid template, or VariableNotFound (a TemplateError) / DecodeError."""
    template = WebSocketCallTemplate(name="t", url=url, headers={"A": "${X}"})
    try:
        substitute_variables(template, variables, {}, namespace=namespace)
    except (TemplateError, DecodeError):
        pass


@FUZZ
@given(_frames, st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=1e9))
def test_oauth2_token_replies_parse_or_raise_decode_error(body: str | bytes, now_s: float) -> None:
    """parse_oauth2_token_response gives a token, or a located DecodeError."""
    try:
        token = parse_oauth2_token_response(body, now_s=now_s)
    except DecodeError:
        return
    assert token.access_token
