"""A Pipecat-compatible WebSocket server media transport, on antiphon's session engine.

::

    transport = WebsocketServerTransport(WebsocketServerParams(), host="0.0.0.0", port=8765)

    @transport.event_handler("on_client_connected")
    async def greet(transport, client):
        await transport.output().send(TextFrame("hello"))

    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        async for frame in transport.input():        # frames from whichever client is connected
            await transport.output().send(frame)     # echo

Theory of operation
-------------------
The transport is a :class:`~antiphon.engine.server.SessionServer` whose router accepts every
upgrade; each connection is a session with the engine's receive, send, heartbeat and
timer tasks plus a paced output task (:mod:`antiphon.media.output`).

**One client at a time**, as Pipecat >= 1.4: a newcomer that arrives while a client is
connected gets its upgrade, is closed at once with 1013 "Server already has a connected
client" and produces no event; the current client is kept. With
``replace_existing_client=True`` (Pipecat <= 1.3) the current client is closed instead
(1000, "replaced by a new client"), its ``on_client_disconnected`` fires, and then the
newcomer's ``on_client_connected``. The rule is applied when the session opens, with no
checkpoint between looking and deciding, so two racing newcomers cannot both win.

**Channels span clients.** :meth:`input` is one channel for the transport's lifetime:
frames of consecutive clients arrive on it in order, and it ends (``async for`` stops)
when the transport stops. It is bounded (``input_buffer_size``); when full, new frames
are dropped, logged and counted, because the receive task must keep reading for the
heartbeat to work. :meth:`output` is one channel too; the transport drains it at once
and routes each frame to the client connected *at that moment*. With no client
connected, frames are dropped, counted in ``stats.dropped_out["no_client"]`` and logged
(a warning for the first one after each client leaves): media sent to nobody is stale
by the time somebody connects. Once the transport stops, sending raises
``trio.BrokenResourceError``.

**Session timeout** (``session_timeout``): an absolute session length measured from
each client's connect, re-armed for every client (Pipecat only ever times its first
client). When it passes, ``on_session_timeout(transport, client)`` fires once; like
Pipecat the transport does **not** close the connection: the handler decides, e.g.
``client.close()``.

**Bad input never ends a session**: a message that does not decode is logged with its
located reason (rate-limited), counted in ``stats.skipped_in`` and skipped (Pipecat ends
the session). Nothing a client sends can reach the listener: a failure while routing a
frame to a client closes that client's session with 1011 and the transport carries on.

**Audio formats.** Incoming audio is converted to ``audio_in_sample_rate`` /
``audio_in_channels`` when set; outgoing audio to ``audio_out_sample_rate`` /
``audio_out_channels`` (or the serializer's wire format, e.g. Twilio's 8 kHz mono), with
soxr, streaming (``resample_quality``). **Pacing** is a policy: ``pacing="realtime"``
(Pipecat's timing, the default), ``"lead"`` (``lead_ms`` ahead) or ``"none"``.

**Interruptions** both ways: an ``InterruptionFrame`` sent on :meth:`output` drops the
queued audio and goes to the client; one *from* the client (the listener barged in)
drops the queued audio at once and is delivered on :meth:`input`. Either fires
``on_interruption(transport, client, interruption)`` with what the listener had been
sent and should have heard (:class:`~antiphon.media.connection.Interruption`).

**Shutdown** (:meth:`shutdown`): stop listening, let each client's queued audio and end
silence play out, close with 1001 (within ``shutdown_grace_s``; 1001 regardless after),
fire the last ``on_client_disconnected`` and stop. Cancelling :meth:`run` instead also
closes the client with 1001, but event handlers do not run any more.

**Serializer.** Pipecat's server has none by default and silently drops everything;
antiphon defaults to a fresh :class:`~antiphon.proto.media.serializers.ProtobufFrameSerializer`
per client (Pipecat's wire format, what its clients speak), honouring ``add_wav_header``.
"""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import Callable
from typing import Any, Final

