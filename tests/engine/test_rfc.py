"""RFC 6455 failures and their close codes: 1007 for bad UTF-8, 1002 for protocol violations, 1009 for size."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from antiphon.engine.connect import connect_websocket
from antiphon.engine.server import ServerConfig
from antiphon.engine.session import Session, SessionConfig
from antiphon.engine.wire import FRAGMENT_OVERHEAD_BYTES
from antiphon.proto.close import CloseCode
from tests.engine.harness import Echo, streams
from tests.engine.rawframes import FrameClient, frame

TEXT, BINARY, CONT, CLOSE, PING = 0x1, 0x2, 0x0, 0x8, 0x9
CAFE = "café".encode()  # b"caf\xc3\xa9": the last character is two bytes
INVALID = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"  # a UTF-16 surrogate (Autobahn 6.x)


async def open_client(connect: Any) -> FrameClient:
    client = FrameClient(connect())
    response = await client.handshake()
    assert response.status_code == 101
    return client


async def failed_with(payloads: list[bytes], code: CloseCode, *, max_message_size: int = 1024 * 1024) -> Echo:
    """Send ``payloads`` (raw frames), expect the server's close frame with ``code``; the handler."""
    handler = Echo()
    async with streams(lambda: handler, server_config=ServerConfig(port=0, max_message_size=max_message_size)) as (server, connect):
        client = await open_client(connect)
        for data in payloads:
            await client.send_raw(data)
        close = await client.expect_close()
        assert close.code == code, close
        await server.wait_idle()
    assert handler.closed == (code, False)
    return handler


async def test_invalid_utf8_text_gets_1007(autojump_clock: Any) -> None:
    """A text message that is not UTF-8 fails the connection with 1007, and the face never sees it."""
    handler = await failed_with([frame(TEXT, INVALID)], CloseCode.INVALID_DATA)
    assert handler.received == []


async def test_invalid_utf8_in_a_fragment_gets_1007_before_the_message_ends(autojump_clock: Any) -> None:
    """Fragmented text fails fast: 1007 arrives after the bad fragment, while the message is still unfinished."""
    handler = await failed_with([frame(TEXT, b"valid ", fin=False), frame(CONT, INVALID, fin=False)], CloseCode.INVALID_DATA)
    assert handler.received == []


async def test_utf8_split_across_fragments_is_one_valid_message(autojump_clock: Any) -> None:
    """A character whose bytes straddle two fragments is not an error: the message is echoed whole."""
    handler = Echo()
    async with streams(lambda: handler) as (_, connect):
        client = await open_client(connect)
        await client.send_raw(frame(TEXT, CAFE[:-1], fin=False) + frame(CONT, CAFE[-1:]))
        echoed = await client.next_frame()
        assert (echoed.opcode, echoed.data) == (Opcode.TEXT, CAFE)
    assert handler.received == ["café"]


async def test_text_ending_inside_a_character_gets_1007(autojump_clock: Any) -> None:
    """A fragmented text message whose last fragment ends mid-character fails with 1007."""
    await failed_with([frame(TEXT, CAFE[:-1], fin=False), frame(CONT, b"")], CloseCode.INVALID_DATA)


@pytest.mark.parametrize("rsv", [0b100, 0b010, 0b001], ids=["rsv1", "rsv2", "rsv3"])
async def test_reserved_bits_without_an_extension_get_1002(autojump_clock: Any, rsv: int) -> None:
    """A frame with a reserved bit set, no extension having been negotiated, fails with 1002."""
    await failed_with([frame(TEXT, b"hello", rsv=rsv)], CloseCode.PROTOCOL_ERROR)


async def test_an_unmasked_client_frame_gets_1002(autojump_clock: Any) -> None:
    """Clients must mask every frame: an unmasked one fails the connection with 1002."""
    await failed_with([frame(TEXT, b"hello", mask=None)], CloseCode.PROTOCOL_ERROR)


async def test_a_control_frame_over_125_bytes_gets_1002(autojump_clock: Any) -> None:
    """A ping with a 126-byte payload (control frames carry at most 125) fails with 1002."""
    await failed_with([frame(PING, b"x" * 126)], CloseCode.PROTOCOL_ERROR)


