"""antiphon's tool client against a ``websockets`` server that records exactly what arrived on the wire."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import trio

from antiphon.errors import (
    ClosedWithoutReply,
    DecodeError,
    HandshakeError,
    HandshakeRejected,
    RemoteProtocolError,
    ReplyTooLarge,
    ResponseFormatError,
    TemplateError,
    ToolCallError,
    VariableNotFound,
)
from antiphon.tools import (
    ApiKeyAuth,
    BasicAuth,
    OAuth2Auth,
    WebSocketCallTemplate,
    call_tool,
    call_tool_streaming,
    open_tool_client,
    register_manual,
)
from tests.tools.conftest import CLOSE, PeerConnection, token_endpoint, ws_peer


def tpl(url: str = "ws://127.0.0.1/t", **kwargs: Any) -> WebSocketCallTemplate:
    return WebSocketCallTemplate(**{"name": "t", "url": url, "response_format": "json", **kwargs})


async def test_default_message_headers_subprotocol_and_api_key_header_on_the_wire() -> None:
    """No message template: the args go as one json.dumps TEXT frame; headers, key and subprotocol in the upgrade."""
    with ws_peer() as peer:
        template = tpl(
            peer.url + "/tools/echo",
            headers={"X-Static": "static-value"},
            protocol="utcp-v1",
            auth=ApiKeyAuth(api_key="secret-key-123"),
        )
        result = await call_tool(template, {"text": 'hi "there"', "n": 3})
    assert result == {"echo": '{"text": "hi \\"there\\"", "n": 3}'}
    (conn,) = peer.connections
    assert conn.path == "/tools/echo"
    assert conn.frames == ['{"text": "hi \\"there\\"", "n": 3}']
    assert conn.subprotocol == "utcp-v1"
    assert conn.header("Sec-WebSocket-Protocol") == "utcp-v1"
    assert conn.header("X-Static") == "static-value"
    assert conn.header("X-Api-Key") == "secret-key-123"


async def test_string_and_dict_message_templates_on_the_wire() -> None:
    """A string template substitutes raw text; a JSON dict template keeps typed values and escapes strings."""
    with ws_peer() as peer:
        async with open_tool_client() as tools:
            await tools.call(tpl(peer.url, message="CMD:UTCP_ARG_cmd_UTCP_ARG;VAL:UTCP_ARG_v_UTCP_ARG"), {"cmd": "SET", "v": 2.5})
            await tools.call(
                tpl(peer.url, name="d", message={"action": "search", "q": "UTCP_ARG_q_UTCP_ARG", "n": "UTCP_ARG_n_UTCP_ARG"}),
                {"q": '", "isAdmin": true, "x": "', "n": 7},
            )
    frames = [f for c in peer.connections for f in c.frames]
    assert frames[0] == "CMD:SET;VAL:2.5"
    assert json.loads(frames[1]) == {"action": "search", "q": '", "isAdmin": true, "x": "', "n": 7}


async def test_api_key_in_query_reaches_the_server_and_not_the_header() -> None:
    """location=query appends ?var_name=key to the upgrade's target (UTCP drops it)."""
    with ws_peer() as peer:
        await call_tool(tpl(peer.url + "/t?x=1", auth=ApiKeyAuth(api_key="a b&c", var_name="key", location="query")), {})
    (conn,) = peer.connections
    assert conn.path == "/t?x=1&key=a+b%26c"
    assert conn.header("key") is None and conn.header("X-Api-Key") is None


async def test_api_key_in_cookie_reaches_the_server() -> None:
    """location=cookie sends Cookie: var_name=key, merged after a template Cookie header."""
    with ws_peer() as peer:
        auth = ApiKeyAuth(api_key="c00kie", var_name="session", location="cookie")
        await call_tool(tpl(peer.url, headers={"Cookie": "a=1"}, auth=auth), {})
    assert peer.connections[0].header("Cookie") == "a=1; session=c00kie"


