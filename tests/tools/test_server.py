"""The tool server: manual and schemas, discovery end to end, auth, and every error path."""

from __future__ import annotations

import base64
import logging
import threading
from typing import Any, Literal

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.events import AcceptConnection, RejectConnection

from antiphon.engine.server import HandshakeRequest, ServerConfig
from antiphon.errors import ConfigError, HandshakeRejected, ToolCallError
from antiphon.proto.utcp.message import DISCOVERY_REQUEST
from antiphon.tools import (
    ApiKeyAuth,
    BasicAuth,
    ToolApp,
    ToolServer,
    WebSocketCallTemplate,
    call_tool,
    call_tool_streaming,
    open_tool_client,
)
from antiphon.tools.schema import ArgumentError, bind_arguments
from tests.helpers import RawClient
from tests.tools.conftest import API_KEY, demo_app, tcp_tools


def at(server: ToolServer, name: str, **kwargs: Any) -> WebSocketCallTemplate:
    return WebSocketCallTemplate(
        **{"name": name, "url": f"{server.url}/tools/{name}", "response_format": "json", "timeout": 5, **kwargs}
    )


def test_manual_describes_tools_from_signatures_and_docstrings() -> None:
    """Inputs come from type hints and defaults, the description from the docstring's first paragraph."""
    app = demo_app(auth=ApiKeyAuth(api_key=API_KEY, var_name="X-Key"), subprotocols=("utcp-v1",))
    manual = app.manual("ws://127.0.0.1:9000/")
    add = next(t for t in manual.tools if t.name == "add")
    assert add.description == "Add two integers."
    assert add.inputs == {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer", "default": 2}},
        "required": ["a"],
        "additionalProperties": False,
    }
    assert add.outputs == {"type": "integer"}
    template = add.tool_call_template
    assert template.url == "ws://127.0.0.1:9000/tools/add"
    assert template.protocol == "utcp-v1" and template.response_format == "json"
    assert template.auth == ApiKeyAuth(api_key="${ANTIPHON_TOOLS_SECRET}", var_name="X-Key")


def test_explicit_name_description_and_schema_and_richer_hints() -> None:
    """Explicit metadata wins; unions, literals, lists and dicts map to JSON Schema."""
    app = ToolApp()

    def f(mode: str | None, kind: Any = None, items: list[int] | None = None, meta: dict[str, float] | None = None) -> list[str]:
        return []

    def g(level: Literal["low", "high"], flag: bool = False) -> None: ...

    app.add(g)
    spec = app.add(f, name="renamed", description="Explicit.", tags=["x"])
    assert spec.name == "renamed" and spec.description == "Explicit." and spec.tags == ("x",)
    props = spec.inputs["properties"]
    assert props["mode"] == {"type": ["string", "null"]}
    assert props["kind"] == {"default": None}
    assert props["items"] == {"anyOf": [{"type": "array", "items": {"type": "integer"}}, {"type": "null"}], "default": None}
    assert props["meta"]["anyOf"][0] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert app.tools["g"].inputs["properties"]["level"] == {"enum": ["low", "high"]}
    custom = app.add(lambda **kw: kw, name="free", inputs={"type": "object"})
    assert custom.inputs == {"type": "object"}


def test_functions_that_cannot_be_tools_are_refused_at_registration() -> None:
    """Sync generators, positional-only or *args parameters, bad names and duplicates raise ConfigError."""
    app = ToolApp()

    def gen():  # type: ignore[no-untyped-def]
        yield 1

    def pos(a: int, /) -> int:
        return a

    def star(*a: int) -> None: ...

    for fn, match in [(gen, "async generator"), (pos, "by name"), (star, "by name")]:
        with pytest.raises(ConfigError, match=match):
            app.add(fn)
    with pytest.raises(ConfigError, match="not a valid tool name"):
        app.add(pos, name="a/b")
    app.add(lambda x: x, name="x")
    with pytest.raises(ConfigError, match="already registered"):
        app.add(lambda x: x, name="x")


