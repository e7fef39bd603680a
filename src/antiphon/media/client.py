"""A Pipecat-compatible WebSocket client media transport, on antiphon's session engine.

::

    transport = WebsocketClientTransport("ws://127.0.0.1:8765", WebsocketClientParams())

    @transport.event_handler("on_connected")
    async def connected(transport, connection): ...

    async with transport:                            # or: await nursery.start(transport.run)
        await transport.connect()
        await transport.output().send(AudioRawFrame(pcm, 16000, 1))   # paced
        await transport.send(TextFrame("hi"))                          # one frame, now
        async for frame in transport.input():        # ends when the connection ends for good
            ...

Theory of operation
-------------------
Pipecat's client is driven by its pipeline; a Trio client needs a nursery for its
tasks, so the transport lives in ``async with transport:`` (or ``await
nursery.start(transport.run)``; ``await transport.aclose()`` stops it) and keeps
Pipecat's method names inside: :meth:`connect`, :meth:`disconnect`, :meth:`send`,
:attr:`is_connected`, :attr:`is_closing`, events ``on_connected`` and
``on_disconnected`` (``(transport, connection)``).

* :meth:`connect` dials and returns once the session runs; it raises
  :class:`~antiphon.errors.HandshakeError` / ``HandshakeRejected`` /
  :class:`~antiphon.errors.OperationTimeout` if the first dial fails (Pipecat swallows
  a timeout and runs unconnected; antiphon says so).
* :meth:`send` serializes one frame and queues it at once (Pipecat's
  ``session.send``: ``False`` when not connected). :meth:`output` is a channel whose
  audio is paced like the server's (see :mod:`antiphon.media.output`); Pipecat's
  client pipeline only sends audio and messages, antiphon sends every frame kind.
* Bad input is logged (rate-limited), counted and skipped; the connection lives on
  (Pipecat's receive task dies on the first bad message and leaves a half-dead socket).
* Audio conversion, pacing policies and interruptions work as on the server (see
  :mod:`antiphon.media.server`): ``audio_in_*`` / ``audio_out_*``, ``pacing``,
  ``lead_ms``, ``resample_quality``; an ``InterruptionFrame`` from the server drops the
  queued output audio at once; ``on_interruption(transport, connection, interruption)``
  fires for both sides' interruptions.
* ``add_wav_header`` defaults to ``False``: stock Pipecat servers do not strip WAV
  headers, so Pipecat's own client default (``True``) puts 44 header bytes into the
  audio every 40 ms there. antiphon's server strips them either way.
* **Reconnect** (``reconnect=True``; Pipecat has none): when an established connection
  ends without :meth:`disconnect` and not with 1000 (the server's deliberate goodbye),
  the transport dials again after ``reconnect_initial_delay_s``, multiplying the delay
  by ``reconnect_backoff_factor`` up to ``reconnect_max_delay_s``, at most
  ``reconnect_max_attempts`` times in a row (a success resets the count). A 4xx answer
  to the upgrade is final. ``on_disconnected`` and ``on_connected`` fire for every drop
  and every reconnect.
* :meth:`input` ends (``async for`` stops) when the connection ends for good: after
  :meth:`disconnect`, a drop with reconnect off, or the last failed attempt. A
  transport carries one logical connection: :meth:`connect` after that raises
  :class:`~antiphon.errors.LocalProtocolError`.
* ``open_stream`` opens the byte stream yourself (a memory stream in tests, a tunnel);
  the URI still gives the ``Host`` header and the resource.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Final
from urllib.parse import urlsplit

import trio
from attrs import field, frozen

from antiphon.engine._util import open_nursery_unwrapped
from antiphon.engine.connect import open_client_websocket
from antiphon.engine.session import Session, SessionConfig
from antiphon.engine.wire import WebSocketWire
from antiphon.errors import (
    ConfigError,
    HandshakeError,
    HandshakeRejected,
    LocalProtocolError,
    OperationTimeout,
)
from antiphon.media.connection import (
    INPUT_BUFFER_BYTES,
    EventDispatcher,
    EventHandler,
    InputChannel,
    InputConfig,
    Interruption,
    InterruptionSource,
    MediaConnection,
    MediaSessionHandler,
    MediaStats,
    SerializerSpec,
    serializer_factory,
)
from antiphon.media.output import MAX_QUEUED_AUDIO_BYTES, MediaOutput
from antiphon.media.server import (
    INPUT_BUFFER_FRAMES,
    MIB,
    OUTPUT_BUFFER_FRAMES,
    output_config,
    route_frame,
    validate_media_params,
)
from antiphon.proto.close import CloseCode
from antiphon.proto.media.frames import AnyFrame, InterruptionFrame
from antiphon.proto.media.pacing import (
    CHUNK_MS,
    LEAD_MS,
    MAX_LATE_MS,
    Pacing,
    as_pacing,
)
from antiphon.proto.media.resample import DEFAULT_QUALITY, Quality
from antiphon.proto.media.serializers import FrameSerializer

__all__ = ["CLIENT_EVENTS", "WebsocketClientParams", "WebsocketClientTransport"]

log = logging.getLogger("antiphon.media.client")

CLIENT_EVENTS: Final = ("on_connected", "on_disconnected", "on_interruption")


@frozen(kw_only=True)
class WebsocketClientParams:
    """Settings of a :class:`WebsocketClientTransport` (Pipecat's names where Pipecat has one).

    ``serializer`` as for the server; ``None`` means a protobuf serializer. ``add_wav_header``
    defaults to ``False``, unlike Pipecat's client: a stock Pipecat server does not strip
    WAV headers (antiphon's does). ``additional_headers`` go with the upgrade request.
    The audio, pacing and buffer settings are the server's (see
    :class:`~antiphon.media.server.WebsocketServerParams`). Raises :class:`ConfigError`
    for a setting out of range.
    """

    serializer: SerializerSpec = None
    add_wav_header: bool = False
    additional_headers: Mapping[str, str] | None = None
    open_timeout_s: float = 10.0
    audio_in_sample_rate: int | None = None
    audio_in_channels: int | None = None
    audio_out_sample_rate: int | None = None
    audio_out_channels: int = 1
    chunk_ms: int = CHUNK_MS
    pacing: Pacing = field(default=Pacing.REALTIME, converter=as_pacing)
    lead_ms: int = LEAD_MS
    max_late_ms: int = MAX_LATE_MS
    resample_quality: Quality = DEFAULT_QUALITY
    reconnect: bool = False
    reconnect_max_attempts: int = 5
    reconnect_initial_delay_s: float = 1.0
    reconnect_backoff_factor: float = 2.0
    reconnect_max_delay_s: float = 30.0
    input_buffer_size: int = INPUT_BUFFER_FRAMES
    input_buffer_bytes: int = INPUT_BUFFER_BYTES
    output_buffer_size: int = OUTPUT_BUFFER_FRAMES
    max_queued_audio_bytes: int = MAX_QUEUED_AUDIO_BYTES
    max_message_size: int = 1 * MIB
    session_config: SessionConfig | None = None
    open_stream: Callable[[], Awaitable[trio.abc.Stream]] | None = field(default=None, eq=False)
    ssl_context: ssl.SSLContext | None = field(default=None, eq=False)
    """The TLS context for a ``wss://`` URI (None: the system's CAs, ``ssl.create_default_context()``)."""

    def __attrs_post_init__(self) -> None:
        if self.reconnect_max_attempts < 1:
            raise ConfigError(f"reconnect_max_attempts: must be at least 1, got {self.reconnect_max_attempts}")
        if self.reconnect_initial_delay_s < 0 or self.reconnect_max_delay_s < 0 or self.reconnect_backoff_factor < 1:
            raise ConfigError("reconnect delays must not be negative and the backoff factor must be at least 1")
        validate_media_params(self)
        serializer_factory(self.serializer, self.add_wav_header)  # validates

    def backoff_s(self, attempt: int) -> float:
        """The delay before reconnect attempt ``attempt`` (1, 2, ...)."""
        delay = self.reconnect_initial_delay_s * self.reconnect_backoff_factor ** (attempt - 1)
        return float(min(delay, self.reconnect_max_delay_s))


class WebsocketClientTransport:
    """Connect to a media server over WebSocket; see the module docstring."""

    def __init__(self, uri: str, params: WebsocketClientParams | None = None) -> None:
        self.uri = uri
        self.params = params or WebsocketClientParams()
        self.stats = MediaStats()
        self._new_serializer: Callable[[], FrameSerializer] = serializer_factory(
            self.params.serializer, self.params.add_wav_header
        )
        p = self.params
        self._output_config = output_config(p)
        self._input_config = InputConfig(
            sample_rate=p.audio_in_sample_rate, num_channels=p.audio_in_channels, resample_quality=p.resample_quality
        )
        self._events = EventDispatcher(CLIENT_EVENTS)
        self._input = InputChannel(p.input_buffer_size, p.input_buffer_bytes)
        self._out_send, self._out_receive = trio.open_memory_channel[AnyFrame](p.output_buffer_size)
        self._inner: trio.Nursery | None = None
        self._handler: MediaSessionHandler | None = None
        self._session: Session | None = None
        self._wanted = False  # the application wants to be connected
        self._connecting = False  # a connection task is alive (connected, or between attempts)
        self._ended = False  # the logical connection ended for good
        self._backoff_scope: trio.CancelScope | None = None
        self._loop_done = trio.Event()
        self._loop_done.set()
        self._started = False
        self._stop = trio.Event()
        self._done = trio.Event()
        self._stack: AsyncExitStack | None = None

    # ------------------------------------------------------------------ Pipecat's surface

    def event_handler(self, event_name: str) -> Callable[[EventHandler], EventHandler]:
        """Decorator registering an event handler; raises LocalProtocolError for an unknown event."""
        return self._events.decorator(event_name)

    def add_event_handler(self, event_name: str, handler: EventHandler) -> None:
        self._events.add(event_name, handler)

    def input(self) -> InputChannel:
        """Frames received from the server; ends when the connection ends for good."""
        return self._input

    def output(self) -> trio.MemorySendChannel[AnyFrame]:
        """Frames to send, audio paced; dropped and counted while not connected."""
        return self._out_send

    @property
    def is_connected(self) -> bool:
        return self._session is not None and not self._session.closing

    @property
    def is_closing(self) -> bool:
        return self._session is not None and self._session.closing and not self._session.done.is_set()

    @property
    def connection(self) -> MediaConnection | None:
        h = self._handler
        return h.conn if h is not None and self.is_connected else None

    async def connect(self) -> None:
        """Dial the server (no-op when connected or reconnecting); see the module docstring."""
        if self._inner is None or self._stop.is_set():
            raise LocalProtocolError(
                "the transport is not running: use `async with transport:` or nursery.start(transport.run)"
            )
        if self._ended:
            raise LocalProtocolError("this transport's connection has ended; create a new transport")
        if self._connecting:
            return
        self._wanted = True
        self._connecting = True
        self._loop_done = trio.Event()
        try:
            await self._inner.start(self._connection_loop)
        except BaseException:
            self._connecting = False
            self._wanted = False
            self._loop_done.set()
            raise

    async def disconnect(self) -> None:
        """Close with 1000 (queued messages first) and stop reconnecting; returns once closed."""
        self._wanted = False
        if self._backoff_scope is not None:
            self._backoff_scope.cancel()
        if self._session is not None:
            self._session.close(CloseCode.NORMAL, "client disconnect")
        await self._loop_done.wait()

    async def send(self, frame: AnyFrame) -> bool:
        """Serialize ``frame`` and queue it now, unpaced; ``False`` if not connected.

        Waits while the session's send queue is full. Raises LocalProtocolError for an
        object the serializer cannot encode. An ``InterruptionFrame`` also drops the queued
        output audio first, as on :meth:`output`.
        """
        handler, session = self._handler, self._session
        if handler is None or session is None or session.closing:
            self.stats.count("dropped_out", "not_connected")
            log.debug("not connected: not sending a %s frame", getattr(frame, "kind", frame))
            return False
        if isinstance(frame, InterruptionFrame) and handler.output is not None:
            handler.output.interrupt(InterruptionSource.APPLICATION)
        data = handler.serializer.serialize(frame)
        if data is None:
            handler.connection.stats.count("dropped_out", "serializer_returned_none")
            return False
        await session.send(data)
        if session.closing:
            return False
        handler.connection.stats.add("frames_out")
        return True

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[WebsocketClientTransport] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the transport's tasks until :meth:`aclose` or cancellation; runs once."""
        if self._started:
            raise LocalProtocolError("a WebsocketClientTransport runs only once; create a new one")
        self._started = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._events.run)
                try:
                    async with trio.open_nursery() as inner:
                        self._inner = inner
                        inner.start_soon(self._route_output)
                        task_status.started(self)
                        await self._stop.wait()
                        await self.disconnect()
                        inner.cancel_scope.cancel()
                finally:
                    self._events.close()
        finally:
            self._input.close_sender()
            self._out_receive.close()
            self._done.set()

    async def aclose(self) -> None:
        """Disconnect (1000), deliver the last events, and stop :meth:`run`."""
        self._stop.set()
        if self._started:
            await self._done.wait()

    async def __aenter__(self) -> WebsocketClientTransport:
        stack = AsyncExitStack()
        nursery = await stack.enter_async_context(open_nursery_unwrapped())
        try:
            await nursery.start(self.run)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        stack, self._stack = self._stack, None
        assert stack is not None
        try:
            with trio.CancelScope(shield=True):
                await self.aclose()
        finally:
            return await stack.__aexit__(exc_type, exc, tb)  # noqa: B012 - the nursery must exit

    # ------------------------------------------------------------------ connection

    async def _connection_loop(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        attempt = 0
        try:
            while True:
                code: int | None = None
                try:
                    async with self._dial() as (ws, target):
                        attempt = 0
                        session = Session(ws, self.params.session_config)
                        handler = self._make_handler(target)
                        self._session, self._handler = session, handler
                        if not started:
                            started = True
                            task_status.started()
                        await session.run(handler)
                        code = session.close_code
                except (HandshakeError, OperationTimeout) as exc:
                    if not started:
                        raise
                    log.warning("reconnect attempt %d to %s failed: %s", attempt, _safe(self.uri), exc)
                    if isinstance(exc, HandshakeRejected) and exc.status_code < 500:
                        log.error("giving up: the server refused the upgrade with HTTP %d", exc.status_code)
                        return
                if not (self.params.reconnect and self._wanted) or code == CloseCode.NORMAL:
                    return
                attempt += 1
                if attempt > self.params.reconnect_max_attempts:
                    log.error("giving up on %s after %d reconnect attempts", _safe(self.uri), attempt - 1)
                    return
                delay = self.params.backoff_s(attempt)
                log.info("reconnecting to %s in %gs (attempt %d)", _safe(self.uri), delay, attempt)
                with trio.CancelScope() as self._backoff_scope:
                    await trio.sleep(delay)
                self._backoff_scope = None
                if not self._wanted:
                    return
        finally:
            self._session = None
            self._connecting = False
            if started:
                self._ended = True
                self._input.close_sender()
            self._loop_done.set()

    def _make_handler(self, target: str) -> MediaSessionHandler:
        return MediaSessionHandler(
            serializer=self._new_serializer(),
            make_output=self._make_output,
            deliver=self._input,
            stats=self.stats,
            input_config=self._input_config,
            path=target,
            remote=_safe(self.uri),
            opened=self._opened,
            closed=self._closed,
        )

    def _make_output(self, handler: MediaSessionHandler) -> MediaOutput:
        conn = handler.connection

        def interrupted(interruption: Interruption) -> None:
            self._events.fire("on_interruption", self, conn, interruption)

        return MediaOutput(conn.session, handler.serializer, conn.stats, self._output_config, interrupted)

    async def _opened(self, handler: MediaSessionHandler) -> None:
        handler.announced = True
        log.info("connected to %s", _safe(self.uri))
        self._events.fire("on_connected", self, handler.connection)

    def _closed(self, handler: MediaSessionHandler) -> None:
        conn = handler.connection
        log.info("disconnected from %s: %s %s", _safe(self.uri), conn.close_code, conn.close_reason or "")
        self._events.fire("on_disconnected", self, conn)

    @asynccontextmanager
    async def _dial(self) -> AsyncIterator[tuple[WebSocketWire, str]]:
        p = self.params
        async with open_client_websocket(
            self.uri,
            headers=list((p.additional_headers or {}).items()),
            timeout_s=p.open_timeout_s,
            max_message_size=p.max_message_size,
            open_stream=p.open_stream,
            ssl_context=p.ssl_context,
        ) as (_, ws):
            yield ws, _resource(self.uri)

    async def _route_output(self) -> None:
        async for frame in self._out_receive:
            handler = self._handler
            if handler is None or not self.is_connected:
                self.stats.count("dropped_out", "not_connected")
                log.debug("not connected: dropping an outgoing %s frame", getattr(frame, "kind", frame))
                continue
            route_frame(handler, frame)


def _resource(uri: str) -> str:
    parts = urlsplit(uri)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _safe(uri: str) -> str:
    return uri.partition("?")[0]  # query strings can carry secrets
