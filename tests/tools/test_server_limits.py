"""The tool server's bounds on one call: timeouts, its own thread pool, reply size, ToolError, crash containment.

Over memory streams. Sync tools run in real threads, so the test that hangs them uses
``mock_clock`` (time moves only when the test jumps it): the autojump clock would jump
while a task waits for a thread that is merely slow to report back.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from wsproto.events import AcceptConnection, TextMessage

from antiphon.engine.server import ServerConfig
from antiphon.errors import ConfigError, ToolCallError, ToolError
from antiphon.proto.utcp.message import Handshake
from antiphon.tools import (
    ToolApp,
    ToolClient,
    ToolServer,
    WebSocketCallTemplate,
    open_tool_client,
)
from antiphon.tools.app import CALL_TIMEOUT_S, MAX_THREADS, MAX_THREADS_PER_TOOL
from tests.helpers import RawClient
from tests.tools.conftest import demo_app, memory_opener


def tool(name: str, **kwargs: Any) -> WebSocketCallTemplate:
    return WebSocketCallTemplate(
        **{"name": name, "url": f"ws://127.0.0.1/tools/{name}", "response_format": "json", "timeout": 300, **kwargs}
    )


@asynccontextmanager
async def serving(app: ToolApp) -> AsyncIterator[tuple[ToolClient, ToolServer, list[Handshake]]]:
    server = ToolServer(app, ServerConfig(port=0))
    opened: list[Handshake] = []
    async with trio.open_nursery() as nursery:
        async with open_tool_client(opener=memory_opener(server, nursery, opened)) as tools:
            yield tools, server, opened
        nursery.cancel_scope.cancel()


async def _error(tools: ToolClient, template: WebSocketCallTemplate, args: dict[str, Any]) -> Any:
    with pytest.raises(ToolCallError) as info:
        await tools.call(template, args)
    return info.value.error


# --- issue 10 #4: hung sync tools --------------------------------------------------------


async def test_hung_sync_tools_get_tool_error_at_60_s_and_other_sync_tools_still_answer(mock_clock: Any) -> None:
    """41 calls of a sync tool that never returns: each gets tool_error at exactly +60 s, and another sync tool answers."""
    release = threading.Event()
    app = ToolApp()  # the defaults: 60 s per call, 40 threads, 16 per tool

    @app.tool
    def hang() -> str:
        release.wait()
        return "late"

    @app.tool
    def add(a: int, b: int) -> int:
        return a + b

    errors: list[tuple[Any, float]] = []
    try:
        async with serving(app) as (tools, server, _):

            async def hung_call() -> None:
                # keep_alive=False: a connection each, so the 41 calls are concurrent.
                errors.append((await _error(tools, tool("hang", keep_alive=False), {}), trio.current_time()))

            async with trio.open_nursery() as nursery:
                for _ in range(MAX_THREADS + 1):
                    nursery.start_soon(hung_call)
                await trio.testing.wait_all_tasks_blocked()
                t0 = trio.current_time()
                # The hung tool holds its share of the server's own pool, no more.
                assert server.threads_in_use == MAX_THREADS_PER_TOOL < MAX_THREADS
                mock_clock.jump(CALL_TIMEOUT_S)
                await trio.testing.wait_all_tasks_blocked()
                assert errors == [("the tool did not answer within 60 s", t0 + 60)] * (MAX_THREADS + 1)
            assert await tools.call(tool("add"), {"a": 2, "b": 3}) == 5
            # A sync tool ignores cancellation: the timed-out threads still run, and still count.
            assert server.threads_in_use == MAX_THREADS_PER_TOOL
    finally:
        release.set()


async def test_threads_are_the_servers_own_not_trios_default_limiter(mock_clock: Any) -> None:
    """A hung sync tool takes no token of Trio's process-wide limiter (which DNS lookups use too)."""
    release = threading.Event()
    app = ToolApp(max_threads=3, max_threads_per_tool=2)

    @app.tool
    def hang() -> None:
        release.wait()

    try:
        async with serving(app) as (tools, server, _):
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(tools.call, tool("hang", keep_alive=False), {})
                await trio.testing.wait_all_tasks_blocked()
                assert server.threads_in_use == 2
                assert trio.to_thread.current_default_thread_limiter().borrowed_tokens == 0
                nursery.cancel_scope.cancel()
    finally:
        release.set()


