"""UTCP call templates, tools and manuals: defaults, codec, located errors, $VAR, UTCP interop."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from utcp.data.call_template import CallTemplateSerializer
from utcp.data.utcp_manual import UtcpManualSerializer
from utcp_websocket import WebSocketCallTemplate as UtcpWebSocketCallTemplate
from utcp_websocket import WebSocketCallTemplateSerializer

from antiphon.errors import (
    ConfigError,
    DecodeError,
    TemplateDeprecationWarning,
    TemplateError,
    TemplateWarning,
    VariableNotFound,
)
from antiphon.proto.utcp.message import format_message
from antiphon.proto.utcp.templates import (
    ApiKeyAuth,
    BasicAuth,
    OAuth2Auth,
    Tool,
    UtcpManual,
    WebSocketCallTemplate,
    decode_call_template,
    decode_manual,
    decode_tool,
    encode_call_template,
    encode_manual,
    encode_tool,
    loads_call_template,
    loads_manual,
)
from antiphon.proto.utcp.variables import substitute_variables

FULL: dict[str, Any] = {
    "name": "full",
    "call_template_type": "websocket",
    "url": "wss://api.example.com/ws",
    "message": {"op": "UTCP_ARG_op_UTCP_ARG"},
    "protocol": "utcp-v1",
    "keep_alive": False,
    "response_format": "json",
    "timeout": 60,
    "headers": {"X-Static": "v"},
    "header_fields": ["trace_id"],
    "auth": {"auth_type": "api_key", "api_key": "k", "var_name": "X-Api-Key", "location": "query"},
    "allowed_communication_protocols": ["websocket"],
}

SPREAD: list[dict[str, Any]] = [
    {"name": "plain", "call_template_type": "websocket", "url": "wss://api.example.com/ws"},
    {"name": "local", "call_template_type": "websocket", "url": "ws://127.0.0.1:8765/tools", "timeout": 5},
    {"name": "str_msg", "call_template_type": "websocket", "url": "ws://localhost/ws",
     "message": "CMD:UTCP_ARG_c_UTCP_ARG", "response_format": "text", "keep_alive": False},
    {"name": "basic", "call_template_type": "websocket", "url": "wss://h/ws",
     "auth": {"auth_type": "basic", "username": "u", "password": "p"}, "headers": {"A": "b"}},
    {"name": "oauth", "call_template_type": "websocket", "url": "wss://h/ws", "protocol": "p",
     "auth": {"auth_type": "oauth2", "token_url": "https://h/t", "client_id": "c", "client_secret": "s",
              "scope": None}},
    {"name": "oauth_scope", "call_template_type": "websocket", "url": "wss://h/ws", "header_fields": ["a", "b"],
     "auth": {"auth_type": "oauth2", "token_url": "https://h/t", "client_id": "c", "client_secret": "s",
              "scope": "read"}},
    {k: v for k, v in FULL.items() if k != "allowed_communication_protocols"},
]  # fmt: skip


def test_defaults_match_utcp() -> None:
    """A template with only a URL gets UTCP's defaults and a fresh uuid4-hex name."""
    got = decode_call_template({"url": "wss://h/ws"})
    assert (got.call_template_type, got.message, got.protocol, got.keep_alive) == ("websocket", None, None, True)
    assert (got.response_format, got.timeout, got.headers, got.header_fields) == (None, 30, None, None)
    assert (got.auth, got.allowed_communication_protocols) == (None, None)
    assert len(got.name) == 32 and int(got.name, 16) >= 0
    assert decode_call_template({"url": "wss://h/ws"}).name != got.name


def test_every_field_decodes() -> None:
    """Each field of a full template lands in its attribute, auth as its typed class."""
    got = decode_call_template(FULL)
    assert got == WebSocketCallTemplate(
        name="full",
        url="wss://api.example.com/ws",
        message={"op": "UTCP_ARG_op_UTCP_ARG"},
        protocol="utcp-v1",
        keep_alive=False,
        response_format="json",
        timeout=60,
        headers={"X-Static": "v"},
        header_fields=["trace_id"],
        auth=ApiKeyAuth("k", location="query"),
        allowed_communication_protocols=["websocket"],
    )


