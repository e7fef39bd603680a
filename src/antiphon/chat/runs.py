"""Live runs: the Trio half of a conversation that outlives its connections.

Theory of operation
-------------------
Each run (``connector_run_id``) is a :class:`LiveRun`: the sans-IO
:class:`~antiphon.proto.chat.run.ChatRun`, which numbers events, keeps the replay log
and produces every frame's wire text, plus what only Trio can do - run turns, store
transcripts, keep time. A run is made when a client authenticates; its tasks live in
the gateway's *runs nursery*, not in any connection's, and start with its first
message, so an idle connection costs no run task.

* **turns** is one long-lived task per run. It runs each accepted turn, one at a time,
  in order, each in its own cancel scope (``cancel`` stops just that turn). Handing it
  a message costs a list append and a wake-up, never a channel or a new task; and it
  runs the turn *corked*: whatever the turn sends waits in the connection's buffer
  until the turn blocks or ends, so a turn that answers at once - the ack the receive
  task left corked, then the whole reply - costs one write. The corked bytes are
  flushed before every suspension (see :func:`~antiphon.engine._util.around_suspensions`),
  so a turn awaiting a model never holds back what it already said.
* **ingest** exists only with a transcript store: it stores each accepted message
  (group-committed with other runs' writes) and only then acks it and queues its turn,
  so an acked message is never lost. A turn's reply is stored *before* its final event
  is sent, so a client never holds a reply the store lacks.

At most one connection is *attached* and receives the run's frames live; every frame
goes out through that connection's one outgoing path. When it drops abnormally (no
close frame, 1001, a dead or stalled peer) the run carries on detached for
``resume_grace_s`` - a client that resumes within it gets what it missed, then the rest
live - and the registry's single reaper ends it when the grace passes. A run also ends
when its client closed normally (1000), when the server ended the session on purpose
(expiry, limits), or at shutdown. Ending a run ends every turn it still has, running or
queued, with a final ``cancelled`` event, stored as such.

Shared runs. Without a run backend (the default) the above is all. With one (see
:mod:`antiphon.chat.backends.node`; LiveRun's methods for it are in
:mod:`antiphon.chat.backends.shared_run`) a run this process owns has a ``replica``: its
frames reach the connection only once the backend holds them (the node's writer
delivers them, corked, and calls ``turn_ended``), and a turn waits while too much is
not yet durable. A run owned elsewhere, for a client connected here, is a
*follower* (``follow``): it runs no task; messages, cancels, claims and detaches go to
the owner; the owner's frames arrive through the node and are delivered the same
way. The memory path pays one ``is None`` test per frame for all this.
"""

from __future__ import annotations

import heapq
import inspect
import logging
import math
import uuid
from collections.abc import Mapping
from contextlib import aclosing
from time import perf_counter
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio

from antiphon.chat.agents import Agent, Turn, check_chunk, check_result, reply_text, whole_reply
from antiphon.chat.backends.shared_run import SharedRun
from antiphon.chat.metrics import ChatMetrics
from antiphon.chat.store import MessageRecord, ReplyRecord, TranscriptStore, now
from antiphon.engine._util import around_suspensions
from antiphon.engine.session import Session
from antiphon.proto.chat.messages import (
    Ack,
    ErrorCode,
    ErrorEvent,
    MessageId,
    Response,
    ServerEvent,
    StreamEnd,
    TurnStatus,
    UserMessage,
    encode_event,
)
from antiphon.proto.chat.run import ChatRun, ReplyTooLong, TurnRequest
from antiphon.proto.chat.settings import ChatSettings
from antiphon.proto.close import CloseCode

if TYPE_CHECKING:
    from antiphon.chat.backends.node import Node
    from antiphon.chat.backends.replica import Follow, Replica

__all__ = [
    "INTERRUPTED_TEXT",
    "STORE_TIMEOUT_S",
    "LiveRun",
    "RunHolder",
    "RunRegistry",
]

log = logging.getLogger("antiphon.chat")

STORE_TIMEOUT_S: Final = 10.0
"""How long storing a turn's reply may hold back its final event (the event is sent anyway after)."""
INTERRUPTED_TEXT: Final = "the server running this turn stopped; the turn ended with what it had sent"

