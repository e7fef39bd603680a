"""The gateway over real sockets on 127.0.0.1, with the independent `websockets` client."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing
import websockets
import websockets.sync.client
from websockets.exceptions import ConnectionClosed, InvalidStatus

from antiphon.chat import AgentReply, ChatSettings, Connector, Turn, open_chat
from antiphon.engine.server import ServerConfig
from antiphon.errors import ChatError, HandshakeError, HandshakeRejected
from antiphon.errors import ConnectionClosed as AntiphonConnectionClosed
from antiphon.proto.chat.messages import TokenUsage
from tests.chat.conftest import SECRET, connector, tcp_gateway

# The "Python Example" of the public Connic docs, verbatim but for the two placeholders.
PUBLIC_EXAMPLE = '''
import asyncio
import websockets
import json

async def chat():
    uri = "<websocket-url>"
    async with websockets.connect(uri) as ws:
        # Authenticate
        await ws.send(json.dumps({"secret": "<your-secret-key>"}))
        response = await ws.recv()
        print(f"Connected: {json.loads(response)}")

        # Send message
        await ws.send(json.dumps({"message": "Hello!"}))

        # Receive streaming response
        while True:
            msg = await ws.recv()
            data = json.loads(msg)
            if data["type"] == "stream_chunk":
                print(data["chunk"], end="", flush=True)
            elif data["type"] == "stream_end":
                print(f"\\nDone! Tokens: {data['token_usage']}")
                break

asyncio.run(chat())
'''


def run_public_example(url: str, secret: str) -> str:
    """Run the public example in this thread and return what it printed."""
    code = PUBLIC_EXAMPLE.replace("<websocket-url>", url).replace("<your-secret-key>", secret)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "public_example.py", "exec"), {"__name__": "__main__"})
    return out.getvalue()


def sync_session(url: str, **kwargs: Any) -> websockets.sync.client.ClientConnection:
    return websockets.sync.client.connect(url, open_timeout=5, close_timeout=5, **kwargs)


async def in_thread(fn: Any, *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args)


async def test_public_python_example_runs_unchanged() -> None:
    """The docs' Python example (asyncio websockets) authenticates, streams and prints token usage."""
    async with tcp_gateway() as gateway:
        printed = await in_thread(run_public_example, gateway.url, SECRET)
    lines = printed.splitlines()
    assert lines[0].startswith("Connected: {'type': 'connected', 'session_id': ")
    assert "'connector_run_id': " in lines[0] and "'agents': ['assistant']" in lines[0]
    assert lines[1] == "Turn 1. You said: 'Hello!'. This is the first message of our conversation."
    assert lines[2] == "Done! Tokens: {'prompt_tokens': 2, 'candidates_tokens': 19}"


@pytest.mark.parametrize(
    ("suffix", "headers"),
    [
        ("", {"X-Connic-Secret": SECRET}),
        ("", {"Authorization": f"Bearer {SECRET}"}),
        (f"?secret={SECRET}", {}),
        (f"?X-Connic-Secret={SECRET}", {}),
    ],
)
async def test_handshake_secret_authenticates_at_once(suffix: str, headers: dict[str, str]) -> None:
    """A right secret in header or query gets `connected` without a first message."""
    def scenario(url: str) -> dict[str, Any]:
        with sync_session(url + suffix, additional_headers=headers) as ws:
            return json.loads(ws.recv(timeout=5))

    async with tcp_gateway() as gateway:
        connected = await in_thread(scenario, gateway.url)
    assert connected["type"] == "connected" and connected["session_id"] == connected["connector_run_id"]


@pytest.mark.parametrize(
    ("suffix", "headers"),
    [("", {"X-Connic-Secret": "wrong"}), ("", {"Authorization": "Bearer wrong"}), ("?secret=wrong", {})],
)
async def test_wrong_handshake_secret_is_http_401(suffix: str, headers: dict[str, str]) -> None:
    """A wrong secret in header or query refuses the upgrade with HTTP 401."""
    def scenario(url: str) -> int:
        with pytest.raises(InvalidStatus) as info:
            sync_session(url + suffix, additional_headers=headers)
        return info.value.response.status_code

    async with tcp_gateway() as gateway:
        assert await in_thread(scenario, gateway.url) == 401


async def test_wrong_first_message_secret_gets_error_and_4401() -> None:
    """A wrong first-message secret gets an `auth_failed` error event, then close 4401."""
    def scenario(url: str) -> tuple[dict[str, Any], int | None]:
        with sync_session(url) as ws:
            ws.send(json.dumps({"secret": "wrong"}))
            error = json.loads(ws.recv(timeout=5))
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=5)
            return error, info.value.rcvd.code if info.value.rcvd else None

    async with tcp_gateway() as gateway:
        error, code = await in_thread(scenario, gateway.url)
    assert error == {"type": "error", "code": "auth_failed", "message": "invalid secret"}
    assert code == 4401


