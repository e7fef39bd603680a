"""Hostile and broken media peers (issue 10): nothing a peer sends escapes its session; every buffer is bounded in bytes."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection

from antiphon.media import (
    AudioRawFrame,
    MessageFrame,
    TextFrame,
    WebsocketServerParams,
)
from antiphon.proto.media.frames import AnyFrame
from antiphon.proto.media.serializers import ProtobufFrameSerializer
from tests.helpers import RawClient
from tests.media import pb_schema as pb
from tests.media.conftest import memory_server

MONO_40MS = 1280


async def connected(rec: Any, new_client: Any) -> RawClient:
    expected = rec.names.count("on_client_connected") + 1
    client = new_client()
    assert isinstance(await client.handshake(), AcceptConnection)
    await rec.wait_for("on_client_connected", expected)
    return client


async def echo(transport: Any, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """The README's echo bot: everything from input() goes back on output()."""
    task_status.started()
    async for frame in transport.input():
        await transport.output().send(frame)


async def next_frame(client: RawClient) -> tuple[str, Any]:
    with trio.fail_after(5):
        event = await client.next_event()
    assert isinstance(event, BytesMessage), event
    return pb.decode(bytes(event.data))


@pytest.mark.parametrize("sample_rate", [1, 24, 2**32 - 1, 100_000_000])
async def test_audio_at_an_absurd_rate_does_not_kill_the_echo_server(autojump_clock: Any, sample_rate: int) -> None:
    """A 14-byte audio frame at 1-24 Hz (or 4 GHz) to the echo bot is skipped; the server and the session live on."""
    async with memory_server() as (transport, rec, new_client), trio.open_nursery() as nursery:
        await nursery.start(echo, transport)
        client = await connected(rec, new_client)
        await client.send_bytes(pb.audio(b"\x00\x00", sample_rate, 1))  # 14 bytes on the wire at 24 Hz
        await client.send_bytes(pb.text("still here"))
        kind, sub = await next_frame(client)
        assert (kind, sub.text) == ("text", "still here")
        assert transport.stats.skipped_in["bad_audio"] == 1
        assert transport.client is not None and transport.stats.dropped_out["internal_error"] == 0
        nursery.cancel_scope.cancel()


class ExplodingSerializer(ProtobufFrameSerializer):
    """A (buggy) custom serializer whose serialize raises something that is not LocalProtocolError."""

    def serialize(self, frame: AnyFrame) -> bytes:
        if isinstance(frame, TextFrame) and frame.text == "boom":
            raise RuntimeError("serializer bug")
        return super().serialize(frame)


async def test_a_failure_routing_one_frame_closes_that_session_only(autojump_clock: Any) -> None:
    """An exception while routing an outgoing frame closes that client 1011; the transport serves the next client."""
    params = WebsocketServerParams(serializer=ExplodingSerializer)
    async with memory_server(params) as (transport, rec, new_client):
        client = await connected(rec, new_client)
        await transport.output().send(TextFrame("boom"))
        with trio.fail_after(5):
            assert (await client.expect_close()).code == 1011
        await rec.wait_for("on_client_disconnected")
        second = await connected(rec, new_client)
        await transport.output().send(TextFrame("fine"))
        assert (await next_frame(second))[1].text == "fine"
    assert transport.stats.dropped_out["internal_error"] == 1


async def test_deep_messages_from_a_peer_are_refused_at_decode(autojump_clock: Any) -> None:
    """A peer's message nested 600 deep is skipped, so the echo bot never meets a RecursionError sending it back."""
    async with memory_server() as (transport, rec, new_client), trio.open_nursery() as nursery:
        await nursery.start(echo, transport)
        client = await connected(rec, new_client)
        deep = pb.Frame()
        deep.message.data = "[" * 600 + "]" * 600
        await client.send_bytes(bytes(deep.SerializeToString()))
        await client.send_bytes(pb.message({"ok": [1]}))
        kind, sub = await next_frame(client)
        assert (kind, sub.data) == ("message", '{"ok": [1]}')
        assert transport.stats.skipped_in["bad_message"] == 1
        nursery.cancel_scope.cancel()


