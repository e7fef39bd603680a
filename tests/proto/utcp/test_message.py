"""The call side of a UTCP WebSocket tool: message text, handshake, OAuth2, replies, streams, discovery."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from utcp.data.auth_implementations.oauth2_auth import OAuth2Auth as UtcpOAuth2Auth
from utcp_websocket import (
    WebSocketCallTemplateSerializer,
    WebSocketCommunicationProtocol,
)

from antiphon.errors import (
    DecodeError,
    LocalProtocolError,
    PlaceholderError,
    RemoteProtocolError,
    ResponseFormatError,
    TemplateError,
)
from antiphon.proto.utcp.message import (
    DISCOVERY_REQUEST,
    Handshake,
    OAuth2Token,
    StreamEnd,
    StreamError,
    StreamRaw,
    StreamResult,
    check_discovered_manual,
    format_message,
    handshake_headers,
    interpret_stream_frame,
    is_discovery_request,
    oauth2_cache_key,
    oauth2_token_request,
    parse_discovery_reply,
    parse_oauth2_token_response,
    parse_response,
)
from antiphon.proto.utcp.templates import (
    ApiKeyAuth,
    BasicAuth,
    OAuth2Auth,
    WebSocketCallTemplate,
    decode_manual,
    encode_call_template,
)

INJECTION = '", "isAdmin": true, "x": "'


def _tpl(**kwargs: Any) -> WebSocketCallTemplate:
    return WebSocketCallTemplate(**{"name": "t", "url": "wss://h.example/ws", **kwargs})


# --- format_message ---------------------------------------------------------------------


def test_no_message_sends_the_args_as_utcp_json() -> None:
    """Without a template the frame is json.dumps(args) with UTCP's default separators and escaping."""
    assert format_message(_tpl(), {"text": 'hi "there"', "n": 3}) == '{"text": "hi \\"there\\"", "n": 3}'
    assert format_message(_tpl(), {"a": "é"}) == '{"a": "\\u00e9"}'


def test_header_fields_are_left_out_of_the_default_body() -> None:
    """Arguments listed in header_fields travel as headers, not again in the default JSON body."""
    assert format_message(_tpl(header_fields=["token"]), {"token": "s", "q": 1}) == '{"q": 1}'


def test_a_template_may_still_place_a_header_field() -> None:
    """A message template that names a header field argument explicitly still gets it."""
    assert format_message(_tpl(header_fields=["token"], message="T=UTCP_ARG_token_UTCP_ARG"), {"token": "s"}) == "T=s"


def test_plain_string_template_inserts_strings_raw_and_others_as_json() -> None:
    """A non-JSON string template takes strings verbatim and other values as JSON text (UTCP's rule)."""
    tpl = _tpl(message="CMD:UTCP_ARG_cmd_UTCP_ARG;VAL:UTCP_ARG_v_UTCP_ARG;F:UTCP_ARG_f_UTCP_ARG")
    assert format_message(tpl, {"cmd": "SET", "v": 2.5, "f": None}) == "CMD:SET;VAL:2.5;F:null"
    assert format_message(_tpl(message="GET /x?q=UTCP_ARG_q_UTCP_ARG"), {"q": "value"}) == "GET /x?q=value"


def test_json_string_template_keeps_an_injection_attempt_in_one_value() -> None:
    """In a JSON string template a quote-laden argument stays inside its string: no isAdmin key appears."""
    tpl = _tpl(message='{"q": "UTCP_ARG_q_UTCP_ARG"}')
    assert json.loads(format_message(tpl, {"q": INJECTION})) == {"q": INJECTION}


def test_dict_template_keeps_an_injection_attempt_in_one_value() -> None:
    """In a dict template a quote-laden argument stays one string value."""
    assert json.loads(format_message(_tpl(message={"q": "UTCP_ARG_q_UTCP_ARG"}), {"q": INJECTION})) == {"q": INJECTION}