async def test_non_streaming_mode_sends_one_response() -> None:
    """With streaming off, a message gets an ack and then a single `response`."""
    def scenario(url: str) -> list[dict[str, Any]]:
        with sync_session(url) as ws:
            ws.send(json.dumps({"secret": SECRET}))
            ws.recv(timeout=5)
            ws.send(json.dumps({"type": "message", "id": "msg-001", "payload": {"message": "Hi"}}))
            return [json.loads(ws.recv(timeout=5)) for _ in range(2)]

    async with tcp_gateway(connector(streaming=False)) as gateway:
        ack, response = await in_thread(scenario, gateway.url)
    assert ack == {"type": "ack", "id": "msg-001", "message_number": 1, "seq": 1}
    assert response == {
        "type": "response",
        "id": "msg-001",
        "agent": "assistant",
        "response": "Turn 1. You said: 'Hi'. This is the first message of our conversation.",
        "token_usage": {"prompt_tokens": 1, "candidates_tokens": 18},
        "status": "completed",
        "seq": 2,
    }


async def test_library_client_ask_stream_and_history() -> None:
    """open_chat: ask returns the whole reply; the agent sees the earlier turns; stream yields chunks."""
    async with tcp_gateway() as gateway, open_chat(gateway.url, secret=SECRET) as chat:
        first = await chat.ask("Hello!")
        assert first.text == "Turn 1. You said: 'Hello!'. This is the first message of our conversation."
        chunks = [c async for c in chat.stream("And again")]
        assert len(chunks) > 3
        assert "".join(chunks) == "Turn 2. You said: 'And again'. Before that you said: 'Hello!'."


@pytest.mark.parametrize("auth", ["header", "query"])
async def test_library_client_wrong_handshake_secret_raises_401(auth: Any) -> None:
    """open_chat with a wrong header or query secret raises HandshakeRejected(401)."""
    async with tcp_gateway() as gateway:
        with pytest.raises(HandshakeRejected) as info:
            async with open_chat(gateway.url, secret="nope", auth=auth):
                pass  # pragma: no cover
    assert info.value.status_code == 401


async def test_library_client_wrong_message_secret_raises_chat_error() -> None:
    """open_chat with a wrong first-message secret raises ChatError('auth_failed')."""
    async with tcp_gateway() as gateway:
        with pytest.raises(ChatError) as info:
            async with open_chat(gateway.url, secret="nope"):
                pass  # pragma: no cover
    assert info.value.code == "auth_failed"


async def test_agent_failure_is_an_error_event_and_the_session_goes_on() -> None:
    """An agent that raises gets `agent_error` for that turn; the next turn works."""
    calls = 0

    async def flaky(turn: Turn) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("secret internals")
        return "fine"

    async with tcp_gateway(connector(flaky)) as gateway, open_chat(gateway.url, secret=SECRET) as chat:
        with pytest.raises(ChatError) as info:
            await chat.ask("one", id="m1")
        assert (info.value.code, info.value.id) == ("agent_error", "m1")
        assert "secret internals" not in info.value.message
        assert (await chat.ask("two")).text == "fine"


async def test_agent_reply_with_token_usage() -> None:
    """A coroutine agent returning AgentReply sets the reported token usage, not the estimate."""
    async def counted(turn: Turn) -> AgentReply:
        return AgentReply("ok", TokenUsage(45, 15))

    async with tcp_gateway(connector(counted)) as gateway, open_chat(gateway.url, secret=SECRET) as chat:
        reply = await chat.ask("q")
    assert (reply.text, reply.token_usage) == ("ok", TokenUsage(45, 15))


async def test_usage_reported_from_a_streaming_agent() -> None:
    """A streaming agent can report usage with turn.report_usage."""
    async def streaming(turn: Turn) -> AsyncIterator[str]:
        yield "a"
        turn.report_usage(7, 1)

    async with tcp_gateway(connector(streaming)) as gateway, open_chat(gateway.url, secret=SECRET) as chat:
        assert (await chat.ask("q")).token_usage == TokenUsage(7, 1)


async def test_agent_returning_non_text_is_an_agent_error() -> None:
    """An agent yielding something other than str fails its turn with `agent_error`."""
    async def wrong(turn: Turn) -> AsyncIterator[Any]:
        yield 42

    async with tcp_gateway(connector(wrong)) as gateway, open_chat(gateway.url, secret=SECRET) as chat:
        with pytest.raises(ChatError, match="agent_error"):
            await chat.ask("q")


async def test_connectors_are_mounted_by_path() -> None:
    """Each connector answers at its own path with its own secret; other paths get HTTP 404."""
    async def shout(turn: Turn) -> str:
        return turn.message.upper()

    a = Connector(settings=ChatSettings(secret="a"), path="/a")
    b = Connector(settings=ChatSettings(secret="b", streaming=False), agents={"shouter": shout}, path="/b")
    async with tcp_gateway([a, b]) as gateway:
        async with open_chat(gateway.url + "/b", secret="b") as chat:
            assert chat.connected is not None and chat.connected.agents == ("shouter",)
            assert (await chat.ask("hey")).text == "HEY"
        with pytest.raises(ChatError):
            async with open_chat(gateway.url + "/a", secret="b"):
                pass  # pragma: no cover
        with pytest.raises(HandshakeRejected) as info:
            async with open_chat(gateway.url + "/c", secret="a"):
                pass  # pragma: no cover
        assert info.value.status_code == 404