async def test_register_manual_end_to_end_against_antiphon_tool_server() -> None:
    """antiphon's client discovers antiphon's server (api key, subprotocol), then calls a discovered tool."""
    app = demo_app(auth=ApiKeyAuth(api_key=API_KEY), subprotocols=("utcp-v1",))
    async with tcp_tools(app) as server:
        async with open_tool_client(variables={"ANTIPHON_TOOLS_SECRET": API_KEY}) as tools:
            manual_template = WebSocketCallTemplate(
                name="demo", url=server.url + "/utcp", auth=ApiKeyAuth(api_key=API_KEY), protocol="utcp-v1"
            )
            manual = await tools.register_manual(manual_template)
            assert sorted(t.name for t in manual.tools) == sorted(app.tools)
            assert manual.tools[0].tool_call_template.url.startswith(server.url + "/tools/")
            assert await tools.call("demo.add", {"a": 2, "b": 5}) == 7
            async with tools.call_streaming("demo.count", {"n": 2}) as results:
                assert [r async for r in results] == [{"i": 0}, {"i": 1}]


async def test_unknown_tool_and_unknown_path_are_refused_with_404() -> None:
    """A handshake to /tools/<no such tool> or any other path gets HTTP 404."""
    async with tcp_tools(demo_app()) as server:
        with pytest.raises(HandshakeRejected) as info:
            await call_tool(at(server, "nope"), {})
        assert info.value.status_code == 404
        with pytest.raises(HandshakeRejected) as info:
            await call_tool(WebSocketCallTemplate(name="x", url=server.url + "/elsewhere"), {})
        assert info.value.status_code == 404


@pytest.mark.parametrize(
    ("tool", "args", "message", "error"),
    [
        ("add", {}, None, "bad arguments: missing required argument: 'a'"),
        ("add", {"a": 1, "c": 2, "d": 3}, None, "bad arguments: unknown arguments: 'c', 'd'"),
        ("add", {"a": "1"}, None, "bad arguments: argument 'a': expected integer, got a string"),
        ("add", {"a": True}, None, "bad arguments: argument 'a': expected integer, got a boolean"),
        ("add", {}, "[1, 2]", "bad arguments: expected a JSON object of arguments, got an array"),
        ("add", {}, "not json", "the arguments are not JSON text"),
        ("divide", {"a": 1, "b": 0}, None, "the tool raised ZeroDivisionError"),
    ],
)
async def test_tool_server_error_paths_come_back_as_tool_error(
    tool: str, args: dict[str, Any], message: str | None, error: str
) -> None:
    """Bad arguments and failing tools answer one tool_error frame with a clear message, no traceback."""
    async with tcp_tools(demo_app()) as server:
        with pytest.raises(ToolCallError) as info:
            await call_tool(at(server, tool, message=message), args)
    assert info.value.error == error


async def test_expose_errors_sends_the_exception_text() -> None:
    """With expose_errors the tool_error carries the exception's type and text."""
    async with tcp_tools(demo_app(expose_errors=True)) as server:
        with pytest.raises(ToolCallError) as info:
            await call_tool(at(server, "divide"), {"a": 1, "b": 0})
    assert info.value.error == "ZeroDivisionError: division by zero"


async def test_a_stream_that_raises_ends_with_a_tool_error_without_its_text() -> None:
    """Items already yielded arrive, then tool_error names only the exception type (no secret path)."""
    got: list[Any] = []
    async with tcp_tools(demo_app()) as server:
        with pytest.raises(ToolCallError) as info:
            async with call_tool_streaming(at(server, "broken_stream"), {"n": 2}) as results:
                async for item in results:
                    got.append(item)
    assert got == [0, 1]
    assert info.value.error == "the tool raised RuntimeError"


async def test_manual_endpoint_answers_other_frames_with_a_tool_error() -> None:
    """Arguments sent to /utcp get a tool_error that says where tools live."""
    async with tcp_tools(demo_app()) as server:
        with pytest.raises(ToolCallError, match="call tools at /tools/<name>"):
            await call_tool(WebSocketCallTemplate(name="m", url=server.url + "/utcp"), {"a": 1})


BASIC = BasicAuth(username="ann", password="pw")