def test_json_string_template_renders_each_placeholder_for_its_context() -> None:
    """Inside quotes a value becomes escaped text; outside quotes it becomes its JSON value, strings quoted."""
    tpl = _tpl(message='{"s": "UTCP_ARG_s_UTCP_ARG", "d": "UTCP_ARG_d_UTCP_ARG", "n": UTCP_ARG_n_UTCP_ARG, '
                       '"bare": UTCP_ARG_s_UTCP_ARG, "e": "\\"UTCP_ARG_s_UTCP_ARG"}')  # fmt: skip
    got = json.loads(format_message(tpl, {"s": 'a"b', "d": {"id": 1}, "n": 7}))
    assert got == {"s": 'a"b', "d": '{"id": 1}', "n": 7, "bare": 'a"b', "e": '"a"b'}


def test_json_looking_template_that_is_not_json_follows_utcp() -> None:
    """A template that starts with { but is not JSON gets UTCP's escape-without-quotes rule."""
    assert format_message(_tpl(message="{cmd: UTCP_ARG_c_UTCP_ARG}"), {"c": 'go "now"'}) == '{cmd: go \\"now\\"}'


def test_dict_template_exact_placeholder_takes_the_typed_value() -> None:
    """A leaf that is exactly one placeholder takes the argument's JSON value; UTCP would send "7"."""
    tpl = _tpl(message={"n": "UTCP_ARG_n_UTCP_ARG", "p": "UTCP_ARG_p_UTCP_ARG", "z": "UTCP_ARG_z_UTCP_ARG"})
    assert format_message(tpl, {"n": 7, "p": {"id": 123}, "z": None}) == '{"n": 7, "p": {"id": 123}, "z": null}'


def test_dict_template_mixed_leaves_keys_and_constants() -> None:
    """Mixed-text leaves get the text rule, lists recurse, keys and non-string leaves are never touched."""
    tpl = _tpl(message={"UTCP_ARG_n_UTCP_ARG": "v=UTCP_ARG_n_UTCP_ARG", "l": [1, "UTCP_ARG_s_UTCP_ARG"], "k": True})
    assert format_message(tpl, {"n": 7, "s": "x"}) == '{"UTCP_ARG_n_UTCP_ARG": "v=7", "l": [1, "x"], "k": true}'


@pytest.mark.parametrize(
    "message", ["CMD:UTCP_ARG_nope_UTCP_ARG", '{"a": "UTCP_ARG_nope_UTCP_ARG"}', {"a": ["x UTCP_ARG_nope_UTCP_ARG"]}]
)
def test_missing_argument_raises_placeholder_error(message: str | dict[str, Any]) -> None:
    """A placeholder without its argument raises PlaceholderError naming it, where UTCP sends the literal text."""
    with pytest.raises(PlaceholderError) as info:
        format_message(_tpl(message=message), {"other": 1})
    assert info.value.name == "nope"
    assert str(info.value) == "message template uses UTCP_ARG_nope_UTCP_ARG but no argument 'nope' was given"


def test_argument_values_are_not_rescanned() -> None:
    """An argument whose value looks like another placeholder is sent as that text (one pass)."""
    tpl = _tpl(message="A=UTCP_ARG_a_UTCP_ARG;B=UTCP_ARG_b_UTCP_ARG")
    assert format_message(tpl, {"a": "UTCP_ARG_b_UTCP_ARG", "b": "x"}) == "A=UTCP_ARG_b_UTCP_ARG;B=x"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {1, 2}, b"bytes"])
def test_arguments_that_are_not_json_are_refused(value: Any) -> None:
    """NaN, infinity and non-JSON objects raise LocalProtocolError naming the argument instead of sending bad JSON."""
    with pytest.raises(LocalProtocolError, match=r"^argument 'v' cannot be sent as JSON"):
        format_message(_tpl(message="V=UTCP_ARG_v_UTCP_ARG"), {"v": value})


