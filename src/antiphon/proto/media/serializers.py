"""Media serializers: media frames to WebSocket messages and back, never raising on input.

Theory of operation
-------------------
A serializer is a plain synchronous object, one per connection (it keeps counters and
a frame stamper). ``serialize(frame)`` returns the WebSocket message to send (``bytes``
for a binary message, ``str`` for a text one, ``None`` for "nothing to send").
``deserialize(message)`` returns a frame, or ``None`` when the message must be skipped;
it never raises. Pipecat's transports end the whole session when a message does not
decode (a text message, an audio frame with ``num_channels=0``); antiphon skips it and
says why in ``stats.last_skip`` (a :class:`Skip`: a :class:`SkipReason` plus a located
detail) and counts it in ``stats.skipped``, so the transport can log and carry on. A
serializer may also *consume* a message that carries nothing for the application (a
Twilio ``connected`` event): ``deserialize`` then returns ``None`` too, counts it in
``stats.consumed`` and leaves ``stats.skipped`` alone; compare ``stats.total_skipped``
before and after to tell the two apart.
``decode(message)`` is the same decoder for callers who prefer an exception: it raises
:class:`~antiphon.errors.DecodeError` (session can continue: ``close_code`` is ``None``)
and returns ``None`` for a consumed message.

``serialize(frame)`` raises nothing but :class:`~antiphon.errors.LocalProtocolError`:
for an object that is not a frame it can send, or a message it cannot encode (not
JSON-serializable, nested deeper than :data:`MAX_MESSAGE_DEPTH`, ...).

Bounds: audio must be 8 kHz - 384 kHz and 1 - 8 channels (see
:mod:`antiphon.proto.media.frames`; anything else is a ``bad_audio`` skip), and a
message's JSON may nest at most :data:`MAX_MESSAGE_DEPTH` levels (``bad_message``),
so nothing a peer sends can make the application's echo of it fail to encode.

Two wire formats:

* :class:`ProtobufFrameSerializer` is Pipecat's ``ProtobufFrameSerializer`` byte for
  byte: each binary message is one ``pipecat.Frame`` (see ``frames.proto``). Like
  Pipecat it copies ``id``, ``name`` and ``pts`` only when truthy and sends a message's
  data as ``json.dumps(message)`` with the stdlib's default formatting (``{"a": 1}``).
* :class:`JsonFrameSerializer` is antiphon's text protocol for peers that would rather
  not speak protobuf. Each text message is one JSON object tagged by ``"type"``::

      {"type": "text", "text": "hi"}
      {"type": "audio", "audio": "<base64 PCM>", "sample_rate": 16000, "num_channels": 1}
      {"type": "transcription", "text": "hi", "user_id": "u1", "timestamp": "2026-..."}
      {"type": "message", "message": <any JSON value>}
      {"type": "interruption"}

  ``id`` (integer), ``name`` (string) and, for audio, ``pts`` (integer) are optional on
  every kind and left out when unset. Unknown keys are ignored.

Audio: incoming audio that starts with a RIFF/WAVE header is unwrapped (stock Pipecat
clients wrap every chunk); the header must be 16-bit PCM and agree with the frame's
``sample_rate`` and ``num_channels``, otherwise the frame is skipped (we cannot tell which
of the two is lying). Outgoing audio is wrapped in a 44-byte header when the serializer
is built with ``add_wav_header=True``. The option lives on the serializer because that
is the object that knows the wire; a transport picks the default when it builds one
(Pipecat: server ``False``, client ``True``).
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
from collections import Counter
from typing import Any, ClassVar, Final, Protocol

import cattrs
from attrs import define, field, frozen
from cattrs.gen import make_dict_unstructure_fn
from cattrs.strategies import configure_tagged_union
from google.protobuf.message import DecodeError as _PbDecodeError

from antiphon.errors import DecodeError, LocalProtocolError
from antiphon.proto._codec import dumps, expect_object, loads, make_converter, structure
from antiphon.proto.media.frames import (
    MAX_CHANNELS,
    MAX_SAMPLE_RATE_HZ,
    MEDIA_FRAME_TYPES,
    MIN_SAMPLE_RATE_HZ,
    AnyFrame,
    AudioRawFrame,
    FrameStamper,
    InterruptionFrame,
    MediaFrame,
    MessageFrame,
    TextFrame,
    TranscriptionFrame,
)
from antiphon.proto.media.schema import FRAME_ONEOF, FramePb
from antiphon.proto.media.wav import add_wav_header, has_wav_magic, strip_wav_header

__all__ = [
    "MAX_MESSAGE_DEPTH",
    "DecodeStats",
    "FrameSerializer",
    "JsonFrameSerializer",
    "ProtobufFrameSerializer",
    "Skip",
    "SkipReason",
    "json_depth_ok",
]


MAX_MESSAGE_DEPTH: Final = 64
"""Deepest JSON nesting accepted in a message frame: RTVI messages nest 3-4 levels, and
orjson cannot write more than 255, so a peer's message always survives being echoed."""


