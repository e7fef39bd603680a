"""Twilio Media Streams: the phone-call WebSocket protocol, as a media serializer.

Theory of operation
-------------------
A Twilio call with ``<Connect><Stream url="wss://...">`` opens a WebSocket to your
server and speaks JSON text messages, each ``{"event": ..., ...}``
(https://www.twilio.com/docs/voice/media-streams/websocket-messages). In from Twilio:

=============  =====================================================================
``connected``  first message (``protocol``, ``version``): consumed, nothing delivered
``start``      stream metadata: a :class:`~antiphon.proto.media.frames.StreamStartFrame`
               (stream, call and account sids, tracks, custom parameters, format)
``media``      20 ms of caller audio, base64 8 kHz mono mu-law: an ``AudioRawFrame``
               of 16-bit PCM at 8 kHz (the transport resamples to ``audio_in_sample_rate``)
``mark``       a mark we sent has played (or was cleared): a ``MarkFrame``
``dtmf``       a key press: a ``DTMFFrame``
``stop``       the stream ended: a ``StreamStopFrame``; the transport then closes
=============  =====================================================================

Out to Twilio: ``AudioRawFrame`` (8 kHz mono: the transports convert to
:attr:`TwilioFrameSerializer.wire_audio_format`) becomes ``media``; ``MarkFrame``
becomes ``mark``; ``InterruptionFrame`` becomes ``clear`` (Twilio drops the audio it
buffered and echoes the marks that were pending); ``MessageFrame`` is sent as its JSON
value, as Pipecat does (any message Twilio accepts). Text and transcription frames have
no Twilio form: ``serialize`` returns ``None`` (nothing sent, counted by the transport).
Telephony frames other than marks raise ``LocalProtocolError``.

Every outgoing message needs the ``streamSid``, which Twilio announces in ``start``:
give it to the constructor if you know it, otherwise the serializer learns it.
:attr:`TwilioFrameSerializer.ready` is False until then; the transports hold output
(audio stays queued, other frames wait in a short line) until it turns True, so a
greeting sent on connect is played once the call's stream exists.

The transports send a mark after each piece of output audio when a serializer sets
``sends_marks`` (see :mod:`antiphon.media.output`); Twilio echoes each one when the
caller has heard that audio, which is how the application learns what was heard.

mu-law is coded by :mod:`antiphon.proto.media.g711` (no :mod:`audioop`). Bad input never
raises from ``deserialize`` (see :mod:`antiphon.proto.media.serializers`): invalid JSON,
a missing ``event``, bad base64, a non-mu-law stream or a malformed ``dtmf`` is skipped
with a located reason. Events this module does not know are skipped as ``no_frame``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Final

import attrs
from attrs import frozen

from antiphon.errors import DecodeError, LocalProtocolError
from antiphon.proto._codec import dumps, expect_object, loads, make_converter, structure
from antiphon.proto.media.frames import (
    AnyFrame,
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
from antiphon.proto.media.resample import AudioFormat
from antiphon.proto.media.serializers import (
    SkipReason,
    _all_finite,
    _Reject,
    _SerializerBase,
    json_depth_ok,
)

__all__ = [
    "DTMF_DIGITS",
    "INBOUND_TRACK",
    "MULAW",
    "TWILIO_AUDIO_FORMAT",
    "TwilioFrameSerializer",
]

TWILIO_AUDIO_FORMAT: Final = AudioFormat(8000, 1)
"""Twilio's only media format: 8 kHz mono (mu-law on the wire)."""
MULAW: Final = "audio/x-mulaw"
DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")
"""The sixteen DTMF keys; Twilio reports 0-9, * and #."""
INBOUND_TRACK: Final = "inbound"


@frozen
class _MediaFormat:
    encoding: str = MULAW
    sampleRate: int = 8000  # noqa: N815 - Twilio's key
    channels: int = 1


