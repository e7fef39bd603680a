"""The server transport over real sockets on 127.0.0.1, spoken to by `websockets` + an independent protobuf schema."""

from __future__ import annotations

import io
import wave
from typing import Any

import pytest
import trio
import trio.testing
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.trio.client import connect

from antiphon.media import (
    SERVER_EVENTS,
    AudioRawFrame,
    InterruptionFrame,
    JsonFrameSerializer,
    MessageFrame,
    TextFrame,
    TranscriptionFrame,
    WebsocketServerParams,
    WebsocketServerTransport,
)
from tests.media import pb_schema as pb
from tests.media.conftest import Recorder, tcp_server

PCM_40MS = bytes(range(256)) * 5  # 1280 bytes: 40 ms of 16 kHz mono, not silence


def wav_file(pcm: bytes, rate: int, channels: int) -> bytes:
    """A WAV file written by the stdlib, as Pipecat's clients do (independent of antiphon)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()


def ws(url: str, **kwargs: Any) -> Any:
    return connect(url, open_timeout=5, close_timeout=5, compression=None, **kwargs)


async def close_code(conn: Any) -> tuple[int, str]:
    """Read until the server closes; return its close code and reason."""
    with trio.fail_after(10):
        try:
            while True:
                await conn.recv()
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            return exc.rcvd.code, exc.rcvd.reason


async def receive_n(transport: Any, n: int) -> list[Any]:
    with trio.fail_after(5):
        return [await transport.input().receive() for _ in range(n)]


async def test_client_frames_of_every_kind_arrive_decoded_on_input() -> None:
    """Text, raw and WAV-wrapped audio, transcription, message and interruption from a protobuf client arrive as frames."""
    async with tcp_server() as (transport, _), ws(transport.url) as conn:
        await conn.send(pb.text("hello"))
        await conn.send(pb.audio(PCM_40MS, 16000, 1))
        await conn.send(pb.audio(wav_file(PCM_40MS, 16000, 1), 16000, 1))
        await conn.send(pb.transcription("hi there", "user-1", "2026-01-01T00:00:00Z"))
        await conn.send(pb.message({"label": "rtvi-ai", "type": "client-ready", "n": [1, 2]}))
        await conn.send(pb.interruption())
        frames = await receive_n(transport, 6)
    assert frames == [
        TextFrame("hello"),
        AudioRawFrame(PCM_40MS, 16000, 1),
        AudioRawFrame(PCM_40MS, 16000, 1),  # the WAV header is gone
        TranscriptionFrame("hi there", "user-1", "2026-01-01T00:00:00Z"),
        MessageFrame({"label": "rtvi-ai", "type": "client-ready", "n": [1, 2]}),
        InterruptionFrame(),
    ]
    assert transport.stats.frames_in == 6


async def test_output_frames_of_every_kind_reach_a_protobuf_client() -> None:
    """Frames sent on output() reach the client in Pipecat's protobuf, with ids/names stamped and audio raw PCM."""
    async with tcp_server() as (transport, rec):
        async with ws(transport.url) as conn:
            await rec.wait_for("on_client_connected")
            out = transport.output()
            await out.send(TextFrame("hello"))
            await out.send(TranscriptionFrame("hi", "bot", "2026-01-01T00:00:00Z"))
            await out.send(MessageFrame({"a": 1}))
            await out.send(InterruptionFrame())
            await out.send(AudioRawFrame(PCM_40MS * 2, 16000, 1))
            got = [pb.decode(await conn.recv()) for _ in range(6)]
    kinds = [k for k, _ in got]
    assert kinds == ["text", "transcription", "message", "interruption", "audio", "audio"]
    assert got[0][1].text == "hello" and got[0][1].name == "TextFrame#0" and got[0][1].id > 0
    assert (got[1][1].text, got[1][1].user_id) == ("hi", "bot")
    assert got[2][1].data == '{"a": 1}'
    audio = [sub for k, sub in got if k == "audio"]
    assert [(a.audio, a.sample_rate, a.num_channels) for a in audio] == [(PCM_40MS, 16000, 1)] * 2


async def test_add_wav_header_wraps_each_outgoing_chunk() -> None:
    """With add_wav_header=True every 40 ms chunk is a complete 44-byte-header WAV file."""
    async with tcp_server(WebsocketServerParams(add_wav_header=True)) as (transport, rec):
        async with ws(transport.url) as conn:
            await rec.wait_for("on_client_connected")
            await transport.output().send(AudioRawFrame(PCM_40MS, 16000, 1))
            kind, sub = pb.decode(await conn.recv())
    assert kind == "audio" and sub.audio == wav_file(PCM_40MS, 16000, 1) and len(sub.audio) == 1324


async def test_json_serializer_speaks_text_messages() -> None:
    """A JsonFrameSerializer factory makes the transport speak antiphon's JSON text protocol."""
    async with tcp_server(WebsocketServerParams(serializer=JsonFrameSerializer)) as (transport, _):
        async with ws(transport.url) as conn:
            await conn.send('{"type": "text", "text": "hi"}')
            assert await receive_n(transport, 1) == [TextFrame("hi")]
            await transport.output().send(TextFrame("back"))
            assert await conn.recv() == '{"type":"text","text":"back"}'