async def test_basic_auth_on_the_wire() -> None:
    """Basic auth sends Authorization: Basic base64(user:password)."""
    with ws_peer() as peer:
        await call_tool(tpl(peer.url, auth=BasicAuth(username="u", password="p:w")), {})
    assert peer.connections[0].header("Authorization") == "Basic " + base64.b64encode(b"u:p:w").decode()


async def test_oauth2_fetches_a_token_once_and_sends_it_as_bearer() -> None:
    """OAuth2: one form POST (no scope=None) to the token URL, Bearer on the upgrade, cached for the next call."""
    async with token_endpoint() as endpoint:
        with ws_peer() as peer:
            auth = OAuth2Auth(token_url=endpoint.url, client_id="cid", client_secret="shh")
            async with open_tool_client() as tools:
                await tools.call(tpl(peer.url, auth=auth), {"a": 1})
                await tools.call(tpl(peer.url, auth=auth, keep_alive=False), {"a": 2})
    assert [c.header("Authorization") for c in peer.connections] == ["Bearer tok-1", "Bearer tok-1"]
    (request,) = endpoint.requests
    target, headers, form = request
    assert target == "/oauth/token"
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    assert form == {"grant_type": "client_credentials", "client_id": "cid", "client_secret": "shh"}


async def test_oauth2_token_that_is_about_to_expire_is_fetched_again() -> None:
    """A token whose expires_in is inside the 30 s safety margin is never reused."""
    async with token_endpoint(body=b'{"access_token": "short", "expires_in": 10}') as endpoint:
        with ws_peer() as peer:
            auth = OAuth2Auth(token_url=endpoint.url, client_id="cid", client_secret="shh", scope="tools")
            async with open_tool_client() as tools:
                await tools.call(tpl(peer.url, auth=auth), {})
                await tools.call(tpl(peer.url, auth=auth), {})
            assert tools.tokens.fetches == 2
    assert endpoint.requests[0][2]["scope"] == "tools"


async def test_oauth2_token_redirect_is_refused_and_nothing_is_dialled() -> None:
    """A 3xx from the token endpoint is an error: the secret is never re-posted, no WebSocket is opened."""
    async with token_endpoint(status=307, body=b"", headers=[("Location", "http://127.0.0.1:1/steal")]) as endpoint:
        with ws_peer() as peer:
            auth = OAuth2Auth(token_url=endpoint.url, client_id="cid", client_secret="shh")
            with pytest.raises(HandshakeError, match="HTTP 307 .*never followed"):
                await call_tool(tpl(peer.url, auth=auth), {})
    assert len(endpoint.requests) == 1
    assert peer.requests == []


async def test_oauth2_refusal_names_the_status_and_the_oauth_error() -> None:
    """A 401 with an OAuth2 error body raises HandshakeError naming both, never the secret."""
    async with token_endpoint(status=401, body=b'{"error": "invalid_client"}') as endpoint:
        auth = OAuth2Auth(token_url=endpoint.url, client_id="cid", client_secret="shh")
        with pytest.raises(HandshakeError, match="HTTP 401: invalid_client") as info:
            await call_tool(tpl("ws://127.0.0.1:1/", auth=auth), {})
    assert "shh" not in str(info.value)


async def test_oauth2_token_url_must_be_https_or_loopback() -> None:
    """A plain-http remote token URL is refused before anything is sent."""
    auth = OAuth2Auth(token_url="http://auth.example.com/token", client_id="c", client_secret="s")
    with pytest.raises(TemplateError, match="OAuth2 token URL"):
        await call_tool(tpl("ws://127.0.0.1:1/", auth=auth), {})


async def test_header_fields_go_in_the_handshake_not_the_body() -> None:
    """header_fields arguments become upgrade headers (JSON text for non-strings) and leave the default body."""
    with ws_peer() as peer:
        template = tpl(peer.url, header_fields=["X-User", "X-Trace"])
        await call_tool(template, {"X-User": "ann", "X-Trace": 42, "q": "x"})
    (conn,) = peer.connections
    assert conn.header("X-User") == "ann" and conn.header("X-Trace") == "42"
    assert conn.frames == ['{"q": "x"}']