class SkipReason(enum.StrEnum):
    """Why an incoming message was skipped; the values are stable, for logs and metrics."""

    WRONG_MESSAGE_TYPE = "wrong_message_type"
    """A text message where the protocol is binary, or the reverse."""
    MALFORMED = "malformed"
    """Not a protobuf ``Frame`` / not a JSON object."""
    NO_FRAME = "no_frame"
    """An empty frame, or a kind this schema does not know (unknown oneof field or ``"type"``)."""
    BAD_MESSAGE = "bad_message"
    """A ``MessageFrame`` whose data is not JSON."""
    BAD_AUDIO = "bad_audio"
    """Audio with a rate outside 8-384 kHz or channels outside 1-8, or a partial sample frame."""
    BAD_WAV = "bad_wav"
    """Audio starting with ``RIFF....WAVE`` whose header is broken, not 16-bit PCM, or disagrees."""
    BAD_FIELDS = "bad_fields"
    """A JSON frame with a missing or mistyped field."""


@frozen
class Skip:
    """One skipped message: the reason and a located, human-readable detail."""

    reason: SkipReason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@define
class DecodeStats:
    """What a serializer's ``deserialize`` has done so far; mutated by the serializer only."""

    decoded: int = 0
    consumed: int = 0
    """Messages handled inside the serializer with nothing to deliver (not skips)."""
    skipped: Counter[SkipReason] = field(factory=Counter)
    last_skip: Skip | None = None
    """The most recent skip (kept after later successes): log it when ``deserialize`` returns None."""

    @property
    def total_skipped(self) -> int:
        """Skips of every reason so far."""
        return sum(self.skipped.values())


class FrameSerializer(Protocol):
    """What a media transport needs from a serializer."""

    stats: DecodeStats

    def serialize(self, frame: AnyFrame) -> bytes | str | None:
        """The WebSocket message for ``frame`` (``None``: send nothing)."""
        ...

    def deserialize(self, data: bytes | str) -> AnyFrame | None:
        """The frame in one WebSocket message, or ``None`` (see ``stats.last_skip``)."""
        ...