async def test_an_async_tool_past_its_timeout_is_cancelled_and_the_connection_takes_the_next_call(autojump_clock: Any) -> None:
    """call_timeout_s=5: an 8 s call gets tool_error at exactly +5; the same connection answers the next call."""
    async with serving(demo_app(call_timeout_s=5)) as (tools, _, opened):
        t0 = trio.current_time()
        assert await _error(tools, tool("slow"), {"seconds": 8, "tag": "late"}) == "the tool did not answer within 5 s"
        assert trio.current_time() - t0 == 5
        assert await tools.call(tool("slow"), {"seconds": 1, "tag": "next"}) == "next"
        assert trio.current_time() - t0 == 6
        assert len(opened) == 1


async def test_a_streaming_tool_gets_the_timeout_for_each_result(autojump_clock: Any) -> None:
    """call_timeout_s=5: results 4 s apart stream for 8 s; a 6 s gap ends the stream with tool_error at +5."""
    async with serving(demo_app(call_timeout_s=5)) as (tools, _, opened):
        t0 = trio.current_time()
        assert await tools.call(tool("count"), {"n": 3, "gap_s": 4}) == [{"i": 0}, {"i": 1}, {"i": 2}]
        assert trio.current_time() - t0 == 8
        got: list[Any] = []
        with pytest.raises(ToolCallError) as info:
            async with tools.call_streaming(tool("count"), {"n": 2, "gap_s": 6}) as results:
                async for item in results:
                    got.append(item)
        assert got == [{"i": 0}] and info.value.error == "the tool produced no result within 5 s"
        assert trio.current_time() - t0 == 13
        assert len(opened) == 1


async def test_a_tools_own_timeout_replaces_the_apps_and_the_manual_advertises_each(autojump_clock: Any) -> None:
    """@app.tool(timeout_s=2) times out at 2 s; the manual says 2+5 for it, 60+5 for the others, 30 with none."""
    app = demo_app()

    @app.tool(timeout_s=2)
    async def quick(seconds: float) -> str:
        await trio.sleep(seconds)
        return "ok"

    @app.tool(timeout_s=math.inf)
    async def unbounded() -> str:
        return "ok"

    async with serving(app) as (tools, _, _opened):
        t0 = trio.current_time()
        assert await _error(tools, tool("quick"), {"seconds": 3}) == "the tool did not answer within 2 s"
        assert trio.current_time() - t0 == 2
    timeouts = {t.name: t.tool_call_template.timeout for t in app.manual("ws://127.0.0.1:1").tools}
    assert timeouts["quick"] == 7 and timeouts["add"] == 65 and timeouts["unbounded"] == 30
    assert {t.tool_call_template.timeout for t in demo_app(timeout_s=12).manual("ws://127.0.0.1:1").tools} == {12}
    with pytest.raises(ConfigError, match="timeout_s: must be a positive number"):
        app.add(lambda: None, name="bad", timeout_s=0)
    with pytest.raises(ConfigError, match="max_threads_per_tool: must be at least 1"):
        ToolApp(max_threads_per_tool=0)


# --- ToolError and masked exceptions -----------------------------------------------------


