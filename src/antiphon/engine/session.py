"""The session engine: every WebSocket connection is one supervised :class:`Session`.

Theory of operation
-------------------
A session's nursery supervises four jobs - receive, send, heartbeat and timer - but
an idle session parks exactly one task, because the jobs that cost nothing while idle
do not need a task of their own:

* **receive** is the body of the session's nursery: it reads from the
  :class:`~antiphon.engine.wire.Wire`, which parses frames with websockets' sans-I/O
  protocol, and hands each whole message to :meth:`SessionHandler.on_message` *inline*.
  ``on_message`` is a plain function: it must not block, and it cannot. A face that has
  long work (an agent turn, a tool call) wakes the task that does it and returns, so the
  socket is always read and pings are always answered.
* **send** costs nothing until the network pushes back. :meth:`Session.send_nowait`
  frames the message and writes it at once from whatever task produced it, when the
  transport can write without waiting and nothing is queued before it: on a healthy
  connection a reply is one system call and no task switch. Messages sent while a
  batch of incoming frames is being handled are corked and written together when the
  batch is done (an ack and its reply, one write). Only bytes the kernel did not take
  stay in the wire's buffer, and then a **writer** task is started in the session's
  nursery to drain it; it ends when the buffer is empty.
* **heartbeat** and **timer** (the face's restartable deadline: an auth timeout, an
  inactivity timeout) are deadlines, not tasks: the receive task reads inside a cancel
  scope whose deadline is the earliest of them, as hypercorn does with its idle timer.
  When it passes, the read is cancelled (reads are cancel-safe), the due work runs - a
  ping every ``ping_interval_s``, a close with 1011 when no pong came within
  ``ping_timeout_s``, :meth:`SessionHandler.on_timer` - and reading resumes. Restarting
  the inactivity timeout on every message is an assignment; only an *earlier* deadline
  touches the scope.

Bounds, in bytes. The wire's buffer holds what the peer has not taken yet, pongs and
close frames included. :meth:`Session.send` waits while more than
``send_buffer_high_bytes`` are buffered (a streaming agent is slowed by a slow reader);
:meth:`Session.send_nowait` never waits, and once more than ``send_buffer_max_bytes``
are buffered the peer is not reading at all: the session closes with 1008 as a slow
consumer. A session's outgoing memory is therefore at most ``send_buffer_max_bytes``
plus one message.

Ending. Whatever decides the session is over - the peer's close frame, our
:meth:`Session.close`, a dead or stalled peer, a bug in the face (logged, closed with
1011, other sessions untouched), the server's cancellation (1001) - the nursery is
cancelled: nothing the session started outlives it. A close *with flush* writes what
is already buffered, then the close frame, and waits for the peer's answer; a close
*without flush* drops what is buffered (all but the rest of a frame already partly
written: the close frame never lands inside a cut-off frame). Either way the closing handshake is shielded
and bounded by ``close_timeout_s``, so every connection ends with a close code.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

import trio
from attrs import frozen

from antiphon.engine._util import continue_suspended
from antiphon.engine.wire import Pong, Wire, WireClosed
from antiphon.errors import ConfigError
from antiphon.proto.close import CloseCode

__all__ = [
    "KIB",
    "Session",
    "SessionConfig",
    "SessionHandler",
]

log = logging.getLogger("antiphon.session")

KIB: Final = 1024


@frozen(kw_only=True)
class SessionConfig:
    """Timing and buffering of one session; ``None`` turns the heartbeat off."""

    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    send_buffer_high_bytes: int = 64 * KIB
    """:meth:`Session.send` waits while more than this is buffered for the peer."""
    send_buffer_max_bytes: int = 1024 * KIB
    """Past this, buffered for a peer that does not read, the session closes with 1008."""
    close_timeout_s: float = 10.0

    def __attrs_post_init__(self) -> None:
        if self.ping_interval_s is not None and self.ping_interval_s <= 0:
            raise ConfigError(f"ping_interval: must be positive, got {self.ping_interval_s:g}")
        if self.ping_timeout_s is not None and self.ping_timeout_s <= 0:
            raise ConfigError(f"ping_timeout: must be positive, got {self.ping_timeout_s:g}")
        if self.send_buffer_high_bytes < 1:
            raise ConfigError(f"send_buffer_high_bytes: must be at least 1, got {self.send_buffer_high_bytes}")
        if self.send_buffer_max_bytes < self.send_buffer_high_bytes:
            raise ConfigError(
                f"send_buffer_max_bytes: must be at least send_buffer_high_bytes ({self.send_buffer_high_bytes}),"
                f" got {self.send_buffer_max_bytes}"
            )
        if self.close_timeout_s <= 0:
            raise ConfigError(f"close_timeout: must be positive, got {self.close_timeout_s:g}")


class SessionHandler:
    """What a face plugs into a :class:`Session`; every hook is optional."""

    async def on_open(self, session: Session) -> None:
        """The session starts; ``session.nursery`` takes tasks. Runs before the first read."""

    def on_message(self, session: Session, message: str | bytes) -> None:
        """A whole message arrived. Must not block: queue long work, or wake the task that does it."""

    def on_timer(self, session: Session) -> None:
        """The deadline set with :meth:`Session.set_timer` passed."""

    def on_shutdown(self, session: Session) -> None:
        """The server is stopping gracefully; by default the session closes with 1001."""
        session.close(CloseCode.GOING_AWAY, "server shutdown")

    def on_close(self, session: Session) -> None:
        """The session is over (called exactly once); ``session.close_code`` says how."""


class Session:
    """One WebSocket connection under supervision; see the module docstring.

    Create it around an open :class:`~antiphon.engine.wire.Wire` and ``await
    session.run(handler)``; ``run`` returns once the connection is closed and every task
    of the session ended. It never raises for the session's own failures.
    """

    __slots__ = (
        "_aborting",
        "_close_deadline",
        "_closing",
        "_corked",
        "_done",
        "_end_started",
        "_ended",
        "_flush_deferred",
        "_handler",
        "_high",
        "_job",
        "_job_scope",
        "_max",
        "_nursery",
        "_paused",
        "_ping_at",
        "_pong_deadline",
        "_reader_task",
        "_room",
        "_scope",
        "_timer_deadline",
        "_writer_exited",
        "_writer_running",
        "_writer_scope",
        "close_code",
        "close_reason",
        "closed_by_peer",
        "config",
        "id",
        "messages_in",
        "messages_out",
        "wire",
    )

    def __init__(self, wire: Wire, config: SessionConfig | None = None, *, id: str | None = None) -> None:
        self.wire = wire
        self.config = config or SessionConfig()
        self.id = id or uuid.uuid4().hex
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed_by_peer = False
        self.messages_in = 0
        """Whole messages handed to the handler so far (for metrics: one ``+= 1`` each)."""
        self.messages_out = 0
        """Messages sent so far (for metrics)."""
        self._handler: SessionHandler | None = None
        self._nursery: trio.Nursery | None = None
        self._high = self.config.send_buffer_high_bytes
        self._max = self.config.send_buffer_max_bytes
        self._room = trio.lowlevel.ParkingLot()  # producers in send() wait here
        self._closing = False
        self._close_deadline = math.inf
        self._writer_running = False
        self._corked = False
        self._flush_deferred = False
        self._paused: trio.Event | None = None
        # Deadlines the receive task's scope wakes for (see the module docstring).
        self._timer_deadline = math.inf
        self._ping_at = math.inf
        self._pong_deadline = math.inf
        self._scope: trio.CancelScope | None = None  # the reader's: its deadline is the timers'
        self._reader_task: trio.lowlevel.Task | None = None
        self._writer_scope: trio.CancelScope | None = None
        self._writer_exited: trio.Event | None = None  # made when a writer starts (rarely: under backpressure)
        self._job: Callable[[], Coroutine[Any, Any, object]] | None = None
        self._job_scope: trio.CancelScope | None = None
        self._end_started = False
        self._aborting = False  # closed without flush: stop reading at once
        self._ended = trio.Event()
        self._done = trio.Event()

    # ------------------------------------------------------------------ queries

    @property
    def nursery(self) -> trio.Nursery:
        """The session's nursery: tasks started here end with the session."""
        if self._nursery is None:
            raise RuntimeError("the session is not running")
        return self._nursery

    @property
    def closing(self) -> bool:
        """True once the session is ending; sends are then dropped."""
        return self._closing

    @property
    def done(self) -> trio.Event:
        """Set when :meth:`run` has finished."""
        return self._done

    @property
    def buffered_bytes(self) -> int:
        """Bytes waiting for the peer to take them."""
        return self.wire.buffered

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the handshake agreed on."""
        return self.wire.subprotocol

    @property
    def remote(self) -> str:
        """The peer's address, for logs."""
        return self.wire.remote

    # ------------------------------------------------------------------ sending

    def send_nowait(self, message: str | bytes) -> bool:
        """Send ``message`` without waiting; False when it was dropped (closing, or the peer stopped reading).

        Past ``send_buffer_max_bytes`` buffered, the session closes with 1008 (slow consumer).
        """
        if self._closing:
            return False
        wire = self.wire
        if wire.buffered > self._max:
            log.warning("session %s: %d bytes unread, closing slow consumer", self.id, wire.buffered)
            self.close(CloseCode.POLICY_VIOLATION, "send buffer full: the client is not reading", flush=False)
            return False
        corked = self._corked and wire.buffered < self._high
        wire.send_message(message, flush=not corked)
        self.messages_out += 1
        if wire.buffered and not corked and not self._writer_running:
            self._start_writer()
        return True

    async def send(self, message: str | bytes) -> None:
        """Send ``message``, first waiting while the peer has ``send_buffer_high_bytes`` unread; dropped if closing."""
        await self.wait_for_room()
        self.send_nowait(message)

    async def wait_for_room(self) -> None:
        """Wait until :meth:`send` would not wait (or the session is closing).

        For producers that number messages in the order they go out: wait here, then
        number and :meth:`send_nowait` with no checkpoint in between. Not a checkpoint
        when there is room.
        """
        while self.wire.buffered > self._high and not self._closing:
            await self._room.park()

    def flush(self) -> None:
        """Write what is buffered now (or have the writer task do it); sends are otherwise flushed as they are made."""
        if not self.wire.flush() and not self._writer_running:
            self._start_writer()

    def cork(self) -> None:
        """Hold what is sent from now on in the buffer (up to ``send_buffer_high_bytes``) until :meth:`uncork`.

        For a task that sends several frames in a row without blocking (a turn's reply):
        one write instead of one per frame. Uncork before blocking, or the frames wait.
        """
        self._corked = True

    def uncork(self) -> None:
        """Stop holding sends back, and write what was held."""
        self._corked = False
        if self.wire.buffered:
            self.flush()

    def defer_flush(self) -> None:
        """While handling a message: leave the messages sent so far corked; a task woken now flushes them.

        For a face that hands the message to another task which answers at once (an ack
        and its reply, one write). That task must call :meth:`flush` - before it blocks,
        and when it is done - or the corked messages wait for the next batch.
        """
        if self._corked:
            self._flush_deferred = True

    # ------------------------------------------------------------------ reading

    def pause_reading(self) -> None:
        """Stop reading from the peer (backpressure: TCP slows the peer down); the heartbeat pauses too."""
        if self._paused is None:
            self._paused = trio.Event()

    def resume_reading(self) -> None:
        """Read again after :meth:`pause_reading`; the heartbeat starts over."""
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.set()
            interval = self.config.ping_interval_s
            self._pong_deadline = math.inf
            self._ping_at = math.inf if interval is None else trio.current_time() + interval

    # ------------------------------------------------------------------ timers

    def set_timer(self, seconds: float | None) -> None:
        """Replace the session's single timer with one that fires in ``seconds`` (None: never)."""
        deadline = math.inf if seconds is None else trio.current_time() + seconds
        self._timer_deadline = deadline
        # Only an earlier deadline touches the scope: a later one (the usual inactivity
        # restart, once per message) is picked up when the scope wakes at the old one.
        scope = self._scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    # ------------------------------------------------------------------ closing

    def close(self, code: int = CloseCode.NORMAL, reason: str = "", *, flush: bool = True) -> None:
        """Close the session with ``code``; idempotent, returns at once.

        With ``flush`` the messages already sent go out before the close frame.
        """
        if self._closing:
            if not flush and self.close_code is not None:
                self._aborting = True
                self.wire.discard_buffer()  # escalate a flushing close stuck behind a dead peer
                self._cancel()
            return
        self._closing = True
        self.close_code, self.close_reason = code, reason
        self._room.unpark_all()  # producers outside the session must not wait forever
        self.resume_reading()
        if self._nursery is None:
            return  # not running yet: run() closes at once
        self._close_deadline = trio.current_time() + self.config.close_timeout_s
        if flush:
            self.wire.start_close(code, reason)
            self.flush()
            # The reader reads on until the peer answers; bounded by close_timeout_s.
            scope = self._scope
            if scope is not None and self._close_deadline < scope.deadline:
                scope.deadline = self._close_deadline
        else:
            self._aborting = True
            self.wire.discard_buffer()
            self.wire.start_close(code, reason)
            self._cancel()

    def shutdown(self) -> None:
        """Ask the face to wind the session down gracefully (server shutdown)."""
        if self._handler is not None and not self._closing:
            try:
                self._handler.on_shutdown(self)
            except Exception:
                log.exception("session %s: on_shutdown failed", self.id)
                self.close(CloseCode.GOING_AWAY, "server shutdown", flush=False)

    # ------------------------------------------------------------------ inline jobs

    def run_inline(self, job: Callable[[], Coroutine[Any, Any, object]]) -> bool:
        """From :meth:`SessionHandler.on_message`: run ``job`` in the reading task, right after this batch.

        For work that usually finishes without blocking (an agent turn that answers at
        once): no task switch at all, and what it sends is corked with what the batch
        sent (an ack and its reply, one write). Should the job block, reading passes at
        once to a standby task, so the socket is always read; the job finishes in the
        task it started in, even if the connection ends meanwhile (the session then
        waits for it). Returns False when a job is already pending for this batch. Cancel
        a running job with :meth:`cancel_job`.
        """
        if self._job is not None or self._closing:
            return False
        self._job = job
        return True

    def cancel_job(self) -> None:
        """Cancel the inline job that is running (it sees ``trio.Cancelled`` at its next checkpoint)."""
        if self._job_scope is not None:
            self._job_scope.cancel()

    @property
    def job_running(self) -> bool:
        """True while an inline job runs (it may have outlived the connection)."""
        return self._job_scope is not None

    # ------------------------------------------------------------------ running

    async def run(self, handler: SessionHandler) -> None:
        """Supervise the session until it is over; see the module docstring."""
        self._handler = handler
        interval = self.config.ping_interval_s
        if interval is not None:
            self._ping_at = trio.current_time() + interval
        me = trio.lowlevel.current_task()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._reader_task = me
                if self._closing:  # closed before it ran
                    self.wire.start_close(self.close_code or CloseCode.NORMAL, self.close_reason or "")
                else:
                    await handler.on_open(self)
                if self.wire.buffered:
                    self.flush()  # sent before the session ran (or by on_open)
                await self._read()
                if self._reader_task is me:
                    await self._end_connection()
                await self._ended.wait()  # a standby reader ends it; an inline job may outlive it
        except Exception:
            log.exception("session %s: internal error", self.id)
            if not self._closing or self.closed_by_peer:
                self._closing = True
                self.close_code, self.close_reason = CloseCode.INTERNAL_ERROR, "internal error"
                self.wire.discard_buffer()
        finally:
            with trio.CancelScope(shield=True):
                await self._end_connection()
            self._done.set()

    async def _read(self) -> None:
        # The reading loop; returns when the connection is over or when this task lent
        # reading to a standby (its inline job blocked) and the job has finished.
        wire, handler = self.wire, self._handler
        assert handler is not None
        me = trio.lowlevel.current_task()
        while True:
            with trio.CancelScope(deadline=self._next_deadline()) as scope:
                self._scope = scope
                while True:
                    if self._paused is not None:
                        await self._paused.wait()
                    try:
                        batch = await wire.receive()
                    except WireClosed as closed:
                        self._peer_closed(closed)
                        return
                    if self._closing:
                        continue  # after our close frame: read on until the answer, drop the rest
                    self._corked = True
                    try:
                        for item in batch:
                            if type(item) is Pong:
                                self._pong_deadline = math.inf
                            else:
                                self.messages_in += 1
                                handler.on_message(self, item)  # type: ignore[arg-type]
                                if self._closing:
                                    break
                    finally:
                        self._corked = False
                    job = self._job
                    if job is not None:
                        self._job = None
                        await self._run_job(job, scope)  # corked: flushes what the batch sent too
                        if self._reader_task is not me:
                            return  # lent: a standby reads now
                    elif self._flush_deferred:
                        self._flush_deferred = False
                    elif wire.buffered:
                        self.flush()
            if self._reader_task is not me:
                return  # the job that lent reading was cancelled
            self._scope = None
            if not self._closing:
                self._deadlines_passed()
            if self._aborting or (self._closing and trio.current_time() >= self._close_deadline):
                return  # closed without flush, or the peer never answered our close frame in time

    async def _run_job(self, job: Callable[[], Coroutine[Any, Any, object]], scope: trio.CancelScope) -> None:
        # Corked throughout, so the batch's sends and the job's go out in one write.
        self._job_scope = scope
        self._corked = True
        try:
            coro = job()
            try:
                yielded = coro.send(None)  # the common case: done without blocking
            except StopIteration:
                return
            # It blocked: reading passes to a standby, and this scope stops timing it.
            scope.deadline = math.inf
            self._scope = None
            self._reader_task = None
            self._nursery_start(self._standby)
            self.uncork()
            await continue_suspended(coro, yielded, self.uncork, self.cork)
        finally:
            self._job_scope = None
            self.uncork()
            if self._ended.is_set():
                self._cancel_all()  # the connection ended while the job ran: now nothing else may

    async def _standby(self) -> None:
        me = trio.lowlevel.current_task()
        self._reader_task = me
        await self._read()
        if self._reader_task is me:
            await self._end_connection()

    async def _end_connection(self) -> None:
        # Once, by whichever task saw the end (or by run() on the way out): close the
        # wire, tell the face; the tasks stop, unless an inline job still runs.
        if self._end_started:
            await self._ended.wait()
            return
        self._end_started = True
        self._closing = True
        self._room.unpark_all()
        self._reader_task = None
        if self.close_code is None:
            # Cancelled from outside: the server is going away.
            self.close_code, self.close_reason = CloseCode.GOING_AWAY, "server shutdown"
            self.wire.discard_buffer()
        try:
            if self._writer_running:
                if self._writer_scope is not None:
                    self._writer_scope.cancel()
                with trio.CancelScope(shield=True):
                    assert self._writer_exited is not None
                    await self._writer_exited.wait()  # at its next checkpoint: the wire is ours then
            await self._finish()
        except Exception:
            log.exception("session %s: closing the connection failed", self.id)
        finally:
            log.debug(
                "session %s: closed %s %r%s",
                self.id,
                self.close_code,
                self.close_reason,
                " by the peer" if self.closed_by_peer else "",
            )
            try:
                assert self._handler is not None
                self._handler.on_close(self)
            except Exception:
                log.exception("session %s: on_close failed", self.id)
            self._ended.set()
            if self._job_scope is None:
                self._cancel_all()

    def _next_deadline(self) -> float:
        if self._closing:
            return self._close_deadline  # read on until the peer answers our close frame, no longer
        if self._paused is not None:
            return math.inf
        beat = self._pong_deadline if self._pong_deadline < math.inf else self._ping_at
        return min(self._timer_deadline, beat)

    def _deadlines_passed(self) -> None:
        now = trio.current_time()
        if now >= self._timer_deadline:
            self._timer_deadline = math.inf
            assert self._handler is not None
            self._handler.on_timer(self)
        if self._paused is not None or self._closing:
            return  # not reading: the peer's silence proves nothing
        if now >= self._pong_deadline:
            log.info("session %s: no pong within %gs, closing", self.id, self.config.ping_timeout_s)
            self.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout", flush=False)
            return
        if now >= self._ping_at:
            interval, timeout = self.config.ping_interval_s, self.config.ping_timeout_s
            assert interval is not None
            if self._pong_deadline == math.inf:
                self.wire.send_ping(os.urandom(4))
                if self.wire.buffered and not self._writer_running:
                    self._start_writer()
                if timeout is not None:
                    self._pong_deadline = now + timeout
            self._ping_at = now + interval

    # ------------------------------------------------------------------ internals

    def _nursery_start(self, fn: Callable[[], Awaitable[object]]) -> bool:
        if self._nursery is None:
            return False
        try:
            self._nursery.start_soon(fn)
        except RuntimeError:
            return False  # the nursery is closing (the session is ending)
        return True

    def _start_writer(self) -> None:
        if self._end_started or self._writer_running:
            return  # (the connection's end writes what is left itself)
        self._writer_exited = trio.Event()
        if self._nursery_start(self._writer):
            self._writer_running = True

    async def _writer(self) -> None:
        wire, exited = self.wire, self._writer_exited
        assert exited is not None
        try:
            if self._end_started:
                return  # started, then the connection ended before it ran
            with trio.CancelScope() as self._writer_scope:
                while wire.buffered:
                    await wire.drain()
                    if wire.buffered <= self._high:
                        self._room.unpark_all()
        finally:
            self._writer_scope = None
            self._writer_running = False
            exited.set()
        closed = wire.closed
        if closed is not None and not self._closing:
            self._peer_closed(closed)
            self._cancel()

    def _cancel(self) -> None:
        # Stop reading and writing now; the reader then ends the connection.
        if self._scope is not None:
            self._scope.cancel()
        if self._writer_scope is not None:
            self._writer_scope.cancel()
        if self._reader_task is None and self._job_scope is None:
            self._cancel_all()  # nobody is reading (the connection is already ending)

    def _cancel_all(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _peer_closed(self, closed: WireClosed) -> None:
        if not self._closing:
            self._closing = True
            self.closed_by_peer = closed.by_peer
            self.close_code, self.close_reason = closed.code, closed.reason

    async def _finish(self) -> None:
        # Shielded: this runs while the session is being cancelled, and a connection
        # must never be left open without a close frame.
        wire = self.wire
        deadline = self._close_deadline if self._close_deadline < math.inf else None
        with trio.CancelScope(shield=True):
            with trio.move_on_at(
                deadline if deadline is not None else trio.current_time() + self.config.close_timeout_s
            ):
                if wire.closed is None:
                    wire.start_close(self.close_code or CloseCode.NORMAL, self.close_reason or "")
                await wire.finish()
            await wire.aclose()