async def test_two_concurrent_first_calls_share_one_connection() -> None:
    """Two calls started together on a keep_alive template open one socket and each gets its own reply."""
    results: dict[str, Any] = {}
    with ws_peer() as peer:
        async with open_tool_client() as tools:
            template = tpl(peer.url)

            async def call(tag: str) -> None:
                results[tag] = await tools.call(template, {"tag": tag})

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "a")
                nursery.start_soon(call, "b")
            assert tools.pool.opened == 1
    assert len(peer.requests) == 1
    assert results == {"a": {"echo": '{"tag": "a"}'}, "b": {"echo": '{"tag": "b"}'}}
    assert sorted(peer.connections[0].frames) == ['{"tag": "a"}', '{"tag": "b"}']


async def test_pool_keys_on_the_handshake_so_credentials_never_share_a_socket() -> None:
    """Same template with a different API key or header_fields value opens a different connection."""
    with ws_peer() as peer:
        async with open_tool_client() as tools:
            await tools.call(tpl(peer.url, auth=ApiKeyAuth(api_key="one")), {})
            await tools.call(tpl(peer.url, auth=ApiKeyAuth(api_key="one")), {})
            await tools.call(tpl(peer.url, auth=ApiKeyAuth(api_key="two")), {})
    assert [c.header("X-Api-Key") for c in peer.connections] == ["one", "two"]
    assert [len(c.frames) for c in peer.connections] == [2, 1]


async def test_keep_alive_false_opens_and_closes_a_connection_per_call() -> None:
    """keep_alive=false: each call has a fresh connection that is closed normally once the reply is in."""
    with ws_peer() as peer:
        async with open_tool_client() as tools:
            template = tpl(peer.url, keep_alive=False)
            assert await tools.call(template, {"n": 1}) == {"echo": '{"n": 1}'}
            assert await tools.call(template, {"n": 2}) == {"echo": '{"n": 2}'}
            assert tools.pool.opened == 0
    assert [c.frames for c in peer.connections] == [['{"n": 1}'], ['{"n": 2}']]
    assert [c.close_code for c in peer.connections] == [1000, 1000]


async def test_upgrade_redirect_is_never_followed() -> None:
    """A 302 to the upgrade raises HandshakeRejected(302); the Location is never dialled."""
    with ws_peer() as target:
        with ws_peer(redirect_to=target.url + "/internal") as peer:
            with pytest.raises(HandshakeRejected) as info:
                await call_tool(tpl(peer.url, auth=ApiKeyAuth(api_key="k")), {})
    assert info.value.status_code == 302
    assert peer.requests == ["/"] and target.requests == []


async def test_close_without_reply_raises_closed_without_reply() -> None:
    """A server that reads the call and closes raises ClosedWithoutReply with its close code (UTCP returns None)."""
    with ws_peer(lambda conn, frame: CLOSE) as peer:
        with pytest.raises(ClosedWithoutReply) as info:
            await call_tool(tpl(peer.url), {"a": 1})
    assert info.value.code == 1000
    assert peer.connections[0].frames == ['{"a": 1}']


async def test_pooled_connection_closed_by_the_server_is_replaced() -> None:
    """After a server closed a pooled connection, the next call dials a new one and succeeds."""
    def reply(conn: PeerConnection, frame: str | bytes) -> Any:
        return CLOSE if frame == '{"close": true}' else [frame]

    with ws_peer(reply) as peer:
        async with open_tool_client() as tools:
            with pytest.raises(ClosedWithoutReply):
                await tools.call(tpl(peer.url), {"close": True})
            assert await tools.call(tpl(peer.url), {"ok": 1}) == {"ok": 1}
    assert len(peer.connections) == 2


async def test_tool_error_reply_raises_tool_call_error() -> None:
    """A plain call answered with {"type": "tool_error"} raises ToolCallError carrying the error."""
    with ws_peer(lambda c, f: [json.dumps({"type": "tool_error", "error": "nope"})]) as peer:
        with pytest.raises(ToolCallError) as info:
            await call_tool(tpl(peer.url), {})
    assert info.value.error == "nope" and info.value.tool == "t"