def test_auth_kinds_decode_with_their_defaults() -> None:
    """api_key defaults to X-Api-Key in a header; basic and oauth2 (scope None) decode as their classes."""
    base = {"url": "wss://h/ws"}
    assert decode_call_template({**base, "auth": {"auth_type": "api_key", "api_key": "k"}}).auth == ApiKeyAuth(
        "k", "X-Api-Key", "header"
    )
    assert decode_call_template({**base, "auth": {"auth_type": "basic", "username": "u", "password": "p"}}).auth == (
        BasicAuth("u", "p")
    )
    oauth = {"auth_type": "oauth2", "token_url": "https://t", "client_id": "c", "client_secret": "s"}
    assert decode_call_template({**base, "auth": oauth}).auth == OAuth2Auth("https://t", "c", "s", None)


def test_encode_omits_defaults_like_utcp() -> None:
    """Only name, type and url are written for a default template; keep_alive True and timeout 30 are omitted."""
    assert encode_call_template(WebSocketCallTemplate(url="wss://h/ws", name="n")) == {
        "name": "n",
        "call_template_type": "websocket",
        "url": "wss://h/ws",
    }


def test_encode_writes_every_non_default_field() -> None:
    """A full template encodes to exactly its input dict, auth in full and the allowlist kept."""
    assert encode_call_template(decode_call_template(FULL)) == FULL


def test_empty_headers_and_header_fields_normalise_to_none() -> None:
    """{} and [] mean the same as absent, as UTCP's to_dict treats them, so the round trip holds."""
    got = decode_call_template({"url": "wss://h/ws", "headers": {}, "header_fields": []})
    assert (got.headers, got.header_fields) == (None, None)
    assert decode_call_template(encode_call_template(got)) == got


def test_fractional_timeout_is_kept_and_integral_float_encodes_as_int() -> None:
    """timeout 1.5 is accepted (antiphon extension); 60.0 goes on the wire as 60 so UTCP accepts it."""
    assert decode_call_template({"url": "wss://h/ws", "timeout": 1.5}).timeout == 1.5
    assert encode_call_template(WebSocketCallTemplate(url="wss://h/ws", timeout=60.0))["timeout"] == 60
    assert type(encode_call_template(WebSocketCallTemplate(url="wss://h/ws", timeout=60.0))["timeout"]) is int


def test_unknown_keys_are_ignored_with_a_warning_naming_them() -> None:
    """Unknown keys are dropped as pydantic drops them, but a TemplateWarning names each one."""
    with pytest.warns(TemplateWarning, match=r"call template 'n': unknown keys ignored: 'x', 'yy'$") as caught:
        got = decode_call_template({"url": "wss://h/ws", "name": "n", "yy": 2, "x": 1})
    assert got == WebSocketCallTemplate(url="wss://h/ws", name="n")
    assert [type(w.message) for w in caught] == [TemplateWarning]


def test_unknown_keys_in_a_manual_warn_per_template() -> None:
    """A manual's tool templates are checked too: the warning names the template and the key."""
    doc = {"tools": [{"name": "t", "tool_call_template": {"url": "wss://h/ws", "name": "echo", "retries": 3}}]}
    with pytest.warns(TemplateWarning, match=r"call template 'echo': unknown key ignored: 'retries'"):
        decode_manual(doc)


def test_unknown_key_warnings_stay_short_whatever_the_peer_sends() -> None:
    """A remote manual's 500 keys of 10 kB each give a warning of a few hundred characters, not 5 MB."""
    doc: dict[str, Any] = {"url": "wss://h/ws", "name": "n" * 10_000}
    doc.update({f"{i:03d}" + "k" * 10_000: i for i in range(500)})
    with pytest.warns(TemplateWarning) as caught:
        decode_call_template(doc)
    (warning,) = caught
    text = str(warning.message)
    assert len(text) < 1_500 and text.endswith("and 490 more")


def test_every_known_key_decodes_without_a_warning() -> None:
    """The fullest template (every field set) decodes with no warning at all."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decode_call_template(FULL)


UTCP_DOCS_CUSTOM_MESSAGE_FORMAT = {
    "name": "custom_format_ws",
    "call_template_type": "websocket",
    "url": "wss://api.example.com/ws",
    "request_data_format": "text",
    "request_data_template": "CMD:UTCP_ARG_command_UTCP_ARG;DATA:UTCP_ARG_data_UTCP_ARG",
    "timeout": 60,
}
"""The "Custom Message Format" example of UTCP's WebSocketCallTemplate docstring, verbatim."""