import trio
from attrs import field, frozen

from antiphon.engine.server import (
    Accept,
    HandshakeRequest,
    Reject,
    ServerConfig,
    SessionServer,
)
from antiphon.engine.session import SessionConfig
from antiphon.errors import ConfigError, LocalProtocolError
from antiphon.media.connection import (
    INPUT_BUFFER_BYTES,
    EventDispatcher,
    EventHandler,
    InputChannel,
    InputConfig,
    Interruption,
    MediaConnection,
    MediaSessionHandler,
    MediaStats,
    SerializerSpec,
    serializer_factory,
)
from antiphon.media.output import MAX_QUEUED_AUDIO_BYTES, MediaOutput, OutputConfig
from antiphon.proto.close import CloseCode
from antiphon.proto.media.frames import AnyFrame
from antiphon.proto.media.pacing import (
    CHUNK_MS,
    LEAD_MS,
    MAX_LATE_MS,
    PacerConfig,
    Pacing,
    as_pacing,
)
from antiphon.proto.media.resample import DEFAULT_QUALITY, AudioFormat, Quality
from antiphon.proto.media.serializers import FrameSerializer

__all__ = [
    "INPUT_BUFFER_FRAMES",
    "MIB",
    "OUTPUT_BUFFER_FRAMES",
    "SERVER_EVENTS",
    "WebsocketServerParams",
    "WebsocketServerTransport",
    "output_config",
    "route_frame",
    "validate_media_params",
]

log = logging.getLogger("antiphon.media.server")

SERVER_EVENTS: Final = (
    "on_websocket_ready",
    "on_client_connected",
    "on_client_disconnected",
    "on_session_timeout",
    "on_interruption",
)
"""Pipecat's four events, and ``on_interruption(transport, client, interruption)``."""
MIB: Final = 1024 * 1024
INPUT_BUFFER_FRAMES: Final = 1024
"""Frames held for the application: ~40 s of 40 ms audio chunks; more means nobody is reading."""
OUTPUT_BUFFER_FRAMES: Final = 256
"""Frames waiting for the router task; it drains them at once, so this rarely fills."""


def _positive_or_none(instance: object, attribute: object, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ConfigError(f"{getattr(attribute, 'name', '?')}: must be positive, got {value!r}")


@frozen(kw_only=True)
class WebsocketServerParams:
    """Settings of a :class:`WebsocketServerTransport` (Pipecat's names where Pipecat has one).

    ``serializer``: an instance (shared by every client, as in Pipecat), a factory called
    per client, or ``None`` for a protobuf serializer per client. ``add_wav_header``
    applies to the serializer the transport builds; with an instance it must agree (a
    :class:`ConfigError` says so). ``audio_out_sample_rate`` / ``audio_out_channels``
    fix the output audio format (``None``: each stream takes its first frame's).
    ``audio_in_sample_rate`` / ``audio_in_channels`` convert incoming audio (``None``: as
    sent). ``chunk_ms`` is Pipecat's ``audio_out_10ms_chunks * 10``; ``pacing`` is
    ``"realtime"``, ``"lead"`` (``lead_ms`` ahead) or ``"none"``; ``resample_quality`` a
    soxr preset. ``end_silence_ms`` is sent at shutdown (Pipecat: 2000; default 0 here
    so shutdown is not delayed). ``input_buffer_size`` / ``input_buffer_bytes`` bound
    what waits for the application, ``max_queued_audio_bytes`` the audio waiting to be
    paced out; past them frames are dropped and counted. Raises :class:`ConfigError`
    for a setting out of range.
    ``allowed_origins``: when not empty, an upgrade whose ``Origin`` is missing or not
    listed is refused with HTTP 403 (Pipecat's ``PIPECAT_ALLOWED_ORIGINS``).
    """

    serializer: SerializerSpec = None
    add_wav_header: bool = False
    session_timeout: float | None = field(default=None, validator=_positive_or_none)
    audio_in_sample_rate: int | None = None
    audio_in_channels: int | None = None
    audio_out_sample_rate: int | None = None
    audio_out_channels: int = 1
    chunk_ms: int = CHUNK_MS
    pacing: Pacing = field(default=Pacing.REALTIME, converter=as_pacing)
    lead_ms: int = LEAD_MS
    max_late_ms: int = MAX_LATE_MS
    end_silence_ms: int = 0
    resample_quality: Quality = DEFAULT_QUALITY
    replace_existing_client: bool = False
    allowed_origins: tuple[str, ...] = field(default=(), converter=tuple)
    input_buffer_size: int = INPUT_BUFFER_FRAMES
    input_buffer_bytes: int = INPUT_BUFFER_BYTES
    output_buffer_size: int = OUTPUT_BUFFER_FRAMES
    max_queued_audio_bytes: int = MAX_QUEUED_AUDIO_BYTES
    max_message_size: int = 1 * MIB
    shutdown_grace_s: float = 10.0
    session_config: SessionConfig | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, eq=False)
    """Serve ``wss://`` with this server-side context (e.g. :func:`antiphon.engine.tls.server_context`)."""
    metrics: bool = True
    """Answer ``GET /metrics`` on the same port (``GET /healthz`` is always answered)."""

    def __attrs_post_init__(self) -> None:
        validate_media_params(self)
        serializer_factory(self.serializer, self.add_wav_header)  # validates

    def output_config(self) -> OutputConfig:
        return output_config(self)

    def input_config(self) -> InputConfig:
        return InputConfig(
            sample_rate=self.audio_in_sample_rate,
            num_channels=self.audio_in_channels,
            resample_quality=self.resample_quality,
        )


