"""Media serializers: Pipecat's protobuf wire byte for byte, antiphon's JSON protocol, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from hypothesis import given
from hypothesis import strategies as st

from antiphon.errors import DecodeError, LocalProtocolError
from antiphon.proto.media import schema as media_pb
from antiphon.proto.media.frames import (
    AudioRawFrame,
    InterruptionFrame,
    MediaFrame,
    MessageFrame,
    TextFrame,
    TranscriptionFrame,
)
from antiphon.proto.media.serializers import (
    JsonFrameSerializer,
    ProtobufFrameSerializer,
    SkipReason,
)
from antiphon.proto.media.wav import add_wav_header

# ---------------------------------------------------------------- an independent peer

_FD = descriptor_pb2.FieldDescriptorProto


def _peer_frame_class() -> Any:
    """pipecat.Frame built here from a hand-written descriptor, in a pool of its own."""
    fdp = descriptor_pb2.FileDescriptorProto(name="pipecat/frames.proto", package="pipecat", syntax="proto3")
    u64, u32, s, b = _FD.TYPE_UINT64, _FD.TYPE_UINT32, _FD.TYPE_STRING, _FD.TYPE_BYTES

    def message(name: str, *fields: tuple[str, int, int]) -> descriptor_pb2.DescriptorProto:
        msg = fdp.message_type.add(name=name)
        for field_name, number, field_type in fields:
            msg.field.add(name=field_name, number=number, type=field_type, label=_FD.LABEL_OPTIONAL)
        return msg

    message("TextFrame", ("id", 1, u64), ("name", 2, s), ("text", 3, s))
    audio = message(
        "AudioRawFrame",
        ("id", 1, u64), ("name", 2, s), ("audio", 3, b), ("sample_rate", 4, u32), ("num_channels", 5, u32),
    )
    audio.oneof_decl.add(name="_pts")
    audio.field.add(name="pts", number=6, type=u64, label=_FD.LABEL_OPTIONAL, proto3_optional=True, oneof_index=0)
    message("TranscriptionFrame", ("id", 1, u64), ("name", 2, s), ("text", 3, s), ("user_id", 4, s), ("timestamp", 5, s))
    message("MessageFrame", ("data", 1, s))
    message("InterruptionFrame", ("id", 1, u64), ("name", 2, s))
    frame = fdp.message_type.add(name="Frame")
    frame.oneof_decl.add(name="frame")
    for name, number, type_name in [
        ("text", 1, "TextFrame"), ("audio", 2, "AudioRawFrame"), ("transcription", 3, "TranscriptionFrame"),
        ("message", 4, "MessageFrame"), ("interruption", 5, "InterruptionFrame"),
    ]:  # fmt: skip
        frame.field.add(
            name=name, number=number, type=_FD.TYPE_MESSAGE, type_name=f".pipecat.{type_name}",
            label=_FD.LABEL_OPTIONAL, oneof_index=0,
        )  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("pipecat.Frame"))


PeerFrame = _peer_frame_class()
PCM = bytes(range(256)) * 5  # 1280 bytes: 40 ms of 16 kHz mono


def _peer(**kind: dict[str, Any]) -> bytes:
    ((which, fields),) = kind.items()
    msg = PeerFrame()
    getattr(msg, which).SetInParent()
    for name, value in fields.items():
        setattr(getattr(msg, which), name, value)
    return bytes(msg.SerializeToString())


# ---------------------------------------------------------------- schema


def _parse_proto(text: str) -> dict[str, dict[str, tuple[str, int, bool, str | None]]]:
    """Minimal .proto reader: message -> field -> (type, number, optional, oneof)."""
    text = re.sub(r"//[^\n]*", "", text)
    out: dict[str, dict[str, tuple[str, int, bool, str | None]]] = {}
    for msg in re.finditer(r"message\s+(\w+)\s*\{(.*?)\n\}", text, re.S):
        body = msg.group(2)
        in_oneof = {
            f: o.group(1) for o in re.finditer(r"oneof\s+(\w+)\s*\{(.*?)\}", body, re.S)
            for f in re.findall(r"(\w+)\s*=", o.group(2))
        }  # fmt: skip
        out[msg.group(1)] = {
            f.group(3): (f.group(2), int(f.group(4)), bool(f.group(1)), in_oneof.get(f.group(3)))
            for f in re.finditer(r"(optional\s+)?(\w+)\s+(\w+)\s*=\s*(\d+)\s*;", body)
        }
    return out


_TYPE_NAMES = {_FD.TYPE_UINT64: "uint64", _FD.TYPE_UINT32: "uint32", _FD.TYPE_STRING: "string", _FD.TYPE_BYTES: "bytes"}


def test_runtime_descriptor_matches_frames_proto() -> None:
    """The descriptor built at import has frames.proto's messages, names, numbers, types and oneofs."""
    text = (Path(media_pb.__file__).parent / "frames.proto").read_text()
    expected = _parse_proto(text)
    assert re.search(r"^package pipecat;$", text, re.M) and 'syntax = "proto3";' in text
    fdp = descriptor_pb2.FileDescriptorProto()
    media_pb.FramePb.DESCRIPTOR.file.CopyToProto(fdp)
    got = {}
    for msg in fdp.message_type:
        fields = {}
        for f in msg.field:
            type_name = f.type_name.rsplit(".", 1)[-1] if f.type == _FD.TYPE_MESSAGE else _TYPE_NAMES[f.type]
            oneof = msg.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") and not f.proto3_optional else None
            fields[f.name] = (type_name, f.number, f.proto3_optional, oneof)
        got[msg.name] = fields
    assert fdp.package == "pipecat" and fdp.syntax == "proto3"
    assert got == expected
    assert len(expected) == 6 and expected["AudioRawFrame"]["pts"] == ("uint64", 6, True, None)
    assert expected["Frame"]["interruption"] == ("InterruptionFrame", 5, False, "frame")


