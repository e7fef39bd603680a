"""permessage-deflate: negotiated only when configured (server and client), inflation bounded, real-client interop."""

from __future__ import annotations

import functools
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import trio
import trio.testing
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.sync.client import connect as sync_connect

from antiphon.engine.connect import connect_websocket
from antiphon.engine.server import (
    Accept,
    HandshakeRequest,
    Reject,
    ServerConfig,
    SessionServer,
)
from antiphon.engine.session import SessionConfig
from antiphon.engine.wire import WebSocketWire
from antiphon.proto.close import CloseCode
from tests.engine.harness import Echo, streams
from tests.engine.rawframes import FrameClient, frame

MIB = 1024 * 1024
DEFLATE = ServerConfig(port=0, compression="deflate")


def negotiated(response: Response) -> str | None:
    value: str | None = response.headers.get("Sec-WebSocket-Extensions")
    return value


async def test_deflate_is_not_negotiated_unless_the_server_is_configured(autojump_clock: Any) -> None:
    """A server without compression ignores a client's deflate offer; a compressed frame then gets 1002."""
    async with streams(Echo) as (_, connect):
        client = FrameClient(connect(), extensions=[ClientPerMessageDeflateFactory()])
        assert negotiated(await client.handshake()) is None
        await client.send_raw(frame(0x1, zlib.compress(b"hello")[2:-4], rsv=0b100))
        assert (await client.expect_close()).code == CloseCode.PROTOCOL_ERROR


async def test_deflate_is_negotiated_when_configured_and_offered(autojump_clock: Any) -> None:
    """compression="deflate" accepts the offer; compressed messages round-trip."""
    async with streams(Echo, server_config=DEFLATE) as (_, connect):
        client = FrameClient(connect(), extensions=[ClientPerMessageDeflateFactory()])
        assert (negotiated(await client.handshake()) or "").startswith("permessage-deflate")
        assert [type(e) for e in client.protocol.extensions] == [PerMessageDeflate]
        await client.send_text("ab" * 5000)
        echoed = await client.next_frame()
        assert (echoed.opcode, echoed.data) == (Opcode.TEXT, b"ab" * 5000)


async def test_a_deflate_server_does_not_compress_for_a_client_that_did_not_offer(autojump_clock: Any) -> None:
    """compression="deflate" only answers offers: a client without one gets no extension and plain frames."""
    async with streams(Echo, server_config=DEFLATE) as (_, connect):
        client = FrameClient(connect())
        assert negotiated(await client.handshake()) is None
        await client.send_text("plain")
        echoed = await client.next_frame()
        assert (echoed.rsv1, echoed.data) == (False, b"plain")


async def _dial(connect: Callable[[], trio.abc.Stream], compression: str | None) -> WebSocketWire:
    stream = connect()

    async def open_stream() -> trio.abc.Stream:
        opened: trio.abc.Stream = stream
        return opened

    return await connect_websocket("ws://localhost/", open_stream=open_stream, compression=compression)


async def test_the_client_offers_deflate_only_when_asked(autojump_clock: Any) -> None:
    """connect_websocket(compression="deflate") negotiates it with a deflate server; by default it does not offer."""
    async with streams(Echo, server_config=DEFLATE) as (_, connect):
        with_deflate = await _dial(connect, "deflate")
        without = await _dial(connect, None)
        assert [type(e) for e in with_deflate.protocol.extensions] == [PerMessageDeflate]
        assert without.protocol.extensions == []
        for wire in (with_deflate, without):
            wire.send_message("round trip")
            await wire.drain()  # a stream transport never writes without waiting
            assert await wire.receive() == ["round trip"]
            await wire.aclose()


async def test_a_client_offer_to_a_plain_server_falls_back_to_no_compression(autojump_clock: Any) -> None:
    """connect_websocket(compression="deflate") to a server without it connects uncompressed."""
    async with streams(Echo) as (_, connect):
        wire = await _dial(connect, "deflate")
        assert wire.protocol.extensions == []
        wire.send_message(b"\x00\x01")
        await wire.drain()
        assert await wire.receive() == [b"\x00\x01"]
        await wire.aclose()


