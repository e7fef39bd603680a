"""Hostile and broken tool clients against a real tool server on 127.0.0.1 (bounded, seconds not minutes).

A client that never reads a stream may cost the server only what the Limits table says
(measured with tracemalloc, not RSS); frames built to crash a tool cost at most their own
call, or their own connection; an abrupt drop leaves nothing behind.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import trio
import trio.testing
from wsproto.events import AcceptConnection, TextMessage

from antiphon.engine.session import SessionConfig
from antiphon.proto.close import CloseCode
from antiphon.tools import ToolApp, WebSocketCallTemplate, open_tool_client
from tests.helpers import RawClient
from tests.tools.conftest import demo_app, tcp_tools

PAD = "x" * 1000


async def _until_stalled(counter: list[int], *, rounds: int = 3, max_rounds: int = 20_000) -> None:
    """Return once ``counter[0]`` stayed the same over ``rounds`` moments where every task was blocked."""
    last, stable = -1, 0
    for _ in range(max_rounds):
        await trio.testing.wait_all_tasks_blocked()
        stable = stable + 1 if counter[0] == last else 0
        if stable >= rounds:
            return
        last = counter[0]
    raise AssertionError(f"the producer never stalled ({counter[0]} items)")


async def test_a_client_that_never_reads_a_stream_costs_the_server_only_its_send_buffer() -> None:
    """A stream of 1 KiB items to a non-reading client: the tool is paused and the heap grows less than the buffer bound."""
    produced = [0]
    finished = trio.Event()
    app = ToolApp()

    @app.tool
    async def firehose() -> AsyncIterator[dict[str, Any]]:
        try:
            while True:
                produced[0] += 1
                yield {"i": produced[0], "pad": PAD}
        finally:
            finished.set()

    high = SessionConfig().send_buffer_high_bytes
    frame_bytes = len('{"type": "tool_response", "result": {"i": 100000, "pad": ""}}') + len(PAD)
    # The documented bound (README, tool server limits): send() waits once send_buffer_high_bytes
    # are buffered for the peer. Measured here: that buffer (~64 KiB of frames) plus ~200 KiB of
    # Trio's stale deadline entries (one per-result timeout scope each; Trio prunes them past
    # 1000), so the bound is twice the buffer plus 64 frames plus 256 KiB, however many results.
    bound = 2 * high + 64 * frame_bytes + 256 * 1024
    async with tcp_tools(app) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        client = RawClient(stream)
        assert isinstance(await client.handshake("/tools/firehose"), AcceptConnection)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            await client.send_json({})
            await _until_stalled(produced)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert produced[0] * frame_bytes > high  # it really streamed, and filled the buffer and the socket
        assert grown < bound, f"heap grew {grown} bytes for {produced[0]} items; bound {bound}"
        # An abrupt drop (no close frame): the generator is closed and the connection released.
        await trio.aclose_forcefully(stream)
        with trio.fail_after(10):  # a hang guard, not a timing assertion
            await finished.wait()
            await server.wait_idle()
        assert server.connections == 0 and not server.sessions


async def test_frames_built_to_crash_the_server_cost_at_most_their_own_connection() -> None:
    """Bad UTF-8, 100k-deep JSON, wrong shapes, then a frame over the size limit: tool_errors, then 1009 for that client only."""
    async with tcp_tools(demo_app()) as server:
        echo = WebSocketCallTemplate(name="echo", url=f"{server.url}/tools/echo", response_format="json", timeout=10)
        async with open_tool_client() as tools:
            assert await tools.call(echo, {"text": "before"}) == {"echo": "before"}
            attacker = RawClient(await trio.open_tcp_stream("127.0.0.1", server.port))
            assert isinstance(await attacker.handshake("/tools/add"), AcceptConnection)
            await attacker.send_bytes(b"\xff\xfe not utf-8")
            await attacker.send_text("[" * 100_000)
            await attacker.send_json([1, 2])
            await attacker.send_json({"a": {"deep": [[[[[[]]]]]]}})
            await attacker.send_json({"a": 1, "b": 2})
            errors = [await attacker.receive_json() for _ in range(4)]
            assert [e["error"] for e in errors] == [
                "the arguments are not JSON text",
                "the arguments are not JSON text",
                "bad arguments: expected a JSON object of arguments, got an array",
                "bad arguments: argument 'a': expected integer, got an object",
            ]
            assert await attacker.receive_json() == 3  # the connection still answers
            # Meanwhile, and after, the well-behaved client is served as if nothing happened.
            assert await tools.call(echo, {"text": "during"}) == {"echo": "during"}
            # A frame whose header announces one byte over the limit: refused before its payload is read.
            oversized = attacker.ws.send(TextMessage(data="x" * (server.config.max_message_size + 1)))
            await attacker.stream.send_all(oversized[:128])
            close = await attacker.expect_close()
            assert close.code == CloseCode.MESSAGE_TOO_BIG
            assert await tools.call(echo, {"text": "after"}) == {"echo": "after"}
            await trio.aclose_forcefully(attacker.stream)
        with trio.fail_after(10):  # hang guard
            await server.wait_idle()
        assert server.connections == 0
