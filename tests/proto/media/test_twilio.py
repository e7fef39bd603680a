"""Twilio Media Streams serializer: Twilio's published messages in, Twilio's accepted messages out."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from antiphon.errors import DecodeError, LocalProtocolError
from antiphon.proto.media.frames import (
    AudioRawFrame,
    DTMFFrame,
    InterruptionFrame,
    MarkFrame,
    MessageFrame,
    StreamStartFrame,
    StreamStopFrame,
    TextFrame,
    TranscriptionFrame,
)
from antiphon.proto.media.g711 import pcm16_to_ulaw, ulaw_to_pcm16
from antiphon.proto.media.serializers import SkipReason
from antiphon.proto.media.twilio import TwilioFrameSerializer

SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
ULAW_20MS = bytes(range(96, 256))  # 160 codes: 20 ms at 8 kHz

# The examples of https://www.twilio.com/docs/voice/media-streams/websocket-messages, as Twilio sends them.
CONNECTED = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
START = {
    "event": "start",
    "sequenceNumber": "1",
    "start": {
        "accountSid": "AC123",
        "streamSid": SID,
        "callSid": "CA123",
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"FirstName": "Jane", "LastName": "Doe"},
    },
    "streamSid": SID,
}
MEDIA = {
    "event": "media",
    "sequenceNumber": "3",
    "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": base64.b64encode(ULAW_20MS).decode()},
    "streamSid": SID,
}
DTMF = {"event": "dtmf", "streamSid": SID, "sequenceNumber": "5", "dtmf": {"track": "inbound_track", "digit": "1"}}
MARK = {"event": "mark", "sequenceNumber": "4", "streamSid": SID, "mark": {"name": "my label"}}
STOP = {"event": "stop", "sequenceNumber": "5", "stop": {"accountSid": "AC123", "callSid": "CA123"}, "streamSid": SID}


def started() -> TwilioFrameSerializer:
    ser = TwilioFrameSerializer()
    ser.deserialize(json.dumps(CONNECTED))
    ser.deserialize(json.dumps(START))
    return ser


def test_a_call_decodes_event_by_event() -> None:
    """connected is consumed; start, media, dtmf, mark and stop become frames in order."""
    ser = TwilioFrameSerializer()
    assert ser.deserialize(json.dumps(CONNECTED)) is None and ser.stats.consumed == 1 and ser.stats.total_skipped == 0
    assert ser.protocol == ("Call", "1.0.0") and not ser.ready
    start = ser.deserialize(json.dumps(START))
    assert start == StreamStartFrame(
        SID, call_sid="CA123", account_sid="AC123", tracks=("inbound",),
        custom_parameters={"FirstName": "Jane", "LastName": "Doe"}, sample_rate=8000, encoding="audio/x-mulaw",
    )  # fmt: skip
    assert ser.ready and ser.stream_sid == SID
    assert ser.deserialize(json.dumps(MEDIA)) == AudioRawFrame(ulaw_to_pcm16(ULAW_20MS), 8000, 1)
    assert ser.deserialize(json.dumps(DTMF)) == DTMFFrame("1")
    assert ser.deserialize(json.dumps(MARK)) == MarkFrame("my label")
    stop = ser.deserialize(json.dumps(STOP))
    assert stop == StreamStopFrame() and stop.ends_session
    assert ser.stats.decoded == 5 and ser.stats.total_skipped == 0


def test_media_of_another_track_is_consumed_not_delivered() -> None:
    """A both_tracks stream's outbound audio is the far end, not the caller: consumed silently."""
    ser = started()
    outbound = {**MEDIA, "media": {**MEDIA["media"], "track": "outbound"}}  # type: ignore[dict-item]
    assert ser.deserialize(json.dumps(outbound)) is None
    assert ser.stats.consumed == 2 and ser.stats.total_skipped == 0