@pytest.mark.parametrize(
    ("required", "sent", "ok"),
    [
        (ApiKeyAuth(api_key=API_KEY), ApiKeyAuth(api_key=API_KEY), True),
        (ApiKeyAuth(api_key=API_KEY), None, False),
        (ApiKeyAuth(api_key=API_KEY), ApiKeyAuth(api_key="wrong"), False),
        (ApiKeyAuth(api_key=API_KEY), ApiKeyAuth(api_key=API_KEY, location="query"), False),
        (ApiKeyAuth(api_key=API_KEY, var_name="key", location="query"), ApiKeyAuth(api_key=API_KEY, var_name="key", location="query"), True),
        (ApiKeyAuth(api_key=API_KEY, var_name="key", location="query"), ApiKeyAuth(api_key="nope", var_name="key", location="query"), False),
        (ApiKeyAuth(api_key=API_KEY, var_name="sid", location="cookie"), ApiKeyAuth(api_key=API_KEY, var_name="sid", location="cookie"), True),
        (ApiKeyAuth(api_key=API_KEY, var_name="sid", location="cookie"), None, False),
        (BASIC, BASIC, True),
        (BASIC, BasicAuth(username="ann", password="no"), False),
        (BASIC, ApiKeyAuth(api_key="pw"), False),
    ],
)
async def test_auth_is_required_at_the_handshake(required: Any, sent: Any, ok: bool) -> None:
    """Each auth mode accepts the right credentials and refuses missing or wrong ones with 401."""
    async with tcp_tools(demo_app(auth=required)) as server:
        template = at(server, "echo", auth=sent)
        if ok:
            assert await call_tool(template, {"text": "hi"}) == {"echo": "hi"}
        else:
            with pytest.raises(HandshakeRejected) as info:
                await call_tool(template, {"text": "hi"})
            assert info.value.status_code == 401


async def test_basic_auth_refusal_carries_a_challenge(autojump_clock: Any) -> None:
    """A basic-auth server answers a handshake without credentials with 401 and WWW-Authenticate: Basic."""
    server = ToolServer(demo_app(auth=BASIC), ServerConfig(port=0))
    async with trio.open_nursery() as nursery:
        event = await RawClient(_served(nursery, server)).handshake("/tools/echo")
        assert isinstance(event, RejectConnection) and event.status_code == 401
        assert (b"www-authenticate", b'Basic realm="antiphon-tools"') in [(k.lower(), v) for k, v in event.headers]
        token = base64.b64encode(b"ann:pw").decode()
        ok = await RawClient(_served(nursery, server)).handshake("/tools/echo", [("Authorization", f"Basic {token}")])
        assert isinstance(ok, AcceptConnection)
        nursery.cancel_scope.cancel()


def _served(nursery: trio.Nursery, server: ToolServer) -> trio.abc.Stream:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, server_stream)
    return client_stream


async def test_sync_tool_runs_in_a_thread_and_does_not_block_the_event_loop() -> None:
    """A sync tool blocked on a threading.Event is released by another call served meanwhile."""
    flag = threading.Event()
    app = ToolApp()

    @app.tool
    def wait_for_flag() -> bool:
        return flag.wait(10)

    @app.tool
    async def set_flag() -> str:
        flag.set()
        return "set"

    results: dict[str, Any] = {}
    async with tcp_tools(app) as server:
        async with open_tool_client() as tools:

            async def waiter() -> None:
                results["wait"] = await tools.call(at(server, "wait_for_flag"), {})

            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                results["set"] = await tools.call(at(server, "set_flag"), {})
    assert results == {"wait": True, "set": "set"}


async def test_too_many_queued_calls_close_the_connection(autojump_clock: Any) -> None:
    """A client that queues more calls than max_queued_calls behind a slow one is closed with 1008."""
    server = ToolServer(demo_app(max_queued_calls=1), ServerConfig(port=0))
    async with trio.open_nursery() as nursery:
        client = RawClient(_served(nursery, server))
        assert isinstance(await client.handshake("/tools/slow"), AcceptConnection)
        for tag in "abc":
            await client.send_json({"seconds": 10, "tag": tag})
        close = await client.expect_close()
        assert close.code == 1008 and close.reason == "too many calls queued"
        nursery.cancel_scope.cancel()


# --- where the manual points (issue 12: never ws://0.0.0.0) -------------------------------


def _request(host: str | None, remote: str = "127.0.0.1:5") -> HandshakeRequest:
    headers = ((b"host", host.encode()),) if host is not None else ()
    return HandshakeRequest(target="/utcp", headers=headers, subprotocols=(), remote=remote)