# ---------------------------------------------------------------- Pipecat's hex examples


def test_text_frame_hex_matches_pipecat() -> None:
    """TextFrame("hi") id=1 name="TextFrame#0" is 0a13 0801 120b "TextFrame#0" 1a02 "hi"."""
    got = ProtobufFrameSerializer().serialize(TextFrame("hi", id=1, name="TextFrame#0"))
    assert got == bytes.fromhex("0a13 0801 120b") + b"TextFrame#0" + bytes.fromhex("1a02") + b"hi"


def test_default_stamping_reproduces_pipecat_names() -> None:
    """An unstamped TextFrame("hi") gets id=1, name "TextFrame#0" from a fresh serializer."""
    got = ProtobufFrameSerializer().serialize(TextFrame("hi"))
    assert got == bytes.fromhex("0a130801120b546578744672616d6523301a026869")


def test_message_hex_uses_json_dumps_formatting() -> None:
    """{"a": 1} is sent as 220a 0a08 '{"a": 1}' (stdlib json.dumps spacing)."""
    assert ProtobufFrameSerializer().serialize(MessageFrame({"a": 1})) == bytes.fromhex("220a0a08") + b'{"a": 1}'


def test_message_data_is_exactly_json_dumps() -> None:
    """Message data equals json.dumps(message) byte for byte, non-ASCII escaped as Pipecat does."""
    msg = {"label": "rtvi-ai", "data": ["é", 1.5, None, True]}
    peer = PeerFrame.FromString(ProtobufFrameSerializer().serialize(MessageFrame(msg)))
    assert peer.message.data == json.dumps(msg) == '{"label": "rtvi-ai", "data": ["\\u00e9", 1.5, null, true]}'


def test_minimal_interruption_is_2a00() -> None:
    """An interruption with nothing set still selects its oneof: 2a00."""
    assert ProtobufFrameSerializer(stamp_frames=False).serialize(InterruptionFrame()) == bytes.fromhex("2a00")


def test_only_truthy_fields_go_on_the_wire() -> None:
    """id=0, name="" and pts=0/None are left out, as Pipecat's `if value` copy does."""
    ser = ProtobufFrameSerializer(stamp_frames=False)
    ours = ser.serialize(AudioRawFrame(PCM, 16000, 1, pts=0, id=0, name=""))
    assert not PeerFrame.FromString(ours).audio.HasField("pts")
    assert ours == _peer(audio={"audio": PCM, "sample_rate": 16000, "num_channels": 1})
    assert ser.deserialize(ours) == AudioRawFrame(PCM, 16000, 1, pts=None)
    peer = PeerFrame.FromString(ser.serialize(AudioRawFrame(PCM, 16000, 1, pts=7)))
    assert peer.audio.HasField("pts") and peer.audio.pts == 7