async def test_a_fragmented_control_frame_gets_1002(autojump_clock: Any) -> None:
    """Control frames must not be fragmented: a ping without FIN fails with 1002."""
    await failed_with([frame(PING, b"x", fin=False)], CloseCode.PROTOCOL_ERROR)


async def test_a_continuation_without_a_start_gets_1002(autojump_clock: Any) -> None:
    """A continuation frame when no message is being assembled fails with 1002."""
    await failed_with([frame(CONT, b"orphan")], CloseCode.PROTOCOL_ERROR)


async def test_a_new_message_inside_a_fragmented_one_gets_1002(autojump_clock: Any) -> None:
    """A text frame where a continuation is due fails with 1002."""
    await failed_with([frame(TEXT, b"one", fin=False), frame(TEXT, b"two")], CloseCode.PROTOCOL_ERROR)


async def test_a_reserved_opcode_gets_1002(autojump_clock: Any) -> None:
    """Opcode 3 is reserved: the connection fails with 1002."""
    await failed_with([frame(0x3, b"")], CloseCode.PROTOCOL_ERROR)


async def test_an_oversized_message_gets_1009(autojump_clock: Any) -> None:
    """One byte over max_message_size in a single frame fails with 1009."""
    await failed_with([frame(BINARY, b"x" * 1025)], CloseCode.MESSAGE_TOO_BIG, max_message_size=1024)


async def test_an_oversized_fragmented_message_gets_1009(autojump_clock: Any) -> None:
    """Fragments that together pass max_message_size fail with 1009, each fragment being small."""
    fragments = [frame(BINARY, b"x" * 500, fin=False), frame(CONT, b"x" * 500, fin=False), frame(CONT, b"x" * 100)]
    await failed_with(fragments, CloseCode.MESSAGE_TOO_BIG, max_message_size=1024)


async def test_a_message_of_exactly_max_message_size_is_accepted(autojump_clock: Any) -> None:
    """max_message_size is inclusive: a message of exactly that many bytes is echoed."""
    handler = Echo()
    async with streams(lambda: handler, server_config=ServerConfig(port=0, max_message_size=1024)) as (_, connect):
        client = await open_client(connect)
        await client.send_raw(frame(BINARY, b"x" * 1024))
        assert (await client.next_frame()).data == b"x" * 1024


async def test_a_flood_of_empty_continuations_is_bounded_by_the_fragment_budget(autojump_clock: Any) -> None:
    """Each fragment counts FRAGMENT_OVERHEAD_BYTES: 1024 bytes allow 15 empty continuations; the 16th gets 1009."""
    allowed = 1024 // FRAGMENT_OVERHEAD_BYTES - 1  # the first frame pays the overhead too
    assert allowed == 15
    handler = Echo()
    async with streams(lambda: handler, server_config=ServerConfig(port=0, max_message_size=1024)) as (server, connect):
        client = await open_client(connect)
        await client.send_raw(frame(TEXT, b"", fin=False) + frame(CONT, b"", fin=False) * allowed)
        await client.send_raw(frame(PING, b"still open?"))
        pong = await client.next_frame()
        assert (pong.opcode, pong.data) == (Opcode.PONG, b"still open?")
        await client.send_raw(frame(CONT, b"", fin=False))
        assert (await client.expect_close()).code == CloseCode.MESSAGE_TOO_BIG
        await server.wait_idle()
    assert handler.closed == (CloseCode.MESSAGE_TOO_BIG, False)


async def test_a_close_frame_inside_a_fragmented_message_is_echoed(autojump_clock: Any) -> None:
    """RFC 6455 lets a close frame interrupt a fragmented message: it is answered with its own code, not 1002 (Autobahn 7.1.5)."""
    handler = Echo()
    async with streams(lambda: handler) as (server, connect):
        client = await open_client(connect)
        close_1000 = b"\x03\xe8"
        await client.send_raw(frame(TEXT, b"fragment1", fin=False) + frame(CLOSE, close_1000) + frame(CONT, b"fragment2"))
        close = await client.expect_close()
        assert (close.code, close.reason) == (CloseCode.NORMAL, "")
        await server.wait_idle()
    assert handler.closed == (CloseCode.NORMAL, True)
    assert handler.received == []