async def test_json_reply_that_does_not_parse_names_the_format() -> None:
    """response_format json and a non-JSON reply raise ResponseFormatError; text returns the str."""
    with ws_peer(lambda c, f: ["not json"]) as peer:
        with pytest.raises(ResponseFormatError, match="response_format 'json'"):
            await call_tool(tpl(peer.url), {})
        assert await call_tool(tpl(peer.url, response_format="text"), {}) == "not json"


async def test_streaming_over_the_wire() -> None:
    """tool_response frames yield results, other frames yield as text, stream_end ends; the call frame is the args."""
    def reply(conn: PeerConnection, frame: str | bytes) -> Any:
        return [
            json.dumps({"type": "tool_response", "result": {"chunk": 0}}),
            json.dumps({"type": "tool_response", "result": {"chunk": 1}, "request_id": "x"}),
            "plain-text-chunk",
            json.dumps({"type": "stream_end"}),
        ]

    with ws_peer(reply) as peer:
        async with call_tool_streaming(tpl(peer.url, response_format="text"), {"count": 2}) as results:
            got = [r async for r in results]
    assert got == [{"chunk": 0}, {"chunk": 1}, "plain-text-chunk"]
    assert peer.connections[0].frames == ['{"count": 2}']


async def test_streaming_tool_error_raises_and_keeps_the_connection() -> None:
    """A tool_error frame mid-stream raises ToolCallError; the pooled connection serves the next call."""
    def reply(conn: PeerConnection, frame: str | bytes) -> Any:
        if frame == "{}":
            return [json.dumps({"type": "tool_response", "result": 1}), json.dumps({"type": "tool_error", "error": "E"})]
        return [frame]

    with ws_peer(reply) as peer:
        async with open_tool_client() as tools:
            got: list[Any] = []
            with pytest.raises(ToolCallError, match="E"):
                async with tools.call_streaming(tpl(peer.url), {}) as results:
                    async for item in results:
                        got.append(item)
            assert got == [1]
            assert await tools.call(tpl(peer.url), {"x": 1}) == {"x": 1}
            assert tools.pool.opened == 1


async def test_stream_ended_by_a_normal_close_after_frames() -> None:
    """A server that streams then closes with 1000 (go-utcp style) ends the stream without error."""
    def reply(conn: PeerConnection, frame: str | bytes) -> Any:
        return [json.dumps({"type": "tool_response", "result": "a"}), json.dumps({"type": "tool_response", "result": "b"}), CLOSE]

    with ws_peer(reply) as peer:
        async with call_tool_streaming(tpl(peer.url), {}) as results:
            got = [r async for r in results]
    assert got == ["a", "b"]


MANUAL = {
    "utcp_version": "1.2.0",
    "manual_version": "1.0.0",
    "tools": [
        {
            "name": "echo",
            "description": "Echo.",
            "inputs": {"type": "object"},
            "tool_call_template": {"name": "echo", "call_template_type": "websocket", "url": "ws://127.0.0.1:1/tools/echo"},
        }
    ],
}


async def test_register_manual_against_a_websockets_server() -> None:
    """Discovery sends exactly {"type": "utcp"}, skips frames without "tools", returns the manual and registers its tools."""
    def reply(conn: PeerConnection, frame: str | bytes) -> Any:
        return ["hello", json.dumps({"type": "welcome"}), json.dumps(MANUAL)]

    with ws_peer(reply) as peer:
        async with open_tool_client() as tools:
            manual = await tools.register_manual(WebSocketCallTemplate(name="my-ws", url=peer.url + "/utcp"))
            assert [t.name for t in manual.tools] == ["echo"]
            assert list(tools.tools) == ["my_ws.echo"]
    (conn,) = peer.connections
    assert conn.frames == ['{"type": "utcp"}'] and conn.path == "/utcp"


