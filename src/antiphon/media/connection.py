"""What the server and client media transports share: connections, counters, events, the session handler.

Theory of operation
-------------------
Each WebSocket connection of a media transport is one engine
:class:`~antiphon.engine.Session` running a :class:`MediaSessionHandler`. The handler
decodes every incoming message with the connection's serializer and puts the frame on
the transport's input channel, and owns a :class:`~antiphon.media.output.MediaOutput`
(the paced audio task) for frames going out. Transport-specific policy (one client at
a time, reconnects) lives in the transports, which the handler calls back.

Nothing is dropped silently. A message that does not decode is logged with the
serializer's located reason and counted in ``stats.skipped_in``; a frame that cannot be
delivered (input channel full or closed, no peer connected, audio buffer full) is
logged and counted in ``stats.dropped_in`` / ``stats.dropped_out``. The log lines are
rate-limited per connection (:mod:`antiphon.media.log_limit`: the first few per 10 s, then a
summary; ``stats.logs_suppressed`` counts the rest), so a flood of bad frames is not a
flood of log. Every connection has its own :class:`MediaStats`, which also adds into
its transport's.

Incoming frames, in order: the serializer decodes (or consumes, or skips); audio in
another format than ``audio_in_sample_rate`` / ``audio_in_channels`` is converted
(resampled and remixed, state kept between frames: :mod:`antiphon.proto.media.resample`);
an ``InterruptionFrame`` from the peer drops the queued output audio at once and fires
``on_interruption`` (then it is delivered too); a ``StreamStartFrame`` lets held output
go; every frame lands on the input channel, which is bounded in frames *and* bytes
(:class:`InputChannel`); a ``StreamStopFrame`` then closes the session (1000).
Anything a peer sends can at worst end its own session: a serializer that raises is
logged and the message skipped.

Event handlers (Pipecat's ``@transport.event_handler("on_...")``) run one at a time, in
the order the events happened, in one task of the transport: a handler sees
``on_client_connected`` before the same client's ``on_client_disconnected``. A handler
should return promptly (start long work in a nursery of your own); an exception in one
is logged and does not reach the transport.
"""

from __future__ import annotations

import enum
import inspect
import logging
import math
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, TypeVar

import trio
from attrs import define, field, frozen

from antiphon.engine.session import Session, SessionHandler
from antiphon.errors import ConfigError, LocalProtocolError
from antiphon.media.input import (
    INPUT_BUFFER_BYTES,
    InputChannel,
    InputConfig,
    frame_nbytes,
)
from antiphon.media.log_limit import LogLimiter
from antiphon.proto.close import CloseCode
from antiphon.proto.media.frames import (
    AnyFrame,
    AudioRawFrame,
    InterruptionFrame,
    StreamStartFrame,
)
from antiphon.proto.media.resample import (
    AudioConverter,
    AudioFormat,
)
from antiphon.proto.media.serializers import FrameSerializer, ProtobufFrameSerializer

__all__ = [
    "INPUT_BUFFER_BYTES",
    "EventDispatcher",
    "EventHandler",
    "InputChannel",
    "InputConfig",
    "Interruption",
    "InterruptionSource",
    "MediaConnection",
    "MediaSessionHandler",
    "MediaStats",
    "SerializerSpec",
    "serializer_factory",
]

log = logging.getLogger("antiphon.media")

EventHandler = Callable[..., Awaitable[None] | None]
"""An event callback: ``async def handler(transport, *args)`` (a plain function works too)."""

SerializerSpec = FrameSerializer | Callable[[], FrameSerializer] | None
"""A serializer instance (shared by every connection, as in Pipecat), a factory called once
per connection, or ``None`` for a fresh :class:`ProtobufFrameSerializer` per connection."""

_F = TypeVar("_F", bound=EventHandler)
_UNKNOWN_SKIP: Final = "serializer_returned_none"
_SERIALIZER_ERROR: Final = "serializer_error"


