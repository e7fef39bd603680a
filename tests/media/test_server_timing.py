"""Server transport timing on the autojump clock over memory streams: pacing, interruption, timeouts, shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection

from antiphon.engine.session import SessionConfig
from antiphon.media import (
    AudioRawFrame,
    InterruptionFrame,
    TextFrame,
    WebsocketServerParams,
)
from tests.helpers import RawClient
from tests.media import pb_schema as pb
from tests.media.conftest import memory_server

MONO_40MS = 1280  # bytes of 16 kHz mono int16 in 40 ms
STEREO_40MS = 2560


def pcm(n_bytes: int, fill: int = 0x11) -> bytes:
    return bytes([fill]) * n_bytes


async def connected(rec: Any, new_client: Any) -> tuple[RawClient, float]:
    expected = rec.names.count("on_client_connected") + 1  # counted before the event can happen
    client = new_client()
    assert isinstance(await client.handshake(), AcceptConnection)
    await rec.wait_for("on_client_connected", expected)
    return client, trio.current_time()


async def read_frames(client: RawClient, until: float) -> list[tuple[float, str, Any]]:
    """Every frame the client reads before ``until`` (absolute trio time), stamped with its arrival time."""
    got: list[tuple[float, str, Any]] = []
    partial = b""  # wsproto hands out a message that straddles a read in pieces
    with trio.move_on_at(until):
        while True:
            event = await client.next_event()
            assert isinstance(event, BytesMessage), event
            partial += bytes(event.data)
            if not event.message_finished:
                continue
            kind, sub = pb.decode(partial)
            partial = b""
            got.append((trio.current_time(), kind, sub))
    return got


@asynccontextmanager
async def reading(client: RawClient, until: float) -> AsyncIterator[list[tuple[float, str, Any]]]:
    """Read concurrently with the body (so arrival times are real), until ``until``; yields the growing list."""
    got: list[tuple[float, str, Any]] = []

    async def read() -> None:
        got.extend(await read_frames(client, until))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        yield got


def rel(frames: list[tuple[float, str, Any]], t0: float) -> list[float]:
    return [round(t - t0, 9) for t, _, _ in frames]


async def test_mono_audio_is_paced_40ms_with_one_chunk_of_lead(autojump_clock: Any) -> None:
    """200 ms of 16 kHz mono leaves as five 40 ms chunks at +0, +0, +40, +80, +120 ms."""
    async with memory_server() as (transport, rec, new_client):
        client, t0 = await connected(rec, new_client)
        await transport.output().send(AudioRawFrame(pcm(5 * MONO_40MS), 16000, 1))
        frames = await read_frames(client, t0 + 1)
    assert rel(frames, t0) == [0.0, 0.0, 0.04, 0.08, 0.12]
    assert [(len(s.audio), s.sample_rate, s.num_channels) for _, _, s in frames] == [(MONO_40MS, 16000, 1)] * 5


async def test_stereo_audio_is_paced_at_real_time_speed(autojump_clock: Any) -> None:
    """200 ms of 16 kHz stereo leaves at the same times as mono (Pipecat paces stereo at half speed)."""
    async with memory_server() as (transport, rec, new_client):
        client, t0 = await connected(rec, new_client)
        await transport.output().send(AudioRawFrame(pcm(5 * STEREO_40MS), 16000, 2))
        frames = await read_frames(client, t0 + 1)
    assert rel(frames, t0) == [0.0, 0.0, 0.04, 0.08, 0.12]
    assert {(len(s.audio), s.num_channels) for _, _, s in frames} == {(STEREO_40MS, 2)}


async def test_streamed_small_frames_are_not_padded_and_keep_the_schedule(autojump_clock: Any) -> None:
    """20 ms frames arriving every 20 ms leave as whole 40 ms chunks, none padded with silence."""
    async with memory_server() as (transport, rec, new_client):
        client, t0 = await connected(rec, new_client)
        async with reading(client, t0 + 1) as frames:
            for i in range(10):
                await transport.output().send(AudioRawFrame(pcm(MONO_40MS // 2, fill=i + 1), 16000, 1))
                await trio.sleep(0.02)
    assert rel(frames, t0) == [0.02, 0.06, 0.1, 0.14, 0.18]
    assert all(0 not in s.audio for _, _, s in frames)


async def test_partial_tail_is_padded_with_silence_when_its_slot_comes(autojump_clock: Any) -> None:
    """100 ms of audio: two chunks at once, then the last 20 ms padded to a full chunk at +40 ms."""
    async with memory_server() as (transport, rec, new_client):
        client, t0 = await connected(rec, new_client)
        await transport.output().send(AudioRawFrame(pcm(2 * MONO_40MS + MONO_40MS // 2), 16000, 1))
        frames = await read_frames(client, t0 + 1)
    assert rel(frames, t0) == [0.0, 0.0, 0.04]
    assert frames[2][2].audio == pcm(MONO_40MS // 2) + bytes(MONO_40MS // 2)


async def test_underrun_reanchors_without_a_burst(autojump_clock: Any) -> None:
    """Audio arriving 500 ms after the stream ran dry starts a new schedule at once: +500, +500, +540 ms."""
    async with memory_server() as (transport, rec, new_client):
        client, t0 = await connected(rec, new_client)
        async with reading(client, t0 + 2) as frames:
            await transport.output().send(AudioRawFrame(pcm(2 * MONO_40MS), 16000, 1))
            await trio.sleep(0.5)
            await transport.output().send(AudioRawFrame(pcm(3 * MONO_40MS), 16000, 1))
    assert rel(frames, t0) == [0.0, 0.0, 0.5, 0.5, 0.54]


async def test_interruption_drops_queued_audio_at_once_and_is_sent(autojump_clock: Any) -> None:
    """An InterruptionFrame at +100 ms of a 400 ms stream: four chunks went out, the rest never does."""
    async with memory_server() as (transport, rec, new_client):
        client, t0 = await connected(rec, new_client)
        async with reading(client, t0 + 2) as frames:
            await transport.output().send(AudioRawFrame(pcm(10 * MONO_40MS), 16000, 1))
            await trio.sleep(0.1)
            await transport.output().send(InterruptionFrame())
        await transport.output().send(AudioRawFrame(pcm(MONO_40MS), 16000, 1))  # a new stream starts at once
        after = await read_frames(client, t0 + 3)
    assert [(round(t - t0, 9), k) for t, k, _ in frames] == [
        (0.0, "audio"), (0.0, "audio"), (0.04, "audio"), (0.08, "audio"), (0.1, "interruption"),
    ]
    assert rel(after, t0) == [2.0]
    assert transport.stats.interrupted_audio_bytes == 6 * MONO_40MS


async def test_non_audio_frames_do_not_wait_behind_queued_audio(autojump_clock: Any) -> None:
    """A TextFrame sent after 1 s of queued audio leaves at once, between the audio chunks."""
    async with memory_server() as (transport, rec, new_client):
        client, t0 = await connected(rec, new_client)
        async with reading(client, t0 + 0.07) as frames:
            await transport.output().send(AudioRawFrame(pcm(25 * MONO_40MS), 16000, 1))
            await trio.sleep(0.05)
            await transport.output().send(TextFrame("caption"))
    assert [(round(t - t0, 9), k) for t, k, _ in frames] == [(0.0, "audio"), (0.0, "audio"), (0.04, "audio"), (0.05, "text")]


async def test_audio_in_another_format_than_configured_is_resampled_not_dropped(autojump_clock: Any) -> None:
    """With audio_out_sample_rate=16000, 200 ms at 24 kHz stereo goes out as exactly 200 ms of 16 kHz mono."""
    async with memory_server(WebsocketServerParams(audio_out_sample_rate=16000)) as (transport, rec, new_client):
        client, t0 = await connected(rec, new_client)
        await transport.output().send(AudioRawFrame(pcm(5 * 3840), 24000, 2))
        frames = await read_frames(client, t0 + 1)
    assert {(s.sample_rate, s.num_channels, len(s.audio)) for _, _, s in frames} == {(16000, 1, MONO_40MS)}
    assert len(frames) == 5  # 3200 frames of 16 kHz: the resampler's tail was flushed, nothing lost
    assert transport.stats.dropped_out["audio_format"] == 0 and transport.stats.audio_frames_converted == 1


async def test_session_timeout_fires_for_every_client_and_does_not_close(autojump_clock: Any) -> None:
    """Each of two consecutive clients gets on_session_timeout exactly 60 s after it connected; neither is closed by it."""
    params = WebsocketServerParams(session_timeout=60, session_config=SessionConfig(ping_interval_s=None))
    async with memory_server(params) as (transport, rec, new_client):
        first, t1 = await connected(rec, new_client)
        _, t, (client,) = await rec.wait_for("on_session_timeout")
        assert t - t1 == 60.0 and client.is_connected
        await trio.sleep(30)
        await first.send_bytes(pb.text("still open at +90 s"))
        assert await transport.input().receive() == TextFrame("still open at +90 s")
        await first.close()
        await rec.wait_for("on_client_disconnected")
        await trio.sleep(7)
        second, t2 = await connected(rec, new_client)
        _, t, (client2,) = await rec.wait_for("on_session_timeout", 2)
        assert t - t2 == 60.0 and client2 is not client and client2.is_connected
        client2.close(4000, "time is up")  # the handler's decision, e.g.
        assert (await second.expect_close()).code == 4000
    assert rec.names.count("on_session_timeout") == 2


async def test_shutdown_plays_out_audio_and_end_silence_then_closes_1001(autojump_clock: Any) -> None:
    """At shutdown the queued audio and 80 ms of end silence are paced out, then 1001 once it all played."""
    params = WebsocketServerParams(audio_out_sample_rate=16000, end_silence_ms=80)
    async with memory_server(params) as (transport, rec, new_client):
        client, t0 = await connected(rec, new_client)
        frames: list[float] = []
        closed: list[tuple[float, Any]] = []

        async def read_until_close() -> None:
            while True:
                event = await client.next_event()
                if isinstance(event, CloseConnection):
                    closed.append((trio.current_time(), event))
                    return
                frames.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_until_close)
            await transport.output().send(AudioRawFrame(pcm(4 * MONO_40MS), 16000, 1))
            await trio.sleep(0.01)
            await transport.shutdown()
        closed_at, event = closed[0]
    assert [round(t - t0, 9) for t in frames] == [0.0, 0.0, 0.04, 0.08, 0.12, 0.16]
    assert event.code == 1001 and round(closed_at - t0, 9) == 0.24
    assert rec.names[-1] == "on_client_disconnected"


async def test_input_overflow_drops_and_counts_without_stalling_the_session(autojump_clock: Any) -> None:
    """With a 2-frame input buffer nobody reads, the third frame is dropped and counted; the session answers pings."""
    async with memory_server(WebsocketServerParams(input_buffer_size=2)) as (transport, rec, new_client):
        client, t0 = await connected(rec, new_client)
        for word in ("one", "two", "three"):
            await client.send_bytes(pb.text(word))
        await trio.testing.wait_all_tasks_blocked()
        assert transport.stats.dropped_in == 1 and transport.stats.frames_in == 2
        await transport.output().send(TextFrame("alive"))
        assert (await read_frames(client, trio.current_time() + 1))[0][2].text == "alive"
        assert [await transport.input().receive() for _ in range(2)] == [TextFrame("one"), TextFrame("two")]