async def test_bad_frames_are_logged_counted_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    """Garbage, a text message, zero-channel audio and an empty frame are skipped; the session carries on."""
    async with tcp_server() as (transport, _), ws(transport.url) as conn:
        await conn.send(b"\xff\xff\xff garbage")
        await conn.send("a text message")
        await conn.send(pb.audio(PCM_40MS, 16000, 0))
        await conn.send(b"")
        await conn.send(pb.text("still here"))
        assert await receive_n(transport, 1) == [TextFrame("still here")]
        await transport.output().send(TextFrame("and you?"))
        assert pb.decode(await conn.recv())[1].text == "and you?"
    assert dict(transport.stats.skipped_in) == {"malformed": 1, "wrong_message_type": 1, "bad_audio": 1, "no_frame": 1}
    assert "skipped a message: bad_audio" in caplog.text


async def test_second_client_is_closed_1013_and_the_first_is_kept() -> None:
    """A newcomer gets the upgrade, then close 1013 and no event; the current client keeps working."""
    async with tcp_server() as (transport, rec):
        async with ws(transport.url) as first:
            await rec.wait_for("on_client_connected")
            async with ws(transport.url) as second:
                assert await close_code(second) == (1013, "Server already has a connected client")
            await first.send(pb.text("first"))
            assert await receive_n(transport, 1) == [TextFrame("first")]
            assert transport.client is rec.events[-1][2][0]
        await rec.wait_for("on_client_disconnected")
        async with ws(transport.url) as third:  # the server accepts the next client
            await rec.wait_for("on_client_connected", 2)
            await third.send(pb.text("third"))
            assert await receive_n(transport, 1) == [TextFrame("third")]
    assert rec.names == [
        "on_websocket_ready", "on_client_connected", "on_client_disconnected", "on_client_connected", "on_client_disconnected",
    ]
    assert transport.stats.rejected_clients == 1


async def test_replace_existing_client_closes_the_old_one() -> None:
    """With replace_existing_client the old client is closed (1000) and disconnected before the newcomer connects."""
    async with tcp_server(WebsocketServerParams(replace_existing_client=True)) as (transport, rec):
        async with ws(transport.url) as old:
            await rec.wait_for("on_client_connected")
            async with ws(transport.url) as new:
                assert await close_code(old) == (1000, "replaced by a new client")
                _, _, (client,) = await rec.wait_for("on_client_connected", 2)
                await new.send(pb.text("new"))
                assert await receive_n(transport, 1) == [TextFrame("new")]
    names = rec.names
    assert names[:4] == ["on_websocket_ready", "on_client_connected", "on_client_disconnected", "on_client_connected"]
    assert rec.events[1][2][0] is rec.events[2][2][0] is not client


async def test_events_carry_the_client_and_disconnect_fires_on_client_close() -> None:
    """on_websocket_ready, then on_client_connected / on_client_disconnected with the same client object and its headers."""
    async with tcp_server() as (transport, rec):
        await rec.wait_for("on_websocket_ready")
        async with ws(transport.url + "/bot?x=1", additional_headers={"X-Test": "yes"}):
            _, _, (client,) = await rec.wait_for("on_client_connected")
            assert client.header("x-test") == "yes" and client.path == "/bot" and client.is_connected
        _, _, (gone,) = await rec.wait_for("on_client_disconnected")
    assert gone is client and gone.close_code == 1000 and gone.closed_by_peer
    assert rec.events[0][2] == ()


async def test_output_with_no_client_is_dropped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    """Frames sent while nobody is connected are dropped with a warning and counted, not queued for the next client."""
    async with tcp_server() as (transport, rec):
        await transport.output().send(TextFrame("to nobody"))
        await transport.output().send(TextFrame("to nobody either"))
        await trio.testing.wait_all_tasks_blocked()
        assert transport.stats.dropped_out["no_client"] == 2
        async with ws(transport.url) as conn:
            await rec.wait_for("on_client_connected")
            await transport.output().send(TextFrame("to you"))
            assert pb.decode(await conn.recv())[1].text == "to you"
    assert "no client connected: dropping an outgoing text frame" in caplog.text


async def test_shutdown_closes_the_client_with_1001_and_fires_disconnect() -> None:
    """shutdown() closes the connected client with 1001, fires on_client_disconnected, ends input and refuses output."""
    async with trio.open_nursery() as nursery:
        transport = WebsocketServerTransport(WebsocketServerParams(), host="127.0.0.1", port=0)
        rec = Recorder(transport, SERVER_EVENTS)
        await nursery.start(transport.run)
        async with ws(transport.url) as conn:
            await rec.wait_for("on_client_connected")
            nursery.start_soon(transport.shutdown)
            assert (await close_code(conn))[0] == 1001
        await rec.wait_for("on_client_disconnected")
    assert [f async for f in transport.input()] == []
    with pytest.raises(trio.BrokenResourceError):
        await transport.output().send(TextFrame("late"))


async def test_disallowed_origin_is_refused_with_403() -> None:
    """With allowed_origins set, an upgrade from another origin gets HTTP 403 and no event."""
    async with tcp_server(WebsocketServerParams(allowed_origins=["https://ok.example"])) as (transport, rec):
        with pytest.raises(InvalidStatus) as info:
            async with ws(transport.url, origin="https://evil.example"):
                pass
        assert info.value.response.status_code == 403
        async with ws(transport.url, origin="https://ok.example"):
            await rec.wait_for("on_client_connected")