UTCP_AGREES = [
    (None, {"text": 'hi "there"', "n": 3, "u": "é"}),
    ("CMD:SET;VAL:UTCP_ARG_v_UTCP_ARG", {"v": 2.5}),
    ("GET /x?q=UTCP_ARG_q_UTCP_ARG&n=UTCP_ARG_n_UTCP_ARG", {"q": "a b", "n": [1, 2]}),
    ('{"q": "UTCP_ARG_q_UTCP_ARG", "n": UTCP_ARG_n_UTCP_ARG}', {"q": INJECTION, "n": {"id": 1}}),
    ('  [UTCP_ARG_a_UTCP_ARG, "UTCP_ARG_b_UTCP_ARG"]', {"a": True, "b": "é\n"}),
    ("{cmd: UTCP_ARG_c_UTCP_ARG}", {"c": 'go "now"'}),
    ({"type": "request", "q": "UTCP_ARG_q_UTCP_ARG", "l": ["x=UTCP_ARG_n_UTCP_ARG", 3]}, {"q": INJECTION, "n": 7}),
    ({"nested": {"deep": "pre-UTCP_ARG_s_UTCP_ARG-post"}}, {"s": "é", "unused": 1}),
]


@pytest.mark.parametrize(("message", "args"), UTCP_AGREES)
def test_format_message_matches_utcp_text_exactly(message: str | dict[str, Any] | None, args: dict[str, Any]) -> None:
    """Where UTCP is not buggy, our frame text is byte-identical to utcp-websocket's _format_tool_call_message."""
    ours = _tpl(message=message)
    theirs = WebSocketCallTemplateSerializer().validate_dict(encode_call_template(ours))
    expected = WebSocketCommunicationProtocol()._format_tool_call_message("t", args, theirs, "rid")
    assert format_message(ours, args) == expected


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True), st.text(), min_size=1, max_size=4))
def test_any_string_args_into_a_json_template_give_json_with_the_same_keys(args: dict[str, str]) -> None:
    """Arbitrary string arguments substituted into a JSON string template always give valid JSON, same keys, exact values."""
    names = sorted(args)
    text = "{" + ", ".join(f'"{n}": "UTCP_ARG_{n}_UTCP_ARG"' for n in names) + "}"
    assert json.loads(format_message(_tpl(message=text), args)) == {n: args[n] for n in names}
    assert json.loads(format_message(_tpl(message={n: f"UTCP_ARG_{n}_UTCP_ARG" for n in names}), args)) == args


# --- handshake --------------------------------------------------------------------------


def test_static_headers_and_subprotocol() -> None:
    """Template headers go out in order and protocol becomes the one subprotocol offered."""
    got = handshake_headers(_tpl(headers={"X-A": "1", "X-B": "2"}, protocol="utcp-v1"))
    assert got == Handshake(url="wss://h.example/ws", headers=(("X-A", "1"), ("X-B", "2")), subprotocols=("utcp-v1",))
    assert handshake_headers(_tpl()).subprotocols == ()


def test_api_key_in_a_header_replaces_a_static_header_of_that_name() -> None:
    """api_key at location header is sent under var_name and wins over a static header with that name."""
    got = handshake_headers(_tpl(headers={"x-api-key": "old", "A": "b"}, auth=ApiKeyAuth("k")))
    assert got.headers == (("A", "b"), ("X-Api-Key", "k"))


def test_api_key_in_the_query_is_appended_to_the_url() -> None:
    """api_key at location query is appended, url-encoded, after any existing query parameters."""
    got = handshake_headers(_tpl(url="wss://h.example/ws?v=1#f", auth=ApiKeyAuth("a b&c", "key", "query")))
    assert (got.url, got.headers) == ("wss://h.example/ws?v=1&key=a+b%26c#f", ())


