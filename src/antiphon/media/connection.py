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
delivered (input channel full or closed, no peer connected, wrong audio format) is
logged and counted in ``stats.dropped_in`` / ``stats.dropped_out``. Every connection has
its own :class:`MediaStats`, which also adds into its transport's.

Event handlers (Pipecat's ``@transport.event_handler("on_...")``) run one at a time, in
the order the events happened, in one task of the transport: a handler sees
``on_client_connected`` before the same client's ``on_client_disconnected``. A handler
should return promptly (start long work in a nursery of your own); an exception in one
is logged and does not reach the transport.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, TypeVar

import trio
from attrs import define, field

from antiphon.engine.session import Session, SessionHandler
from antiphon.errors import ConfigError, LocalProtocolError
from antiphon.proto.close import CloseCode
from antiphon.proto.media.frames import MediaFrame
from antiphon.proto.media.serializers import FrameSerializer, ProtobufFrameSerializer

__all__ = ["EventHandler", "MediaConnection", "MediaSessionHandler", "MediaStats", "SerializerSpec"]

log = logging.getLogger("antiphon.media")

EventHandler = Callable[..., Awaitable[None] | None]
"""An event callback: ``async def handler(transport, *args)`` (a plain function works too)."""

SerializerSpec = FrameSerializer | Callable[[], FrameSerializer] | None
"""A serializer instance (shared by every connection, as in Pipecat), a factory called once
per connection, or ``None`` for a fresh :class:`ProtobufFrameSerializer` per connection."""

_F = TypeVar("_F", bound=EventHandler)
_UNKNOWN_SKIP: Final = "serializer_returned_none"


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
    """Outgoing frames not sent, by reason (``no_client``, ``audio_format``, ``unserializable``, ...)."""
    interrupted_audio_bytes: int = 0
    """Queued PCM thrown away by interruptions."""
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
        """Queue the event (``args`` start with the transport); never blocks. Events fired after :meth:`close` are logged and dropped."""
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
        make_output: Callable[[Session, FrameSerializer, MediaStats], Any],
        deliver: trio.MemorySendChannel[MediaFrame],
        stats: MediaStats,
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
        self._request = (path, headers, remote)
        self._opened, self._closed, self._timer = opened, closed, timer
        self.conn: MediaConnection | None = None
        self.output: Any = None
        self.announced = False
        """True once the transport fired the connected event for this connection."""
        self.rejected = False
        self._warned_full = False

    @property
    def connection(self) -> MediaConnection:
        assert self.conn is not None
        return self.conn

    async def on_open(self, session: Session) -> None:
        path, headers, remote = self._request
        self.conn = MediaConnection(session, path=path, headers=headers, remote=remote, parent_stats=self._stats)
        self.output = self._make_output(session, self.serializer, self.conn.stats)
        session.nursery.start_soon(self.output.run)
        await self._opened(self)

    def on_message(self, session: Session, message: str | bytes) -> None:
        conn = self.connection
        frame = self.serializer.deserialize(message)
        if frame is None:
            skip = getattr(self.serializer, "stats", None)
            last = getattr(skip, "last_skip", None)
            conn.stats.count("skipped_in", str(last.reason) if last is not None else _UNKNOWN_SKIP)
            log.warning("connection %s: skipped a message: %s", conn.id[:8], last or _UNKNOWN_SKIP)
            return
        try:
            self._deliver.send_nowait(frame)
        except trio.WouldBlock:
            # The engine's receive task must keep reading (heartbeats ride on it), and
            # real-time media that nobody consumes is stale anyway: drop, count, say so.
            conn.stats.add("dropped_in")
            level = logging.DEBUG if self._warned_full else logging.WARNING
            self._warned_full = True
            log.log(level, "connection %s: input channel full, dropping a %s frame", conn.id[:8], frame.kind)
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            conn.stats.add("dropped_in")
            log.debug("connection %s: input channel closed, dropping a %s frame", conn.id[:8], frame.kind)
            return
        conn.stats.add("frames_in")

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
        if self.conn is not None:
            self._closed(self)