# ---------------------------------------------------------------- both directions with the peer

PEER_CASES: list[tuple[dict[str, Any], MediaFrame]] = [
    ({"text": {"id": 3, "name": "TextFrame#2", "text": "héllo"}}, TextFrame("héllo", id=3, name="TextFrame#2")),
    (
        {"audio": {"id": 14, "name": "OutputAudioRawFrame#14", "audio": PCM, "sample_rate": 16000,
                   "num_channels": 1, "pts": 123456789}},
        AudioRawFrame(PCM, 16000, 1, 123456789, id=14, name="OutputAudioRawFrame#14"),
    ),  # fmt: skip
    (
        {"audio": {"id": 1, "name": "audio", "audio": PCM, "sample_rate": 48000, "num_channels": 2}},
        AudioRawFrame(PCM, 48000, 2, id=1, name="audio"),
    ),
    (
        {"transcription": {"id": 5, "name": "TranscriptionFrame#0", "text": "hi there", "user_id": "u-1",
                           "timestamp": "2026-08-01T10:00:00.000+00:00"}},
        TranscriptionFrame("hi there", "u-1", "2026-08-01T10:00:00.000+00:00", id=5, name="TranscriptionFrame#0"),
    ),  # fmt: skip
    ({"message": {"data": '{"label": "rtvi-ai", "type": "client-ready"}'}},
     MessageFrame({"label": "rtvi-ai", "type": "client-ready"})),  # fmt: skip
    ({"interruption": {"id": 8, "name": "InterruptionFrame#1"}}, InterruptionFrame(id=8, name="InterruptionFrame#1")),
]


@pytest.mark.parametrize(("peer_fields", "frame"), PEER_CASES)
def test_peer_bytes_decode_to_frames(peer_fields: dict[str, Any], frame: MediaFrame) -> None:
    """Bytes from an independent pipecat.Frame decode into the matching antiphon frame."""
    assert ProtobufFrameSerializer().deserialize(_peer(**peer_fields)) == frame


@pytest.mark.parametrize(("peer_fields", "frame"), PEER_CASES)
def test_our_bytes_parse_in_the_peer(peer_fields: dict[str, Any], frame: MediaFrame) -> None:
    """Our bytes parse in the independent pipecat.Frame with the expected fields, byte-equal to its own."""
    ours = ProtobufFrameSerializer(stamp_frames=False).serialize(frame)
    ((which, fields),) = peer_fields.items()
    parsed = PeerFrame.FromString(ours)
    assert parsed.WhichOneof("frame") == which
    sub = getattr(parsed, which)
    for name, value in fields.items():
        assert getattr(sub, name) == value
    assert ours == _peer(**peer_fields)


def test_wav_wrapped_peer_audio_is_unwrapped() -> None:
    """A stock client's WAV-wrapped chunk (1324 bytes) decodes to the bare 1280 bytes of PCM."""
    wrapped = add_wav_header(PCM, 16000, 1)
    assert len(wrapped) == 1324
    data = _peer(audio={"id": 2, "name": "OutputAudioRawFrame#0", "audio": wrapped, "sample_rate": 16000,
                        "num_channels": 1})  # fmt: skip
    assert ProtobufFrameSerializer().deserialize(data) == AudioRawFrame(PCM, 16000, 1, id=2, name="OutputAudioRawFrame#0")


def test_add_wav_header_wraps_outgoing_audio() -> None:
    """With add_wav_header=True the peer sees a 44-byte RIFF header before the PCM, format fields still set."""
    ours = ProtobufFrameSerializer(add_wav_header=True).serialize(AudioRawFrame(PCM, 24000, 2))
    peer = PeerFrame.FromString(ours).audio
    assert peer.audio == add_wav_header(PCM, 24000, 2) and peer.audio[:4] == b"RIFF"
    assert (peer.sample_rate, peer.num_channels) == (24000, 2)


def test_default_server_serializer_sends_raw_pcm() -> None:
    """add_wav_header defaults to False: the peer gets the PCM untouched."""
    assert PeerFrame.FromString(ProtobufFrameSerializer().serialize(AudioRawFrame(PCM, 16000, 1))).audio.audio == PCM


# ---------------------------------------------------------------- bad input is skipped, with a reason

