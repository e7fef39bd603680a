"""Fuzz every media decoder and serializer: decoders raise nothing but DecodeError, serializers nothing but LocalProtocolError.

Bounded example counts (``EXAMPLES``) keep the suite fast in CI; run with
``--hypothesis-seed`` to reproduce a failure.
"""

from __future__ import annotations

import json
import string
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

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
from antiphon.proto.media.resample import AudioConverter, AudioFormat
from antiphon.proto.media.serializers import (
    JsonFrameSerializer,
    ProtobufFrameSerializer,
)
from antiphon.proto.media.twilio import TwilioFrameSerializer
from antiphon.proto.media.wav import add_wav_header, strip_wav_header

EXAMPLES = 150
fuzz = settings(max_examples=EXAMPLES, deadline=None)

# ---------------------------------------------------------------- hostile values


def _nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.just("\ud800") | st.binary(max_size=4) | st.just(object())
)  # fmt: skip
_keys = st.text(max_size=4) | st.integers() | st.none() | st.tuples(st.integers())
_hostile = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3) | st.tuples(inner) | st.sets(st.integers(), max_size=2),
    max_leaves=10,
) | st.builds(_nested, st.integers(1, 3000), _scalars)  # fmt: skip
_ids = st.integers(0, 2**64 - 1)
_text = st.text(max_size=20) | st.just("\ud800")


@st.composite
def _audio(draw: st.DrawFn) -> AudioRawFrame:
    channels = draw(st.integers(1, 8))
    frames = draw(st.integers(0, 64))
    rate = draw(st.sampled_from([8000, 11025, 16000, 22050, 24000, 44100, 48000, 96000, 384000]) | st.integers(8000, 384000))
    return AudioRawFrame(draw(st.binary(min_size=frames * 2 * channels, max_size=frames * 2 * channels)), rate, channels,
                         draw(st.none() | _ids), id=draw(_ids), name=draw(_text))  # fmt: skip


_frames = st.one_of(
    st.builds(TextFrame, _text, id=_ids, name=_text),
    _audio(),
    st.builds(TranscriptionFrame, _text, _text, _text, id=_ids, name=_text),
    st.builds(MessageFrame, _hostile),
    st.builds(InterruptionFrame, id=_ids, name=_text),
    st.builds(MarkFrame, _text),
    st.builds(DTMFFrame, st.sampled_from("0123456789*#")),
    st.builds(StreamStartFrame, _text),
    st.builds(StreamStopFrame),
    st.sampled_from(["a string", b"bytes", None, 42, object()]),
)


def _serializes_or_refuses(serializer: Any, frame: Any) -> None:
    try:
        serializer.serialize(frame)
    except LocalProtocolError:
        pass


def _decodes_or_refuses(serializer: Any, data: bytes | str) -> None:
    got = serializer.deserialize(data)
    assert got is not None or serializer.stats.consumed or serializer.stats.total_skipped
    try:
        serializer.decode(data)
    except DecodeError:
        pass


# ---------------------------------------------------------------- serializers


@fuzz
@given(_frames, st.booleans())
def test_protobuf_serialize_raises_only_local_protocol_error(frame: Any, wav: bool) -> None:
    """ProtobufFrameSerializer.serialize on any frame or object: bytes, or LocalProtocolError."""
    _serializes_or_refuses(ProtobufFrameSerializer(add_wav_header=wav), frame)


@fuzz
@given(_frames, st.booleans())
def test_json_serialize_raises_only_local_protocol_error(frame: Any, wav: bool) -> None:
    """JsonFrameSerializer.serialize on any frame or object: text, or LocalProtocolError (never RecursionError)."""
    _serializes_or_refuses(JsonFrameSerializer(add_wav_header=wav), frame)


@fuzz
@given(_frames, st.booleans())
def test_twilio_serialize_raises_only_local_protocol_error(frame: Any, with_sid: bool) -> None:
    """TwilioFrameSerializer.serialize on any frame or object: text, None, or LocalProtocolError."""
    _serializes_or_refuses(TwilioFrameSerializer(stream_sid="MZ1" if with_sid else None), frame)


# ---------------------------------------------------------------- decoders

_json_docs = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
_deep_json = st.integers(1, 1500).map(lambda d: "[" * d + "]" * d)