@frozen
class _Start:
    streamSid: str  # noqa: N815
    accountSid: str = ""  # noqa: N815
    callSid: str = ""  # noqa: N815
    tracks: list[str] = attrs.field(factory=list)
    customParameters: dict[str, str] = attrs.field(factory=dict)  # noqa: N815
    mediaFormat: _MediaFormat = attrs.field(factory=_MediaFormat)  # noqa: N815


@frozen
class _Media:
    payload: str
    track: str = INBOUND_TRACK


@frozen
class _Named:
    name: str


@frozen
class _Dtmf:
    digit: str


class TwilioFrameSerializer(_SerializerBase):
    """Twilio Media Streams JSON <-> frames; one per call (it learns the call's ``streamSid``).

    ``stream_sid``: the stream's sid if known before ``start`` arrives. ``serialize``
    returns ``str`` or ``None`` and raises only :class:`LocalProtocolError` (audio not in
    8 kHz mono, a frame with no Twilio form, output before the stream sid is known, a
    message that is not JSON).
    """

    wire_audio_format: AudioFormat = TWILIO_AUDIO_FORMAT
    """The audio format the wire needs: transports convert outgoing audio to it."""
    sends_marks: bool = True
    """Ask the transport for a mark after each piece of output audio."""

    def __init__(self, *, stream_sid: str | None = None) -> None:
        super().__init__(add_wav_header=False, stamp_frames=False)
        self._conv = make_converter()
        self.stream_sid = stream_sid
        self.stream: StreamStartFrame | None = None
        """The ``start`` message, once it came."""
        self.protocol: tuple[str, str] | None = None
        """``(protocol, version)`` from the ``connected`` message, once it came."""

    @property
    def ready(self) -> bool:
        """True once the stream sid is known: output can be addressed to the call."""
        return self.stream_sid is not None

    # ------------------------------------------------------------------ out

    def serialize(self, frame: AnyFrame) -> str | None:
        """The text message for ``frame``, or ``None`` for a frame Twilio has no message for."""
        if isinstance(frame, MessageFrame):
            if not json_depth_ok(frame.message) or not _all_finite(frame.message):
                raise LocalProtocolError("MessageFrame.message is too deep or holds NaN/infinity: not JSON for Twilio")
            return _dumps(frame.message)
        if not isinstance(frame, (AudioRawFrame, MarkFrame, InterruptionFrame)):
            if isinstance(frame, (StreamStartFrame, StreamStopFrame, DTMFFrame)):
                raise LocalProtocolError(f"{type(frame).__name__} cannot be sent to Twilio")
            if isinstance(frame, (TextFrame, TranscriptionFrame)):
                return None
            raise LocalProtocolError(f"cannot serialize {type(frame).__name__}: not a media frame")
        if self.stream_sid is None:
            raise LocalProtocolError("no streamSid yet: Twilio's start message has not arrived")
        sid = self.stream_sid
        if isinstance(frame, InterruptionFrame):
            return _dumps({"event": "clear", "streamSid": sid})
        if isinstance(frame, MarkFrame):
            return _dumps({"event": "mark", "streamSid": sid, "mark": {"name": frame.mark}})
        if (frame.sample_rate, frame.num_channels) != (TWILIO_AUDIO_FORMAT.sample_rate, 1):
            raise LocalProtocolError(
                f"Twilio audio must be {TWILIO_AUDIO_FORMAT}, got {frame.sample_rate} Hz x {frame.num_channels} "
                f"(the transports convert it; standalone, use antiphon.proto.media.resample)"
            )
        payload = base64.b64encode(pcm16_to_ulaw(frame.audio)).decode("ascii")
        return _dumps({"event": "media", "streamSid": sid, "media": {"payload": payload}})

    # ------------------------------------------------------------------ in

    def _decode(self, data: bytes | str) -> AnyFrame | None:
        if not isinstance(data, str):
            raise _Reject(SkipReason.WRONG_MESSAGE_TYPE, "$: a binary message; Twilio Media Streams are JSON text")
        try:
            doc = expect_object(loads(data))
        except DecodeError as exc:
            raise _Reject(SkipReason.MALFORMED, str(exc)) from None
        event = doc.get("event")
        if not isinstance(event, str):
            raise _Reject(SkipReason.NO_FRAME, f"$.event: expected a string, got {type(event).__name__}")
        handler = _EVENTS.get(event)
        if handler is None:
            raise _Reject(SkipReason.NO_FRAME, f"$.event: unknown Twilio event {event[:64]!r}")
        return handler(self, doc)

    def _body(self, doc: dict[str, Any], key: str, tp: type[Any], reason: SkipReason = SkipReason.BAD_FIELDS) -> Any:
        try:
            return structure(self._conv, expect_object(doc.get(key), f"$.{key}"), tp, root=f"$.{key}")
        except DecodeError as exc:
            raise _Reject(reason, str(exc)) from None

    def _connected(self, doc: dict[str, Any]) -> None:
        protocol, version = doc.get("protocol"), doc.get("version")
        self.protocol = (protocol if isinstance(protocol, str) else "", version if isinstance(version, str) else "")
        return None

    def _start(self, doc: dict[str, Any]) -> StreamStartFrame:
        start: _Start = self._body(doc, "start", _Start)
        fmt = start.mediaFormat
        try:
            frame = StreamStartFrame(
                start.streamSid,
                call_sid=start.callSid,
                account_sid=start.accountSid,
                tracks=tuple(start.tracks),
                custom_parameters=dict(start.customParameters),
                sample_rate=fmt.sampleRate,
                encoding=fmt.encoding,
            )
        except ValueError as exc:
            raise _Reject(SkipReason.BAD_FIELDS, f"$.start.mediaFormat: {exc}") from None
        self.stream = frame
        self.stream_sid = frame.stream_sid
        return frame

    def _media(self, doc: dict[str, Any]) -> AudioRawFrame | None:
        media: _Media = self._body(doc, "media", _Media, SkipReason.BAD_AUDIO)
        if media.track != INBOUND_TRACK:
            return None  # the far end of a both_tracks stream: not the caller, nothing to deliver
        stream = self.stream
        if stream is not None and stream.encoding != MULAW:
            raise _Reject(
                SkipReason.BAD_AUDIO, f"$.media.payload: the stream's encoding {stream.encoding!r} is not {MULAW}"
            )
        try:
            ulaw = base64.b64decode(media.payload, validate=True)
        except (binascii.Error, ValueError):
            raise _Reject(SkipReason.BAD_AUDIO, "$.media.payload: not base64") from None
        rate = stream.sample_rate if stream is not None else TWILIO_AUDIO_FORMAT.sample_rate
        return AudioRawFrame(ulaw_to_pcm16(ulaw), rate, 1)

    def _mark(self, doc: dict[str, Any]) -> MarkFrame:
        return MarkFrame(self._body(doc, "mark", _Named).name)

    def _dtmf(self, doc: dict[str, Any]) -> DTMFFrame:
        digit = self._body(doc, "dtmf", _Dtmf).digit
        if digit not in DTMF_DIGITS:
            raise _Reject(SkipReason.BAD_FIELDS, f"$.dtmf.digit: not a DTMF key: {digit[:8]!r}")
        return DTMFFrame(digit)

    def _stop(self, doc: dict[str, Any]) -> StreamStopFrame:
        return StreamStopFrame()


def _dumps(value: Any) -> str:
    try:
        return dumps(value)
    except (TypeError, ValueError, RecursionError) as exc:  # orjson.JSONEncodeError is a TypeError
        raise LocalProtocolError(f"not JSON-serializable for Twilio: {exc}") from None


_EVENTS: Final = {
    "connected": TwilioFrameSerializer._connected,
    "start": TwilioFrameSerializer._start,
    "media": TwilioFrameSerializer._media,
    "mark": TwilioFrameSerializer._mark,
    "dtmf": TwilioFrameSerializer._dtmf,
    "stop": TwilioFrameSerializer._stop,
}