def deflate_bomb(inflated_bytes: int) -> bytes:
    """A raw-deflate stream (as permessage-deflate carries it) of ``inflated_bytes`` zeros, built in 1 MiB steps."""
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    chunk = b"\x00" * MIB
    parts = [compressor.compress(chunk) for _ in range(inflated_bytes // MIB)]
    parts.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    return b"".join(parts)[:-4]  # permessage-deflate drops the sync flush's 00 00 ff ff


async def test_a_decompression_bomb_gets_1009_and_memory_stays_bounded() -> None:
    """A 64 KiB frame inflating to 64 MiB, against a 1 MiB limit, gets 1009; the server never holds more than a few MiB."""
    bomb = deflate_bomb(64 * MIB)
    assert len(bomb) < MIB // 8  # small enough to pass the frame-length check: only inflation can stop it
    handler = Echo()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        async with streams(lambda: handler, server_config=ServerConfig(port=0, max_message_size=MIB, compression="deflate")) as (
            server,
            connect,
        ):
            client = FrameClient(connect(), extensions=[ClientPerMessageDeflateFactory()])
            assert negotiated(await client.handshake()) is not None
            await client.send_raw(frame(0x2, bomb, rsv=0b100))
            assert (await client.expect_close()).code == CloseCode.MESSAGE_TOO_BIG
            await server.wait_idle()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert handler.closed == (CloseCode.MESSAGE_TOO_BIG, False)
    assert handler.received == []
    assert peak < 8 * MIB, f"peak {peak / MIB:.1f} MiB while refusing a 64 MiB bomb"


async def test_round_trip_with_a_real_websockets_client_and_compression() -> None:
    """websockets' sync client (deflate on by default) negotiates permessage-deflate with the engine over 127.0.0.1 and round-trips."""
    server_side: list[Echo] = []

    def route(request: HandshakeRequest, *, full: bool) -> Accept | Reject:
        server_side.append(Echo())
        return Accept(server_side[-1])

    server = SessionServer(route, ServerConfig(host="127.0.0.1", port=0, compression="deflate"), SessionConfig(ping_interval_s=None))
    big_text = "antiphon " * 20_000  # 180 KB, compressible

    def client(url: str) -> tuple[list[str | bytes], str | None]:
        with sync_connect(url, open_timeout=10, close_timeout=10) as ws:
            assert ws.response is not None
            extension = ws.response.headers.get("Sec-WebSocket-Extensions")
            echoes = []
            for message in (big_text, b"\x00\xff" * 1000, "é" * 10):
                ws.send(message)
                echoes.append(ws.recv(timeout=10))
            return echoes, extension

    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        echoes, extension = await trio.to_thread.run_sync(functools.partial(client, server.url))
        await server.wait_idle()
        nursery.cancel_scope.cancel()
    assert echoes == [big_text, b"\x00\xff" * 1000, "é" * 10]
    assert extension is not None and extension.startswith("permessage-deflate")
    assert server_side[0].closed == (CloseCode.NORMAL, True)


async def test_a_real_websockets_client_gets_no_compression_from_a_plain_server() -> None:
    """The same client against a server without compression: its offer is declined and messages still round-trip."""
    server = SessionServer(lambda request, *, full: Accept(Echo()), ServerConfig(host="127.0.0.1", port=0), SessionConfig(ping_interval_s=None))

    def client(url: str) -> tuple[str | bytes, str | None]:
        with sync_connect(url, open_timeout=10, close_timeout=10) as ws:
            ws.send("plain")
            assert ws.response is not None
            return ws.recv(timeout=10), ws.response.headers.get("Sec-WebSocket-Extensions")

    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        echo, extension = await trio.to_thread.run_sync(functools.partial(client, server.url))
        nursery.cancel_scope.cancel()
    assert (echo, extension) == ("plain", None)


async def test_a_deflate_session_keeps_its_zlib_state_small(autojump_clock: Any) -> None:
    """Deflate uses websockets' recommended settings (4 KiB windows, memLevel 5): under 128 KiB per server session, not ~300."""
    async with streams(Echo, server_config=DEFLATE) as (_, connect):
        clients = []
        tracemalloc.start(40)
        try:
            before = tracemalloc.take_snapshot()
            for _ in range(10):
                client = FrameClient(connect(), extensions=[ClientPerMessageDeflateFactory()])
                assert "server_max_window_bits=12" in (negotiated(await client.handshake()) or "")
                await client.send_text("hello " * 50)
                await client.next_frame()
                clients.append(client)
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
    engine_only = [tracemalloc.Filter(True, "*/antiphon/engine/*", all_frames=True)]
    grown = sum(stat.size_diff for stat in after.filter_traces(engine_only).compare_to(before.filter_traces(engine_only), "filename"))
    assert grown / 10 < 128 * 1024, f"{grown / 10 / 1024:.0f} KiB per deflate session"
