"""Pacing policies and audio conversion on both transports, on the autojump clock over memory streams (exact times)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from antiphon.media import (
    AudioRawFrame,
    WebsocketClientParams,
    WebsocketClientTransport,
    WebsocketServerParams,
    WebsocketServerTransport,
)
from tests.media import pb_schema as pb
from tests.media.conftest import Recorder, memory_server
from tests.media.test_client import MemoryDialer
from tests.media.test_server_timing import MONO_40MS, connected, pcm, read_frames, rel

# ---------------------------------------------------------------- pacing, server


@pytest.mark.parametrize(
    ("params", "times"),
    [
        ({}, [0.0, 0.0, 0.04, 0.08, 0.12, 0.16]),  # realtime: Pipecat's timing
        ({"pacing": "realtime", "lead_ms": 500}, [0.0, 0.0, 0.04, 0.08, 0.12, 0.16]),  # lead_ms is for "lead" only
        ({"pacing": "lead", "lead_ms": 120}, [0.0, 0.0, 0.0, 0.0, 0.04, 0.08]),
        ({"pacing": "lead"}, [0.0] * 6),  # 200 ms of lead covers all 240 ms but the last 40
        ({"pacing": "none"}, [0.0] * 6),
    ],
)
async def test_server_send_times_per_policy(autojump_clock: Any, params: dict[str, Any], times: list[float]) -> None:
    """240 ms of 16 kHz mono leaves at exactly the policy's times."""
    async with memory_server(WebsocketServerParams(**params)) as (transport, rec, new_client):
        client, t0 = await connected(rec, new_client)
        await transport.output().send(AudioRawFrame(pcm(6 * MONO_40MS), 16000, 1))
        frames = await read_frames(client, t0 + 1)
    assert rel(frames, t0) == times


async def test_none_policy_sends_a_long_file_at_once(autojump_clock: Any) -> None:
    """pacing="none": 10 s of audio is all on the wire at the send time (offline synthesis, tests)."""
    async with memory_server(WebsocketServerParams(pacing="none")) as (transport, rec, new_client):
        client, t0 = await connected(rec, new_client)
        await transport.output().send(AudioRawFrame(pcm(250 * MONO_40MS), 16000, 1))
        frames = await read_frames(client, t0 + 1)
    assert len(frames) == 250 and set(rel(frames, t0)) == {0.0}


# ---------------------------------------------------------------- pacing, client


@asynccontextmanager
async def client_and_server(
    client_params: dict[str, Any], server_params: dict[str, Any] | None = None
) -> AsyncIterator[tuple[WebsocketClientTransport, WebsocketServerTransport, float]]:
    """A client transport dialling a server transport over memory streams; yields them and the connect time."""
    server = WebsocketServerTransport(WebsocketServerParams(**(server_params or {})), port=0)
    server_rec = Recorder(server, ("on_client_connected",))
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: server.run(listen=False, task_status=task_status))
        dialer = MemoryDialer(server, nursery, fail=set())
        client = WebsocketClientTransport("ws://media.test/", WebsocketClientParams(open_stream=dialer, **client_params))
        async with client:
            await client.connect()
            await server_rec.wait_for("on_client_connected")
            yield client, server, trio.current_time()
        nursery.cancel_scope.cancel()


async def frames_until(channel: Any, until: float) -> list[tuple[float, Any]]:
    got: list[tuple[float, Any]] = []
    with trio.move_on_at(until):
        async for frame in channel:
            got.append((trio.current_time(), frame))
    return got


@pytest.mark.parametrize(
    ("params", "times"),
    [
        ({}, [0.0, 0.0, 0.04, 0.08, 0.12, 0.16]),
        ({"pacing": "lead", "lead_ms": 120}, [0.0, 0.0, 0.0, 0.0, 0.04, 0.08]),
        ({"pacing": "none"}, [0.0] * 6),
    ],
)
async def test_client_send_times_per_policy(autojump_clock: Any, params: dict[str, Any], times: list[float]) -> None:
    """The client paces its output by the same policies: arrival times at the server are exact."""
    async with client_and_server(params) as (client, server, t0):
        await client.output().send(AudioRawFrame(pcm(6 * MONO_40MS), 16000, 1))
        got = await frames_until(server.input(), t0 + 1)
    assert [round(t - t0, 9) for t, _ in got] == times


# ---------------------------------------------------------------- conversion, both directions, both transports


def sine(rate: int, seconds: float, frequency: float = 440.0, channels: int = 1) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    mono = np.round(10000 * np.sin(2 * math.pi * frequency * t)).astype("<i2")
    return np.repeat(mono[:, None], channels, axis=1).tobytes()