# Close codes with which the *server* ends a session on purpose: the run ends with it.
_FINAL_SERVER_CODES: Final = frozenset(
    {
        CloseCode.NORMAL,
        CloseCode.GOING_AWAY,
        CloseCode.MESSAGE_TOO_BIG,
        CloseCode.AUTH_FAILED,
        CloseCode.AUTH_TIMEOUT,
        CloseCode.RESUMED_ELSEWHERE,
        CloseCode.SESSION_EXPIRED,
        CloseCode.MESSAGE_LIMIT,
    }
)


class RunHolder(Protocol):
    """The connection side a run talks to (the gateway's session handler)."""

    session: Session | None

    def deliver(self, text: str) -> None:
        """Send one frame's text on the connection (the one outgoing path)."""

    def turn_ended(self) -> None: ...

    def run_lost(self, code: int, reason: str) -> None: ...


class LiveRun(SharedRun):
    """One conversation's tasks and state; see the module docstring (shared runs: :class:`SharedRun`)."""

    __slots__ = (
        "_cancel_requested",
        "_corked",
        "_current",
        "_done",
        "_idle",
        "_ingest",
        "_ingest_ready",
        "_inline",
        "_scope",
        "_started",
        "_turn_scope",
        "_turns",
        "_turns_ready",
        "agents",
        "claimant",
        "ended",
        "grace_deadline",
        "holder",
        "path",
        "registry",
        "replica",
        "settings",
        "state",
        "store",
    )

    def __init__(
        self,
        registry: RunRegistry,
        path: str,
        settings: ChatSettings,
        agents: Mapping[str, Agent],
        run_id: str,
    ) -> None:
        self.registry = registry
        self.path = path
        self.settings = settings
        self.agents = agents
        self.store = registry.store
        self.state = ChatRun(run_id, settings, tuple(agents))
        self.replica: Replica | None = None
        """Set when the run is owned here and replicated to a run backend."""
        self.follow: Follow | None = None
        """Set when another process owns the run (this one serves a client of it)."""
        self.lost = False  # another process owns it now: end here without a word
        self.releasing = False  # shutting down: let another process take it over
        self.holder: RunHolder | None = None
        self.claimant: RunHolder | None = None
        self.ended = False
        self.grace_deadline = math.inf
        self._scope = trio.CancelScope()
        self._started = False
        self._done = trio.Event()
        # Lists, not deques: a queue holds at most max_queued_turns, and an empty deque
        # costs ~700 bytes per idle session.
        self._turns: list[TurnRequest] = []
        self._turns_ready = trio.lowlevel.ParkingLot()
        self._ingest: list[TurnRequest] = []
        self._ingest_ready = trio.lowlevel.ParkingLot()
        self._current: TurnRequest | None = None  # the turn whose agent is running
        self._inline: Session | None = None  # the session whose reading task runs this run's turns
        self._turn_scope = trio.CancelScope()
        self._cancel_requested: MessageId | None = None
        self._idle = False  # the turns task is parked, waiting for a turn
        self._corked: Session | None = None
        self._delivered = 0  # shared runs: the last seq the attached connection was given
        self._interrupted: list[TurnRequest] = []  # taken over: turns that were running when the owner stopped
        self._unacked: list[UserMessage] = []  # taken over: messages forwarded to the old owner, never acked

    @property
    def run_id(self) -> str:
        return self.state.run_id

    @property
    def session(self) -> Session | None:
        """The attached connection's session, if a connection is attached."""
        return self.holder.session if self.holder is not None else None

    # ------------------------------------------------------------------ lifecycle

    def _ensure_started(self) -> None:
        # The tasks start with the first accepted message: an idle connection costs
        # no run task at all (ten thousand idle sessions are the benchmark's case).
        if not self._started:
            self._started = True
            self.registry.nursery.start_soon(self._main)

    async def _main(self) -> None:
        try:
            with self._scope:
                while self._interrupted:
                    request = self._interrupted.pop(0)
                    with trio.CancelScope(shield=True):
                        text, code = INTERRUPTED_TEXT, ErrorCode.TURN_INTERRUPTED
                        await self._finish_turn(request, TurnStatus.FAILED, None, text, now(), code=code)
                self._accept_unacked()
                async with trio.open_nursery() as nursery:
                    if self.store is not None:
                        nursery.start_soon(self._ingest_loop)
                    nursery.start_soon(self._turn_loop)
        finally:
            if not self.lost and not self.releasing:
                with trio.CancelScope(shield=True):
                    await self._end_pending_turns()
            self.ended = True
            self.registry._forget(self)
            self._done.set()

    def end(self) -> None:
        """End the run now: every turn it still has ends ``cancelled`` (stored so).

        A follower only stops following; a run that is being released or was lost ends
        here without touching its turns (they are another process's now).
        """
        self.ended = True
        self.grace_deadline = math.inf
        if self._inline is not None:
            self._inline.cancel_job()  # its runner ends what is left, then forgets the run
        if self._started:
            self._scope.cancel()
        elif self._inline is None:
            self._end_pending_now()

    def _end_pending_now(self) -> None:
        # A run that never started its tasks (turns ran inline; no store): end what is
        # left synchronously, then let it go.
        if self._started:
            return  # _main's own ending does it
        self._turns.clear()
        for request in self.state.pending_requests():
            self._end_turn(request, TurnStatus.CANCELLED, None, None)
        self._flush()
        self.registry._forget(self)
        self._done.set()

    async def wait_ended(self) -> None:
        """Return once :meth:`end` has finished: every turn has its final event."""
        await self._done.wait()

    def claim(self, holder: RunHolder) -> None:
        """A resume begins: the run stops sending live and will be attached once replay caught up.

        Any connection that held the run is closed with 4409; the grace period stops.
        """
        previous, self.holder, self.claimant = self.holder, None, holder
        self.grace_deadline = math.inf
        if previous is not None and previous is not holder:
            previous.run_lost(CloseCode.RESUMED_ELSEWHERE, "the session was resumed on another connection")
        if self.follow is not None:
            self.follow.claimed()

    def attach(self, holder: RunHolder) -> None:
        """Make ``holder`` the connection that receives this run's frames live."""
        self.holder, self.claimant = holder, None
        self.grace_deadline = math.inf
        self._delivered = self.state.visible_seq
        if self.follow is not None:
            self.follow.attached()

    def detach(self, holder: RunHolder, *, code: int, by_peer: bool) -> None:
        """``holder``'s connection ended with ``code``: end the run, or keep it for a resume."""
        if self.holder is holder:
            self.holder = None
        elif self.claimant is holder:
            self.claimant = None
        else:
            return
        if self.follow is not None:
            self.follow.detached(code, by_peer)  # the owner keeps the run, or ends it; nothing is left here
            return
        lost_in_transit = (by_peer and code != CloseCode.NORMAL) or (not by_peer and code not in _FINAL_SERVER_CODES)
        if not lost_in_transit or self.settings.resume_grace_s <= 0:
            self.end()
            return
        self.registry.hold(self, trio.current_time() + self.settings.resume_grace_s)

    # ------------------------------------------------------------------ frames out

    def emit(self, event: ServerEvent) -> None:
        """Number ``event``, log its frame for replay, and send it to the attached connection.

        With a run backend the frame is sent once the backend holds it (:meth:`deliver_visible`).
        """
        text = self.state.emit(event)
        replica = self.replica
        if replica is None:
            holder = self.holder
            if holder is not None:
                holder.deliver(text)
        else:
            replica.emitted(len(text))

    async def emit_wait(self, event: ServerEvent) -> None:
        """:meth:`emit`, after waiting for room on the connection (a slow reader slows the agent)."""
        session = self.session
        if session is not None:
            await session.wait_for_room()
        else:
            # Detached (waiting for a resume): still a checkpoint, or an agent that never
            # awaits would stream its whole reply without letting anything else run.
            await trio.lowlevel.checkpoint()
        if self.replica is not None:
            await self.replica.wait_for_room()
        self.emit(event)

    def notify(self, event: ErrorEvent) -> None:
        """Send a connection-level event (no ``seq``) to the attached connection, if any."""
        holder = self.holder
        if holder is not None:
            holder.deliver(encode_event(event))

    # ------------------------------------------------------------------ messages and turns

    def accept(self, request: TurnRequest) -> None:
        """An accepted message: ack and queue it (after storing it, when there is a store).

        Called by the receive task while it handles a frame: without a store the ack is
        left corked for the turns task, which flushes it with the reply.
        """
        if self.replica is not None:
            self._ensure_started()  # a shared run's frames go through its tasks
            if not self.replica.node.available:
                self.state.withdraw(request)
                text = "the runs backend cannot be reached; send the message again later"
                self.notify(ErrorEvent(code=ErrorCode.BACKEND_UNAVAILABLE, message=text, id=request.id))
                return
        if self.store is None:
            self._acknowledge(request)
        else:
            self._ensure_started()
            self._ingest.append(request)
            self._ingest_ready.unpark()

    def cancel(self, id: MessageId) -> None:
        """Stop turn ``id``: cancel it if running, end it at once if still queued."""
        if self.follow is not None:
            self.follow.cancel(id)
            return
        if self._current is not None and self._current.id == id:
            self._cancel_requested = id
            if self._inline is not None:
                self._inline.cancel_job()
            else:
                self._turn_scope.cancel()
            return
        if self.state.is_pending(id) and not self.state.turn_running(id):
            request = self.state.request_of(id)
            try:
                self._turns.remove(request)
            except ValueError:
                pass
            self.registry.nursery.start_soon(self._end_queued, request)

    def _acknowledge(self, request: TurnRequest) -> None:
        self.emit(Ack(id=request.id, message_number=request.message_number))
        replica = self.replica
        if replica is not None:
            replica.acked(self.state.seq, request)
        self._turns.append(request)
        if self._inline is not None or self._current is not None:
            return  # a runner is at work: it takes this turn when its own is done
        session = self.session
        if self.store is None and replica is None and session is not None and session.run_inline(self._run_inline):
            # Right after this batch, in the task that read it: no hand-off, and the
            # ack goes out with the reply. Should the turn block, the session passes
            # reading on, and the turn carries on here.
            self._inline = session
            return
        self._ensure_started()
        if self._idle:
            # The turns task runs next and flushes the ack with whatever it sends.
            if session is not None and replica is None:
                session.defer_flush()
            self._turns_ready.unpark()

    async def _run_inline(self) -> None:
        try:
            while self._turns and not self.ended:
                request = self._turns.pop(0)
                if self.state.is_pending(request.id):
                    await self._run_turn(request)
        finally:
            self._inline = None
            if self.ended:
                self._end_pending_now()
            elif self._turns:
                self._ensure_started()  # cancelled part-way: the turns task takes the rest
                self._turns_ready.unpark()

    async def _ingest_loop(self) -> None:
        store = self.store
        assert store is not None
        while True:
            while not self._ingest:
                await self._ingest_ready.park()
            request = self._ingest.pop(0)
            record = MessageRecord(
                run_id=self.run_id,
                connector=self.path,
                message_id=str(request.id),
                message_number=request.message_number,
                text=request.message,
                context=dict(request.context),
                received_at=now(),
            )
            began = perf_counter()
            try:
                await store.save_message(record)
            except Exception:
                self.registry.metrics.store_op("save_message", perf_counter() - began)
                log.exception("run %s: storing message %s failed", self.run_id, request.id)
                self.state.withdraw(request)
                text = "the message could not be stored; send it again"
                self.notify(ErrorEvent(code=ErrorCode.STORE_ERROR, message=text, id=request.id))
                continue
            self.registry.metrics.store_op("save_message", perf_counter() - began)
            self._acknowledge(request)
            self._flush()

    async def _turn_loop(self) -> None:
        # One cancel scope per incarnation of the loop, not per turn (entering a scope
        # costs more than the rest of a simple turn): `cancel` cancels this scope, the
        # running turn ends `cancelled`, and the loop starts over in a fresh one.
        while True:
            with trio.CancelScope() as scope:
                self._turn_scope = scope
                await self._run_turns()

    async def _run_turns(self) -> None:
        while True:
            while not self._turns:
                self._idle = True
                try:
                    await self._turns_ready.park()
                finally:
                    self._idle = False
            request = self._turns.pop(0)
            if self.state.is_pending(request.id):
                # Corked while the turn runs; flushed at each suspension and at the end.
                self._cork()
                try:
                    await around_suspensions(self._run_turn(request), self._uncork, self._cork)
                finally:
                    self._uncork()

    def _cork(self) -> None:
        session = self.session
        if session is not None:
            session.cork()
        self._corked = session

    def _uncork(self) -> None:
        session, self._corked = self._corked, None
        if session is not None:
            session.uncork()

    def _flush(self) -> None:
        session = self.session
        if session is not None:
            session.flush()

    async def _run_turn(self, request: TurnRequest) -> None:
        state = self.state
        turn = Turn(
            message=request.message,
            context=request.context,
            history=state.history(),
            session_id=self.run_id,
            message_id=request.id,
            message_number=request.message_number,
            agent=request.agent,
        )
        started_at, began = now(), perf_counter()
        status, error = TurnStatus.COMPLETED, None
        try:
            for event in state.turn_started(request):
                await self.emit_wait(event)
            self._current = request
            try:
                result: Any = self.agents[request.agent](turn)
                if type(result) is CoroutineType:
                    # The common whole-reply agent (an async def): awaited right here.
                    for event in state.turn_chunk(request, reply_text(await result, turn)):
                        await self.emit_wait(event)
                elif inspect.isasyncgen(check_result(result)):
                    # aclosing: a cancelled turn finalizes the agent's generator
                    # here, in this task, not later in the garbage collector.
                    async with aclosing(result) as chunks:
                        async for chunk in chunks:
                            for event in state.turn_chunk(request, check_chunk(chunk)):
                                await self.emit_wait(event)
                else:
                    for event in state.turn_chunk(request, await whole_reply(result, turn)):
                        await self.emit_wait(event)
            except ReplyTooLong as exc:
                log.warning("run %s: turn %s cut off: %s", self.run_id, request.id, exc)
                status, error = TurnStatus.FAILED, str(exc)
            except Exception as exc:
                # The traceback is for the server's log; the client gets the kind only,
                # since exception text can carry anything (keys, prompts, paths).
                log.exception("run %s: agent %r failed on turn %s", self.run_id, request.agent, request.id)
                status, error = TurnStatus.FAILED, f"agent {request.agent!r} failed ({type(exc).__name__})"
        except trio.Cancelled:
            status = TurnStatus.CANCELLED
            raise
        finally:
            self._current = None
            if self._cancel_requested == request.id:
                status = TurnStatus.CANCELLED  # asked for before the turn ended, even if it then finished
                self._cancel_requested = None
            if state.is_pending(request.id) and not self.lost:
                if self.store is None:
                    self._end_turn(request, status, turn, error, began)
                else:
                    await self._finish_turn(request, status, turn, error, started_at, began)

    def _end_turn(
        self,
        request: TurnRequest,
        status: TurnStatus,
        turn: Turn | None,
        error: str | None,
        began: float | None = None,
        code: ErrorCode = ErrorCode.AGENT_ERROR,
    ) -> None:
        """End the turn without a store; ``began``: when it started running (``perf_counter``), None if it never did."""
        self.registry.metrics.turn_ended(status, None if began is None else perf_counter() - began)
        for event in self.state.turn_ended(request, status, turn.usage if turn is not None else None, error, code):
            self.emit(event)
        holder = self.holder
        if holder is not None and self.replica is None:  # shared: once delivered (deliver_visible)
            holder.turn_ended()

    async def _finish_turn(
        self,
        request: TurnRequest,
        status: TurnStatus,
        turn: Turn | None,
        error: str | None,
        started_at: float,
        began: float | None = None,
        *,
        code: ErrorCode = ErrorCode.AGENT_ERROR,
    ) -> None:
        """End the turn: store its reply, then send its final events (``began`` as for :meth:`_end_turn`).

        Shielded from cancellation (a cancelled turn still gets its final event, stored),
        and bounded by :data:`STORE_TIMEOUT_S`: one cancel scope does both.
        """
        # Stored first, sent after: a client never holds a reply the store lacks.
        if self.store is None:
            self._end_turn(request, status, turn, error, began, code)
            return
        events = self.state.turn_ended(request, status, turn.usage if turn is not None else None, error, code)
        last = events[-1]
        if self.store is not None and isinstance(last, StreamEnd | Response):
            record = ReplyRecord.of_final_event(
                last,
                run_id=self.run_id,
                message_number=request.message_number,
                started_at=started_at,
                finished_at=now(),
            )
            saving = perf_counter()
            with trio.CancelScope(shield=True, deadline=trio.current_time() + STORE_TIMEOUT_S):
                try:
                    await self.store.save_reply(record)
                except Exception:
                    log.exception("run %s: storing the reply to %s failed", self.run_id, request.id)
            self.registry.metrics.store_op("save_reply", perf_counter() - saving)
        self.registry.metrics.turn_ended(status, None if began is None else perf_counter() - began)
        for event in events:
            self.emit(event)
        holder = self.holder
        if holder is not None and self.replica is None:  # shared: once delivered (deliver_visible)
            holder.turn_ended()

    async def _end_queued(self, request: TurnRequest) -> None:
        if self.state.is_pending(request.id):
            await self._finish_turn(request, TurnStatus.CANCELLED, None, None, now())
            self._flush()

    async def _end_pending_turns(self) -> None:
        # The run is ending (grace passed, a normal close, shutdown): every turn it still
        # has - queued, or acked but never started - ends with a final event, stored.
        self._turns.clear()
        self._ingest.clear()
        for request in self.state.pending_requests():
            await self._finish_turn(request, TurnStatus.CANCELLED, None, None, now())
        self._flush()


