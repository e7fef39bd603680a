"""The server's connection log lines (caplog): a line per session opened and closed and per refusal; no secrets."""

from __future__ import annotations

import json
import logging

import pytest
import trio
from websockets.trio.client import connect

from antiphon.chat import open_chat
from antiphon.engine.server import ServerConfig
from antiphon.errors import HandshakeRejected
from antiphon.tools import ApiKeyAuth, ToolServer
from tests.chat.conftest import tcp_gateway
from tests.tools.conftest import API_KEY, demo_app

SERVER_LOGGER = "antiphon.server"


def server_lines(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == SERVER_LOGGER and r.levelno >= level]


async def test_a_session_is_one_line_opened_and_one_closed(caplog: pytest.LogCaptureFixture) -> None:
    """A tool call's connection logs `opened` and `closed` at INFO, with remote, path, face, close code and duration."""
    caplog.set_level(logging.INFO)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(ToolServer(demo_app(), ServerConfig(port=0)).run)
        async with connect(f"{server.url}/tools/add", open_timeout=10) as ws:
            await ws.send(json.dumps({"a": 1}))
            await ws.recv()
        with trio.fail_after(10):
            await server.wait_idle()
        nursery.cancel_scope.cancel()
    opened, closed = server_lines(caplog)
    assert opened.getMessage().startswith("session ") and " opened: 127.0.0.1:" in opened.getMessage()
    assert opened.getMessage().endswith(" /tools/add (tools)")
    assert (
        " closed: 127.0.0.1:" in closed.getMessage()
        and " /tools/add (tools) 1000 by the peer after " in closed.getMessage()
    )
    fields = vars(closed)
    assert (fields["path"], fields["face"], fields["close_code"], fields["closed_by_peer"]) == (
        "/tools/add",
        "tools",
        1000,
        True,
    )
    assert (
        fields["remote"].startswith("127.0.0.1:")
        and fields["duration_s"] >= 0
        and fields["session"] == vars(opened)["session"]
    )


@pytest.mark.parametrize("auth", ["header", "query"])
async def test_a_refused_handshake_is_one_line_with_its_reason_and_never_the_secret(
    caplog: pytest.LogCaptureFixture, auth: str
) -> None:
    """A wrong secret in a header or the query string: one INFO line naming status and reason; the secret is nowhere."""
    caplog.set_level(logging.DEBUG)
    wrong = "wr0ng-but-still-a-secret"
    async with tcp_gateway() as gateway:
        with pytest.raises(HandshakeRejected):
            async with open_chat(gateway.url + "/?x=1", secret=wrong, auth=auth):  # type: ignore[arg-type]
                pass
    (refused,) = server_lines(caplog)
    assert refused.getMessage().endswith(" / (chat) 401 invalid secret")
    assert (vars(refused)["status"], vars(refused)["path"]) == (401, "/")
    assert all(wrong not in r.getMessage() and wrong not in str(vars(r)) for r in caplog.records)


async def test_debug_shows_no_frames_and_no_handshake_headers(caplog: pytest.LogCaptureFixture) -> None:
    """At DEBUG, without the CLI's logging setup: no websockets handshake or frame line; 5 or 50 calls, same lines."""
    caplog.set_level(logging.DEBUG)
    counts = []
    for calls in (5, 50):
        caplog.clear()
        async with trio.open_nursery() as nursery:
            app = demo_app(auth=ApiKeyAuth(api_key=API_KEY, var_name="X-Api-Key"))
            server = await nursery.start(ToolServer(app, ServerConfig(port=0)).run)
            async with connect(
                f"{server.url}/tools/add", additional_headers={"X-Api-Key": API_KEY}, open_timeout=10
            ) as ws:
                for i in range(calls):
                    await ws.send(json.dumps({"a": i}))
                    await ws.recv()
            with trio.fail_after(10):
                await server.wait_idle()
            nursery.cancel_scope.cancel()
        ours = [r for r in caplog.records if r.name.startswith("antiphon")]
        server_side = [
            r for r in caplog.records if not r.name.startswith("websockets.client")
        ]  # the test's peer logs its own
        assert ours and all(API_KEY not in r.getMessage() for r in server_side)
        assert not [r for r in caplog.records if r.name.startswith("antiphon.wire")]
        counts.append(len(ours))
    assert counts[0] == counts[1]


async def test_a_clients_path_cannot_write_control_characters_into_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """An escape sequence in the request path is logged escaped (the refusal line), never raw."""
    caplog.set_level(logging.INFO)
    async with tcp_gateway() as gateway:
        with trio.fail_after(10):
            async with await trio.open_tcp_stream("127.0.0.1", gateway.port) as stream:
                await stream.send_all(
                    b"GET /\x1b[2Jgone HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                )
                assert (await stream.receive_some()).startswith(b"HTTP/1.1 404")
    (refused,) = server_lines(caplog)
    assert "\x1b" not in refused.getMessage() and "/\\x1b[2Jgone (chat) 404" in refused.getMessage()