def test_api_key_in_a_cookie_joins_an_existing_cookie_header() -> None:
    """api_key at location cookie becomes name=value in the Cookie header, after any static cookie."""
    assert handshake_headers(_tpl(auth=ApiKeyAuth("k", "sid", "cookie"))).headers == (("Cookie", "sid=k"),)
    got = handshake_headers(_tpl(headers={"Cookie": "a=1"}, auth=ApiKeyAuth("k", "sid", "cookie")))
    assert got.headers == (("Cookie", "a=1; sid=k"),)


def test_cookie_api_key_with_separators_is_refused() -> None:
    """An api_key a cookie cannot carry (a ';') raises TemplateError instead of splitting the cookie."""
    with pytest.raises(TemplateError, match="^auth: cookie name or api_key holds characters a cookie cannot carry$"):
        handshake_headers(_tpl(auth=ApiKeyAuth("k; admin=1", "sid", "cookie")))


def test_empty_api_key_is_refused() -> None:
    """An empty api_key raises TemplateError rather than silently connecting without auth as UTCP does."""
    with pytest.raises(TemplateError, match=r"^auth\.api_key: is empty"):
        handshake_headers(_tpl(auth=ApiKeyAuth("")))


def test_basic_auth_header() -> None:
    """Basic auth sends Authorization: Basic base64(user:pass) of the UTF-8 text."""
    got = handshake_headers(_tpl(auth=BasicAuth("ü", "p:w")))
    assert got.headers == (("Authorization", "Basic " + base64.b64encode("ü:p:w".encode()).decode()),)


def test_basic_auth_refuses_a_colon_in_the_username() -> None:
    """A username with ':' cannot be told apart from the password, so it raises TemplateError."""
    with pytest.raises(TemplateError, match=r"^auth\.username: may not contain ':'"):
        handshake_headers(_tpl(auth=BasicAuth("a:b", "p")))


@pytest.mark.parametrize("auth", [ApiKeyAuth("secret-key-123"), BasicAuth("u", "p")])
def test_auth_headers_match_utcp(auth: ApiKeyAuth | BasicAuth) -> None:
    """Our header auth matches what utcp-websocket's _prepare_headers puts on the handshake."""
    ours = _tpl(headers={"X-Static": "v"}, auth=auth)
    theirs = WebSocketCallTemplateSerializer().validate_dict(encode_call_template(ours))
    expected = asyncio.run(WebSocketCommunicationProtocol()._prepare_headers(theirs))
    assert dict(handshake_headers(ours).headers) == expected


def test_oauth2_sends_the_given_bearer_token() -> None:
    """An oauth2 template sends Authorization: Bearer <the token the caller fetched>."""
    got = handshake_headers(_tpl(auth=OAuth2Auth("https://t", "c", "s")), bearer_token="tok")
    assert got.headers == (("Authorization", "Bearer tok"),)


def test_oauth2_without_a_token_and_a_token_without_oauth2_are_misuse() -> None:
    """Forgetting the bearer token, or passing one for a non-oauth2 template, raises LocalProtocolError."""
    with pytest.raises(LocalProtocolError, match="fetch a token and pass bearer_token="):
        handshake_headers(_tpl(auth=OAuth2Auth("https://t", "c", "s")))
    with pytest.raises(LocalProtocolError, match="auth is not oauth2"):
        handshake_headers(_tpl(), bearer_token="tok")


def test_header_fields_become_headers() -> None:
    """header_fields arguments are sent as headers, strings raw and others as JSON; missing ones are skipped."""
    got = handshake_headers(_tpl(header_fields=["X-Trace", "X-N", "X-Absent"]), {"X-Trace": "abc", "X-N": 5, "q": 1})
    assert got.headers == (("X-Trace", "abc"), ("X-N", "5"))


def test_header_field_cannot_replace_a_template_header() -> None:
    """A header field named like an auth or static header raises TemplateError instead of overriding it."""
    with pytest.raises(TemplateError, match=r"^header_fields: 'authorization' would replace a header"):
        handshake_headers(_tpl(header_fields=["authorization"], auth=BasicAuth("u", "p")), {"authorization": "x"})