def test_the_utcp_docs_custom_message_format_example_works_as_written() -> None:
    """request_data_template becomes the message (CMD:...;DATA:...), each legacy key with a deprecation warning."""
    with pytest.warns(TemplateDeprecationWarning) as caught:
        got = decode_call_template(UTCP_DOCS_CUSTOM_MESSAGE_FORMAT)
    assert got.message == "CMD:UTCP_ARG_command_UTCP_ARG;DATA:UTCP_ARG_data_UTCP_ARG" and got.timeout == 60
    assert format_message(got, {"command": "SET", "data": "x"}) == "CMD:SET;DATA:x"
    texts = sorted(str(w.message) for w in caught)
    assert len(texts) == 2
    assert "request_data_format is deprecated" in texts[0] and "remove it" in texts[0]
    assert "request_data_template is deprecated" in texts[1] and "write message instead" in texts[1]
    # Deprecation warnings meant for the people who write templates: shown by default.
    assert all(issubclass(w.category, FutureWarning) for w in caught)


def test_request_data_template_beside_a_message_is_ignored_with_a_warning() -> None:
    """When both are set the message wins, and the warning says request_data_template was ignored."""
    doc = {"url": "wss://h/ws", "message": "NEW", "request_data_template": "OLD"}
    with pytest.warns(TemplateDeprecationWarning, match="ignored here, since message is set too"):
        assert decode_call_template(doc).message == "NEW"


def test_a_request_data_template_of_the_wrong_type_names_its_own_key() -> None:
    """A request_data_template that is neither text nor an object is a located DecodeError at its own key."""
    with pytest.raises(DecodeError, match=r"^\$\.request_data_template: expected a string or an object, got a list"):
        decode_call_template({"url": "wss://h/ws", "request_data_template": [1]})


def test_json_text_decodes() -> None:
    """A template and a manual decode from JSON text as well as from dicts."""
    assert loads_call_template(b'{"url": "wss://h/ws", "name": "n"}') == WebSocketCallTemplate(url="wss://h/ws", name="n")
    manual = loads_manual('{"tools": [{"name": "t", "tool_call_template": {"url": "wss://h/ws", "name": "n"}}]}')
    assert manual.tools[0].tool_call_template.name == "n"
    with pytest.raises(DecodeError, match=r"^\$: invalid JSON"):
        loads_call_template("{nope")


@pytest.mark.parametrize("doc", [FULL, *SPREAD])
def test_round_trip(doc: dict[str, Any]) -> None:
    """decode(encode(x)) == x for every template in the spread."""
    template = decode_call_template(doc)
    assert decode_call_template(encode_call_template(template)) == template