def serializer_factory(spec: SerializerSpec, add_wav_header: bool) -> Callable[[], FrameSerializer]:
    """Turn a params ``serializer`` into a per-connection factory (see :data:`SerializerSpec`).

    Raises :class:`ConfigError` when ``add_wav_header=True`` is asked of the transport
    but the serializer given was built without it: the serializer writes the wire, so
    the option must be set there, and ignoring it would be silent.
    """
    if spec is None:
        return lambda: ProtobufFrameSerializer(add_wav_header=add_wav_header)
    if not isinstance(spec, type) and hasattr(spec, "serialize") and hasattr(spec, "deserialize"):
        if add_wav_header and getattr(spec, "add_wav_header", True) is False:
            raise ConfigError(
                "add_wav_header: True on the transport but the serializer given has add_wav_header=False; "
                "build the serializer with add_wav_header=True (it is the object that writes the wire)"
            )
        instance: FrameSerializer = spec  # type: ignore[assignment]
        return lambda: instance
    if callable(spec):
        return spec  # a factory (a class works): configuring it is the caller's business
    raise ConfigError(f"serializer: expected a FrameSerializer, a factory or None, got {type(spec).__name__}")


@define
class MediaStats:
    """Counters of one connection or of a whole transport (a connection's also add into its transport's)."""

    frames_in: int = 0
    """Frames decoded and put on the input channel."""
    frames_out: int = 0
    """Messages written for outgoing frames (each paced audio chunk counts once)."""
    audio_chunks_out: int = 0
    skipped_in: Counter[str] = field(factory=Counter)
    """Incoming messages that did not decode, by :class:`~antiphon.proto.media.serializers.SkipReason`."""
    dropped_in: int = 0
    """Decoded frames lost because the input channel was full or closed."""
    dropped_out: Counter[str] = field(factory=Counter)
    """Outgoing frames not sent, by reason (``no_client``, ``audio_buffer_full``, ``not_ready``, ...)."""
    interrupted_audio_bytes: int = 0
    """Queued PCM thrown away by interruptions."""
    interruptions: int = 0
    """Interruptions, by the application or the peer."""
    audio_underruns: int = 0
    """Output chunks sent so late (a stalled loop or network) that the pacing re-anchored."""
    audio_frames_converted: int = 0
    """Audio frames resampled or remixed (both directions)."""
    logs_suppressed: int = 0
    """Warning lines not written by the rate limiter (counted here instead)."""
    rejected_clients: int = 0
    """Newcomers closed with 1013 by the one-client rule (server only)."""
    parent: MediaStats | None = field(default=None, repr=False, eq=False)

    def add(self, name: str, n: int = 1) -> None:
        """Increment the integer counter ``name`` here and in the parent."""
        setattr(self, name, getattr(self, name) + n)
        if self.parent is not None:
            self.parent.add(name, n)

    def count(self, name: str, reason: str) -> None:
        """Increment ``reason`` in the Counter ``name`` here and in the parent."""
        getattr(self, name)[reason] += 1
        if self.parent is not None:
            self.parent.count(name, reason)


class InterruptionSource(enum.StrEnum):
    """Who interrupted the output audio."""

    APPLICATION = "application"
    """The application sent an ``InterruptionFrame`` on the output."""
    PEER = "peer"
    """The peer sent one (the listener barged in)."""


@frozen
class Interruption:
    """What an interruption cut short; the ``on_interruption`` event's argument.

    ``sent_ms`` of the interrupted stream had been written to the listener, of which it
    should have heard ``heard_ms`` (truncate the agent's transcript there: OpenAI's
    ``conversation.item.truncate`` takes ``audio_end_ms``); ``dropped_ms`` was queued and
    never sent. ``at`` is the Trio time of the interruption.
    """

    source: InterruptionSource
    at: float
    sent_ms: float
    heard_ms: float
    dropped_ms: float