BAD_PROTOBUF: list[tuple[bytes | str, SkipReason]] = [
    ("hello", SkipReason.WRONG_MESSAGE_TYPE),
    (b"\xff\xff\xff", SkipReason.MALFORMED),
    (b"", SkipReason.NO_FRAME),
    (bytes.fromhex("3200"), SkipReason.NO_FRAME),  # field 6: a kind this schema does not have
    (_peer(message={"data": "{nope"}), SkipReason.BAD_MESSAGE),
    (_peer(message={}), SkipReason.BAD_MESSAGE),
    (_peer(audio={"audio": PCM, "sample_rate": 16000}), SkipReason.BAD_AUDIO),  # num_channels=0
    (_peer(audio={"audio": PCM, "num_channels": 1}), SkipReason.BAD_AUDIO),  # sample_rate=0
    (_peer(audio={"audio": PCM[:5], "sample_rate": 16000, "num_channels": 1}), SkipReason.BAD_AUDIO),
    (_peer(audio={"audio": add_wav_header(PCM, 16000, 1)[:30], "sample_rate": 16000, "num_channels": 1}),
     SkipReason.BAD_WAV),  # fmt: skip
    (_peer(audio={"audio": add_wav_header(PCM, 8000, 1), "sample_rate": 16000, "num_channels": 1}),
     SkipReason.BAD_WAV),  # fmt: skip
    # issue 10 #1: a 14-byte frame at 1-24 Hz made the chunker raise inside the routing task.
    (_peer(audio={"audio": b"\x00\x00", "sample_rate": 24, "num_channels": 1}), SkipReason.BAD_AUDIO),
    # issue 10 #2: 2 bytes claiming 4294967295 Hz were padded to a 343 MB chunk; 100 MHz queued 232 MB.
    (_peer(audio={"audio": b"\x00\x00", "sample_rate": 2**32 - 1, "num_channels": 1}), SkipReason.BAD_AUDIO),
    (_peer(audio={"audio": b"\x00\x00", "sample_rate": 100_000_000, "num_channels": 1}), SkipReason.BAD_AUDIO),
    (_peer(audio={"audio": b"\x00" * 18, "sample_rate": 16000, "num_channels": 9}), SkipReason.BAD_AUDIO),
    (_peer(audio={"audio": add_wav_header(PCM, 7000, 1), "sample_rate": 7000, "num_channels": 1}), SkipReason.BAD_AUDIO),
    (_peer(message={"data": "[" * 65 + "]" * 65}), SkipReason.BAD_MESSAGE),  # nested past MAX_MESSAGE_DEPTH
]


@pytest.mark.parametrize(("data", "reason"), BAD_PROTOBUF)
def test_bad_protobuf_messages_are_skipped_with_a_reason(data: bytes | str, reason: SkipReason) -> None:
    """Each bad message gives None, counts under its reason and leaves a located detail."""
    ser = ProtobufFrameSerializer()
    assert ser.deserialize(data) is None
    assert ser.stats.skipped == {reason: 1} and ser.stats.decoded == 0
    assert ser.stats.last_skip is not None and ser.stats.last_skip.reason is reason
    assert ser.stats.last_skip.detail.startswith("$")
    with pytest.raises(DecodeError):
        ser.decode(data)


def test_skips_do_not_stop_later_frames() -> None:
    """After a skipped message the next good one decodes and counts; last_skip stays for the log."""
    ser = ProtobufFrameSerializer()
    assert ser.deserialize("text where binary belongs") is None
    assert ser.deserialize(_peer(text={"text": "ok"})) == TextFrame("ok")
    assert ser.stats.decoded == 1 and ser.stats.skipped[SkipReason.WRONG_MESSAGE_TYPE] == 1
    assert str(ser.stats.last_skip).startswith("wrong_message_type: $")


@pytest.mark.parametrize("ser", [ProtobufFrameSerializer(), JsonFrameSerializer()])
def test_caller_mistakes_raise_local_protocol_error(ser: ProtobufFrameSerializer | JsonFrameSerializer) -> None:
    """Serializing a non-frame or a non-JSON message is the caller's bug, not a skip."""
    with pytest.raises(LocalProtocolError):
        ser.serialize("hi")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        ser.serialize(MessageFrame({"when": object()}))


# ---------------------------------------------------------------- the JSON protocol