@pytest.mark.parametrize(
    ("template", "args", "message"),
    [
        (_tpl(headers={"Upgrade": "h2c"}), {}, "headers: 'Upgrade' is written by the WebSocket handshake itself"),
        (_tpl(headers={"Sec-WebSocket-Protocol": "p"}), {},
         "headers: 'Sec-WebSocket-Protocol' is written by the WebSocket handshake itself (use `protocol` for the "
         "subprotocol)"),
        (_tpl(headers={"Bad Name": "v"}), {}, "headers: 'Bad Name' is not a valid HTTP header name"),
        (_tpl(headers={"A": "v\r\nX-Evil: 1"}), {}, "headers: the value of 'A' holds a control character (CR, LF or NUL)"),
        (_tpl(header_fields=["X-T"]), {"X-T": "a\nb"},
         "header_fields: the value of 'X-T' holds a control character (CR, LF or NUL)"),
    ],
)  # fmt: skip
def test_unusable_headers_are_refused(template: WebSocketCallTemplate, args: dict[str, Any], message: str) -> None:
    """Handshake-owned names, invalid names and CR/LF in values raise TemplateError saying which."""
    with pytest.raises(TemplateError) as info:
        handshake_headers(template, args)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("template", "args", "message"),
    [
        (_tpl(protocol="utcp-v1\r\nX-Evil: 1"), {}, "protocol: 'utcp-v1\\r\\nX-Evil: 1' is not a valid WebSocket subprotocol name"),
        (_tpl(protocol="a b"), {}, "protocol: 'a b' is not a valid WebSocket subprotocol name"),
        (_tpl(protocol="a,b"), {}, "protocol: 'a,b' is not a valid WebSocket subprotocol name"),
        (_tpl(protocol="v\u00e9"), {}, "protocol: 'vé' is not a valid WebSocket subprotocol name"),
        (_tpl(headers={"X-A": "snow \u2603"}), {}, "headers: the value of 'X-A' holds characters outside Latin-1"),
        (_tpl(auth=ApiKeyAuth(api_key="k\u20ac")), {}, "auth: the value of 'X-Api-Key' holds characters outside Latin-1"),
        (_tpl(header_fields=["X-T"]), {"X-T": "\u4e2d"}, "header_fields: the value of 'X-T' holds characters outside Latin-1"),
        (_tpl(auth=ApiKeyAuth(api_key="k\u00e9", var_name="sid", location="cookie")), {},
         "auth: cookie name or api_key holds characters a cookie cannot carry"),
        (_tpl(auth=BasicAuth("u", "p\udc80")), {}, "auth: username or password is not valid Unicode text"),
        (_tpl(auth=ApiKeyAuth(api_key="k\udc80", location="query")), {}, "auth: var_name or api_key is not valid Unicode"),
        (_tpl(url="wss://b\u00fccher.example/ws"), {}, "url: the host of 'wss://bücher.example/ws' is not ASCII; write its punycode"),
        (_tpl(url="wss://h.example/\udc80"), {}, "url: holds characters that are not valid Unicode text"),
    ],
)  # fmt: skip
def test_handshake_inputs_that_cannot_go_on_the_wire_are_refused_naming_the_field(
    template: WebSocketCallTemplate, args: dict[str, Any], message: str
) -> None:
    """CR/LF or non-tokens in protocol, non-Latin-1 header values, non-ASCII hosts: TemplateError before any dial."""
    with pytest.raises(TemplateError) as info:
        handshake_headers(template, args)
    assert str(info.value).startswith(message)


def test_spaces_and_tabs_around_a_header_value_are_dropped() -> None:
    """' v\\t' goes out as 'v' (OWS is not part of a value; h11 refuses to send it), inner spaces stay."""
    got = handshake_headers(_tpl(headers={"X-A": " a b\t"}, header_fields=["X-T"]), {"X-T": "\t"})
    assert got.headers == (("X-A", "a b"), ("X-T", ""))