async def test_server_full_gets_error_and_1013() -> None:
    """Past max_connections a newcomer gets `server_full` and close 1013; the others are untouched."""
    def scenario(url: str) -> tuple[dict[str, Any], int | None]:
        with sync_session(url) as ws:
            error = json.loads(ws.recv(timeout=5))
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=5)
            return error, info.value.rcvd.code if info.value.rcvd else None

    async with tcp_gateway(server=ServerConfig(port=0, max_connections=1)) as gateway:
        async with open_chat(gateway.url, secret=SECRET) as chat:
            error, code = await in_thread(scenario, gateway.url)
            assert (await chat.ask("still here")).text.startswith("Turn 1.")
    assert error["code"] == "server_full" and code == 1013


async def test_message_too_big_closes_1009() -> None:
    """A frame over max_message_size closes the connection with 1009."""
    def scenario(url: str) -> int | None:
        with sync_session(url, max_size=None) as ws:
            ws.send(json.dumps({"secret": SECRET}))
            ws.recv(timeout=5)
            ws.send(json.dumps({"message": "x" * 2000}))
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    ws.recv(timeout=5)
            return info.value.rcvd.code if info.value.rcvd else None

    async with tcp_gateway(server=ServerConfig(port=0, max_message_size=1000)) as gateway:
        assert await in_thread(scenario, gateway.url) == 1009


async def test_malformed_frames_keep_the_session_open() -> None:
    """Bad JSON, unknown types and schema errors each get an error event; the session still works."""
    def scenario(url: str) -> list[dict[str, Any]]:
        with sync_session(url) as ws:
            ws.send(json.dumps({"secret": SECRET}))
            ws.recv(timeout=5)
            out = []
            for frame in ["{oops", '{"type": "dance"}', '{"type": "message", "payload": {"message": 5}}']:
                ws.send(frame)
                out.append(json.loads(ws.recv(timeout=5)))
            ws.send(json.dumps({"type": "ping"}))
            out.append(json.loads(ws.recv(timeout=5)))
            return out

    async with tcp_gateway() as gateway:
        errors = await in_thread(scenario, gateway.url)
    assert [e.get("code") for e in errors] == ["invalid_json", "unknown_type", "invalid_message", None]
    assert errors[2]["message"] == "$.payload.message: expected a string, got an integer"
    assert errors[3] == {"type": "pong"}


async def test_hundreds_of_sessions_leave_nothing_behind() -> None:
    """300 sessions, closed cleanly, dropped mid-turn, or cut mid-handshake: no connection, task or run remains."""
    fd_dir = "/proc/self/fd"

    async def never_ends(turn: Turn) -> AsyncIterator[str]:
        yield "x"
        await trio.sleep_forever()

    async def clean(url: str) -> None:
        async with open_chat(url, secret=SECRET) as chat:
            await chat.send("hi")
            await chat.receive()

    async def abrupt_mid_turn(url: str) -> None:
        host, port = url.removeprefix("ws://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        from tests.helpers import RawClient

        client = RawClient(stream)
        await client.handshake(f"/?secret={SECRET}")
        await client.receive_json()
        await client.send_json({"message": "go"})
        await client.receive_json()
        await stream.aclose()  # no close frame: the TCP connection just goes

    async def cut_handshake(url: str) -> None:
        host, port = url.removeprefix("ws://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        await stream.aclose()

    async with tcp_gateway(connector(never_ends, resume_grace_s=0)) as gateway:
        before = len(os.listdir(fd_dir))
        with trio.fail_after(30):
            for kind in (clean, abrupt_mid_turn, cut_handshake):
                async with trio.open_nursery() as nursery:
                    for _ in range(100):
                        nursery.start_soon(kind, gateway.url)
            await gateway.wait_idle()
            await trio.testing.wait_all_tasks_blocked()
        assert gateway.connections == 0
        assert gateway.sessions == set()
        assert gateway.handler_tasks == 0
        assert gateway.registry is not None and gateway.registry.runs == {}
        assert len(gateway.registry.nursery.child_tasks) == 0  # every run's tasks (and turn) ended
        assert len(os.listdir(fd_dir)) == before


async def test_graceful_shutdown_over_tcp_closes_with_1001() -> None:
    """shutdown() stops accepting and closes idle sessions with `server_shutdown` and 1001."""
    async with tcp_gateway() as gateway, open_chat(gateway.url, secret=SECRET) as chat:
        await gateway.shutdown()
        event = await chat.receive()
        assert getattr(event, "code", None) == "server_shutdown"
        with pytest.raises(AntiphonConnectionClosed) as info:
            await chat.receive()
        assert info.value.code == 1001
        with pytest.raises(HandshakeError):
            async with open_chat(gateway.url, secret=SECRET):
                pass  # pragma: no cover