def validate_media_params(p: WebsocketServerParams | Any) -> None:
    """Check the audio settings both transports share; raise :class:`ConfigError` naming the field."""
    for name in ("input_buffer_size", "output_buffer_size", "input_buffer_bytes", "max_queued_audio_bytes"):
        if getattr(p, name) < 1:
            raise ConfigError(f"{name}: must be at least 1, got {getattr(p, name)}")
    if p.audio_out_channels < 1:
        raise ConfigError(f"audio_out_channels: must be at least 1, got {p.audio_out_channels}")
    if p.audio_out_sample_rate is not None:
        AudioFormat(p.audio_out_sample_rate, p.audio_out_channels)
    InputConfig(sample_rate=p.audio_in_sample_rate, num_channels=p.audio_in_channels)
    if p.resample_quality not in ("QQ", "LQ", "MQ", "HQ", "VHQ"):
        raise ConfigError(f"resample_quality: must be QQ, LQ, MQ, HQ or VHQ, got {p.resample_quality!r}")
    # Every format the pacer may meet is >= 8 kHz, so a chunk of >= 1 ms always holds samples.
    PacerConfig(
        8000,
        chunk_ms=p.chunk_ms,
        pacing=p.pacing,
        lead_ms=p.lead_ms,
        max_late_ms=p.max_late_ms,
        end_silence_ms=getattr(p, "end_silence_ms", 0),
    )


def output_config(p: WebsocketServerParams | Any) -> OutputConfig:
    """The :class:`OutputConfig` of a transport's params (server or client)."""
    return OutputConfig(
        sample_rate=p.audio_out_sample_rate,
        num_channels=p.audio_out_channels if p.audio_out_sample_rate is not None else None,
        chunk_ms=p.chunk_ms,
        pacing=p.pacing,
        lead_ms=p.lead_ms,
        max_late_ms=p.max_late_ms,
        end_silence_ms=getattr(p, "end_silence_ms", 0),
        max_queued_audio_bytes=p.max_queued_audio_bytes,
        resample_quality=p.resample_quality,
    )