@pytest.mark.parametrize(
    ("frame", "text"),
    [
        (TextFrame("hi"), '{"type":"text","text":"hi"}'),
        (AudioRawFrame(b"\x01\x00\x02\x00", 16000, 1), '{"type":"audio","audio":"AQACAA==","sample_rate":16000,"num_channels":1}'),
        (TranscriptionFrame("hi", "u1", "t0", id=4), '{"type":"transcription","text":"hi","user_id":"u1","timestamp":"t0","id":4}'),
        (MessageFrame({"a": [1, None]}), '{"type":"message","message":{"a":[1,null]}}'),
        (InterruptionFrame(), '{"type":"interruption"}'),
    ],
)  # fmt: skip
def test_json_wire_format_is_as_documented(frame: MediaFrame, text: str) -> None:
    """Each kind serializes to its documented JSON text and decodes back to the same frame."""
    ser = JsonFrameSerializer()
    assert ser.serialize(frame) == text
    assert ser.deserialize(text) == frame


def test_json_audio_wav_in_and_out() -> None:
    """JSON audio is WAV-wrapped before base64 when asked, and unwrapped on input."""
    out = JsonFrameSerializer(add_wav_header=True).serialize(AudioRawFrame(PCM, 16000, 1))
    assert json.loads(out)["audio"].startswith("UklGR")  # base64 of "RIFF"
    assert JsonFrameSerializer().deserialize(out) == AudioRawFrame(PCM, 16000, 1)


BAD_JSON: list[tuple[bytes | str, SkipReason]] = [
    (b'{"type":"text","text":"hi"}', SkipReason.WRONG_MESSAGE_TYPE),
    ("{nope", SkipReason.MALFORMED),
    ("[1, 2]", SkipReason.MALFORMED),
    ('{"text":"hi"}', SkipReason.NO_FRAME),
    ('{"type":"video"}', SkipReason.NO_FRAME),
    ('{"type":"text","text":3}', SkipReason.BAD_FIELDS),
    ('{"type":"transcription","text":"x"}', SkipReason.BAD_FIELDS),
    ('{"type":"text","text":"x","id":-1}', SkipReason.BAD_FIELDS),
    ('{"type":"audio","audio":"AAAA","sample_rate":16000,"num_channels":0}', SkipReason.BAD_AUDIO),
    ('{"type":"audio","audio":"not base64!","sample_rate":16000,"num_channels":1}', SkipReason.BAD_AUDIO),
    ('{"type":"audio","audio":"AAAA","sample_rate":16000,"num_channels":1}', SkipReason.BAD_AUDIO),  # 3 bytes
    # issue 10 #5: an unhashable "type" raised TypeError (documented: never raises), closing the session 1011.
    ('{"type":[]}', SkipReason.NO_FRAME),
    ('{"type":{"a":1}}', SkipReason.NO_FRAME),
    ('{"type":"audio","audio":"AAA=","sample_rate":24,"num_channels":1}', SkipReason.BAD_AUDIO),  # issue 10 #1
    ('{"type":"audio","audio":"AAA=","sample_rate":4294967295,"num_channels":1}', SkipReason.BAD_AUDIO),
    ('{"type":"message","message":' + "[" * 65 + "]" * 65 + "}", SkipReason.BAD_MESSAGE),
]


@pytest.mark.parametrize(("data", "reason"), BAD_JSON)
def test_bad_json_messages_are_skipped_with_a_reason(data: bytes | str, reason: SkipReason) -> None:
    """Each bad JSON message gives None and counts under its reason; decode raises DecodeError."""
    ser = JsonFrameSerializer()
    assert ser.deserialize(data) is None
    assert ser.stats.skipped == {reason: 1}
    assert ser.stats.last_skip is not None and ser.stats.last_skip.detail.startswith("$")
    with pytest.raises(DecodeError):
        ser.decode(data)


def _nested(depth: int) -> object:
    value: object = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [65, 600, 3000])
@pytest.mark.parametrize("ser", [ProtobufFrameSerializer(), JsonFrameSerializer()])
def test_deep_messages_are_refused_not_recursion_errors(ser: ProtobufFrameSerializer | JsonFrameSerializer, depth: int) -> None:
    """A message nested 65, 600 or 3000 deep is a LocalProtocolError (issue 10 #1: RecursionError killed the server)."""
    with pytest.raises(LocalProtocolError, match="deeper than 64"):
        ser.serialize(MessageFrame(_nested(depth)))