def test_a_non_ascii_path_and_query_are_percent_encoded_as_aiohttp_does() -> None:
    """/tools/café?q=ü is dialled as /tools/caf%C3%A9?q=%C3%BC (UTF-8 percent-encoding, like yarl and browsers)."""
    got = handshake_headers(_tpl(url="ws://127.0.0.1:9/tools/caf\u00e9?q=\u00fc"))
    assert got.url == "ws://127.0.0.1:9/tools/caf%C3%A9?q=%C3%BC"


def test_a_message_with_a_lone_surrogate_or_too_deep_is_refused() -> None:
    """Text no frame can carry, and nesting json cannot serialise, are LocalProtocolError, not UnicodeError/RecursionError."""
    with pytest.raises(LocalProtocolError, match="not valid Unicode"):
        format_message(_tpl(message="say UTCP_ARG_t_UTCP_ARG"), {"t": "\udc80"})
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(LocalProtocolError, match="nested too deeply"):
        format_message(_tpl(), {"x": deep})
    with pytest.raises(LocalProtocolError, match="nested too deeply"):
        format_message(_tpl(message={"x": "UTCP_ARG_x_UTCP_ARG"}), {"x": deep})


def test_handshake_rechecks_the_url() -> None:
    """A template whose URL bypassed validation is still refused when the handshake is built."""
    tpl = _tpl()
    object.__setattr__(tpl, "url", "ws://localhost.evil.com/ws")
    with pytest.raises(TemplateError, match="WebSocket URL must use wss://"):
        handshake_headers(tpl)


# --- OAuth2 -----------------------------------------------------------------------------


def test_token_request_omits_a_none_scope() -> None:
    """The client-credentials form has no scope when scope is None (UTCP posts 'scope=None')."""
    req = oauth2_token_request(OAuth2Auth("https://a.example/token", "id", "s&e"))
    assert req.body == b"grant_type=client_credentials&client_id=id&client_secret=s%26e"
    assert req.url == "https://a.example/token"
    assert ("Content-Type", "application/x-www-form-urlencoded") in req.headers


def test_token_request_includes_a_set_scope() -> None:
    """A set scope is form-encoded at the end of the body."""
    req = oauth2_token_request(OAuth2Auth("http://127.0.0.1:9/t", "id", "s", "read write"))
    assert req.body == b"grant_type=client_credentials&client_id=id&client_secret=s&scope=read+write"


def test_token_request_refuses_plain_http_to_a_remote_host() -> None:
    """The secret is never posted to a plain-http remote token URL."""
    with pytest.raises(TemplateError, match="^OAuth2 token URL must use https://"):
        oauth2_token_request(OAuth2Auth("http://auth.example.com/t", "id", "s"))


def test_token_response_sets_expiry_on_the_callers_clock() -> None:
    """expires_in (number or digit string) becomes expires_at_s = now_s + expires_in; absent means never."""
    tok = parse_oauth2_token_response(b'{"access_token": "a", "expires_in": 3600}', now_s=100.0)
    assert tok == OAuth2Token("a", 3700.0)
    assert (tok.is_fresh(3669.0), tok.is_fresh(3670.0)) == (True, False)
    assert parse_oauth2_token_response('{"access_token": "a", "expires_in": "60"}', now_s=0.0).expires_at_s == 60
    assert parse_oauth2_token_response('{"access_token": "a"}', now_s=5.0) == OAuth2Token("a", None)
    assert OAuth2Token("a").is_fresh(1e9)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>", "$: token endpoint reply is not JSON"),
        (b"[1]", "$: token endpoint reply is not a JSON object"),
        (b'{"token": "a"}', "$.access_token: required non-empty string missing"),
        (b'{"access_token": ""}', "$.access_token: required non-empty string missing"),
        (b'{"error": "invalid_client", "error_description": "bad secret"}',
         "$.error: token endpoint refused: invalid_client (bad secret)"),
        (b'{"access_token": "a", "expires_in": -1}', "$.expires_in: expected a non-negative number of seconds, got -1"),
        (b'{"access_token": "a", "expires_in": true}',
         "$.expires_in: expected a non-negative number of seconds, got True"),
        ('{"access_token": "a", "expires_in": "\u00b2"}'.encode(),
         "$.expires_in: expected a non-negative number of seconds, got '\u00b2'"),
    ],
)  # fmt: skip
def test_bad_token_responses_raise_located_decode_errors(body: bytes, message: str) -> None:
    """A token reply without a usable token raises DecodeError saying where and why."""
    with pytest.raises(DecodeError) as info:
        parse_oauth2_token_response(body, now_s=0.0)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("scope", [None, "", "read"])
