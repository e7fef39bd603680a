"""The released ``utcp`` + ``utcp-websocket`` client calling antiphon's tool server over a real socket.

The UTCP client is asyncio (aiohttp); it runs in a worker thread under ``asyncio.run``
while the Trio test serves. Upstream discovery is broken (utcp-websocket 1.2.1 fails every
``register_manual`` with a validation error of its own result type), so the manual is
handed to the client's tool repository with ``save_manual``, as the plugin notes' section
5 (B1) does. ``utcp`` runs ``logging.basicConfig`` on import: it is imported inside the
test and the root logger is restored afterwards.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from antiphon.engine.server import Accept, HandshakeRequest, Reject, ServerConfig
from antiphon.proto.utcp.templates import encode_manual
from antiphon.tools import ApiKeyAuth, ToolApp, ToolServer
from tests.tools.conftest import API_KEY, demo_app

pytestmark = pytest.mark.slow


class RecordingToolServer(ToolServer):
    """A ToolServer that remembers every handshake it routed."""

    def __init__(self, app: ToolApp) -> None:
        super().__init__(app, ServerConfig(port=0))
        self.handshakes: list[HandshakeRequest] = []

    def _route(self, request: HandshakeRequest, *, full: bool) -> Accept | Reject:
        self.handshakes.append(request)
        return super()._route(request, full=full)


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def utcp_manual(app: ToolApp, base_url: str) -> dict[str, Any]:
    """antiphon's own manual, with one tool given a message template and a static header."""
    manual = encode_manual(app.manual(base_url))
    for tool in manual["tools"]:
        if tool["name"] == "echo":
            tool["tool_call_template"]["message"] = '{"text": "UTCP_ARG_text_UTCP_ARG", "n": UTCP_ARG_n_UTCP_ARG}'
            tool["tool_call_template"]["headers"] = {"X-Static": "static-value"}
    return manual


def run_utcp_client(manual: dict[str, Any], base_url: str, secret: str) -> dict[str, Any]:
    """In a worker thread: register the manual with save_manual and call three tools."""
    from utcp.data.call_template import CallTemplateSerializer
    from utcp.data.utcp_manual import UtcpManualSerializer
    from utcp.utcp_client import UtcpClient

    async def scenario() -> dict[str, Any]:
        # UTCP namespaces ${ANTIPHON_TOOLS_SECRET} in manual "local_ws" as local__ws_ANTIPHON_TOOLS_SECRET.
        client = await UtcpClient.create(config={"variables": {"local__ws_ANTIPHON_TOOLS_SECRET": secret}})
        try:
            manual_template = CallTemplateSerializer().validate_dict(
                {"name": "local_ws", "call_template_type": "websocket", "url": base_url + "/utcp"}
            )
            renamed = dict(manual, tools=[dict(t, name=f"local_ws.{t['name']}") for t in manual["tools"]])
            await client.config.tool_repository.save_manual(manual_template, UtcpManualSerializer().validate_dict(renamed))
            out: dict[str, Any] = {}
            out["add"] = await client.call_tool("local_ws.add", {"a": 2, "b": 3})
            out["add_again"] = await client.call_tool("local_ws.add", {"a": 40})
            out["echo"] = await client.call_tool("local_ws.echo", {"text": 'hi "there"', "n": 2})
            out["count"] = [x async for x in client.call_tool_streaming("local_ws.count", {"n": 3})]
            out["bad"] = await client.call_tool("local_ws.add", {"a": "two"})
            return out
        finally:
            await client.close()

    return asyncio.run(scenario())


@pytest.mark.usefixtures("restore_root_logger")
async def test_real_utcp_client_calls_antiphon_tools_with_template_headers_subprotocol_and_api_key() -> None:
    """utcp 1.2.0 + utcp-websocket 1.2.1 get the right results from antiphon's tool server over TCP."""
    app = demo_app(auth=ApiKeyAuth(api_key=API_KEY), subprotocols=("utcp-v1",))
    server = RecordingToolServer(app)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        manual = utcp_manual(app, server.url)
        out = await trio.to_thread.run_sync(run_utcp_client, manual, server.url, API_KEY)
        await server.shutdown(1)
    assert out["add"] == 5 and out["add_again"] == 42
    assert out["echo"] == {"echo": 'hi "there"hi "there"'}
    assert out["count"] == [{"i": 0}, {"i": 1}, {"i": 2}]
    # UTCP does not raise on tool_error in a plain call: it returns the object.
    assert out["bad"] == {"type": "tool_error", "error": "bad arguments: argument 'a': expected integer, got a string"}
    by_path: dict[str, list[HandshakeRequest]] = {}
    for h in server.handshakes:
        by_path.setdefault(h.path, []).append(h)
    assert sorted(by_path) == ["/tools/add", "/tools/count", "/tools/echo"]
    assert len(by_path["/tools/add"]) == 1  # UTCP pooled the socket for the second and third add calls
    echo = by_path["/tools/echo"][0]
    assert echo.header("X-Api-Key") == API_KEY
    assert echo.header("X-Static") == "static-value"
    assert echo.subprotocols == ("utcp-v1",)


@pytest.mark.usefixtures("restore_root_logger")
async def test_real_utcp_client_without_the_api_key_is_refused() -> None:
    """The same client with a wrong key is refused at the handshake (401) and gets no result."""
    app = demo_app(auth=ApiKeyAuth(api_key=API_KEY))
    server = RecordingToolServer(app)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        manual = utcp_manual(app, server.url)
        with pytest.raises(Exception) as info:
            await trio.to_thread.run_sync(run_utcp_client, manual, server.url, "wrong")
        await server.shutdown(1)
    assert "401" in str(info.value)
    assert server.handshakes and server.handshakes[0].header("X-Api-Key") == "wrong"



def _readme_utcp_snippet() -> str:
    """The first python block of the README's "UTCP users" section, as written."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("### UTCP users") :]
    return section[section.index("```python\n") + len("```python\n") : section.index("\n```", section.index("```python"))]


@pytest.mark.usefixtures("restore_root_logger")
async def test_the_readme_snippet_for_utcp_users_registers_and_calls_antiphon_tools(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's UTCP-users snippet, run against the real utcp 1.2.0 client, calls add and streams count."""
    snippet = _readme_utcp_snippet()
    assert 'TOOLS_URL = "ws://127.0.0.1:8765"' in snippet
    monkeypatch.setenv("ANTIPHON_TOOLS_SECRET", API_KEY)
    app = demo_app(auth=ApiKeyAuth(api_key=API_KEY))
    async with trio.open_nursery() as nursery:
        server = await nursery.start(ToolServer(app, ServerConfig(port=0)).run)
        code = snippet.replace('"ws://127.0.0.1:8765"', repr(server.url))
        await trio.to_thread.run_sync(lambda: exec(compile(code, "README.md", "exec"), {"__name__": "readme"}))
        await server.shutdown(1)
    assert capsys.readouterr().out.splitlines() == ["5", "{'i': 0}", "{'i': 1}", "{'i': 2}"]