def _erroring_app(**settings: Any) -> ToolApp:
    app = ToolApp(**settings)

    @app.tool
    async def weather(city: str) -> dict[str, Any]:
        raise ToolError(f"city not found: {city}")

    @app.tool
    def lookup(key: str) -> str:
        raise ToolError("no such key")

    @app.tool
    async def leak() -> None:
        raise KeyError("/etc/secret-path")

    @app.tool
    async def partial(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i
        raise ToolError(f"ran out after {n}")

    return app


@pytest.mark.parametrize("expose", [False, True])
async def test_tool_error_text_always_reaches_the_peer_other_exceptions_stay_masked(expose: bool) -> None:
    """ToolError's text is sent as it is (sync, async, mid-stream); a KeyError is named by type unless expose_errors."""
    # No autojump clock: `lookup` is a sync tool, and the clock would jump while its thread runs.
    async with serving(_erroring_app(expose_errors=expose)) as (tools, _, _opened):
        assert await _error(tools, tool("weather"), {"city": "Atlantis"}) == "city not found: Atlantis"
        assert await _error(tools, tool("lookup"), {"key": "k"}) == "no such key"
        leaked = await _error(tools, tool("leak"), {})
        assert leaked == ("KeyError: '/etc/secret-path'" if expose else "the tool raised KeyError")
        got: list[Any] = []
        with pytest.raises(ToolCallError) as info:
            async with tools.call_streaming(tool("partial"), {"n": 2}) as results:
                async for item in results:
                    got.append(item)
        assert got == [0, 1] and info.value.error == "ran out after 2"


# --- reply size and crash containment ----------------------------------------------------


async def test_a_reply_over_max_reply_bytes_is_a_tool_error(autojump_clock: Any) -> None:
    """max_reply_bytes=100: a 200-byte result, or streamed item, is answered with tool_error saying the sizes."""
    async with serving(demo_app(max_reply_bytes=100)) as (tools, _, _opened):
        error = await _error(tools, tool("echo"), {"text": "x" * 200})
        assert error == "the reply is 212 bytes, over this server's max_reply_bytes (100)"
        assert await tools.call(tool("echo"), {"text": "fits"}) == {"echo": "fits"}


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


def _crashing_app() -> ToolApp:
    app = ToolApp(expose_errors=True)

    @app.tool
    async def deep() -> Any:
        value: Any = []
        for _ in range(100_000):
            value = [value]
        return value  # json.dumps raises RecursionError

    @app.tool
    async def deep_stream() -> AsyncIterator[Any]:
        value: Any = []
        for _ in range(100_000):
            value = [value]
        yield value

    @app.tool
    async def unprintable() -> None:
        raise _Unprintable

    @app.tool
    def bye() -> None:
        sys.exit(3)  # SystemExit from a worker thread

    @app.tool
    async def ok() -> str:
        return "ok"

    return app


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("deep", "the tool returned a value that is not JSON"),
        ("deep_stream", "the tool produced a value that is not JSON"),
        ("unprintable", "_Unprintable: <_Unprintable whose text cannot be shown>"),
        ("bye", "SystemExit: 3"),
    ],
)
async def test_a_call_that_crashes_fails_alone_and_its_connection_takes_the_next_call(name: str, error: str) -> None:
    """Each crash is one tool_error; the same connection is called again, and another tool answers meanwhile."""
    async with serving(_crashing_app()) as (tools, server, opened):
        for _ in range(2):
            assert await _error(tools, tool(name), {}) == error
        assert await tools.call(tool("ok"), {}) == "ok"
        assert len(opened) == 2  # one connection per tool, both still open
        assert len(server.sessions) == 2


async def test_a_stream_that_never_awaits_stops_once_its_session_closes(autojump_clock: Any) -> None:
    """A generator with no await inside, its session closing while the send buffer has room: it is stopped at once."""
    produced = [0]
    finished = trio.Event()
    app = ToolApp(max_queued_calls=1)

    @app.tool
    async def spin() -> AsyncIterator[int]:
        try:
            while produced[0] < 100_000:  # a guard: on failure the test ends instead of hanging
                produced[0] += 1
                yield produced[0]
        finally:
            finished.set()

    server = ToolServer(app, ServerConfig(port=0))
    async with trio.open_nursery() as nursery:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        nursery.start_soon(server.serve_stream, server_stream)
        client = RawClient(client_stream)
        assert isinstance(await client.handshake("/tools/spin"), AcceptConnection)
        # The call, and two more behind it: one too many queued, so the server closes (1008).
        await client.stream.send_all(b"".join(client.ws.send(TextMessage(data="{}")) for _ in range(3)))
        with trio.fail_after(60):
            await finished.wait()
        assert produced[0] <= 2
        nursery.cancel_scope.cancel()
