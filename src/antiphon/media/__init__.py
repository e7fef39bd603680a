"""Pipecat-compatible media transports over WebSocket, on antiphon's session engine.

* :class:`WebsocketServerTransport` / :class:`WebsocketServerParams` - serve one media
  client at a time (Pipecat's ``WebsocketServerTransport``);
* :class:`WebsocketClientTransport` / :class:`WebsocketClientParams` - connect to a
  media server (Pipecat's ``WebsocketClientTransport``);
* the frames and serializers they carry, re-exported from :mod:`antiphon.proto`.

Frames in and out are Trio memory channels: ``async for frame in transport.input()``
and ``await transport.output().send(frame)``. Outgoing audio is paced in real time
(:mod:`antiphon.media.output`).
"""

from antiphon.media.client import (
    CLIENT_EVENTS,
    WebsocketClientParams,
    WebsocketClientTransport,
)
from antiphon.media.connection import MediaConnection, MediaStats
from antiphon.media.output import MediaOutput, OutputConfig
from antiphon.media.server import (
    SERVER_EVENTS,
    WebsocketServerParams,
    WebsocketServerTransport,
)
from antiphon.proto.media.frames import (
    AudioRawFrame,
    InterruptionFrame,
    MediaFrame,
    MessageFrame,
    TextFrame,
    TranscriptionFrame,
)
from antiphon.proto.media.serializers import (
    FrameSerializer,
    JsonFrameSerializer,
    ProtobufFrameSerializer,
)

__all__ = [
    "CLIENT_EVENTS",
    "SERVER_EVENTS",
    "AudioRawFrame",
    "FrameSerializer",
    "InterruptionFrame",
    "JsonFrameSerializer",
    "MediaConnection",
    "MediaFrame",
    "MediaOutput",
    "MediaStats",
    "MessageFrame",
    "OutputConfig",
    "ProtobufFrameSerializer",
    "TextFrame",
    "TranscriptionFrame",
    "WebsocketClientParams",
    "WebsocketClientTransport",
    "WebsocketServerParams",
    "WebsocketServerTransport",
]