async def test_register_manual_refuses_a_broken_manual_and_a_close() -> None:
    """A {"tools": "not a list"} reply is a located DecodeError; a close without a manual is ClosedWithoutReply."""
    with ws_peer(lambda c, f: [json.dumps({"tools": "not a list"})]) as peer:
        with pytest.raises(RemoteProtocolError, match=r"\$\.tools"):
            await register_manual(WebSocketCallTemplate(name="m", url=peer.url))
    with ws_peer(lambda c, f: CLOSE) as peer:
        with pytest.raises(ClosedWithoutReply):
            await register_manual(WebSocketCallTemplate(name="m", url=peer.url))


async def test_variables_fill_the_template_and_the_url_is_rechecked() -> None:
    """${VAR} resolves from variables before the environment; a variable that makes ws:// non-loopback is refused."""
    with ws_peer() as peer:
        port = peer.url.rsplit(":", 1)[1]
        template = WebSocketCallTemplate(name="t", url="ws://127.0.0.1:${PORT}/x", auth=ApiKeyAuth(api_key="$KEY"))
        async with open_tool_client(variables={"PORT": port, "KEY": "from-vars"}, environ={"KEY": "from-env"}) as tools:
            await tools.call(template, {})
    assert peer.connections[0].header("X-Api-Key") == "from-vars"
    async with open_tool_client(variables={"PORT": "80@evil.example"}, environ={}) as tools:
        with pytest.raises(DecodeError, match=r"\$\.url: WebSocket URL must use wss://"):
            await tools.call(WebSocketCallTemplate(name="t", url="ws://127.0.0.1:${PORT}/x"), {})
        with pytest.raises(VariableNotFound, match="MISSING"):
            await tools.call(WebSocketCallTemplate(name="t", url="ws://127.0.0.1/${MISSING}"), {})


# --- issue 10 #10: nothing untranslated escapes, and nothing bad is dialled --------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"protocol": "utcp-v1\r\nX-Injected: 1"}, "protocol"),
        ({"protocol": "two words"}, "protocol"),
        ({"headers": {"X-Name": "Zo\u00eb \u2603"}}, "headers"),
        ({"auth": ApiKeyAuth(api_key="\u20ac-key")}, "auth"),
        ({"url": "wss://b\u00fccher.example/ws"}, "url"),
    ],
)
async def test_handshake_inputs_that_cannot_go_on_the_wire_raise_template_error_before_dialling(
    kwargs: dict[str, Any], field: str
) -> None:
    """CR/LF or spaces in protocol, non-Latin-1 header values, a non-ASCII host: TemplateError naming the field, no dial."""
    dialled: list[Any] = []

    def opener(*args: Any) -> Any:
        dialled.append(args)
        raise AssertionError("nothing may be dialled")

    async with open_tool_client(opener=opener) as tools:
        with pytest.raises(TemplateError, match=f"^{field}: "):
            await tools.call(tpl(**{"url": "ws://127.0.0.1:9/tools/t", **kwargs}), {})
    assert dialled == []


async def test_a_non_ascii_path_reaches_the_server_percent_encoded() -> None:
    """/tools/café is dialled as /tools/caf%C3%A9 (as aiohttp does), not a UnicodeEncodeError from h11."""
    with ws_peer() as peer:
        assert await call_tool(tpl(peer.url + "/tools/caf\u00e9"), {"x": 1}) == {"echo": '{"x": 1}'}
    assert peer.connections[0].path == "/tools/caf%C3%A9"


async def test_a_reply_over_the_clients_limit_is_reply_too_large_and_the_client_closed_1009() -> None:
    """A 500-byte reply to a client with max_message_size=100: ReplyTooLarge naming the limit; the peer got 1009."""
    with ws_peer(lambda conn, frame: ["x" * 500]) as peer:
        async with open_tool_client(max_message_size=100) as tools:
            with pytest.raises(ReplyTooLarge, match=r"exceeded this client's max_message_size \(100 bytes\)") as info:
                await tools.call(tpl(peer.url + "/t"), {})
    assert info.value.code == 1009 and info.value.limit == 100
    assert peer.connections[0].close_code == 1009