BAD: list[tuple[str | bytes, SkipReason]] = [
    (b'{"event":"media"}', SkipReason.WRONG_MESSAGE_TYPE),
    ("not json", SkipReason.MALFORMED),
    ("[1]", SkipReason.MALFORMED),
    ('{"streamSid":"MZ"}', SkipReason.NO_FRAME),
    ('{"event":["start"]}', SkipReason.NO_FRAME),
    ('{"event":"transcription"}', SkipReason.NO_FRAME),
    ('{"event":"start"}', SkipReason.BAD_FIELDS),
    ('{"event":"start","start":{"streamSid":5}}', SkipReason.BAD_FIELDS),
    ('{"event":"start","start":{"streamSid":"MZ","mediaFormat":{"sampleRate":24}}}', SkipReason.BAD_FIELDS),
    ('{"event":"media","media":{"payload":"not base64!"}}', SkipReason.BAD_AUDIO),
    ('{"event":"media","media":{}}', SkipReason.BAD_AUDIO),
    ('{"event":"media","media":"AAAA"}', SkipReason.BAD_AUDIO),
    ('{"event":"dtmf","dtmf":{"digit":"12"}}', SkipReason.BAD_FIELDS),
    ('{"event":"dtmf","dtmf":{"digit":"x"}}', SkipReason.BAD_FIELDS),
    ('{"event":"mark","mark":{"name":7}}', SkipReason.BAD_FIELDS),
]


@pytest.mark.parametrize(("data", "reason"), BAD)
def test_bad_messages_are_skipped_with_a_located_reason(data: str | bytes, reason: SkipReason) -> None:
    """Each bad message is skipped under its reason with a $-located detail; decode raises DecodeError."""
    ser = TwilioFrameSerializer()
    assert ser.deserialize(data) is None
    assert ser.stats.skipped == {reason: 1}
    assert ser.stats.last_skip is not None and ser.stats.last_skip.detail.startswith("$")
    with pytest.raises(DecodeError):
        ser.decode(data)


def test_a_stream_in_another_encoding_skips_its_media() -> None:
    """If start announces something other than mu-law, media cannot be decoded: skipped, not garbled."""
    ser = TwilioFrameSerializer()
    start = json.loads(json.dumps(START))
    start["start"]["mediaFormat"]["encoding"] = "audio/x-alaw"
    assert ser.deserialize(json.dumps(start)) is not None
    assert ser.deserialize(json.dumps(MEDIA)) is None and ser.stats.skipped == {SkipReason.BAD_AUDIO: 1}


def out(ser: TwilioFrameSerializer, frame: Any) -> dict[str, Any]:
    text = ser.serialize(frame)
    assert isinstance(text, str)
    return json.loads(text)  # type: ignore[no-any-return]


def test_output_messages_are_what_twilio_accepts() -> None:
    """Audio -> media (base64 mu-law), MarkFrame -> mark, InterruptionFrame -> clear, each with the streamSid."""
    ser = started()
    pcm = ulaw_to_pcm16(ULAW_20MS)
    assert out(ser, AudioRawFrame(pcm, 8000, 1)) == {
        "event": "media", "streamSid": SID, "media": {"payload": base64.b64encode(pcm16_to_ulaw(pcm)).decode()},
    }  # fmt: skip
    assert out(ser, MarkFrame("greeting")) == {"event": "mark", "streamSid": SID, "mark": {"name": "greeting"}}
    assert out(ser, InterruptionFrame()) == {"event": "clear", "streamSid": SID}
    assert out(ser, MessageFrame({"event": "mark", "streamSid": SID, "mark": {"name": "raw"}}))["mark"] == {"name": "raw"}


def test_frames_without_a_twilio_form() -> None:
    """Text and transcriptions give None (nothing to send); telephony events and wrong-rate audio are caller errors."""
    ser = started()
    assert ser.serialize(TextFrame("hi")) is None and ser.serialize(TranscriptionFrame("a", "b", "c")) is None
    for frame in (DTMFFrame("1"), StreamStopFrame(), StreamStartFrame("MZ"), AudioRawFrame(b"\x00\x00", 16000, 1), "x"):
        with pytest.raises(LocalProtocolError):
            ser.serialize(frame)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="deep"):
        ser.serialize(MessageFrame(json.loads("[" * 65 + "]" * 65)))


def test_output_before_start_is_refused_unless_the_sid_was_given() -> None:
    """Without a streamSid nothing can be addressed; a sid given to the constructor makes it ready at once."""
    with pytest.raises(LocalProtocolError, match="streamSid"):
        TwilioFrameSerializer().serialize(InterruptionFrame())
    ser = TwilioFrameSerializer(stream_sid="MZ9")
    assert ser.ready and out(ser, InterruptionFrame()) == {"event": "clear", "streamSid": "MZ9"}