def frequency_of(pcm_bytes: bytes, rate: int, channels: int = 1) -> float:
    y = np.frombuffer(pcm_bytes, dtype="<i2").reshape(-1, channels)[:, 0].astype(np.float64)
    y = y[len(y) // 10 : -len(y) // 10]
    rising = np.nonzero((y[:-1] < 0) & (y[1:] >= 0))[0]
    exact = rising + (-y[rising]) / (y[rising + 1] - y[rising])
    return float((len(exact) - 1) / ((exact[-1] - exact[0]) / rate))


async def test_server_converts_incoming_audio_to_audio_in_format(autojump_clock: Any) -> None:
    """audio_in_sample_rate=16000, audio_in_channels=1: 8 kHz stereo in 20 ms frames arrives as 16 kHz mono, 440 Hz kept."""
    params = WebsocketServerParams(audio_in_sample_rate=16000, audio_in_channels=1)
    async with memory_server(params) as (transport, rec, new_client):
        client, t0 = await connected(rec, new_client)
        audio = sine(8000, 1.0, channels=2)
        for i in range(0, len(audio), 640):
            await client.send_bytes(pb.audio(audio[i : i + 640], 8000, 2))
        frames = [f for _, f in await frames_until(transport.input(), t0 + 1)]
    assert {(f.sample_rate, f.num_channels) for f in frames} == {(16000, 1)}
    received = b"".join(f.audio for f in frames)
    assert 0.85 * 32000 <= len(received) <= 32000  # all but what the filter still holds (~115 ms at 2:1)
    assert abs(frequency_of(received, 16000) / 440 - 1) < 0.0005
    assert transport.stats.audio_frames_converted == 50


async def test_server_output_conversion_keeps_the_tone(autojump_clock: Any) -> None:
    """24 kHz mono to a 16 kHz stereo output: every chunk 40 ms of 16 kHz stereo, 440 Hz kept, nothing lost."""
    params = WebsocketServerParams(audio_out_sample_rate=16000, audio_out_channels=2, pacing="none")
    async with memory_server(params) as (transport, rec, new_client):
        client, t0 = await connected(rec, new_client)
        for i in range(0, 48000, 960):  # 1 s of 24 kHz in 20 ms frames
            await transport.output().send(AudioRawFrame(sine(24000, 1.0)[i : i + 960], 24000, 1))
        frames = await read_frames(client, t0 + 1)
    assert {(s.sample_rate, s.num_channels, len(s.audio)) for _, _, s in frames} == {(16000, 2, 2 * MONO_40MS)}
    out = b"".join(s.audio for _, _, s in frames)
    assert len(out) == 64000 and abs(frequency_of(out, 16000, 2) / 440 - 1) < 0.0005


async def test_client_converts_both_ways(autojump_clock: Any) -> None:
    """Client: 48 kHz stereo out becomes 16 kHz mono chunks; the server's 16 kHz comes in as 24 kHz."""
    params = {"audio_out_sample_rate": 16000, "audio_in_sample_rate": 24000, "pacing": "none"}
    async with client_and_server(params) as (client, server, t0):
        await client.output().send(AudioRawFrame(sine(48000, 0.4, channels=2), 48000, 2))
        up = [f for _, f in await frames_until(server.input(), t0 + 1)]
        for i in range(0, 32000, 1280):
            await server.output().send(AudioRawFrame(sine(16000, 1.0)[i : i + 1280], 16000, 1))
        down = [f for _, f in await frames_until(client.input(), t0 + 3)]
    assert {(f.sample_rate, f.num_channels, len(f.audio)) for f in up} == {(16000, 1, MONO_40MS)} and len(up) == 10
    assert {(f.sample_rate, f.num_channels) for f in down} == {(24000, 1)}
    assert abs(frequency_of(b"".join(f.audio for f in down), 24000) / 440 - 1) < 0.0005


async def test_without_an_output_format_a_stream_keeps_its_first_frames_format(autojump_clock: Any) -> None:
    """No audio_out_sample_rate: 24 kHz audio while 16 kHz is queued is converted into the 16 kHz stream, then a new
    stream after it played out takes its own first frame's format."""
    async with memory_server() as (transport, rec, new_client):
        client, t0 = await connected(rec, new_client)
        await transport.output().send(AudioRawFrame(pcm(4 * MONO_40MS), 16000, 1))
        await transport.output().send(AudioRawFrame(sine(24000, 0.08), 24000, 1))  # 80 ms, converted
        first = await read_frames(client, t0 + 1)
        await transport.output().send(AudioRawFrame(sine(24000, 0.08), 24000, 1))  # a new stream: 24 kHz as sent
        second = await read_frames(client, t0 + 2)
    assert [s.sample_rate for _, _, s in first] == [16000] * 6
    assert [(s.sample_rate, len(s.audio)) for _, _, s in second] == [(24000, 1920)] * 2
    assert transport.stats.audio_frames_converted == 1