class RunRegistry:
    """The live runs of a gateway, by id; the nursery their tasks live in; one reaper for every grace period.

    ``node`` is the link to a shared run backend, or None (runs live here alone).
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        store: TranscriptStore | None,
        node: Node | None = None,
        metrics: ChatMetrics | None = None,
    ) -> None:
        self.nursery = nursery
        self.store = store
        self.node = node
        self.metrics = metrics if metrics is not None else ChatMetrics()
        """Turns and store latency, counted whether or not anyone scrapes them (a few additions per turn)."""
        self.runs: dict[str, LiveRun] = {}
        self._graces: list[tuple[float, int, LiveRun]] = []
        self._grace_counter = 0
        self._reaper_wakeup = trio.lowlevel.ParkingLot()
        self._reaper_started = False

    @property
    def shared(self) -> bool:
        """True when runs are shared with other processes through a run backend."""
        return self.node is not None

    def create(self, path: str, settings: ChatSettings, agents: Mapping[str, Agent]) -> LiveRun:
        """A new run, known by its id from now on (a client just authenticated)."""
        run = LiveRun(self, path, settings, agents, uuid.uuid4().hex)
        self.runs[run.run_id] = run
        if self.node is not None:
            run.replica = self.node.register(run)
        return run

    def adopt(self, path: str, settings: ChatSettings, agents: Mapping[str, Agent], run_id: str) -> LiveRun:
        """A replica of a run another process owns, for a client that resumed it here (the node fills it in)."""
        run = LiveRun(self, path, settings, agents, run_id)
        run.state.owned = False
        self.runs[run_id] = run
        return run

    def find(self, run_id: str, path: str) -> LiveRun | None:
        """The live run ``run_id`` of the connector at ``path``, if it has not ended."""
        run = self.runs.get(run_id)
        if run is None or run.ended or run.path != path:
            return None
        return run

    async def find_shared(
        self, run_id: str, path: str, settings: ChatSettings, agents: Mapping[str, Agent]
    ) -> LiveRun | None:
        """:meth:`find`, else the run from the backend, followed here (or taken over); None when it does not exist.

        Raises :class:`~antiphon.errors.RunBackendError` when the backend cannot be reached.
        """
        local = self.find(run_id, path)
        if local is not None or self.node is None:
            return local
        return await self.node.open_remote(run_id, path, lambda: self.adopt(path, settings, agents, run_id))

    def hold(self, run: LiveRun, deadline: float) -> None:
        """Keep ``run`` until ``deadline`` for a resume; then the reaper ends it (unless re-attached)."""
        run.grace_deadline = deadline
        self._grace_counter += 1
        heapq.heappush(self._graces, (deadline, self._grace_counter, run))
        if not self._reaper_started:
            try:
                self.nursery.start_soon(self._reaper)
            except RuntimeError:  # the gateway is gone: nobody could resume it
                run.end()
                return
            self._reaper_started = True
        elif self._graces[0][2] is run:
            self._reaper_wakeup.unpark()

    async def _reaper(self) -> None:
        graces = self._graces
        while True:
            if not graces:
                await self._reaper_wakeup.park()
                continue
            deadline, _, run = graces[0]
            with trio.move_on_at(deadline):
                await self._reaper_wakeup.park()
                continue  # an earlier deadline arrived
            heapq.heappop(graces)
            if run.grace_deadline == deadline and run.holder is None and run.claimant is None and not run.ended:
                log.info("run %s: not resumed within %gs, ending it", run.run_id, run.settings.resume_grace_s)
                run.end()

    async def end_all(self) -> None:
        """End every run (shutdown): each turn gets its final ``cancelled`` event, stored so."""
        runs = list(self.runs.values())
        for run in runs:
            run.end()
        for run in runs:
            await run.wait_ended()

    async def release_all(self) -> None:
        """Shutting down with a run backend: release every run for another process to own; see :meth:`LiveRun.release`.

        Returns once each is written and released (the caller bounds the wait).
        """
        runs = list(self.runs.values())
        for run in runs:
            run.release()
        for run in runs:
            await run.wait_ended()
        if self.node is not None:
            await self.node.wait_finished(runs)

    def _forget(self, run: LiveRun) -> None:
        if self.runs.get(run.run_id) is run:
            del self.runs[run.run_id]
        if self.node is not None:
            self.node.forget(run)