class WebsocketServerTransport:
    """Serve one media client at a time over WebSocket; see the module docstring.

    Run it with ``await nursery.start(transport.run)``; stop it with ``await
    transport.shutdown()`` (graceful) or by cancelling. A transport runs once.
    """

    def __init__(self, params: WebsocketServerParams | None = None, host: str = "localhost", port: int = 8765) -> None:
        self.params = params or WebsocketServerParams()
        self.stats = MediaStats()
        self._new_serializer: Callable[[], FrameSerializer] = serializer_factory(
            self.params.serializer, self.params.add_wav_header
        )
        self._output_config = self.params.output_config()
        self._input_config = self.params.input_config()
        self._events = EventDispatcher(SERVER_EVENTS)
        self._input = InputChannel(self.params.input_buffer_size, self.params.input_buffer_bytes)
        self._out_send, self._out_receive = trio.open_memory_channel[AnyFrame](self.params.output_buffer_size)
        self._server = SessionServer(
            self._route,
            ServerConfig(
                host=host,
                port=port,
                max_message_size=self.params.max_message_size,
                shutdown_grace_s=self.params.shutdown_grace_s,
                ssl=self.params.ssl_context,
                metrics=self.params.metrics,
            ),
            self.params.session_config,
            face="media",
        )
        self._client: MediaSessionHandler | None = None
        self._warned_no_client = False
        self._started = False
        self._stop = trio.Event()
        self._done = trio.Event()

    # ------------------------------------------------------------------ Pipecat's surface

    def event_handler(self, event_name: str) -> Callable[[EventHandler], EventHandler]:
        """Decorator registering an event handler; raises LocalProtocolError for an unknown event."""
        return self._events.decorator(event_name)

    def add_event_handler(self, event_name: str, handler: EventHandler) -> None:
        self._events.add(event_name, handler)

    def input(self) -> InputChannel:
        """Frames received from clients (all of them, in order); ends when the transport stops."""
        return self._input

    def output(self) -> trio.MemorySendChannel[AnyFrame]:
        """Frames to send to the connected client; dropped and counted when there is none."""
        return self._out_send

    @property
    def client(self) -> MediaConnection | None:
        """The connected client, if any."""
        h = self._client
        return h.conn if h is not None and h.announced and h.conn is not None and h.conn.is_connected else None

    @property
    def server(self) -> SessionServer:
        """The engine server underneath (``port``, ``url``, ``sessions``...)."""
        return self._server

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return self._server.url

    # ------------------------------------------------------------------ lifecycle

    async def run(
        self, *, listen: bool = True, task_status: trio.TaskStatus[WebsocketServerTransport] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until :meth:`shutdown` or cancellation.

        ``listen=False`` binds no socket: connections come only through
        :meth:`serve_stream` (memory streams in tests, or a listener of your own).
        Fires ``on_websocket_ready`` once ready. Raises LocalProtocolError if run twice.
        """
        if self._started:
            raise LocalProtocolError("a WebsocketServerTransport runs only once; create a new one")
        self._started = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._events.run)
                try:
                    async with trio.open_nursery() as inner:
                        inner.start_soon(self._route_output)
                        if listen:
                            await inner.start(self._server.run)
                        self._events.fire("on_websocket_ready", self)
                        task_status.started(self)
                        await self._stop.wait()
                        inner.cancel_scope.cancel()
                finally:
                    self._events.close()  # the dispatcher handles what is queued, then returns
        finally:
            self._input.close_sender()
            self._out_receive.close()
            self._done.set()

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection over an open byte stream until it ends (see ``run(listen=False)``)."""
        await self._server.serve_stream(stream)

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Stop accepting, let audio play out, close the client with 1001, fire the last events, stop.

        ``grace_s`` defaults to ``params.shutdown_grace_s``. Returns once :meth:`run` returned.
        """
        await self._server.shutdown(grace_s)
        self._stop.set()
        if self._started:
            await self._done.wait()

    # ------------------------------------------------------------------ sessions

    def _route(self, request: HandshakeRequest, *, full: bool) -> Accept | Reject:
        allowed = self.params.allowed_origins
        if allowed and request.header("origin") not in allowed:
            log.warning(
                "refusing an upgrade from %s: origin %r is not allowed", request.remote, request.header("origin")
            )
            return Reject(403, b"origin not allowed\n")
        handler = MediaSessionHandler(
            serializer=self._new_serializer(),
            make_output=self._make_output,
            deliver=self._input,
            stats=self.stats,
            input_config=self._input_config,
            path=request.path,
            headers=request.headers,
            remote=request.remote,
            opened=self._opened,
            closed=self._closed,
            timer=self._timed_out,
        )
        return Accept(handler)

    def _make_output(self, handler: MediaSessionHandler) -> MediaOutput:
        conn = handler.connection

        def interrupted(interruption: Interruption) -> None:
            if handler.announced:
                self._events.fire("on_interruption", self, conn, interruption)

        return MediaOutput(conn.session, handler.serializer, conn.stats, self._output_config, interrupted)

    async def _opened(self, handler: MediaSessionHandler) -> None:
        conn = handler.connection
        current = self._client
        if current is not None and current.connection.is_connected:
            if not self.params.replace_existing_client:
                handler.rejected = True
                self.stats.add("rejected_clients")
                log.warning(
                    "closing newcomer %s with 1013: client %s is connected", conn.remote, current.connection.id[:8]
                )
                conn.session.close(CloseCode.TRY_AGAIN_LATER, "Server already has a connected client")
                return
            log.info("client %s replaces client %s", conn.remote, current.connection.id[:8])
            current.connection.session.close(CloseCode.NORMAL, "replaced by a new client", flush=False)
        # Decided: this newcomer is the client. No checkpoint above this line.
        self._client = handler
        if self.params.session_timeout is not None:
            conn.session.set_timer(self.params.session_timeout)
        if current is not None:
            # So the old client's on_client_disconnected comes before our on_client_connected.
            await current.connection.session.done.wait()
        if not conn.is_connected:
            return  # replaced or shut down while waiting: it never was announced
        handler.announced = True
        self._warned_no_client = False
        log.info("client %s connected from %s", conn.id[:8], conn.remote)
        self._events.fire("on_client_connected", self, conn)

    def _closed(self, handler: MediaSessionHandler) -> None:
        if self._client is handler:
            self._client = None
        if handler.announced:
            conn = handler.connection
            log.info("client %s disconnected: %s %s", conn.id[:8], conn.close_code, conn.close_reason or "")
            self._events.fire("on_client_disconnected", self, conn)

    def _timed_out(self, handler: MediaSessionHandler) -> None:
        conn = handler.connection
        if handler.announced and conn.is_connected:
            log.info("client %s: session timeout (%gs) passed", conn.id[:8], self.params.session_timeout or math.nan)
            self._events.fire("on_session_timeout", self, conn)

    async def _route_output(self) -> None:
        async for frame in self._out_receive:
            handler = self._client
            if handler is None or not handler.announced or not handler.connection.is_connected:
                self.stats.count("dropped_out", "no_client")
                level = logging.DEBUG if self._warned_no_client else logging.WARNING
                self._warned_no_client = True
                log.log(level, "no client connected: dropping an outgoing %s frame", getattr(frame, "kind", frame))
                continue
            route_frame(handler, frame)


def route_frame(handler: MediaSessionHandler, frame: AnyFrame) -> None:
    """Hand ``frame`` to the connection's output; a failure ends that session (1011), never the caller's task."""
    try:
        handler.output.put(frame)
    except Exception:
        conn = handler.connection
        log.exception(
            "connection %s: failed to route an outgoing %s frame; closing it",
            conn.id[:8],
            getattr(frame, "kind", frame),
        )
        conn.stats.count("dropped_out", "internal_error")
        conn.session.close(CloseCode.INTERNAL_ERROR, "internal error")