def _tagged(tag: str, kinds: list[str]) -> Any:
    """JSON objects whose tag is a known kind (or junk) and whose other keys are anything."""
    return st.builds(
        lambda kind, rest: json.dumps({**rest, tag: kind}),
        st.sampled_from(kinds) | _json_docs,
        st.dictionaries(st.sampled_from(["text", "audio", "sample_rate", "num_channels", "message", "id", "name", "pts",
                                         "media", "start", "mark", "dtmf", "payload", "streamSid", "user_id", "timestamp"]),
                        _json_docs | st.text(alphabet=string.ascii_letters + "+/=", max_size=12), max_size=5),
    )  # fmt: skip


@fuzz
@given(st.binary(max_size=300) | st.text(max_size=100))
def test_protobuf_decoder_raises_only_decode_error(data: bytes | str) -> None:
    """Any message gives a frame or a counted skip; decode raises nothing but DecodeError."""
    _decodes_or_refuses(ProtobufFrameSerializer(), data)


@fuzz
@given(st.binary(max_size=50) | st.text(max_size=100) | _json_docs.map(json.dumps) | _deep_json
       | _tagged("type", ["text", "audio", "transcription", "message", "interruption"]))  # fmt: skip
def test_json_decoder_raises_only_decode_error(data: bytes | str) -> None:
    """Any text (junk, JSON, deep JSON, near-valid frames) gives a frame or a skip; decode raises only DecodeError."""
    _decodes_or_refuses(JsonFrameSerializer(), data)


@fuzz
@given(st.binary(max_size=50) | st.text(max_size=100) | _json_docs.map(json.dumps) | _deep_json
       | _tagged("event", ["connected", "start", "media", "mark", "dtmf", "stop"]))  # fmt: skip
def test_twilio_decoder_raises_only_decode_error(data: bytes | str) -> None:
    """Any text gives a frame, a consumed message or a skip; decode raises only DecodeError."""
    _decodes_or_refuses(TwilioFrameSerializer(), data)


@fuzz
@given(st.binary(max_size=200) | st.builds(lambda b, pad: b"RIFF" + pad + b"WAVE" + b, st.binary(max_size=120), st.binary(min_size=4, max_size=4)))
def test_wav_strip_never_raises(data: bytes) -> None:
    """strip_wav_header returns WavAudio or None for any bytes, RIFF-looking or not."""
    got = strip_wav_header(data)
    assert got is None or (got.sample_rate > 0 and got.num_channels > 0)


@fuzz
@given(st.binary(max_size=40), st.integers(-(2**40), 2**40), st.integers(-(2**20), 2**20), st.integers(-2, 6))
@example(b"", 1, 16384, 4)  # a block align past 65535 once escaped as struct.error
def test_wav_header_raises_only_local_protocol_error(pcm: bytes, rate: int, channels: int, width: int) -> None:
    """add_wav_header with any integers: a 44-byte header plus the PCM, or LocalProtocolError (never struct.error)."""
    try:
        assert len(add_wav_header(pcm, rate, channels, width)) == 44 + len(pcm)
    except LocalProtocolError:
        pass


@fuzz
@given(st.binary(max_size=400))
def test_mulaw_codec_takes_any_bytes(data: bytes) -> None:
    """mu-law decodes any bytes (2 out per 1 in) and encodes any even-length PCM (1 out per 2 in)."""
    assert len(ulaw_to_pcm16(data)) == 2 * len(data)
    assert len(pcm16_to_ulaw(data)) == len(data) // 2


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([8000, 16000, 22050, 24000, 44100, 48000]), st.integers(1, 3),
    st.sampled_from([8000, 16000, 24000, 48000]), st.integers(1, 3),
    st.lists(st.integers(0, 400), min_size=1, max_size=6),
)  # fmt: skip
def test_converter_takes_any_whole_frames(src_rate: int, src_ch: int, dst_rate: int, dst_ch: int, sizes: list[int]) -> None:
    """Any chunking of any audio converts to whole frames of the target format; flush and reset never raise."""
    conv = AudioConverter(AudioFormat(src_rate, src_ch), AudioFormat(dst_rate, dst_ch))
    total = 0
    for n in sizes:
        out = conv.convert(bytes(range(256)) * (n * 2 * src_ch // 256) + bytes(n * 2 * src_ch % 256))
        assert len(out) % (2 * dst_ch) == 0
        total += len(out)
    assert len(conv.flush()) % (2 * dst_ch) == 0
    conv.reset()
