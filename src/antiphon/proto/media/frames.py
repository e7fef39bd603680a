"""Media frames: the five Pipecat frame kinds, and the telephony events of phone-line streams.

Theory of operation
-------------------
Pipecat's WebSocket serializers move exactly five kinds of frame: text, raw audio,
transcriptions, transport messages (JSON) and interruptions. antiphon models each as an
immutable attrs class with the same fields as Pipecat's ``frames.proto``, so a frame
decoded from a Pipecat peer and one built by antiphon code are the same object.

Phone-line streams (Twilio Media Streams, :mod:`antiphon.proto.media.twilio`) carry four
more kinds that Pipecat's protobuf schema lacks: :class:`StreamStartFrame` (the call's
metadata), :class:`DTMFFrame` (a key press), :class:`MarkFrame` (a point in the output
audio, echoed once the caller has heard it) and :class:`StreamStopFrame` (the call is
over; the transport ends the session after delivering it). The protobuf and JSON
serializers refuse them with ``LocalProtocolError``.

Audio is always signed 16-bit little-endian PCM, interleaved when there are several
channels (Pipecat's only sample format). An :class:`AudioRawFrame` whose ``audio`` is not
a whole number of sample frames (``2 * num_channels`` bytes each), whose ``sample_rate``
is outside 8 kHz - 384 kHz (:data:`MIN_SAMPLE_RATE_HZ`, :data:`MAX_SAMPLE_RATE_HZ`) or
whose ``num_channels`` is outside 1 - 8 (:data:`MAX_CHANNELS`) cannot be built: the
constructor raises :class:`ValueError`. Serializers turn that into a skipped frame on
input, so a peer can never make antiphon pace, pad, resample or WAV-wrap audio in a
format no real device produces (a "1 Hz" frame would make a 40 ms chunk hold no sample;
a "4 GHz" one would pad its last chunk to hundreds of megabytes).

Frame ids and names
-------------------
Pipecat stamps every frame with a process-wide increasing ``id`` and a ``name`` such as
``"TextFrame#3"``, and copies them onto the wire when they are truthy. antiphon keeps no
global counters: every frame has ``id=0`` and ``name=""`` (meaning "unset", and not sent)
unless the caller gives them. A :class:`FrameStamper`, one per session, hands out ids
and names on demand; the protobuf serializer owns one and stamps outgoing frames that
have none, so Pipecat peers see ids and names as they would from Pipecat itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any, ClassVar, Final, TypeVar

import attrs
from attrs import field, frozen, validators

__all__ = [
    "MAX_CHANNELS",
    "MAX_SAMPLE_RATE_HZ",
    "MEDIA_FRAME_TYPES",
    "MIN_SAMPLE_RATE_HZ",
    "PCM_SAMPLE_WIDTH_BYTES",
    "TELEPHONY_FRAME_TYPES",
    "AnyFrame",
    "AudioRawFrame",
    "DTMFFrame",
    "FrameStamper",
    "InterruptionFrame",
    "MarkFrame",
    "MediaFrame",
    "MessageFrame",
    "StreamStartFrame",
    "StreamStopFrame",
    "TelephonyFrame",
    "TextFrame",
    "TranscriptionFrame",
]

PCM_SAMPLE_WIDTH_BYTES: Final = 2
"""Bytes per sample: Pipecat audio is always signed 16-bit little-endian PCM."""
MIN_SAMPLE_RATE_HZ: Final = 8000
"""Lowest accepted sample rate: narrowband telephony (G.711); nothing real is slower."""
MAX_SAMPLE_RATE_HZ: Final = 384000
"""Highest accepted sample rate: the fastest professional converters; bounds every chunk's bytes."""
MAX_CHANNELS: Final = 8
"""Most channels accepted: 7.1 surround; voice is 1 or 2."""

_UINT64_MAX: Final = 2**64 - 1  # id and pts are uint64 on the wire


