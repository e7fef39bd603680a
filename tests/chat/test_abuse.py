"""Hostile chat clients: what they send back to themselves is bounded, and what they leave behind is nothing."""

from __future__ import annotations

import re
import socket
from typing import Any

import pytest
import trio
import trio.testing
from wsproto.events import AcceptConnection, CloseConnection, TextMessage

from antiphon.engine.session import SessionConfig
from antiphon.proto.close import CloseCode
from tests.chat.conftest import SECRET, connect_raw, connector, memory_gateway, tcp_gateway
from tests.helpers import RawClient

KIB = 1024
ECHO_BOUND = 1024
"""An error event that echoes a client string stays under this many bytes, however long the string."""


async def _authenticated(client: RawClient) -> None:
    assert isinstance(await client.handshake(f"/?secret={SECRET}"), AcceptConnection)
    assert (await client.receive_json())["type"] == "connected"


async def _error_frame(client: RawClient, obj: Any) -> str:
    await client.send_json(obj)
    event = await client.next_event()
    assert isinstance(event, TextMessage)
    return event.data


async def test_error_events_echo_at_most_a_few_hundred_bytes_of_a_client_string() -> None:
    """Unknown type, agent and cancel id of 100,000 DEL characters each come back in errors under 1 KiB."""
    huge = "\x7f" * 100_000  # repr() writes each as '\x7f': four times the bytes
    async with memory_gateway() as (_, client):
        await _authenticated(client)
        frames = [
            await _error_frame(client, {"type": huge}),
            await _error_frame(client, {"type": "message", "payload": {"message": "hi", "agent": huge}}),
            await _error_frame(client, {"type": "cancel", "id": huge}),
            await _error_frame(client, {"type": "message", "id": huge, "payload": {"message": "hi"}}),
        ]
        for frame in frames:
            assert '"type":"error"' in frame
            assert len(frame.encode()) < ECHO_BOUND, frame[:200]
            assert "more characters" in frame or "longer than 256 characters" in frame  # says it was cut, or refused


async def test_a_flooding_client_that_never_reads_is_closed_1008_within_the_byte_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Malformed frames sent without reading the errors: the server's queue stops at its byte limit and closes 1008."""
    limit = 64 * KIB
    session = SessionConfig(
        ping_interval_s=None, send_buffer_high_bytes=16 * KIB, send_buffer_max_bytes=limit, close_timeout_s=1
    )
    async with tcp_gateway(connector(max_messages=10, resume_grace_s=0), session=session) as gateway:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * KIB)  # the kernel holds little on our side
        await sock.connect(("127.0.0.1", gateway.port))
        client = RawClient(trio.SocketStream(sock))
        async with client.stream:
            await _authenticated(client)
            flood = client.ws.send(TextMessage(data='{"type":"' + "x" * 200 + '"}')) * 500
            sent = 0
            with trio.fail_after(60):
                while gateway.sessions:
                    try:
                        await client.stream.send_all(flood)
                    except trio.BrokenResourceError:
                        break  # the server has closed: it reset what we kept sending
                    sent += len(flood)
                    assert sent < 512 * 2**20, "the server kept reading a peer that reads nothing"
                await gateway.wait_idle()
            assert gateway.connections == 0
            assert gateway.registry is not None and gateway.registry.runs == {}
            # Whatever reached us before the cut ends with the 1008 close frame, or the stream just
            # ends (1006): the server gave up the close handshake with a peer that does not read.
            codes = []
            try:
                while True:
                    event = await client.next_event()
                    if isinstance(event, CloseConnection):
                        codes.append(event.code)
                        break
            except (EOFError, trio.BrokenResourceError):
                pass
            assert codes in ([], [CloseCode.POLICY_VIOLATION], [CloseCode.ABNORMAL])
    # The server held at most its limit plus the one error event that crossed it.
    (unread,) = (int(m.group(1)) for r in caplog.records if (m := re.search(r"(\d+) bytes unread", r.getMessage())))
    assert limit < unread <= limit + ECHO_BOUND


async def test_unauthenticated_drops_leave_no_run_and_no_task() -> None:
    """200 clients that finish the handshake, never authenticate and vanish without a close frame hold nothing."""
    async with memory_gateway(connector(resume_grace_s=60)) as (gateway, first):
        assert isinstance(await first.handshake("/"), AcceptConnection)
        async with trio.open_nursery() as nursery:
            clients = [connect_raw(gateway, nursery) for _ in range(200)]
            for client in clients:
                assert isinstance(await client.handshake("/"), AcceptConnection)
            assert gateway.registry is not None and gateway.registry.runs == {}  # no run before auth
            for client in clients:
                await client.stream.aclose()  # no close frame: the stream just goes
            await first.stream.aclose()
            with trio.fail_after(5):
                await gateway.wait_idle()
            await trio.testing.wait_all_tasks_blocked()
            assert gateway.connections == 0
            assert gateway.registry.runs == {}
            assert len(gateway.registry.nursery.child_tasks) == 0  # no grace, no reaper work pending