@pytest.mark.parametrize(
    ("host", "base"),
    [
        ("127.0.0.1:8765", "ws://127.0.0.1:8765"),
        ("localhost:9", "ws://localhost:9"),
        ("[::1]:8765", "ws://[::1]:8765"),
        ("0.0.0.0:8765", "ws://127.0.0.1:8765"),
        ("[::]:8765", "ws://[::1]:8765"),
        ("evil.example/x?y", "ws://127.0.0.1:8765"),  # not a host[:port]: the listener's address instead
        (None, "ws://127.0.0.1:8765"),
        ("192.168.1.5:8765", None),  # plain ws:// to a remote host: no URL a UTCP client accepts
    ],
)
def test_the_manual_points_back_at_the_host_header_and_never_at_a_wildcard(
    host: str | None, base: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loopback Host header decides the manual's URLs; 0.0.0.0 and :: (Host or listener) become loopback."""
    server = ToolServer(demo_app(), ServerConfig(port=0))
    monkeypatch.setattr(ToolServer, "url", property(lambda self: "ws://0.0.0.0:8765"))  # bound to every interface
    assert server.manual_url(_request(host)) == base
    public = ToolServer(demo_app(public_url="wss://tools.example.com"), ServerConfig(port=0))
    assert public.manual_url(_request(host)) == "wss://tools.example.com"


@pytest.mark.parametrize(
    ("remote", "base"),
    [
        ("127.0.0.1:5", "ws://127.0.0.1:8765"),
        ("[::1]:5", "ws://127.0.0.1:8765"),
        ("?", "ws://127.0.0.1:8765"),  # no address (a memory stream): taken as local
        ("192.168.1.5:5", None),
        ("[2001:db8::1]:5", None),
    ],
)
def test_without_a_host_header_only_a_client_on_this_machine_gets_the_listener_address(
    remote: str, base: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Host: a loopback (or unknown) peer gets the listener's address; a peer on another machine gets None."""
    server = ToolServer(demo_app(), ServerConfig(port=0))
    monkeypatch.setattr(ToolServer, "url", property(lambda self: "ws://0.0.0.0:8765"))
    assert server.manual_url(_request(None, remote)) == base


async def test_a_client_the_manual_cannot_point_back_at_is_told_to_set_public_url(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: Any
) -> None:
    """When no usable URL exists, discovery answers a tool_error naming public_url instead of a manual."""
    server = ToolServer(demo_app(), ServerConfig(port=0))
    monkeypatch.setattr(server, "manual_url", lambda request: None)
    async with trio.open_nursery() as nursery:
        client = RawClient(_served(nursery, server))
        assert isinstance(await client.handshake("/utcp"), AcceptConnection)
        await client.send_text(DISCOVERY_REQUEST)
        reply = await client.receive_json()
        nursery.cancel_scope.cancel()
    assert reply["type"] == "tool_error" and "set public_url" in reply["error"]


def test_binding_beyond_loopback_without_public_url_or_auth_warns(caplog: pytest.LogCaptureFixture) -> None:
    """--host 0.0.0.0 without public_url, or without auth, logs a warning at start; loopback never does."""
    key = ApiKeyAuth(api_key=API_KEY)
    with caplog.at_level(logging.WARNING, logger="antiphon.tools.server"):
        ToolServer(demo_app(), ServerConfig(host="127.0.0.1", port=0))
        ToolServer(demo_app(public_url="wss://t.example", auth=key), ServerConfig(host="0.0.0.0", port=0))
        assert not caplog.records
        ToolServer(demo_app(auth=key), ServerConfig(host="0.0.0.0", port=0))
        ToolServer(demo_app(public_url="wss://t.example"), ServerConfig(host="::", port=0))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("tool server bound to 0.0.0.0 without public_url:")
    assert messages[1] == "tool server bound to :: without auth: anyone who reaches it can call every tool"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=10,
)
_APP = demo_app()


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(_APP.tools)), _json | st.dictionaries(st.sampled_from(["a", "b", "text", "n", "x"]), _json))
def test_any_json_arguments_bind_or_raise_argument_error(name: str, args: Any) -> None:
    """The server's argument check turns any decoded JSON into kwargs or an ArgumentError (sent as tool_error)."""
    try:
        kwargs = bind_arguments(_APP.tools[name], args)
    except ArgumentError as exc:
        assert str(exc)
        return
    assert kwargs == args