async def test_bad_frame_warnings_are_rate_limited_and_counted(autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    """1000 bad frames log 5 lines, not 1000; the next window's first bad frame writes a summary of the 995 others."""
    caplog.set_level(logging.WARNING, logger="antiphon.media")
    async with memory_server() as (transport, rec, new_client):
        client = await connected(rec, new_client)
        for _ in range(1000):
            await client.send_bytes(b"\xff\xff garbage")
        await trio.testing.wait_all_tasks_blocked()
        skipped_lines = [r for r in caplog.records if "skipped a message" in r.getMessage()]
        assert len(skipped_lines) == 5
        assert transport.stats.skipped_in["malformed"] == 1000 and transport.stats.logs_suppressed == 995
        await trio.sleep(10)
        await client.send_bytes(b"\xff\xff garbage")
        await trio.testing.wait_all_tasks_blocked()
    summaries = [r.getMessage() for r in caplog.records if "more in the last" in r.getMessage()]
    assert summaries == [summaries[0]] and "995 more in the last 10 s" in summaries[0] and "malformed: 995" in summaries[0]


async def test_input_is_bounded_in_bytes_when_nobody_reads(autojump_clock: Any) -> None:
    """With input_buffer_bytes=64 KiB and no reader, 1 MiB of 16 KiB frames keeps at most 64 KiB; the rest is counted."""
    params = WebsocketServerParams(input_buffer_bytes=64 * 1024)
    async with memory_server(params) as (transport, rec, new_client):
        client = await connected(rec, new_client)
        for _ in range(64):
            await client.send_bytes(pb.audio(bytes(16 * 1024), 16000, 1))
        await trio.testing.wait_all_tasks_blocked()
        assert transport.input().queued_bytes <= 64 * 1024
        assert transport.stats.frames_in == 3 and transport.stats.dropped_in == 61
        await transport.output().send(TextFrame("alive"))  # the session still answers
        assert (await next_frame(client))[1].text == "alive"


async def test_queued_output_audio_is_bounded_in_bytes(autojump_clock: Any) -> None:
    """With max_queued_audio_bytes=64 KiB, a producer far ahead of real time gets its extra audio dropped and counted."""
    params = WebsocketServerParams(max_queued_audio_bytes=64 * 1024)
    async with memory_server(params) as (transport, rec, new_client):
        await connected(rec, new_client)
        for _ in range(10):
            await transport.output().send(AudioRawFrame(bytes(32 * 1024), 16000, 1))
        await trio.testing.wait_all_tasks_blocked()
        assert transport.client is not None and transport.client.output.queued_audio_bytes <= 64 * 1024
        assert transport.stats.dropped_out["audio_buffer_full"] == 8


@pytest.mark.parametrize(("rate", "channels"), [(384000, 8), (8000, 1)])
async def test_the_last_partial_chunk_is_padded_at_the_output_rate(autojump_clock: Any, rate: int, channels: int) -> None:
    """With a 16 kHz mono output, 2 bytes claiming 384 kHz x 8 (or 8 kHz) leave as one 1280-byte chunk at 16 kHz."""
    params = WebsocketServerParams(audio_out_sample_rate=16000)
    async with memory_server(params) as (transport, rec, new_client):
        client = await connected(rec, new_client)
        await transport.output().send(AudioRawFrame(bytes(2 * channels * 48), rate, channels))
        kind, sub = await next_frame(client)
    assert (kind, sub.sample_rate, sub.num_channels, len(sub.audio)) == ("audio", 16000, 1, MONO_40MS)


async def test_a_peer_flooding_interruptions_costs_nothing(autojump_clock: Any) -> None:
    """10 000 interruption frames from a peer: each drops nothing, all are counted, the session lives."""
    async with memory_server() as (transport, rec, new_client):
        client = await connected(rec, new_client)
        for _ in range(10_000):
            await client.send_bytes(pb.interruption())
        await trio.testing.wait_all_tasks_blocked()
        assert transport.stats.interruptions == 10_000 and transport.stats.interrupted_audio_bytes == 0
        await transport.output().send(MessageFrame({"alive": True}))
        assert (await next_frame(client))[0] == "message"
        await client.close()
        assert isinstance(await client.next_event(), CloseConnection)
