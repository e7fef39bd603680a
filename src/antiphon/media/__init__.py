"""Pipecat-compatible media transports over WebSocket, on antiphon's session engine.

* :class:`WebsocketServerTransport` / :class:`WebsocketServerParams` - serve one media
  client at a time (Pipecat's ``WebsocketServerTransport``);
* :class:`WebsocketClientTransport` / :class:`WebsocketClientParams` - connect to a
  media server (Pipecat's ``WebsocketClientTransport``);
* the frames and serializers they carry, re-exported from :mod:`antiphon.proto.media`:
  Pipecat's protobuf, antiphon's JSON, and Twilio Media Streams
  (:class:`TwilioFrameSerializer`) for phone calls.

Frames in and out are channels: ``async for frame in transport.input()`` and
``await transport.output().send(frame)``. Outgoing audio is converted to the output
format and paced (:mod:`antiphon.media.output`); incoming audio can be converted too.
Interruptions go both ways and are reported with what the listener had heard
(:class:`Interruption`, the ``on_interruption`` event).
"""

from antiphon.media.client import (
    CLIENT_EVENTS,
    WebsocketClientParams,
    WebsocketClientTransport,
)
from antiphon.media.connection import (
    InputChannel,
    Interruption,
    InterruptionSource,
    MediaConnection,
    MediaStats,
)
from antiphon.media.output import MediaOutput, OutputConfig
from antiphon.media.server import (
    SERVER_EVENTS,
    WebsocketServerParams,
    WebsocketServerTransport,
)
from antiphon.proto.media.frames import (
    AnyFrame,
    AudioRawFrame,
    DTMFFrame,
    InterruptionFrame,
    MarkFrame,
    MediaFrame,
    MessageFrame,
    StreamStartFrame,
    StreamStopFrame,
    TextFrame,
    TranscriptionFrame,
)
from antiphon.proto.media.pacing import Pacing
from antiphon.proto.media.serializers import (
    FrameSerializer,
    JsonFrameSerializer,
    ProtobufFrameSerializer,
)
from antiphon.proto.media.twilio import TwilioFrameSerializer

__all__ = [
    "CLIENT_EVENTS",
    "SERVER_EVENTS",
    "AnyFrame",
    "AudioRawFrame",
    "DTMFFrame",
    "FrameSerializer",
    "InputChannel",
    "Interruption",
    "InterruptionFrame",
    "InterruptionSource",
    "JsonFrameSerializer",
    "MarkFrame",
    "MediaConnection",
    "MediaFrame",
    "MediaOutput",
    "MediaStats",
    "MessageFrame",
    "OutputConfig",
    "Pacing",
    "ProtobufFrameSerializer",
    "StreamStartFrame",
    "StreamStopFrame",
    "TextFrame",
    "TranscriptionFrame",
    "TwilioFrameSerializer",
    "WebsocketClientParams",
    "WebsocketClientTransport",
    "WebsocketServerParams",
    "WebsocketServerTransport",
]