class MediaConnection:
    """One peer of a media transport; the ``client`` / ``websocket`` argument of its events.

    ``close()`` is the way to end it from an event handler (``on_session_timeout`` does
    not close anything by itself). ``session`` is the engine session underneath.
    """

    def __init__(self, session: Session, *, path: str, headers: tuple[tuple[bytes, bytes], ...], remote: str,
                 parent_stats: MediaStats | None) -> None:
        self.session = session
        self.id = session.id
        self.path = path
        self.headers = headers
        self.remote = remote
        self.connected_at = trio.current_time()
        self.stats = MediaStats(parent=parent_stats)
        self.output: Any = None
        """The connection's :class:`~antiphon.media.output.MediaOutput` (``queued_audio_bytes``...)."""

    @property
    def is_connected(self) -> bool:
        """True until a close was requested by either side."""
        return not self.session.closing

    @property
    def close_code(self) -> int | None:
        return self.session.close_code

    @property
    def close_reason(self) -> str | None:
        return self.session.close_reason

    @property
    def closed_by_peer(self) -> bool:
        return self.session.closed_by_peer

    def header(self, name: str) -> str | None:
        """The first handshake header called ``name`` (case-insensitive), Latin-1 decoded."""
        key = name.lower().encode()
        return next((v.decode("latin-1") for k, v in self.headers if k.lower() == key), None)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close the connection (idempotent, returns at once); queued messages go out first."""
        self.session.close(code, reason)

    def __repr__(self) -> str:
        return f"<MediaConnection {self.id[:8]} {self.remote} {'open' if self.is_connected else 'closed'}>"


class EventDispatcher:
    """Registered event handlers and the task that runs them in order (see the module docstring)."""

    def __init__(self, names: Iterable[str]) -> None:
        self._handlers: dict[str, list[EventHandler]] = {name: [] for name in names}
        self._send, self._receive = trio.open_memory_channel[tuple[str, tuple[Any, ...]]](math.inf)

    def add(self, name: str, handler: EventHandler) -> None:
        """Register ``handler`` for ``name``; raises :class:`LocalProtocolError` for an unknown event."""
        if name not in self._handlers:
            known = ", ".join(self._handlers)
            raise LocalProtocolError(f"unknown event {name!r}; this transport has: {known}")
        self._handlers[name].append(handler)

    def decorator(self, name: str) -> Callable[[_F], _F]:
        """``@transport.event_handler(name)``."""

        def register(handler: _F) -> _F:
            self.add(name, handler)
            return handler

        return register

    def fire(self, name: str, *args: Any) -> None:
        """Queue the event (``args`` start with the transport); never blocks.

        Events fired after :meth:`close` are logged and dropped.
        """
        try:
            self._send.send_nowait((name, args))
        except trio.ClosedResourceError:
            log.debug("event %s after the transport stopped: not delivered", name)

    def close(self) -> None:
        """No more events; :meth:`run` returns once the queued ones were handled."""
        self._send.close()

    async def run(self) -> None:
        async for name, args in self._receive:
            for handler in list(self._handlers[name]):
                try:
                    result = handler(*args)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("event handler %s for %s failed", getattr(handler, "__name__", handler), name)


class MediaSessionHandler(SessionHandler):
    """Runs one media connection on the engine; the transport passes its policy in as callbacks."""

    def __init__(
        self,
        *,
        serializer: FrameSerializer,
        make_output: Callable[[MediaSessionHandler], Any],
        deliver: InputChannel,
        stats: MediaStats,
        input_config: InputConfig | None = None,
        path: str = "/",
        headers: tuple[tuple[bytes, bytes], ...] = (),
        remote: str = "",
        opened: Callable[[MediaSessionHandler], Awaitable[None]],
        closed: Callable[[MediaSessionHandler], None],
        timer: Callable[[MediaSessionHandler], None] | None = None,
    ) -> None:
        self.serializer = serializer
        self._make_output = make_output
        self._deliver = deliver
        self._stats = stats
        self._input = input_config or InputConfig()
        self._request = (path, headers, remote)
        self._opened, self._closed, self._timer = opened, closed, timer
        self.conn: MediaConnection | None = None
        self.output: Any = None
        self.announced = False
        """True once the transport fired the connected event for this connection."""
        self.rejected = False
        self._converter: AudioConverter | None = None
        self._skip_log: LogLimiter | None = None
        self._drop_log: LogLimiter | None = None

    @property
    def connection(self) -> MediaConnection:
        assert self.conn is not None
        return self.conn

    async def on_open(self, session: Session) -> None:
        path, headers, remote = self._request
        self.conn = conn = MediaConnection(session, path=path, headers=headers, remote=remote, parent_stats=self._stats)

        def suppressed(n: int) -> None:
            conn.stats.add("logs_suppressed", n)

        self._skip_log = LogLimiter(log, f"connection {conn.id[:8]}: messages skipped", on_suppressed=suppressed)
        self._drop_log = LogLimiter(log, f"connection {conn.id[:8]}: frames not delivered", on_suppressed=suppressed)
        self.output = conn.output = self._make_output(self)
        session.nursery.start_soon(self.output.run)
        await self._opened(self)

    def on_message(self, session: Session, message: str | bytes) -> None:
        # Never awaits: the engine's receive task must keep reading.
        conn = self.connection
        stats = getattr(self.serializer, "stats", None)
        skipped_before = getattr(stats, "total_skipped", None)
        try:
            frame = self.serializer.deserialize(message)
        except Exception as exc:  # a custom serializer's bug must not end the session
            conn.stats.count("skipped_in", _SERIALIZER_ERROR)
            self._log_skip(_SERIALIZER_ERROR, f"{type(exc).__name__}: {exc}", logging.ERROR)
            return
        if frame is None:
            if skipped_before is not None and getattr(stats, "total_skipped", None) == skipped_before:
                return  # consumed by the serializer (Twilio's `connected`): nothing to deliver
            last = getattr(stats, "last_skip", None)
            reason = str(last.reason) if last is not None else _UNKNOWN_SKIP
            conn.stats.count("skipped_in", reason)
            self._log_skip(reason, str(last or _UNKNOWN_SKIP))
            return
        if isinstance(frame, AudioRawFrame):
            converted = self._convert_in(frame)
            if converted is None:
                return
            frame = converted
        elif isinstance(frame, InterruptionFrame) and self.output is not None:
            self.output.interrupt(InterruptionSource.PEER)
        elif isinstance(frame, StreamStartFrame) and self.output is not None:
            self.output.wake()
        self._deliver_frame(frame, sys.getsizeof(message))
        if getattr(frame, "ends_session", False):
            session.close(CloseCode.NORMAL, f"{frame.kind}: the stream ended")

    def _convert_in(self, frame: AudioRawFrame) -> AudioRawFrame | None:
        cfg = self._input
        if cfg.sample_rate is None and cfg.num_channels is None:
            return frame
        source = AudioFormat(frame.sample_rate, frame.num_channels)
        target = AudioFormat(cfg.sample_rate or frame.sample_rate, cfg.num_channels or frame.num_channels)
        if source == target:
            return frame
        conv = self._converter
        if conv is None or conv.source != source or conv.target != target:
            conv = self._converter = AudioConverter(source, target, cfg.resample_quality)
        self.connection.stats.add("audio_frames_converted")
        pcm = conv.convert(frame.audio)
        if not pcm:
            return None  # the filter is still filling: its audio comes out with the next frames
        return AudioRawFrame(pcm, target.sample_rate, target.num_channels, frame.pts, id=frame.id, name=frame.name)

    def _deliver_frame(self, frame: AnyFrame, wire_bytes: int) -> None:
        conn = self.connection
        try:
            self._deliver.put_nowait(frame, frame_nbytes(frame, wire_bytes))
        except trio.WouldBlock:
            # The engine's receive task must keep reading (heartbeats ride on it), and
            # real-time media that nobody consumes is stale anyway: drop, count, say so.
            conn.stats.add("dropped_in")
            self._log_drop("input_full", "connection %s: input channel full, dropping a %s frame", frame.kind)
            return
        except trio.ClosedResourceError:
            conn.stats.add("dropped_in")
            log.debug("connection %s: input channel closed, dropping a %s frame", conn.id[:8], frame.kind)
            return
        conn.stats.add("frames_in")

    def _log_skip(self, reason: str, detail: str, level: int = logging.WARNING) -> None:
        assert self._skip_log is not None
        self._skip_log.log(
            trio.current_time(), level, reason, "connection %s: skipped a message: %s", self.connection.id[:8], detail
        )

    def _log_drop(self, reason: str, msg: str, kind: str) -> None:
        assert self._drop_log is not None
        self._drop_log.log(trio.current_time(), logging.WARNING, reason, msg, self.connection.id[:8], kind)

    def on_timer(self, session: Session) -> None:
        if self._timer is not None:
            self._timer(self)

    def on_shutdown(self, session: Session) -> None:
        # Let queued audio (and the end silence) play out, then close with 1001.
        if self.output is not None:
            self.output.end_stream()
        else:
            super().on_shutdown(session)

    def on_close(self, session: Session) -> None:
        if self.output is not None:
            self.output.discard()
        for limiter in (self._skip_log, self._drop_log):
            if limiter is not None:
                limiter.close()
        if self.conn is not None:
            self._closed(self)
