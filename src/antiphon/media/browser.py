"""Serving Pipecat's browser client (``@pipecat-ai/client-js`` with ``@pipecat-ai/websocket-transport``).

::

    from antiphon.media import AudioRawFrame, WebsocketServerTransport
    from antiphon.media.browser import bot_ready, browser_client_params, is_client_ready

    transport = WebsocketServerTransport(browser_client_params(), host="0.0.0.0", port=8765)
    ...
    async for frame in transport.input():
        if is_client_ready(frame):
            await transport.output().send(bot_ready(frame))  # the page's connect() waits for it
        elif isinstance(frame, AudioRawFrame):                # the microphone: 16 kHz mono PCM16
            ...
    await transport.output().send(AudioRawFrame(pcm, 24000, 1))  # what the page plays: 24 kHz mono

What that client does
---------------------
Read from its bundled JavaScript (client-js 1.13.1, websocket-transport 1.7.1) and checked
in headless Chromium by ``tests/media/test_browser_client.py``:

* **It plays every audio frame's bytes as 16-bit mono PCM at 24 kHz**, whatever the
  frame's ``sample_rate`` and ``num_channels`` say, and plays a WAV header as sound. So
  the preset fixes the output at 24 kHz mono without WAV headers: audio at another rate
  or channel count is resampled and remixed to it, never sent at the wrong pitch.
* **Its player has no jitter buffer.** An AudioWorklet plays 128-sample render quanta; when
  it runs dry it stops, drops the partial quantum it held, and the next audio starts a new
  stream. Chunks of :data:`BROWSER_CHUNK_MS` are whole quanta, so a stall loses no sample,
  and :data:`BROWSER_LEAD_MS` of audio is kept ahead as the cushion against jitter.
* **Its microphone** arrives as 16-bit mono PCM frames labelled with the page's
  ``recorderSampleRate`` (default 16 kHz), without WAV headers, once it sent
  ``client-ready`` (frames captured before are queued, then flushed).
* **RTVI.** ``PipecatClient.connect()`` resolves only once the server answers the RTVI
  ``client-ready`` message with ``bot-ready`` (:func:`bot_ready`); only messages labelled
  ``rtvi-ai`` reach the page (:func:`rtvi_message`).
* **It knows no InterruptionFrame**: its copy of ``frames.proto`` stops at ``MessageFrame``
  (field 4). An interruption (field 5) fails to decode, is logged as "Failed to deserialize
  incoming message Error: Unknown frame kind", and changes nothing: what it has buffered
  keeps playing. Nothing else in it can flush the player either: its media manager's
  ``userStartedSpeaking()`` does, but then mutes every later reply (all bot audio plays
  under one track id, and an interrupted track id is never played again; seen in a
  headless run by hand, not pinned by the test). So antiphon
  sends it no InterruptionFrame: :class:`BrowserClientSerializer` writes one as RTVI
  ``bot-stopped-speaking`` (the page's ``onBotStoppedSpeaking`` callback), while the
  transport drops its queued audio as usual; the listener hears at most the lead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from antiphon._version import __version__
from antiphon.media.server import WebsocketServerParams
from antiphon.proto.media.frames import (
    AnyFrame,
    InterruptionFrame,
    MediaFrame,
    MessageFrame,
)
from antiphon.proto.media.serializers import DecodeStats, ProtobufFrameSerializer

__all__ = [
    "BROWSER_CHUNK_MS",
    "BROWSER_LEAD_MS",
    "BROWSER_MIC_SAMPLE_RATE_HZ",
    "BROWSER_PLAYER_SAMPLE_RATE_HZ",
    "RTVI_LABEL",
    "BrowserClientSerializer",
    "bot_ready",
    "browser_client_params",
    "is_client_ready",
    "rtvi_message",
]

BROWSER_PLAYER_SAMPLE_RATE_HZ: Final = 24000
"""The rate the client plays every audio frame at (``WebSocketTransport.PLAYER_SAMPLE_RATE``)."""
BROWSER_MIC_SAMPLE_RATE_HZ: Final = 16000
"""The rate the client records and labels microphone audio at by default (``RECORDER_SAMPLE_RATE``)."""
BROWSER_CHUNK_MS: Final = 32
"""768 samples at 24 kHz: six 128-sample render quanta, so a player stall loses no sample."""
BROWSER_LEAD_MS: Final = 96
"""Three chunks sent ahead: a jitter cushion for a player with none, and the most heard after an interruption."""
RTVI_LABEL: Final = "rtvi-ai"
"""The label on every RTVI message; the client hands only these to the page."""
_RTVI_VERSION: Final = "2.1.0"
"""The RTVI version client-js 1.13.1 speaks; :func:`bot_ready` answers with the client's own when it gives one."""


