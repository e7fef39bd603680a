"""Tool call timing on the autojump clock, over memory streams: timeouts, desync, streaming, order, heartbeat.

Only async tools here: a sync tool runs in a worker thread, and the autojump clock jumps
while a task waits for a thread, so it would time out in zero real time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from wsproto.events import AcceptConnection

from antiphon.engine.server import ServerConfig
from antiphon.errors import OperationTimeout, ReplyTooLarge, ToolCallError
from antiphon.proto.utcp.message import Handshake
from antiphon.tools import (
    ToolClient,
    ToolServer,
    WebSocketCallTemplate,
    open_tool_client,
)
from tests.helpers import RawClient
from tests.tools.conftest import demo_app, memory_opener


def tool(name: str, **kwargs: Any) -> WebSocketCallTemplate:
    return WebSocketCallTemplate(
        **{"name": name, "url": f"ws://127.0.0.1/tools/{name}", "response_format": "json", "timeout": 5, **kwargs}
    )


@asynccontextmanager
async def memory_tools() -> AsyncIterator[tuple[ToolClient, ToolServer, list[Handshake]]]:
    """A tool client whose every connection is served by a ToolServer over a memory stream pair."""
    server = ToolServer(demo_app(), ServerConfig(port=0))
    opened: list[Handshake] = []
    async with trio.open_nursery() as nursery:
        async with open_tool_client(opener=memory_opener(server, nursery, opened)) as tools:
            yield tools, server, opened
        nursery.cancel_scope.cancel()


async def test_timed_out_call_burns_its_connection_so_the_late_reply_is_never_read(autojump_clock: Any) -> None:
    """Call 1 times out at exactly t+5; call 2 (t+5..t+9) gets its own reply, not call 1's reply due at t+8."""
    async with memory_tools() as (tools, server, opened):
        t0 = trio.current_time()
        with pytest.raises(OperationTimeout, match="tool 'slow': no reply within 5 s"):
            await tools.call(tool("slow"), {"seconds": 8, "tag": "first"})
        assert trio.current_time() - t0 == 5
        assert await tools.call(tool("slow"), {"seconds": 4, "tag": "second"}) == "second"
        assert trio.current_time() - t0 == 9
        assert await tools.call(tool("slow"), {"seconds": 0, "tag": "third"}) == "third"
        assert len(opened) == 2  # the timed-out connection was replaced once, then reused


async def test_cancelled_call_also_burns_its_connection(autojump_clock: Any) -> None:
    """A call cancelled by the caller's own scope at t+2 leaves no reply behind for the next call."""
    async with memory_tools() as (tools, server, opened):
        with trio.move_on_after(2):
            await tools.call(tool("slow"), {"seconds": 3, "tag": "late"})
        assert await tools.call(tool("slow"), {"seconds": 2, "tag": "mine"}) == "mine"
        assert len(opened) == 2


async def test_streaming_timeout_applies_per_frame(autojump_clock: Any) -> None:
    """With timeout 5, frames 4 s apart stream for 8 s; a 6 s gap raises OperationTimeout 5 s after the last frame."""
    async with memory_tools() as (tools, server, opened):
        t0 = trio.current_time()
        async with tools.call_streaming(tool("count"), {"n": 3, "gap_s": 4}) as results:
            got = [(r, trio.current_time() - t0) async for r in results]
        assert got == [({"i": 0}, 0), ({"i": 1}, 4), ({"i": 2}, 8)]
        t1 = trio.current_time()
        seen: list[Any] = []
        with pytest.raises(OperationTimeout, match="no reply within 5 s"):
            async with tools.call_streaming(tool("count"), {"n": 2, "gap_s": 6}) as results:
                async for r in results:
                    seen.append(r)
        assert seen == [{"i": 0}] and trio.current_time() - t1 == 5
        # The abandoned stream's connection is gone: the next stream dials a new one and is not fed {"i": 1}.
        async with tools.call_streaming(tool("count"), {"n": 1}) as results:
            assert [r async for r in results] == [{"i": 0}]
        assert len(opened) == 2


async def test_leaving_a_stream_early_discards_the_connection(autojump_clock: Any) -> None:
    """Breaking out of a stream after one item: the rest is never read as the next call's reply."""
    async with memory_tools() as (tools, server, opened):
        async with tools.call_streaming(tool("count"), {"n": 5, "gap_s": 1}) as results:
            async for _ in results:
                break
        assert await tools.call(tool("echo"), {"text": "x"}) == {"echo": "x"}
        assert len(opened) == 2


async def test_idle_pooled_connection_is_kept_alive_by_the_heartbeat_and_reused(autojump_clock: Any) -> None:
    """A pooled connection idle for 300 s (pings every 20 s both ways) still serves the next call."""
    async with memory_tools() as (tools, server, opened):
        assert await tools.call(tool("echo"), {"text": "a"}) == {"echo": "a"}
        await trio.sleep(300)
        assert await tools.call(tool("echo"), {"text": "b"}) == {"echo": "b"}
        assert len(opened) == 1


