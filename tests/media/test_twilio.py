"""A phone call through the server transport with the Twilio serializer: a client speaking Twilio's published
Media Streams messages over a real socket (Twilio itself is not reachable here), and mark timing on the autojump clock."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import trio
from websockets.exceptions import ConnectionClosed
from wsproto.events import AcceptConnection, TextMessage

from antiphon.media import (
    AudioRawFrame,
    DTMFFrame,
    InterruptionFrame,
    MarkFrame,
    StreamStartFrame,
    StreamStopFrame,
    TextFrame,
    TwilioFrameSerializer,
    WebsocketServerParams,
)
from antiphon.proto.media.g711 import pcm16_to_ulaw, ulaw_to_pcm16
from tests.helpers import RawClient
from tests.media.conftest import memory_server, tcp_server
from tests.media.test_server_socket import ws

SID = "MZ0123456789abcdef0123456789abcdef"


def twilio_start(sid: str = SID) -> str:
    return json.dumps({
        "event": "start", "sequenceNumber": "1", "streamSid": sid,
        "start": {
            "accountSid": "AC0123", "streamSid": sid, "callSid": "CA0123", "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {"caller": "+15550100"},
        },
    })  # fmt: skip


def twilio_media(ulaw: bytes, chunk: int) -> str:
    payload = base64.b64encode(ulaw).decode()
    return json.dumps({
        "event": "media", "sequenceNumber": str(chunk + 2), "streamSid": SID,
        "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(20 * chunk), "payload": payload},
    })  # fmt: skip


def tone_8k_ulaw(seconds: float) -> bytes:
    t = np.arange(int(8000 * seconds)) / 8000
    return pcm16_to_ulaw(np.round(8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes())


async def test_a_call_over_a_real_socket() -> None:
    """connected/start/media/dtmf/mark/stop in; media (8 kHz mu-law), a mark after the greeting, clear out; stop ends it."""
    params = WebsocketServerParams(serializer=TwilioFrameSerializer, audio_in_sample_rate=16000, pacing="none")
    async with tcp_server(params) as (transport, rec):

        @transport.event_handler("on_client_connected")
        async def greet(transport: Any, client: Any) -> None:
            # Sent before Twilio's start: held until the stream sid is known, then played.
            await transport.output().send(AudioRawFrame(bytes(6400), 16000, 1))  # 200 ms of 16 kHz

        async with ws(transport.url + "/media") as twilio:
            await twilio.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await twilio.send(twilio_start())
            got: list[dict[str, Any]] = []
            with trio.fail_after(10):
                while not got or got[-1]["event"] != "mark":
                    got.append(json.loads(await twilio.recv()))
            media = [m for m in got if m["event"] == "media"]
            assert {m["streamSid"] for m in got} == {SID}
            assert b"".join(base64.b64decode(m["media"]["payload"]) for m in media) == b"\xff" * 1600  # 200 ms, 8 kHz
            assert [len(base64.b64decode(m["media"]["payload"])) for m in media] == [320] * 5  # 40 ms chunks
            assert got[-1] == {"event": "mark", "streamSid": SID, "mark": {"name": "audio-1"}}

            caller = tone_8k_ulaw(1.0)
            for k in range(50):
                await twilio.send(twilio_media(caller[160 * k : 160 * (k + 1)], k + 1))
            await twilio.send(json.dumps({"event": "dtmf", "streamSid": SID, "sequenceNumber": "60",
                                          "dtmf": {"track": "inbound_track", "digit": "5"}}))  # fmt: skip
            await twilio.send(json.dumps({"event": "mark", "streamSid": SID, "sequenceNumber": "61", "mark": {"name": "audio-1"}}))
            frames: list[Any] = []
            with trio.fail_after(10):
                while not frames or not isinstance(frames[-1], MarkFrame):
                    frames.append(await transport.input().receive())
            await transport.output().send(TextFrame("no Twilio form: not sent"))
            await transport.output().send(InterruptionFrame())
            with trio.fail_after(10):
                assert json.loads(await twilio.recv()) == {"event": "clear", "streamSid": SID}
            await twilio.send(json.dumps({"event": "stop", "sequenceNumber": "62", "streamSid": SID,
                                          "stop": {"accountSid": "AC0123", "callSid": "CA0123"}}))  # fmt: skip
            with trio.fail_after(10):
                try:
                    await twilio.recv()
                except ConnectionClosed as exc:
                    assert exc.rcvd is not None and exc.rcvd.code == 1000
            assert isinstance(await transport.input().receive(), StreamStopFrame)
        _, _, (gone,) = await rec.wait_for("on_client_disconnected")
    start, *audio, dtmf, mark = frames
    assert isinstance(start, StreamStartFrame) and start.stream_sid == SID and start.custom_parameters == {"caller": "+15550100"}
    assert all(isinstance(f, AudioRawFrame) and (f.sample_rate, f.num_channels) == (16000, 1) for f in audio)
    heard = np.frombuffer(b"".join(f.audio for f in audio), dtype="<i2")
    assert 0.85 * 16000 <= len(heard) <= 16000  # the caller's second, at 16 kHz (the filter still holds a little)
    assert dtmf == DTMFFrame("5") and mark == MarkFrame("audio-1")
    assert gone.close_code == 1000 and not gone.closed_by_peer
    assert transport.stats.dropped_out["serializer_returned_none"] == 1


async def test_marks_follow_their_audio_on_the_autojump_clock(autojump_clock: Any) -> None:
    """Realtime pacing: each 120 ms greeting's mark leaves right after its last chunk; a MarkFrame waits behind the audio."""
    async with memory_server(WebsocketServerParams(serializer=TwilioFrameSerializer)) as (transport, rec, new_client):
        client = RawClient(new_client().stream)
        assert isinstance(await client.handshake(), AcceptConnection)
        await rec.wait_for("on_client_connected")
        await client.send_text(twilio_start())
        assert isinstance(await transport.input().receive(), StreamStartFrame)
        t0 = trio.current_time()
        await transport.output().send(AudioRawFrame(bytes(960 * 2), 8000, 1, name="hello"))  # 120 ms at 8 kHz
        await transport.output().send(MarkFrame("after hello"))
        await transport.output().send(AudioRawFrame(bytes(640 * 2), 8000, 1))  # 80 ms
        sent: list[tuple[float, str]] = []
        with trio.move_on_at(t0 + 1):
            while True:
                event = await client.next_event()
                assert isinstance(event, TextMessage)
                msg = json.loads(event.data)
                sent.append((round(trio.current_time() - t0, 9), msg["event"] if msg["event"] == "media" else msg["mark"]["name"]))
    assert sent == [
        (0.0, "media"), (0.0, "media"), (0.04, "media"), (0.04, "hello"), (0.04, "after hello"),
        (0.08, "media"), (0.12, "media"), (0.12, "audio-2"),
    ]  # fmt: skip


async def test_caller_audio_decodes_to_the_tone(autojump_clock: Any) -> None:
    """Without audio_in_sample_rate the caller's audio is delivered as 8 kHz PCM16, sample for sample G.711-decoded."""
    async with memory_server(WebsocketServerParams(serializer=TwilioFrameSerializer)) as (transport, rec, new_client):
        client = RawClient(new_client().stream)
        assert isinstance(await client.handshake(), AcceptConnection)
        await client.send_text(twilio_start())
        caller = tone_8k_ulaw(0.1)
        for k in range(5):
            await client.send_text(twilio_media(caller[160 * k : 160 * (k + 1)], k + 1))
        frames = [await transport.input().receive() for _ in range(6)][1:]
    assert b"".join(f.audio for f in frames) == ulaw_to_pcm16(caller)
    assert {(f.sample_rate, f.num_channels) for f in frames} == {(8000, 1)}
