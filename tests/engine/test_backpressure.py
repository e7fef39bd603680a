"""The send path on real sockets: direct writes on a healthy connection, the writer task and byte bounds under a stall."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from antiphon.engine.server import (
    Accept,
    HandshakeRequest,
    Reject,
    ServerConfig,
    SessionServer,
)
from antiphon.engine.session import SessionConfig
from antiphon.engine.transport import Transport
from antiphon.engine.wire import WebSocketWire
from antiphon.proto.close import CloseCode
from tests.engine.harness import Echo
from tests.engine.rawframes import FrameClient

KIB = 1024


class Spawns(trio.abc.Instrument):
    """Every task Trio spawns while installed, with the nursery it was spawned in."""

    def __init__(self) -> None:
        self.spawned: list[tuple[trio.lowlevel.Task, trio.Nursery | None]] = []

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned.append((task, task.parent_nursery))

    def in_nursery(self, nursery: trio.Nursery) -> list[str]:
        return [task.name for task, parent in self.spawned if parent is nursery]


@asynccontextmanager
async def served(config: SessionConfig, *, rcvbuf: int | None = None) -> AsyncIterator[tuple[SessionServer, Echo, FrameClient]]:
    """A SessionServer on 127.0.0.1:0 with one client connected (``rcvbuf`` shrinks the client's receive buffer)."""
    handler = Echo()

    def route(request: HandshakeRequest, *, full: bool) -> Accept | Reject:
        return Accept(handler)

    server = SessionServer(route, ServerConfig(host="127.0.0.1", port=0), config)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", server.port))
        client = FrameClient(trio.SocketStream(sock))
        try:
            assert (await client.handshake()).status_code == 101
            while handler.session is None:
                await trio.sleep(0)  # on_open runs once the server has read the request
            yield server, handler, client
        finally:
            await client.stream.aclose()
            nursery.cancel_scope.cancel()


async def test_on_a_healthy_socket_send_nowait_writes_directly_and_no_writer_task_starts() -> None:
    """Every send_nowait hands its bytes to the kernel before returning, and the session spawns no task at all."""
    spawns = Spawns()
    trio.lowlevel.add_instrument(spawns)
    try:
        async with served(SessionConfig(ping_interval_s=None)) as (_, handler, client):
            session = handler.session
            assert session is not None
            for i in range(200):
                assert session.send_nowait(f"direct {i}")
                assert session.buffered_bytes == 0  # written synchronously, nothing left for a writer
            for i in range(200):
                assert (await client.next_frame()).data == f"direct {i}".encode()
            for i in range(50):  # echoes, written from the receive task's own batch
                await client.send_text(f"echo {i}")
                assert (await client.next_frame()).data == f"echo {i}".encode()
            assert spawns.in_nursery(session.nursery) == []
    finally:
        trio.lowlevel.remove_instrument(spawns)


async def test_under_a_stalled_peer_the_writer_starts_bytes_stay_bounded_and_the_session_closes_1008() -> None:
    """A peer that stops reading: the writer task starts, buffered bytes stay within send_buffer_max_bytes plus one message, then 1008."""
    high, limit, message = 64 * KIB, 256 * KIB, "x" * (16 * KIB)
    frame_bytes = len(message) + 4  # a 16 KiB text frame has a 4-byte header
    config = SessionConfig(ping_interval_s=None, send_buffer_high_bytes=high, send_buffer_max_bytes=limit, close_timeout_s=30)
    spawns = Spawns()
    trio.lowlevel.add_instrument(spawns)
    try:
        async with served(config, rcvbuf=4 * KIB) as (server, handler, client):
            session = handler.session
            assert session is not None
            most = 0
            for sent in range(100_000):  # noqa: B007 - bounded: the kernel's buffers fill long before
                if not session.send_nowait(message):
                    break
                most = max(most, session.buffered_bytes)
            else:
                raise AssertionError("send_nowait never refused a peer that does not read")
            writers = spawns.in_nursery(session.nursery)
            assert len(writers) == 1  # started once, when the kernel first pushed back
            assert limit < most <= limit + frame_bytes
            assert session.closing and session.close_code == CloseCode.POLICY_VIOLATION
            assert not session.send_nowait(message)  # dropped once closing
            # The peer reads again: it gets what the kernel held, then the close frame.
            assert (await client.expect_close()).code == CloseCode.POLICY_VIOLATION
            await server.wait_idle()
            assert sent * len(message) > limit  # the kernel really took some before the stall
    finally:
        trio.lowlevel.remove_instrument(spawns)
    assert handler.closed == (CloseCode.POLICY_VIOLATION, False)


async def test_send_waits_for_the_writer_to_drain_below_the_high_mark() -> None:
    """Session.send parks while more than send_buffer_high_bytes are buffered and resumes once the peer reads."""
    high = 32 * KIB
    config = SessionConfig(ping_interval_s=None, send_buffer_high_bytes=high, send_buffer_max_bytes=1024 * KIB)
    async with served(config, rcvbuf=4 * KIB) as (_, handler, client):
        session = handler.session
        assert session is not None
        while session.buffered_bytes <= high:  # fill the kernel, then our buffer past the mark
            session.send_nowait("y" * KIB)
        done = trio.Event()

        async def producer() -> None:
            await session.send("after the stall")
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()  # parked: the peer has not read
            while True:
                f = await client.next_frame()
                if f.data == b"after the stall":
                    break
            assert done.is_set()
        assert not session.closing


class TrickleTransport(Transport):
    """Takes at most ``room`` bytes per try_write, then nothing until ``room`` is raised; keeps what it took."""

    can_try_write = True

    def __init__(self, room: int) -> None:
        self.room = room
        self.taken = bytearray()

    def try_write(self, data: bytes | memoryview) -> int:
        n = min(self.room, len(data))
        self.taken += bytes(data[:n])
        self.room -= n
        return n

    async def wait_writable(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()


def frames_in(data: bytes | bytearray) -> list[tuple[Opcode, bytes]]:
    client = ClientProtocol(parse_uri("ws://localhost/"), state=OPEN, max_size=None)
    client.receive_data(bytes(data))
    return [(f.opcode, bytes(f.data)) for f in client.events_received() if isinstance(f, Frame)]


async def test_a_close_without_flush_keeps_the_rest_of_a_frame_already_begun() -> None:
    """discard_buffer drops queued frames but never cuts one the kernel took part of: the close frame follows a whole frame."""
    transport = TrickleTransport(room=100)
    wire = WebSocketWire(ServerProtocol(state=OPEN), transport, max_message_size=None)
    wire.send_message("a" * 1000)  # the kernel takes 100 bytes of it
    wire.send_message("queued, never begun")
    assert wire.buffered == 1004 - 100 + 21
    wire.discard_buffer()
    assert wire.buffered == 1004 - 100
    wire.start_close(CloseCode.POLICY_VIOLATION, "slow")
    transport.room = 1 << 20
    await wire.drain()
    assert frames_in(transport.taken) == [(Opcode.TEXT, b"a" * 1000), (Opcode.CLOSE, b"\x03\xf0slow")]


async def test_a_close_without_flush_drops_everything_when_no_write_has_begun() -> None:
    """With nothing partly written, discard_buffer empties the buffer: only the close frame goes out."""
    transport = TrickleTransport(room=0)
    wire = WebSocketWire(ServerProtocol(state=OPEN), transport, max_message_size=None)
    wire.send_message("never sent")
    wire.discard_buffer()
    assert wire.buffered == 0
    wire.start_close(CloseCode.NORMAL, "")
    transport.room = 1 << 20
    await wire.drain()
    assert frames_in(transport.taken) == [(Opcode.CLOSE, b"\x03\xe8")]