URL_RULE = "WebSocket URL must use wss://, or ws:// to a loopback host (localhost, 127.0.0.0/8, ::1)"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({}, "$.url: required field missing"),
        ({"url": 5}, "$.url: expected a string, got an integer"),
        ({"url": "ws://10.0.0.5/ws"}, f"$.url: {URL_RULE}; got 'ws://10.0.0.5/ws'"),
        ({"url": "ws://localhost.evil.com"}, f"$.url: {URL_RULE}; got 'ws://localhost.evil.com'"),
        ({"url": "wss://h", "call_template_type": "http"}, "$.call_template_type: expected one of 'websocket', got 'http'"),
        ({"url": "wss://h", "timeout": "7"}, "$.timeout: expected a positive number of seconds, got '7'"),
        ({"url": "wss://h", "timeout": True}, "$.timeout: expected a positive number of seconds, got True"),
        ({"url": "wss://h", "timeout": 0}, "$.timeout: expected a positive number of seconds, got 0"),
        ({"url": "wss://h", "timeout": -1.5}, "$.timeout: expected a positive number of seconds, got -1.5"),
        ({"url": "wss://h", "response_format": "xml"},
         "$.response_format: expected one of 'json', 'text', 'raw' or null, got 'xml'"),
        ({"url": "wss://h", "message": 3}, "$.message: expected a string or an object or null, got an integer"),
        ({"url": "wss://h", "message": ["a"]}, "$.message: expected a string or an object or null, got a list"),
        ({"url": "wss://h", "keep_alive": "yes"}, "$.keep_alive: expected a boolean, got a string"),
        ({"url": "wss://h", "headers": {"A": 1}}, "$.headers['A']: expected a string, got an integer"),
        ({"url": "wss://h", "headers": [["A", "b"]]}, "$.headers: expected an object, got a list"),
        ({"url": "wss://h", "header_fields": "ab"}, "$.header_fields: expected a list, got a string"),
        ({"url": "wss://h", "header_fields": [1]}, "$.header_fields[0]: expected a string, got an integer"),
        ({"url": "wss://h", "allowed_communication_protocols": "websocket"},
         "$.allowed_communication_protocols: expected a list, got a string"),
        ({"url": "wss://h", "auth": "k"}, "$.auth: expected an object or null, got a string"),
        ({"url": "wss://h", "auth": {}}, "$.auth.auth_type: required field missing"),
        ({"url": "wss://h", "auth": {"auth_type": "jwt"}},
         "$.auth.auth_type: expected one of 'api_key', 'basic', 'oauth2', got 'jwt'"),
        ({"url": "wss://h", "auth": {"auth_type": "api_key"}}, "$.auth.api_key: required field missing"),
        ({"url": "wss://h", "auth": {"auth_type": "api_key", "api_key": "k", "location": "body"}},
         "$.auth.location: expected one of 'header', 'query', 'cookie', got 'body'"),
        ({"url": "wss://h", "auth": {"auth_type": "basic", "username": "u"}}, "$.auth.password: required field missing"),
        ({"url": "wss://h", "auth": {"auth_type": "oauth2", "token_url": "https://t", "client_id": "c"}},
         "$.auth.client_secret: required field missing"),
    ],
)  # fmt: skip
def test_decode_errors_are_located(doc: dict[str, Any], message: str) -> None:
    """Each invalid field is reported as a DecodeError reading `$.field: problem`."""
    with pytest.raises(DecodeError) as info:
        decode_call_template(doc)
    assert info.value.errors[0] == message


def test_a_bad_optional_string_names_its_field() -> None:
    """A non-string protocol is reported at $.protocol as wanting a string."""
    with pytest.raises(DecodeError, match=r"^\$\.protocol: expected a string"):
        decode_call_template({"url": "wss://h", "protocol": 3})


def test_a_document_that_is_not_an_object_is_refused() -> None:
    """A list where a template belongs is a DecodeError at the root."""
    with pytest.raises(DecodeError, match=r"^\$: expected an object, got a list$"):
        decode_call_template([])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "ws://10.0.0.5"}, f"url: {URL_RULE}; got 'ws://10.0.0.5'"),
        ({"url": "wss://h", "timeout": 0}, "timeout: expected a positive number of seconds, got 0"),
        ({"url": "wss://h", "response_format": "xml"},
         "response_format: expected one of 'json', 'text', 'raw', None, got 'xml'"),
    ],
)  # fmt: skip
def test_direct_construction_validates_too(kwargs: dict[str, Any], message: str) -> None:
    """Building a template in code with a bad url, timeout or response_format raises TemplateError naming the field."""
    with pytest.raises(TemplateError) as info:
        WebSocketCallTemplate(**kwargs)
    assert str(info.value) == message


def test_tool_and_manual_defaults_and_round_trip() -> None:
    """Tool and manual fields default like UTCP's and survive encode/decode."""
    tool = decode_tool({"name": "echo", "tool_call_template": {"url": "wss://h/ws", "name": "n"}})
    assert (tool.description, tool.inputs, tool.outputs, tool.tags, tool.average_response_size) == ("", {}, {}, [], None)
    two = Tool(
        name="two",
        description="d",
        inputs={"type": "object"},
        tags=["x"],
        average_response_size=10,
        tool_call_template=tool.tool_call_template,
    )
    manual = UtcpManual(tools=[tool, two])
    assert (manual.utcp_version, manual.manual_version) == ("1.2.0", "1.0.0")
    assert decode_manual(encode_manual(manual)) == manual
    assert decode_tool(encode_tool(tool)) == tool


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({}, "$.tools: required field missing"),
        ({"tools": "x"}, "$.tools: expected a list, got a string"),
        ({"tools": [{"name": "t"}]}, "$.tools[0].tool_call_template: required field missing"),
        ({"tools": [{"name": "t", "tool_call_template": {"url": "ws://evil.example"}}]},
         f"$.tools[0].tool_call_template.url: {URL_RULE}; got 'ws://evil.example'"),
        ({"tools": [{"name": "t", "tool_call_template": {"url": "https://h", "call_template_type": "http"}}]},
         "$.tools[0].tool_call_template.call_template_type: expected one of 'websocket', got 'http'"),
        ({"tools": [{"name": "t", "inputs": [], "tool_call_template": {"url": "wss://h"}}]},
         "$.tools[0].inputs: expected an object, got a list"),
    ],
)  # fmt: skip
def test_manual_errors_are_located_per_tool(doc: dict[str, Any], message: str) -> None:
    """A bad tool inside a manual is reported with its index and field path."""
    with pytest.raises(DecodeError) as info:
        decode_manual(doc)
    assert info.value.errors[0] == message


