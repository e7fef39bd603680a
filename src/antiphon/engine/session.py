"""The session engine: every WebSocket connection is one supervised :class:`Session`.

Theory of operation
-------------------
A session's nursery runs four tasks of its own, plus whatever its face starts:

* **receive** reads frames and hands each to the face's :meth:`SessionHandler.on_message`.
  It never stops reading while the session lives. trio-websocket's reader answers
  the peer's pings and delivers our pongs only while its (tiny) message queue has
  room; a receive loop that paused during a long agent turn would make the peer
  look dead to our own heartbeat. Faces must therefore not block in ``on_message``:
  they queue work and return.
* **send** is the only task that writes messages. Others put text or bytes on a
  bounded outbound queue; the send task frames everything queued (up to
  ``MAX_BATCH_MESSAGES``) and writes it with one ``send_all``, so an ack and its reply
  queued together cost one write and one lock, not two. :meth:`Session.send` waits while ``send_queue_size``
  messages are queued: backpressure for a producer such as a streaming agent.
  :meth:`Session.send_nowait` never waits, and may use as much again as headroom, so
  the acks and errors the receive task sends still fit while an agent has filled
  its share; past that the peer is not reading at all, and the session closes with
  1008 as a slow consumer. Either way a peer that stops reading cannot grow our
  memory beyond ``2 * send_queue_size`` messages.
* **heartbeat** sends a WebSocket ping every ``ping_interval_s`` and closes the session
  with 1011 when no pong comes back within ``ping_timeout_s`` (the defaults, 20 s and
  20 s, are websockets' and browsers': a dead peer is noticed within 40 s, and an idle
  NAT mapping is refreshed well inside the usual 60 s).
* **timer** is one restartable deadline (an auth timeout, an inactivity timeout) kept
  as a cancel scope whose deadline moves, as hypercorn does: restarting it costs an
  assignment, not a task. A *later* deadline (the inactivity restart on every message)
  is not even assigned: the scope wakes at the old deadline, sees the new one and
  sleeps again, which keeps Trio's deadline heap out of the per-message path.

When any of them decides the session is over, the session nursery is cancelled:
nothing the session started outlives it. A session closed *with flush* first lets
the send task write what is already queued (an error event, say) and then the close
frame; a session closed *without flush* (dead peer, slow consumer) closes at once.
The WebSocket close handshake always runs under ``close_timeout_s`` and is shielded
from the cancellation that ended the session, so every connection is closed with a
code. An exception escaping a face's code is logged and closes only that session,
with 1011.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import deque
from typing import Final

import trio
import trio_websocket
from attrs import frozen
from wsproto.events import BytesMessage, TextMessage
from wsproto.utilities import LocalProtocolError

from antiphon.errors import ConfigError
from antiphon.proto.close import CloseCode

__all__ = ["Session", "SessionConfig", "SessionHandler"]

log = logging.getLogger("antiphon.session")



@frozen(kw_only=True)
class SessionConfig:
    """Timing and buffering of one session; ``None`` turns the heartbeat off."""

    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    send_queue_size: int = 256
    close_timeout_s: float = 10.0

    def __attrs_post_init__(self) -> None:
        if self.ping_interval_s is not None and self.ping_interval_s <= 0:
            raise ConfigError(f"ping_interval: must be positive, got {self.ping_interval_s:g}")
        if self.ping_timeout_s is not None and self.ping_timeout_s <= 0:
            raise ConfigError(f"ping_timeout: must be positive, got {self.ping_timeout_s:g}")
        if self.send_queue_size < 1:
            raise ConfigError(f"send_queue_size: must be at least 1, got {self.send_queue_size}")
        if self.close_timeout_s <= 0:
            raise ConfigError(f"close_timeout: must be positive, got {self.close_timeout_s:g}")


class SessionHandler:
    """What a face plugs into a :class:`Session`; every hook is optional."""

    async def on_open(self, session: Session) -> None:
        """The session starts; its tasks are running and ``session.nursery`` takes more."""

    async def on_message(self, session: Session, message: str | bytes) -> None:
        """A frame arrived. Must return promptly: queue long work, do not await it here."""

    def on_timer(self, session: Session) -> None:
        """The deadline set with :meth:`Session.set_timer` passed."""

    def on_shutdown(self, session: Session) -> None:
        """The server is stopping gracefully; by default the session closes with 1001."""
        session.close(CloseCode.GOING_AWAY, "server shutdown")

    def on_close(self, session: Session) -> None:
        """The session is over (called exactly once); ``session.close_code`` says how."""


class _Close:
    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class Session:
    """One WebSocket connection under supervision; see the module docstring.

    Create it around an open trio-websocket connection and ``await session.run(handler)``;
    ``run`` returns once the connection is closed and every task of the session ended.
    """

    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection,
        config: SessionConfig | None = None,
        *,
        id: str | None = None,
    ) -> None:
        self.ws = ws
        self.config = config or SessionConfig()
        self.id = id or uuid.uuid4().hex
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed_by_peer = False
        self._handler: SessionHandler | None = None
        self._nursery: trio.Nursery | None = None
        self._queue: deque[str | bytes | _Close] = deque()
        self._soft_limit = self.config.send_queue_size
        self._hard_limit = 2 * self.config.send_queue_size
        self._queue_ready = trio.lowlevel.ParkingLot()  # the send task waits here for messages
        self._queue_room = trio.lowlevel.ParkingLot()  # producers in send() wait here for room
        self._closing = False
        self._timer_deadline = math.inf
        self._timer_scope: trio.CancelScope | None = None
        self._done = trio.Event()

    # ------------------------------------------------------------------ public API

    @property
    def nursery(self) -> trio.Nursery:
        """The session's nursery: tasks started here end with the session."""
        if self._nursery is None:
            raise RuntimeError("the session is not running")
        return self._nursery

    @property
    def closing(self) -> bool:
        """True once a close was requested; sends are then dropped."""
        return self._closing

    @property
    def done(self) -> trio.Event:
        """Set when :meth:`run` has finished."""
        return self._done

    async def send(self, message: str | bytes) -> None:
        """Queue ``message``, waiting while the queue is full; dropped once the session is closing."""
        await self.wait_for_room()
        if self._closing:
            return
        self._queue.append(message)
        self._queue_ready.unpark()

    async def wait_for_room(self) -> None:
        """Wait until :meth:`send` would not wait (or the session is closing).

        For producers that must number messages in the order they are queued: wait
        here, then number and :meth:`send_nowait` with no checkpoint in between.
        """
        while len(self._queue) >= self._soft_limit and not self._closing:
            await self._queue_room.park()

    def send_nowait(self, message: str | bytes) -> bool:
        """Queue ``message`` without waiting; past the headroom the session closes (1008, slow consumer).

        Returns False when the message was not queued.
        """
        if self._closing:
            return False
        if len(self._queue) >= self._hard_limit:
            log.warning("session %s: send queue full, closing slow consumer", self.id)
            self.close(CloseCode.POLICY_VIOLATION, "send queue full: the client is not reading", flush=False)
            return False
        self._queue.append(message)
        self._queue_ready.unpark()
        return True

    @property
    def queued(self) -> int:
        """Messages waiting for the send task."""
        return len(self._queue)

    def set_timer(self, seconds: float | None) -> None:
        """Replace the session's single timer with one that fires in ``seconds`` (None: never)."""
        deadline = math.inf if seconds is None else trio.current_time() + seconds
        self._timer_deadline = deadline
        # Only an earlier deadline touches the scope: a later one (the usual inactivity
        # restart, once per message) is picked up when the old deadline passes.
        scope = self._timer_scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    def close(self, code: int = CloseCode.NORMAL, reason: str = "", *, flush: bool = True) -> None:
        """Close the session with ``code``; idempotent, returns at once.

        With ``flush`` the messages already queued go out before the close frame.
        """
        if self._closing:
            if not flush:
                self._cancel()  # escalate a flushing close that is stuck behind a dead peer
            return
        self._closing = True
        self.close_code, self.close_reason = code, reason
        self._queue_room.unpark_all()  # producers outside the session must not wait forever
        if flush and self._nursery is not None:
            self._queue.append(_Close(code, reason))
            self._queue_ready.unpark()
            # The flush is bounded too: a peer that stopped reading gets close_timeout_s.
            scope = self._nursery.cancel_scope
            scope.deadline = min(scope.deadline, trio.current_time() + self.config.close_timeout_s)
        else:
            self._cancel()

    def shutdown(self) -> None:
        """Ask the face to wind the session down gracefully (server shutdown)."""
        if self._handler is not None and not self._closing:
            try:
                self._handler.on_shutdown(self)
            except Exception:
                log.exception("session %s: on_shutdown failed", self.id)
                self.close(CloseCode.GOING_AWAY, "server shutdown", flush=False)

    async def run(self, handler: SessionHandler) -> None:
        """Supervise the session until it is over; never raises for a session's own failure."""
        self._handler = handler
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._send_task)
                nursery.start_soon(self._timer_task)
                if self.config.ping_interval_s is not None:
                    nursery.start_soon(self._heartbeat_task)
                await handler.on_open(self)
                if not self._closing:
                    nursery.start_soon(self._receive_task)
        except Exception:
            log.exception("session %s: internal error", self.id)
            self._closing = True
            self.close_code, self.close_reason = CloseCode.INTERNAL_ERROR, "internal error"
        finally:
            self._closing = True
            self._queue.clear()
            self._queue_room.unpark_all()
            if self.close_code is None:
                # Cancelled from outside: the server is going away.
                self.close_code, self.close_reason = CloseCode.GOING_AWAY, "server shutdown"
            await self._close_ws(self.close_code, self.close_reason or "")
            try:
                handler.on_close(self)
            except Exception:
                log.exception("session %s: on_close failed", self.id)
            self._done.set()

    # ------------------------------------------------------------------ tasks

    async def _receive_task(self) -> None:
        ws, handler = self.ws, self._handler
        assert handler is not None
        while True:
            try:
                message = await ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                self._peer_closed(exc.reason)
                return
            await handler.on_message(self, message)

    async def _send_task(self) -> None:
        ws, queue = self.ws, self._queue
        batching = _can_batch(ws)
        # A batch being written is out of the queue: keep it small next to the queue's
        # bound, so a stalled peer still pins at most ~1.1x the documented messages.
        max_batch = min(MAX_BATCH_MESSAGES, max(1, self._soft_limit // 8))
        while True:
            if not queue:
                await self._queue_ready.park()
                continue
            if isinstance(queue[0], _Close):
                item = queue.popleft()
                assert isinstance(item, _Close)
                await self._close_ws(item.code, item.reason)
                self._cancel()
                return
            if len(queue) == 1 and batching:
                # Let the tasks woken with us queue theirs (a turn's reply right after
                # its ack): one checkpoint is cheaper than a second write.
                await trio.lowlevel.cancel_shielded_checkpoint()
            batch: list[str | bytes] = []
            while queue and len(batch) < max_batch and not isinstance(queue[0], _Close):
                batch.append(queue.popleft())  # type: ignore[arg-type]
            if len(queue) < self._soft_limit and self._queue_room:
                self._queue_room.unpark_all()
            try:
                if batching and len(batch) > 1:
                    await _send_batch(ws, batch)
                else:
                    for message in batch:
                        await ws.send_message(message)
            except trio_websocket.ConnectionClosed as exc:
                self._peer_closed(exc.reason)
                return

    async def _heartbeat_task(self) -> None:
        interval = self.config.ping_interval_s
        timeout = self.config.ping_timeout_s
        assert interval is not None
        while True:
            await trio.sleep(interval)
            with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
                try:
                    await self.ws.ping()
                except trio_websocket.ConnectionClosed as exc:
                    self._peer_closed(exc.reason)
                    return
            if scope.cancelled_caught:
                log.info("session %s: no pong within %gs, closing", self.id, timeout)
                self.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout", flush=False)
                return

    async def _timer_task(self) -> None:
        handler = self._handler
        assert handler is not None
        while True:
            with trio.CancelScope(deadline=self._timer_deadline) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            if trio.current_time() < self._timer_deadline:
                continue  # the deadline moved later while the scope slept: re-arm, do not fire
            self._timer_deadline = math.inf
            handler.on_timer(self)

    # ------------------------------------------------------------------ internals

    def _cancel(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _peer_closed(self, reason: trio_websocket.CloseReason | None) -> None:
        if not self._closing:
            self._closing = True
            self.closed_by_peer = True
            self.close_code = reason.code if reason is not None else CloseCode.ABNORMAL
            self.close_reason = (reason.reason if reason is not None else None) or ""
        self._cancel()

    async def _close_ws(self, code: int, reason: str) -> None:
        # Shielded: this runs while the session is being cancelled, and a connection
        # must never be left open without a close frame.
        with trio.CancelScope(shield=True), trio.move_on_after(self.config.close_timeout_s):
            await self.ws.aclose(code, reason or None)


# ---------------------------------------------------------------------- batched writes

MAX_BATCH_MESSAGES: Final = 32
"""At most this many queued messages go out in one write (and at most send_queue_size / 8)."""


def _can_batch(ws: object) -> bool:
    # trio-websocket has no public "send several messages" call; its send path is
    # wsproto.send() + one stream write under a lock. Batching uses the same private
    # attributes (trio-websocket 0.12) and falls back to send_message without them.
    return all(hasattr(ws, a) for a in ("_wsproto", "_stream", "_stream_lock", "_close_reason", "_abort_web_socket"))


async def _send_batch(ws: trio_websocket.WebSocketConnection, batch: list[str | bytes]) -> None:
    """Frame ``batch`` and write it with one ``send_all``, as ``send_message`` would one by one."""
    if ws._close_reason:
        raise trio_websocket.ConnectionClosed(ws._close_reason)
    try:
        data = b"".join(
            ws._wsproto.send(TextMessage(data=m) if isinstance(m, str) else BytesMessage(data=m)) for m in batch
        )
    except LocalProtocolError:  # wsproto is closing (a close frame arrived): no more messages
        raise trio_websocket.ConnectionClosed(ws._close_reason) from None
    async with ws._stream_lock:
        try:
            await ws._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await ws._abort_web_socket()
            raise trio_websocket.ConnectionClosed(ws._close_reason) from None