def browser_client_params(**overrides: Any) -> WebsocketServerParams:
    """Pipecat browser client settings: 24 kHz mono out, no WAV header, 32 ms chunks, ``lead`` pacing 96 ms ahead.

    ``serializer`` is a :class:`BrowserClientSerializer` per client. Any
    :class:`WebsocketServerParams` field can be overridden (``session_timeout=180``...);
    raises :class:`~antiphon.errors.ConfigError` as the params do.
    """
    settings: dict[str, Any] = {
        "serializer": BrowserClientSerializer,
        "add_wav_header": False,
        "audio_out_sample_rate": BROWSER_PLAYER_SAMPLE_RATE_HZ,
        "audio_out_channels": 1,
        "chunk_ms": BROWSER_CHUNK_MS,
        "pacing": "lead",  # the player has no jitter buffer: keep BROWSER_LEAD_MS ahead
        "lead_ms": BROWSER_LEAD_MS,
    }
    settings.update(overrides)
    return WebsocketServerParams(**settings)


class BrowserClientSerializer:
    """Pipecat's protobuf frames, but an InterruptionFrame goes out as RTVI ``bot-stopped-speaking``.

    The browser client cannot decode an InterruptionFrame (see the module docstring);
    everything else is :class:`~antiphon.proto.media.serializers.ProtobufFrameSerializer`'s,
    without WAV headers.
    """

    add_wav_header: Final = False

    def __init__(self) -> None:
        self._protobuf = ProtobufFrameSerializer(add_wav_header=False)
        self.stats: DecodeStats = self._protobuf.stats

    def serialize(self, frame: AnyFrame) -> bytes:
        """The binary WebSocket message for ``frame``; raises LocalProtocolError as the protobuf serializer does."""
        if isinstance(frame, InterruptionFrame):
            frame = rtvi_message("bot-stopped-speaking")
        return self._protobuf.serialize(frame)

    def deserialize(self, data: bytes | str) -> AnyFrame | None:
        """The frame in one message, or ``None`` with the reason in ``stats.last_skip``."""
        return self._protobuf.deserialize(data)


def rtvi_message(type: str, data: Mapping[str, Any] | None = None, *, id: str | None = None) -> MessageFrame:
    """An RTVI message (``{"label": "rtvi-ai", "type": ..., "data": ..., "id": ...}``); ``None`` fields are left out."""
    message: dict[str, Any] = {"label": RTVI_LABEL, "type": type}
    if data is not None:
        message["data"] = dict(data)
    if id is not None:
        message["id"] = id
    return MessageFrame(message)


def is_client_ready(frame: MediaFrame) -> bool:
    """Whether ``frame`` is the client's RTVI ``client-ready`` message (answer it with :func:`bot_ready`)."""
    message = frame.message if isinstance(frame, MessageFrame) else None
    return isinstance(message, dict) and message.get("label") == RTVI_LABEL and message.get("type") == "client-ready"


def bot_ready(client_ready: MessageFrame, *, about: Mapping[str, Any] | None = None) -> MessageFrame:
    """The RTVI ``bot-ready`` answer to ``client_ready``: its id, its RTVI version, and ``about`` this server.

    Answering in the version the client declared is what Pipecat does for clients older
    than itself; antiphon speaks only the few RTVI messages above, so it always does.
    ``about`` defaults to ``{"library": "antiphon", "library_version": ...}``.
    """
    message = client_ready.message if isinstance(client_ready.message, dict) else {}
    data = message.get("data")
    version = data.get("version") if isinstance(data, dict) else None
    ready_data = {
        "version": version if isinstance(version, str) else _RTVI_VERSION,
        "about": dict(about) if about is not None else {"library": "antiphon", "library_version": __version__},
    }
    ident = message.get("id")
    return rtvi_message("bot-ready", ready_data, id=ident if isinstance(ident, str) else None)