def test_cache_key_matches_utcp(scope: str | None) -> None:
    """oauth2_cache_key is byte-identical to UTCP's OAuth2Auth.cache_key()."""
    theirs = UtcpOAuth2Auth(token_url="https://t", client_id="c", client_secret="s", scope=scope)
    assert oauth2_cache_key(OAuth2Auth("https://t", "c", "s", scope)) == theirs.cache_key()


def test_cache_key_separates_issuers_sharing_a_client_id() -> None:
    """Two token URLs with the same client id never share a cache entry."""
    assert oauth2_cache_key(OAuth2Auth("https://a/t", "c", "s")) != oauth2_cache_key(OAuth2Auth("https://b/t", "c", "s"))


# --- replies ----------------------------------------------------------------------------


def test_json_response_parses_text_and_binary_frames() -> None:
    """response_format json parses a TEXT frame, and a BINARY frame decoded as UTF-8; big ints stay exact."""
    assert parse_response('{"a": [1, 2]}', "json") == {"a": [1, 2]}
    assert parse_response('{"é": 1}'.encode(), "json") == {"é": 1}
    assert parse_response("123456789012345678901234567890", "json") == 123456789012345678901234567890


def test_json_response_that_does_not_parse_is_an_error() -> None:
    """Non-JSON under response_format json raises ResponseFormatError naming the format (UTCP returns the text)."""
    with pytest.raises(ResponseFormatError, match=r"^response_format 'json': reply is not valid JSON \("):
        parse_response("not json", "json")
    with pytest.raises(ResponseFormatError, match=r"^response_format 'json': binary frame is not UTF-8 text$"):
        parse_response(b"\xff", "json")


def test_text_response_is_a_string() -> None:
    """response_format text gives the TEXT frame, or a BINARY frame decoded as UTF-8."""
    assert parse_response('{"a": 1}', "text") == '{"a": 1}'
    assert parse_response("é".encode(), "text") == "é"
    with pytest.raises(ResponseFormatError, match=r"^response_format 'text': binary frame is not UTF-8 text$"):
        parse_response(b"\xc3", "text")


@pytest.mark.parametrize("fmt", ["raw", None])
def test_raw_response_is_the_frame_as_received(fmt: str | None) -> None:
    """response_format raw and None return the frame untouched, str or bytes."""
    assert parse_response('{"a": 1}', fmt) == '{"a": 1}'  # type: ignore[arg-type]
    assert parse_response(b"\xff\x00", fmt) == b"\xff\x00"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("frame", "event"),
    [
        ('{"type": "tool_response", "result": {"chunk": 0}}', StreamResult({"chunk": 0})),
        ('{"type": "tool_response"}', StreamResult(None)),
        ('{"type": "tool_error", "error": "boom"}', StreamError("boom")),
        ('{"type": "tool_error"}', StreamError("Unknown error")),
        ('{"type": "stream_end"}', StreamEnd()),
        ('{"type": "tool_response", "result": 1, "request_id": "other"}', StreamResult(1)),
        ('{"type": "progress", "pct": 5}', StreamRaw('{"type": "progress", "pct": 5}')),
        ("plain-text-chunk", StreamRaw("plain-text-chunk")),
        ("[1, 2, 3]", StreamRaw("[1, 2, 3]")),
        ("42", StreamRaw("42")),
        (b"\x00\x01", StreamRaw(b"\x00\x01")),
    ],
)
def test_stream_frames_are_classified(frame: str | bytes, event: object) -> None:
    """Each streaming frame kind maps to its event; non-object JSON and binary frames are raw, never a crash."""
    assert interpret_stream_frame(frame) == event