# --- $VAR substitution ----------------------------------------------------------------


def _tpl(**kwargs: Any) -> WebSocketCallTemplate:
    return WebSocketCallTemplate(**{"url": "wss://h/ws", "name": "n", **kwargs})


def test_variables_resolve_from_the_mapping_then_environ() -> None:
    """${VAR} and $VAR in any string field resolve from variables first, then the passed-in environ."""
    tpl = _tpl(url="wss://${HOST}/ws", headers={"X-Key": "$KEY"}, auth=ApiKeyAuth("${KEY}-${SUFFIX}"))
    got = substitute_variables(tpl, {"KEY": "from-vars"}, {"KEY": "from-env", "HOST": "h.example", "SUFFIX": "s"})
    assert got.url == "wss://h.example/ws"
    assert got.headers == {"X-Key": "from-vars"}
    assert got.auth == ApiKeyAuth("from-vars-s")


def test_missing_variable_raises_naming_it() -> None:
    """An unresolvable variable raises VariableNotFound (a ConfigError) that names it."""
    with pytest.raises(VariableNotFound) as info:
        substitute_variables(_tpl(headers={"A": "${NOPE}"}), {}, {})
    assert info.value.name == "NOPE"
    assert str(info.value) == (
        "variable 'NOPE' is referenced in the call template but has no value: "
        "pass it in `variables=` or set it in the environment"
    )
    assert isinstance(info.value, ConfigError)


def test_namespace_matches_utcp_key_mangling() -> None:
    """With a namespace, ${WS_KEY} in manual my_svc is looked up as my__svc_WS_KEY, as UTCP does."""
    got = substitute_variables(_tpl(headers={"A": "${WS_KEY}"}), {"my__svc_WS_KEY": "v"}, {}, namespace="my_svc")
    assert got.headers == {"A": "v"}
    with pytest.raises(VariableNotFound, match="my__svc_WS_KEY"):
        substitute_variables(_tpl(headers={"A": "${WS_KEY}"}), {"WS_KEY": "bare"}, {}, namespace="my_svc")


def test_message_is_not_substituted_by_default() -> None:
    """A message holding $5 or a GraphQL $id is sent as written; UTCP would fail looking up those variables."""
    tpl = _tpl(message={"q": "query($id: ID!) costs $5", "v": "UTCP_ARG_v_UTCP_ARG"})
    assert substitute_variables(tpl, {}, {}).message == tpl.message


def test_message_substitution_can_be_asked_for() -> None:
    """include_message=True substitutes $VAR in the message too, leaving UTCP_ARG placeholders alone."""
    tpl = _tpl(message="key=${KEY};v=UTCP_ARG_v_UTCP_ARG")
    assert substitute_variables(tpl, {"KEY": "k"}, {}, include_message=True).message == "key=k;v=UTCP_ARG_v_UTCP_ARG"


def test_empty_values_count_and_keys_and_refs_are_left_alone() -> None:
    """An empty value is used; dict keys and strings holding a JSON-Schema $ref are never substituted."""
    tpl = _tpl(headers={"$KEY": "x$KEY", "B": "#/$ref/x $NOPE"})
    assert substitute_variables(tpl, {"KEY": ""}, {}).headers == {"$KEY": "x", "B": "#/$ref/x $NOPE"}


def test_substitution_result_is_revalidated() -> None:
    """A substituted URL that turns out non-loopback ws:// is a located DecodeError."""
    with pytest.raises(DecodeError, match=r"^\$\.url: WebSocket URL must use wss://"):
        substitute_variables(_tpl(url="ws://localhost:$PORT/ws"), {"PORT": "1@10.0.0.5"}, {})