async def test_keep_alive_false_connection_is_closed_after_the_call(autojump_clock: Any) -> None:
    """keep_alive=false: the server has no connection left once the call returned."""
    async with memory_tools() as (tools, server, opened):
        assert await tools.call(tool("echo", keep_alive=False), {"text": "x", "n": 2}) == {"echo": "xx"}
        with trio.fail_after(1):
            await server.wait_idle()
        assert server.connections == 0


async def test_server_answers_calls_on_one_connection_in_order(autojump_clock: Any) -> None:
    """Two frames sent at once (a 3 s call, then a 1 s call) are answered in order, at t+3 and t+4."""
    server = ToolServer(demo_app(), ServerConfig(port=0))
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_stream, server_stream)
        client = RawClient(client_stream)
        assert isinstance(await client.handshake("/tools/slow"), AcceptConnection)
        t0 = trio.current_time()
        await client.send_json({"seconds": 3, "tag": "a"})
        await client.send_json({"seconds": 1, "tag": "b"})
        assert await client.receive_json() == "a"
        assert trio.current_time() - t0 == 3
        assert await client.receive_json() == "b"
        assert trio.current_time() - t0 == 4
        nursery.cancel_scope.cancel()


# --- issue 10 #12: a plain call on a streaming tool ------------------------------------------


async def test_plain_call_then_stream_on_one_pooled_connection_reads_only_their_own_frames(autojump_clock: Any) -> None:
    """call() on a streaming tool collects the whole stream; the next call_streaming on the same socket gets its own."""
    async with memory_tools() as (tools, server, opened):
        assert await tools.call(tool("count"), {"n": 3, "gap_s": 1}) == [{"i": 0}, {"i": 1}, {"i": 2}]
        async with tools.call_streaming(tool("count"), {"n": 2}) as results:
            assert [r async for r in results] == [{"i": 0}, {"i": 1}]
        assert await tools.call(tool("count"), {"n": 1}) == [{"i": 0}]
        assert len(opened) == 1  # one connection throughout: nothing was left unread on it


async def test_stream_then_plain_call_on_one_pooled_connection_reads_only_their_own_frames(autojump_clock: Any) -> None:
    """call_streaming, then call() on the same streaming tool and socket: each call gets its own results."""
    async with memory_tools() as (tools, server, opened):
        async with tools.call_streaming(tool("count"), {"n": 2, "gap_s": 1}) as results:
            assert [r async for r in results] == [{"i": 0}, {"i": 1}]
        assert await tools.call(tool("count"), {"n": 3}) == [{"i": 0}, {"i": 1}, {"i": 2}]
        async with tools.call_streaming(tool("count"), {"n": 1}) as results:
            assert [r async for r in results] == [{"i": 0}]
        assert len(opened) == 1


async def test_collecting_a_stream_bigger_than_max_message_size_raises_and_burns_the_connection(autojump_clock: Any) -> None:
    """call() stops collecting past max_message_size bytes: ReplyTooLarge naming call_streaming, then a fresh socket."""
    server = ToolServer(demo_app(), ServerConfig(port=0))
    opened: list[Handshake] = []
    async with trio.open_nursery() as nursery:
        async with open_tool_client(opener=memory_opener(server, nursery, opened), max_message_size=150) as tools:
            with pytest.raises(ReplyTooLarge, match="exceeded this client's max_message_size \\(150 bytes\\).*call_streaming"):
                await tools.call(tool("count"), {"n": 50})
            assert await tools.call(tool("count"), {"n": 2}) == [{"i": 0}, {"i": 1}]
            assert len(opened) == 2
        nursery.cancel_scope.cancel()


async def test_call_results_yields_a_plain_reply_once_and_a_stream_item_by_item(autojump_clock: Any) -> None:
    """call_results: one result for a plain tool (no wait for more), each item of a stream as it arrives."""
    async with memory_tools() as (tools, server, opened):
        t0 = trio.current_time()
        async with tools.call_results(tool("echo"), {"text": "a"}) as results:
            assert [r async for r in results] == [{"echo": "a"}]
        assert trio.current_time() == t0  # ended at the plain reply, did not wait out the timeout
        async with tools.call_results(tool("count"), {"n": 3, "gap_s": 2}) as results:
            got = [(r, trio.current_time() - t0) async for r in results]
        assert got == [({"i": 0}, 0), ({"i": 1}, 2), ({"i": 2}, 4)]
        with pytest.raises(ToolCallError, match="bad arguments"):
            async with tools.call_results(tool("count"), {"n": "x"}) as results:
                [r async for r in results]
        assert len(opened) == 2  # echo and count: each connection reused, none burnt