@pytest.mark.parametrize("ser", [ProtobufFrameSerializer(stamp_frames=False), JsonFrameSerializer()])
def test_messages_64_deep_still_round_trip(ser: ProtobufFrameSerializer | JsonFrameSerializer) -> None:
    """MAX_MESSAGE_DEPTH (64) levels are accepted both ways."""
    frame = MessageFrame(_nested(64))
    assert ser.deserialize(ser.serialize(frame)) == frame


@pytest.mark.parametrize("value", [float("inf"), float("nan"), [1, {"x": -float("inf")}]])
def test_json_refuses_non_finite_numbers(value: object) -> None:
    """NaN and infinities are not JSON: refused, not silently sent as null."""
    with pytest.raises(LocalProtocolError, match="not JSON"):
        JsonFrameSerializer().serialize(MessageFrame(value))


# ---------------------------------------------------------------- properties

_ids = st.integers(0, 2**64 - 1)
_names = st.text(max_size=20)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def _audio(draw: st.DrawFn) -> AudioRawFrame:
    channels = draw(st.integers(1, 3))
    n = draw(st.integers(0, 200))
    return AudioRawFrame(
        draw(st.binary(min_size=n * 2 * channels, max_size=n * 2 * channels)),
        draw(st.sampled_from([8000, 16000, 24000, 44100, 48000])),
        channels,
        draw(st.none() | st.integers(1, 2**64 - 1)),
        id=draw(_ids),
        name=draw(_names),
    )


_frames = st.one_of(
    st.builds(TextFrame, st.text(), id=_ids, name=_names),
    _audio(),
    st.builds(TranscriptionFrame, st.text(), st.text(), st.text(), id=_ids, name=_names),
    st.builds(MessageFrame, _json),
    st.builds(InterruptionFrame, id=_ids, name=_names),
)


@given(_frames, st.booleans())
def test_protobuf_round_trips(frame: MediaFrame, wav: bool) -> None:
    """serialize then deserialize gives the frame back, WAV-wrapped or not."""
    ser = ProtobufFrameSerializer(add_wav_header=wav, stamp_frames=False)
    assert ser.deserialize(ser.serialize(frame)) == frame


@given(_frames, st.booleans())
def test_json_round_trips(frame: MediaFrame, wav: bool) -> None:
    """serialize then deserialize gives the frame back through the JSON protocol."""
    ser = JsonFrameSerializer(add_wav_header=wav)
    assert ser.deserialize(ser.serialize(frame)) == frame


@given(st.binary() | st.text())
def test_protobuf_deserialize_never_raises(data: bytes | str) -> None:
    """Any bytes or str give a frame or None; decode raises nothing but DecodeError."""
    ser = ProtobufFrameSerializer()
    got = ser.deserialize(data)
    assert got is not None or ser.stats.last_skip is not None
    try:
        ser.decode(data)
    except DecodeError:
        pass


@given(st.binary() | st.text() | _json.map(json.dumps) | _frames.map(JsonFrameSerializer().serialize))
def test_json_deserialize_never_raises(data: bytes | str) -> None:
    """Any bytes, str, JSON or near-valid frame gives a frame or None; decode raises only DecodeError."""
    ser = JsonFrameSerializer()
    got = ser.deserialize(data)
    assert got is not None or ser.stats.last_skip is not None
    try:
        ser.decode(data)
    except DecodeError:
        pass


@given(
    st.sampled_from(["text", "audio", "transcription", "message", "interruption"]),
    st.fixed_dictionaries(
        {},
        optional={
            "id": _ids, "name": _names, "text": st.text(), "audio": st.binary(max_size=300),
            "sample_rate": st.integers(0, 2**32 - 1), "num_channels": st.integers(0, 2**32 - 1),
            "pts": _ids, "data": st.text(max_size=30),
        },
    ),  # fmt: skip
)
def test_any_well_formed_peer_frame_decodes_or_skips(which: str, fields: dict[str, Any]) -> None:
    """Peer frames with arbitrary field values (zero channels, odd lengths, junk JSON) never raise."""
    sub_fields = {k: v for k, v in fields.items() if k in PeerFrame.DESCRIPTOR.fields_by_name[which].message_type.fields_by_name}
    ser = ProtobufFrameSerializer()
    got = ser.deserialize(_peer(**{which: sub_fields}))
    assert got is not None or ser.stats.last_skip is not None