# --- property tests ---------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_field_values = {
    "name": st.text(max_size=5) | _json,
    "call_template_type": st.sampled_from(["websocket", "http"]) | _json,
    "url": st.sampled_from(["wss://h/ws", "ws://localhost/ws", "ws://10.0.0.5", "", "http://x"]) | _json,
    "message": _json,
    "protocol": st.none() | st.text(max_size=4) | _json,
    "keep_alive": st.booleans() | _json,
    "response_format": st.sampled_from(["json", "text", "raw", None, "xml"]) | _json,
    "timeout": st.integers(-2, 100) | st.floats() | _json,
    "headers": st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2) | _json,
    "header_fields": st.lists(st.text(max_size=4), max_size=2) | _json,
    "auth": st.fixed_dictionaries(
        {"auth_type": st.sampled_from(["api_key", "basic", "oauth2", "x"]) | _json},
        optional={k: st.text(max_size=4) | _json for k in
                  ("api_key", "var_name", "location", "username", "password", "token_url", "client_id",
                   "client_secret", "scope")},
    ) | _json,
    "allowed_communication_protocols": st.lists(st.text(max_size=4), max_size=2) | _json,
}  # fmt: skip
_templates = st.fixed_dictionaries({}, optional=_field_values) | _json


@settings(max_examples=400, deadline=None)
@given(_templates)
def test_any_json_input_decodes_or_raises_decode_error(doc: Any) -> None:
    """Any JSON-ish document either decodes to a template that round-trips or raises DecodeError/ConfigError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TemplateWarning)  # unknown keys are expected here
            got = decode_call_template(doc)
    except (DecodeError, ConfigError):
        return
    assert decode_call_template(encode_call_template(got)) == got


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({}, optional={"tools": st.lists(st.fixed_dictionaries({"tool_call_template": _templates},
       optional={"name": _json, "inputs": _json, "tags": _json}), max_size=2) | _json,
       "utcp_version": _json}))  # fmt: skip
def test_any_json_manual_decodes_or_raises_decode_error(doc: Any) -> None:
    """Any JSON-ish manual either decodes or raises DecodeError/ConfigError, never anything else."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TemplateWarning)
            decode_manual(doc)
    except (DecodeError, ConfigError):
        pass


# --- interop with the released utcp / utcp-websocket --------------------------------------


def _drop_allowlist(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "allowed_communication_protocols"}


@pytest.mark.parametrize("doc", [FULL, *SPREAD])
def test_utcp_accepts_our_encoding_and_writes_the_same_dict(doc: dict[str, Any]) -> None:
    """UTCP's CallTemplateSerializer accepts our encoded dict and its to_dict equals ours (minus the allowlist)."""
    ours = encode_call_template(decode_call_template(doc))
    theirs = CallTemplateSerializer().validate_dict(copy.deepcopy(ours))
    assert isinstance(theirs, UtcpWebSocketCallTemplate)
    assert WebSocketCallTemplateSerializer().to_dict(theirs) == _drop_allowlist(ours)
    assert theirs.allowed_communication_protocols == ours.get("allowed_communication_protocols")


@pytest.mark.parametrize("doc", [FULL, *SPREAD])
def test_we_decode_utcps_to_dict_into_an_equal_template(doc: dict[str, Any]) -> None:
    """UTCP's to_dict output decodes into a template equal to ours (UTCP having dropped the allowlist)."""
    theirs = WebSocketCallTemplateSerializer().validate_dict(copy.deepcopy(doc))
    got = decode_call_template(WebSocketCallTemplateSerializer().to_dict(theirs))
    expected = decode_call_template(_drop_allowlist(doc))
    assert got == expected


def test_utcp_reads_our_manual() -> None:
    """A manual we encode validates in UTCP's UtcpManualSerializer with the same tools and templates."""
    manual = decode_manual({"tools": [{"name": "echo", "description": "d", "inputs": {"type": "object"},
                                       "tags": ["a"], "tool_call_template": FULL}]})  # fmt: skip
    theirs = UtcpManualSerializer().validate_dict(copy.deepcopy(encode_manual(manual)))
    assert [t.name for t in theirs.tools] == ["echo"]
    assert theirs.tools[0].inputs.type == "object"
    assert WebSocketCallTemplateSerializer().to_dict(theirs.tools[0].tool_call_template) == _drop_allowlist(FULL)