def _uint(limit: int) -> Any:
    """A validator for an int that must fit the wire's unsigned field."""

    def check(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{attribute.name} must be an integer, got {type(value).__name__}")
        if not 0 <= value <= limit:
            raise ValueError(f"{attribute.name} must be non-negative and at most {limit}, got {value}")

    return check


def _in_range(low: int, high: int) -> Any:
    """A validator for an int in ``[low, high]`` (bools refused)."""

    def check(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{attribute.name} must be an integer, got {type(value).__name__}")
        if not low <= value <= high:
            raise ValueError(f"{attribute.name} must be between {low} and {high}, got {value}")

    return check


def _optional_uint64(instance: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None:
        _uint(_UINT64_MAX)(instance, attribute, value)


def _to_bytes(value: object) -> object:
    # bytearray and memoryview are common for PCM buffers; anything else is left for the validator.
    return bytes(value) if isinstance(value, (bytearray, memoryview)) else value


_STR: Final = validators.instance_of(str)


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@frozen
class _FrameBase:
    """Fields every frame shares: Pipecat's ``id`` and ``name`` (0 and "" mean unset)."""

    kind: ClassVar[str]
    """The frame's kind: the protobuf oneof field name and the JSON ``"type"`` tag."""

    id: int = field(default=0, kw_only=True, validator=_uint(_UINT64_MAX))
    name: str = field(default="", kw_only=True, validator=_STR)


@frozen
class TextFrame(_FrameBase):
    """A piece of text (Pipecat ``TextFrame``, protobuf field ``text`` = 1)."""

    kind: ClassVar[str] = "text"
    text: str = field(validator=_STR)


@frozen
class AudioRawFrame(_FrameBase):
    """A block of 16-bit PCM (Pipecat ``AudioRawFrame``, protobuf field ``audio`` = 2).

    Raises :class:`ValueError` when ``sample_rate`` is outside
    :data:`MIN_SAMPLE_RATE_HZ` - :data:`MAX_SAMPLE_RATE_HZ`, ``num_channels`` outside 1 -
    :data:`MAX_CHANNELS`, or ``audio`` is not a whole number of sample frames. ``pts`` of
    ``None`` means unset; Pipecat treats ``pts=0`` as unset too, so 0 never survives the
    protobuf wire.
    """

    kind: ClassVar[str] = "audio"
    audio: bytes = field(converter=_to_bytes, validator=validators.instance_of(bytes))
    sample_rate: int = field(validator=_in_range(MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ))
    num_channels: int = field(validator=_in_range(1, MAX_CHANNELS))
    pts: int | None = field(default=None, validator=_optional_uint64)

    def __attrs_post_init__(self) -> None:
        frame_bytes = PCM_SAMPLE_WIDTH_BYTES * self.num_channels
        if len(self.audio) % frame_bytes:
            raise ValueError(
                f"audio is {len(self.audio)} bytes, not a whole number of "
                f"{frame_bytes}-byte sample frames ({self.num_channels} channel(s) of 16-bit PCM)"
            )

    @property
    def num_frames(self) -> int:
        """Sample frames (samples per channel) in ``audio``."""
        return len(self.audio) // (PCM_SAMPLE_WIDTH_BYTES * self.num_channels)

    @property
    def duration_s(self) -> float:
        """Playing time of ``audio`` in seconds."""
        return self.num_frames / self.sample_rate


@frozen
class TranscriptionFrame(_FrameBase):
    """A final transcription of a user's speech (protobuf field ``transcription`` = 3)."""

    kind: ClassVar[str] = "transcription"
    text: str = field(validator=_STR)
    user_id: str = field(validator=_STR)
    timestamp: str = field(validator=_STR)


@frozen
class MessageFrame(_FrameBase):
    """An application message: any JSON-able value (protobuf field ``message`` = 4).

    Pipecat's ``OutputTransportMessageFrame`` / ``InputTransportMessageFrame``. The protobuf
    wire carries only the JSON text, so ``id`` and ``name`` are not sent there. A message
    that is not JSON-serializable is refused at serialize time with ``LocalProtocolError``.
    """

    kind: ClassVar[str] = "message"
    message: Any


@frozen
class InterruptionFrame(_FrameBase):
    """The user interrupted: drop queued output (protobuf field ``interruption`` = 5)."""

    kind: ClassVar[str] = "interruption"


@frozen
class StreamStartFrame(_FrameBase):
    """A phone-line stream started (Twilio ``start``): who is calling and in what format.

    ``custom_parameters`` are the ``<Parameter>`` values of the TwiML ``<Stream>``;
    ``tracks`` the media flows to expect (``("inbound",)`` for a bidirectional stream).
    """

    kind: ClassVar[str] = "stream_start"
    stream_sid: str = field(validator=_STR)
    call_sid: str = field(default="", validator=_STR)
    account_sid: str = field(default="", validator=_STR)
    tracks: tuple[str, ...] = field(default=(), converter=_str_tuple)
    custom_parameters: dict[str, str] = field(factory=dict, eq=True, hash=False)
    sample_rate: int = field(default=8000, validator=_in_range(MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ))
    encoding: str = field(default="audio/x-mulaw", validator=_STR)


@frozen
class DTMFFrame(_FrameBase):
    """A key press on the phone (Twilio ``dtmf``): one of ``0-9 * # A-D``."""

    kind: ClassVar[str] = "dtmf"
    digit: str = field(validator=_STR)


@frozen
class MarkFrame(_FrameBase):
    """A named point in the output audio.

    Sent on a transport's output, it goes out after the audio queued before it; received,
    it means the caller has heard everything up to that point (Twilio echoes each mark
    when its audio has played, or when a ``clear`` dropped it).
    """

    kind: ClassVar[str] = "mark"
    mark: str = field(validator=_STR)


@frozen
class StreamStopFrame(_FrameBase):
    """The phone-line stream ended (Twilio ``stop``): the transport closes the session after it."""

    kind: ClassVar[str] = "stream_stop"
    ends_session: ClassVar[bool] = True


MediaFrame = TextFrame | AudioRawFrame | TranscriptionFrame | MessageFrame | InterruptionFrame
"""A frame of Pipecat's wire schema: what the protobuf and JSON serializers carry."""

TelephonyFrame = StreamStartFrame | DTMFFrame | MarkFrame | StreamStopFrame
"""A phone-line event (Twilio Media Streams)."""

AnyFrame = MediaFrame | TelephonyFrame
"""Any frame a media transport carries."""

MEDIA_FRAME_TYPES: Final[tuple[type[_FrameBase], ...]] = (
    TextFrame,
    AudioRawFrame,
    TranscriptionFrame,
    MessageFrame,
    InterruptionFrame,
)
TELEPHONY_FRAME_TYPES: Final[tuple[type[_FrameBase], ...]] = (
    StreamStartFrame,
    DTMFFrame,
    MarkFrame,
    StreamStopFrame,
)

_F = TypeVar("_F", bound=_FrameBase)


class FrameStamper:
    """Hands out Pipecat-style frame ids and names, one sequence per session.

    ``stamp(frame)`` returns a copy whose unset ``id`` becomes the next id (1, 2, ...: 0
    means unset) and whose unset ``name`` becomes ``"<Class>#<n>"``, ``n`` counting from 0
    per class as Pipecat does. Frames that already have both are returned unchanged.
    Not thread-safe; give each session its own.
    """

    def __init__(self) -> None:
        self._last_id = 0
        self._per_class: Counter[str] = Counter()

    def stamp(self, frame: _F) -> _F:
        """Return ``frame`` with its unset id and name filled in."""
        changes: dict[str, Any] = {}
        if frame.id == 0:
            self._last_id += 1
            changes["id"] = self._last_id
        if frame.name == "":
            cls = type(frame).__name__
            changes["name"] = f"{cls}#{self._per_class[cls]}"
            self._per_class[cls] += 1
        return attrs.evolve(frame, **changes) if changes else frame