# --- discovery --------------------------------------------------------------------------


def test_discovery_request_is_utcps_exact_text() -> None:
    """The discovery frame is exactly what UTCP sends: json.dumps({"type": "utcp"})."""
    assert DISCOVERY_REQUEST == json.dumps({"type": "utcp"}) == '{"type": "utcp"}'


@pytest.mark.parametrize(
    ("frame", "expected"),
    [('{"type": "utcp"}', True), ('{"type":"utcp","x":1}', True), ('{"type": "call"}', False),
     ('"utcp"', False), ("manual", False), (b'{"type": "utcp"}', False)],
)  # fmt: skip
def test_server_recognises_discovery_requests(frame: str | bytes, expected: bool) -> None:
    """A tool server treats any TEXT JSON object with type utcp as discovery, nothing else."""
    assert is_discovery_request(frame) is expected


MANUAL = {"utcp_version": "1.2.0", "manual_version": "1.0.0",
          "tools": [{"name": "echo", "tool_call_template": {"name": "n", "url": "wss://tools.example/ws"}}]}  # fmt: skip


def test_discovery_reply_with_tools_is_a_manual() -> None:
    """A TEXT frame holding a JSON object with tools decodes to the manual."""
    assert parse_discovery_reply(json.dumps(MANUAL)) == decode_manual(MANUAL)


@pytest.mark.parametrize("frame", ['{"type": "hello"}', "not json", "[1]", json.dumps(MANUAL).encode()])
def test_frames_that_are_not_a_manual_are_skipped(frame: str | bytes) -> None:
    """Objects without tools, non-JSON text, non-objects and binary frames are skipped while waiting."""
    assert parse_discovery_reply(frame) is None


def test_a_malformed_manual_is_a_decode_error() -> None:
    """A reply that has tools but does not decode raises a located DecodeError."""
    with pytest.raises(DecodeError, match=r"^\$\.tools: expected a list, got a string$"):
        parse_discovery_reply('{"tools": "not a list"}')


@pytest.mark.parametrize(
    "tool_template",
    [{"url": "ws://127.0.0.1:9/ws"}, {"url": "wss://127.0.0.2/ws"}, {"url": "wss://[::1]/ws"},
     {"url": "wss://ok.example/ws", "auth": {"auth_type": "oauth2", "token_url": "http://localhost/t",
                                             "client_id": "c", "client_secret": "s"}}],
)  # fmt: skip
def test_remote_manual_may_not_point_at_loopback(tool_template: dict[str, Any]) -> None:
    """A manual read from a remote URL whose tool or token URL is loopback raises RemoteProtocolError naming the tool."""
    manual = decode_manual({"tools": [{"name": "sneaky", "tool_call_template": tool_template}]})
    with pytest.raises(RemoteProtocolError, match=r"^manual from 'wss://remote\.example/utcp' points tool 'sneaky'"):
        check_discovered_manual("wss://remote.example/utcp", manual)


def test_loopback_discovery_and_remote_tools_are_allowed() -> None:
    """A manual read from loopback may name loopback tools; a remote manual may name remote tools."""
    local = decode_manual({"tools": [{"name": "t", "tool_call_template": {"url": "ws://127.0.0.1:9/ws"}}]})
    check_discovered_manual("ws://localhost:9/utcp", local)
    check_discovered_manual("wss://remote.example/utcp", decode_manual(MANUAL))