async def test_an_empty_close_frame_inside_a_fragmented_message_gets_an_empty_close(autojump_clock: Any) -> None:
    """A close frame without a code, interrupting a fragmented message, is answered with an empty close frame."""
    handler = Echo()
    async with streams(lambda: handler) as (server, connect):
        client = await open_client(connect)
        await client.send_raw(frame(BINARY, b"part", fin=False))
        await trio.testing.wait_all_tasks_blocked()
        await client.send_raw(frame(CLOSE, b""))
        while True:
            f = await client.next_frame()
            if f.opcode is Opcode.CLOSE:
                break
        assert f.data == b""
        await server.wait_idle()
    assert handler.closed == (CloseCode.NO_STATUS, True)


async def test_the_client_echoes_a_close_inside_a_fragment_that_came_with_the_101(autojump_clock: Any) -> None:
    """connect_websocket: frames sent in the same write as the 101 (a fragment, then a close) get the close code back, not 1002."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server = ServerProtocol()

    async def fake_server() -> None:
        while not (events := server.events_received()):
            server.receive_data(bytes(await server_stream.receive_some(65536)))
        request = events[0]
        assert isinstance(request, Request)
        server.send_response(server.accept(request))
        opening = b"".join(server.data_to_send())
        await server_stream.send_all(opening + frame(TEXT, b"fragment1", fin=False, mask=None) + frame(CLOSE, b"\x03\xe8", mask=None))

    async def open_stream() -> trio.abc.Stream:
        return client_stream

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake_server)
        wire = await connect_websocket("ws://localhost/", open_stream=open_stream)
        session = Session(wire, SessionConfig(ping_interval_s=None, close_timeout_s=1))
        nursery.start_soon(session.run, Echo())
        server.receive_data(bytes(await server_stream.receive_some(65536)))
        closes = [f for f in server.events_received() if isinstance(f, Frame) and f.opcode is Opcode.CLOSE]
        assert [Close.parse(f.data).code for f in closes] == [CloseCode.NORMAL]
        await server_stream.aclose()
        await session.done.wait()
    assert (session.close_code, session.closed_by_peer) == (CloseCode.NORMAL, True)


async def test_the_client_fails_at_once_on_a_bad_frame_that_came_with_the_101(autojump_clock: Any) -> None:
    """A frame with a reserved bit in the same write as the 101: the client sends its 1002 close at once, not after the next read."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server = ServerProtocol()

    async def open_stream() -> trio.abc.Stream:
        return client_stream

    async with trio.open_nursery() as nursery:

        async def fake_server() -> None:
            while not (events := server.events_received()):
                server.receive_data(bytes(await server_stream.receive_some(65536)))
            request = events[0]
            assert isinstance(request, Request)
            server.send_response(server.accept(request))
            await server_stream.send_all(b"".join(server.data_to_send()) + frame(TEXT, b"x", rsv=0b100, mask=None))

        nursery.start_soon(fake_server)
        wire = await connect_websocket("ws://localhost/", open_stream=open_stream)
        session = Session(wire, SessionConfig(ping_interval_s=None, close_timeout_s=5))
        t0 = trio.current_time()
        nursery.start_soon(session.run, Echo())
        with trio.fail_after(1):  # the server sends nothing more: only the client can move
            server.receive_data(bytes(await server_stream.receive_some(65536)))
        closes = [f for f in server.events_received() if isinstance(f, Frame) and f.opcode is Opcode.CLOSE]
        assert [Close.parse(f.data).code for f in closes] == [CloseCode.PROTOCOL_ERROR]
        assert trio.current_time() == t0
        await server_stream.aclose()
        await session.done.wait()
    assert (session.close_code, session.closed_by_peer) == (CloseCode.PROTOCOL_ERROR, False)