class _Reject(Exception):
    """Internal: this message is skipped for ``reason``; ``detail`` reads ``$.path: problem``."""

    def __init__(self, reason: SkipReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _SerializerBase:
    """Shared machinery: stamping, WAV handling, the never-raising ``deserialize``."""

    def __init__(self, *, add_wav_header: bool, stamp_frames: bool) -> None:
        self.add_wav_header = add_wav_header
        self.stamper: FrameStamper | None = FrameStamper() if stamp_frames else None
        self.stats = DecodeStats()

    def deserialize(self, data: bytes | str) -> AnyFrame | None:
        """Decode one WebSocket message; ``None`` if it is bad (``stats.last_skip``) or was consumed."""
        try:
            frame = self._decode(data)
        except _Reject as exc:
            skip = Skip(exc.reason, exc.detail)
            self.stats.skipped[skip.reason] += 1
            self.stats.last_skip = skip
            return None
        if frame is None:
            self.stats.consumed += 1
        else:
            self.stats.decoded += 1
        return frame

    def decode(self, data: bytes | str) -> AnyFrame | None:
        """Decode one WebSocket message; raise :class:`DecodeError` if it is bad. Counts nothing."""
        try:
            return self._decode(data)
        except _Reject as exc:
            raise DecodeError(exc.detail) from None

    def _decode(self, data: bytes | str) -> AnyFrame | None:
        raise NotImplementedError

    def _prepare(self, frame: AnyFrame) -> MediaFrame:
        if not isinstance(frame, MEDIA_FRAME_TYPES):
            raise LocalProtocolError(
                f"cannot serialize {type(frame).__name__}: not a frame of Pipecat's schema "
                f"(text, audio, transcription, message, interruption)"
            )
        return self.stamper.stamp(frame) if self.stamper is not None else frame  # type: ignore[return-value]

    def _outgoing_audio(self, frame: AudioRawFrame) -> bytes:
        if self.add_wav_header:
            return add_wav_header(frame.audio, frame.sample_rate, frame.num_channels)
        return frame.audio

    @staticmethod
    def _incoming_audio(
        audio: bytes, sample_rate: int, num_channels: int, pts: int | None, id: int, name: str, path: str
    ) -> AudioRawFrame:
        """Validate the format, unwrap a WAV header if there is one, validate the PCM: the shared audio input path."""
        if not (MIN_SAMPLE_RATE_HZ <= sample_rate <= MAX_SAMPLE_RATE_HZ and 1 <= num_channels <= MAX_CHANNELS):
            raise _Reject(
                SkipReason.BAD_AUDIO,
                f"{path}: sample_rate must be {MIN_SAMPLE_RATE_HZ}-{MAX_SAMPLE_RATE_HZ} Hz and num_channels "
                f"1-{MAX_CHANNELS}, got {sample_rate} Hz and {num_channels}",
            )
        if has_wav_magic(audio):
            wav = strip_wav_header(audio)
            if wav is None:
                raise _Reject(SkipReason.BAD_WAV, f"{path}.audio: broken or non-16-bit-PCM WAV header")
            if (wav.sample_rate, wav.num_channels) != (sample_rate, num_channels):
                raise _Reject(
                    SkipReason.BAD_WAV,
                    f"{path}.audio: WAV header says {wav.sample_rate} Hz x {wav.num_channels}, "
                    f"frame says {sample_rate} Hz x {num_channels}",
                )
            audio = wav.pcm
        try:
            return AudioRawFrame(audio, sample_rate, num_channels, pts, id=id, name=name)
        except ValueError as exc:
            raise _Reject(SkipReason.BAD_AUDIO, f"{path}: {exc}") from None


def json_depth_ok(value: Any, limit: int = MAX_MESSAGE_DEPTH) -> bool:
    """True when ``value`` nests at most ``limit`` lists/objects deep; iterative, never recursing."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


def _message_value(value: Any, path: str) -> MessageFrame:
    if not json_depth_ok(value):
        raise _Reject(SkipReason.BAD_MESSAGE, f"{path}: JSON nested deeper than {MAX_MESSAGE_DEPTH} levels")
    return MessageFrame(value)


def _pipecat_json(message: Any) -> str:
    """``json.dumps(message)`` with the stdlib defaults, exactly as Pipecat sends it."""
    if not json_depth_ok(message):
        raise LocalProtocolError(f"MessageFrame.message nests deeper than {MAX_MESSAGE_DEPTH} levels")
    try:
        return json.dumps(message)
    except (TypeError, ValueError, RecursionError) as exc:
        raise LocalProtocolError(f"MessageFrame.message is not JSON-serializable: {exc}") from None


_PB_SCALARS: Final[dict[str, tuple[str, ...]]] = {
    # Frame fields copied to the wire when truthy, per kind (audio is handled apart).
    "text": ("id", "name", "text"),
    "audio": ("id", "name", "sample_rate", "num_channels", "pts"),
    "transcription": ("id", "name", "text", "user_id", "timestamp"),
    "interruption": ("id", "name"),
}


class ProtobufFrameSerializer(_SerializerBase):
    """Pipecat's protobuf wire format: one binary ``pipecat.Frame`` per WebSocket message.

    ``add_wav_header`` wraps outgoing audio in a WAV header (Pipecat's server default is
    ``False``, its client's ``True``). ``stamp_frames`` gives outgoing frames that have no
    ``id``/``name`` Pipecat-style ones from this serializer's own :class:`FrameStamper`.
    ``serialize`` always returns ``bytes``; it raises :class:`LocalProtocolError` for an
    object that is not a media frame or a message that is not JSON-serializable.
    """

    def __init__(self, *, add_wav_header: bool = False, stamp_frames: bool = True) -> None:
        super().__init__(add_wav_header=add_wav_header, stamp_frames=stamp_frames)

    def serialize(self, frame: AnyFrame) -> bytes:
        """The binary WebSocket message for ``frame``."""
        frame = self._prepare(frame)
        pb = FramePb()
        sub = getattr(pb, frame.kind)
        sub.SetInParent()  # so a frame with every field unset still selects its kind (`2a00`)
        try:
            if isinstance(frame, MessageFrame):
                sub.data = _pipecat_json(frame.message)
            else:
                for name in _PB_SCALARS[frame.kind]:
                    value = getattr(frame, name)
                    if value:
                        setattr(sub, name, value)
                if isinstance(frame, AudioRawFrame):
                    sub.audio = self._outgoing_audio(frame)
            return bytes(pb.SerializeToString())
        except (ValueError, TypeError) as exc:  # e.g. a lone surrogate in a str field
            raise LocalProtocolError(f"cannot encode {type(frame).__name__} as protobuf: {exc}") from None

    def _decode(self, data: bytes | str) -> MediaFrame:
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        if not isinstance(data, bytes):
            raise _Reject(
                SkipReason.WRONG_MESSAGE_TYPE,
                f"$: got a {type(data).__name__} (text) message; the protobuf protocol is binary",
            )
        try:
            pb = FramePb.FromString(data)
        except _PbDecodeError as exc:
            raise _Reject(SkipReason.MALFORMED, f"$: not a protobuf pipecat.Frame ({exc})") from None
        which = pb.WhichOneof(FRAME_ONEOF)
        if which is None:
            raise _Reject(SkipReason.NO_FRAME, "$: no frame in the message (empty, or a kind this schema lacks)")
        sub = getattr(pb, which)
        path = f"$.{which}"
        if which == "message":
            try:
                value = json.loads(sub.data)
            except (ValueError, RecursionError) as exc:
                raise _Reject(SkipReason.BAD_MESSAGE, f"{path}.data: not JSON ({exc})") from None
            return _message_value(value, f"{path}.data")
        if which == "audio":
            pts = sub.pts if sub.HasField("pts") and sub.pts else None
            return self._incoming_audio(
                bytes(sub.audio), sub.sample_rate, sub.num_channels, pts, sub.id, sub.name, path
            )
        if which == "text":
            return TextFrame(sub.text, id=sub.id, name=sub.name)
        if which == "transcription":
            return TranscriptionFrame(sub.text, sub.user_id, sub.timestamp, id=sub.id, name=sub.name)
        return InterruptionFrame(id=sub.id, name=sub.name)


@frozen
class _AudioWire:
    """Incoming JSON audio before WAV unwrapping and validation (so the reason is precise)."""

    kind: ClassVar[str] = "audio"
    audio: bytes
    sample_rate: int
    num_channels: int
    pts: int | None = None
    id: int = 0
    name: str = ""


_JsonIn = TextFrame | _AudioWire | TranscriptionFrame | MessageFrame | InterruptionFrame
_KINDS: Final = frozenset(cls.kind for cls in MEDIA_FRAME_TYPES)


def _structure_base64(value: Any, _: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("expected base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("expected base64 text") from None


def _json_converter() -> cattrs.Converter:
    conv = make_converter()
    conv.register_structure_hook(bytes, _structure_base64)
    conv.register_unstructure_hook(bytes, lambda b: base64.b64encode(b).decode("ascii"))
    for cls in MEDIA_FRAME_TYPES:
        conv.register_unstructure_hook(cls, make_dict_unstructure_fn(cls, conv, _cattrs_omit_if_default=True))
    configure_tagged_union(MediaFrame, conv, tag_generator=_kind_of, tag_name="type")
    configure_tagged_union(_JsonIn, conv, tag_generator=_kind_of, tag_name="type")
    return conv


def _kind_of(cls: type) -> str:
    kind: str = getattr(cls, "kind")  # noqa: B009 - every frame class has the ClassVar; `type` does not say so
    return kind


def _all_finite(value: Any) -> bool:
    """False if ``value`` holds a NaN or infinity anywhere (orjson would silently send null)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(map(_all_finite, value.values()))
    if isinstance(value, (list, tuple)):
        return all(map(_all_finite, value))
    return True


class JsonFrameSerializer(_SerializerBase):
    """antiphon's JSON text protocol (see the module docstring): one object per text message.

    Audio travels as base64 text. ``add_wav_header`` wraps outgoing audio in a WAV header
    before base64 (default ``False``); ``stamp_frames`` (default ``False``: text peers
    rarely want them) adds ids and names. ``serialize`` always returns ``str``; it raises
    :class:`LocalProtocolError` for an object that is not a media frame or a message that
    is not JSON-serializable (non-string keys, integers beyond 64 bits, NaN or
    infinities: Pipecat's ``json.dumps`` would send those as ``NaN``, which is not JSON).
    """

    def __init__(self, *, add_wav_header: bool = False, stamp_frames: bool = False) -> None:
        super().__init__(add_wav_header=add_wav_header, stamp_frames=stamp_frames)
        self._conv = _json_converter()

    def serialize(self, frame: AnyFrame) -> str:
        """The text WebSocket message for ``frame``."""
        frame = self._prepare(frame)
        if isinstance(frame, MessageFrame):
            # Checked before cattrs walks the value: a deep one would recurse out of the stack.
            if not json_depth_ok(frame.message):
                raise LocalProtocolError(f"MessageFrame.message nests deeper than {MAX_MESSAGE_DEPTH} levels")
            if not _all_finite(frame.message):
                raise LocalProtocolError("MessageFrame.message holds NaN or an infinity, which is not JSON")
        try:
            doc = self._conv.unstructure(frame, unstructure_as=MediaFrame)
            doc = {"type": doc.pop("type"), **doc}  # the tag first, for people reading logs
            if isinstance(frame, AudioRawFrame):
                doc["audio"] = base64.b64encode(self._outgoing_audio(frame)).decode("ascii")
            return dumps(doc)
        except (TypeError, ValueError, RecursionError) as exc:  # orjson.JSONEncodeError is a TypeError
            raise LocalProtocolError(f"cannot encode {type(frame).__name__} as JSON: {exc}") from None

    def _decode(self, data: bytes | str) -> MediaFrame:
        if not isinstance(data, str):
            raise _Reject(
                SkipReason.WRONG_MESSAGE_TYPE,
                f"$: got a {type(data).__name__} (binary) message; the JSON protocol is text",
            )
        try:
            doc = expect_object(loads(data))
        except DecodeError as exc:
            raise _Reject(SkipReason.MALFORMED, str(exc)) from None
        kind = doc.get("type")
        if not isinstance(kind, str) or kind not in _KINDS:
            shown = kind if isinstance(kind, str) else type(kind).__name__
            raise _Reject(SkipReason.NO_FRAME, f"$.type: unknown frame type {str(shown)[:64]!r}")
        try:
            wire: TextFrame | _AudioWire | TranscriptionFrame | MessageFrame | InterruptionFrame = structure(
                self._conv, doc, _JsonIn  # type: ignore[arg-type]  # cattrs structures unions too
            )
        except DecodeError as exc:
            reason = SkipReason.BAD_AUDIO if kind == "audio" else SkipReason.BAD_FIELDS
            raise _Reject(reason, str(exc)) from None
        if isinstance(wire, _AudioWire):
            return self._incoming_audio(
                wire.audio, wire.sample_rate, wire.num_channels, wire.pts, wire.id, wire.name, "$"
            )
        if isinstance(wire, MessageFrame):
            return _message_value(wire.message, "$.message")
        return wire
