"""Live runs: the Trio half of a conversation that outlives its connections.

Theory of operation
-------------------
Each run (``connector_run_id``) is a :class:`LiveRun`: a sans-IO
:class:`~antiphon.proto.chat.run.ChatRun` plus two tasks in the gateway's *runs
nursery* (not in any connection's nursery):

* **ingest** stores each accepted message (when a store is configured) and only then
  acks it and queues its turn, so an acked message is never lost;
* **turns** runs the agent of each queued turn, one at a time, in order, each in its
  own cancel scope (``cancel`` stops just that turn).

At most one connection is *attached* to a run and receives its events live. Every
conversation event gets its ``seq`` at the moment it is queued on that connection, so
``seq`` is in order on the wire; it is also logged for replay. When the connection
drops abnormally (no close frame, 1001, a dead or stalled peer) the run carries on
detached for ``resume_grace_s``: a client that resumes within it gets what it missed
and the rest live. When the grace passes, or the client closed normally (1000), or
the server ended the session on purpose (expiry, limits, shutdown), the run ends: a
running turn is cancelled and its partial reply stored with status ``cancelled``.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Final, Protocol

import trio

from antiphon.chat.agents import Agent, Turn, check_chunk, start_agent, whole_reply
from antiphon.chat.store import MessageRecord, ReplyRecord, TranscriptStore, now
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
    encode_event,
)
from antiphon.proto.chat.run import ChatRun, ReplyTooLong, TurnRequest
from antiphon.proto.close import CloseCode

if TYPE_CHECKING:
    from antiphon.proto.chat.session import ChatSettings

__all__ = ["LiveRun", "RunHolder", "RunRegistry"]

log = logging.getLogger("antiphon.chat")

STORE_TIMEOUT_S: Final = 10.0
"""How long storing a cancelled turn's partial reply may take while its run is ending."""

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

    def turn_ended(self) -> None: ...

    def run_lost(self, code: int, reason: str) -> None: ...


class LiveRun:
    """One conversation's tasks and state; see the module docstring."""

    def __init__(
        self,
        registry: RunRegistry,
        path: str,
        settings: ChatSettings,
        agents: Mapping[str, Agent],
        store: TranscriptStore | None,
    ) -> None:
        self.registry = registry
        self.path = path
        self.settings = settings
        self.agents = agents
        self.store = store
        self.state: ChatRun = settings.new_run(uuid.uuid4().hex, tuple(agents))
        self.holder: RunHolder | None = None
        self.claimant: RunHolder | None = None
        self.ended = False
        self._scope = trio.CancelScope()
        self._started = False
        self._ingest_in: trio.MemorySendChannel[TurnRequest]
        self._ingest_out: trio.MemoryReceiveChannel[TurnRequest]
        self._turns_in: trio.MemorySendChannel[TurnRequest]
        self._turns_out: trio.MemoryReceiveChannel[TurnRequest]
        self._current: tuple[TurnRequest, trio.CancelScope] | None = None
        self._reattached = trio.Event()

    @property
    def run_id(self) -> str:
        return self.state.run_id

    # ------------------------------------------------------------------ lifecycle

    def _ensure_started(self) -> None:
        # The tasks start with the first accepted message: an idle connection costs
        # no run tasks at all (ten thousand idle sessions are the benchmark's case).
        if not self._started:
            self._started = True
            # Unbounded: ChatRun already bounds accepted turns (max_queued_turns).
            self._ingest_in, self._ingest_out = trio.open_memory_channel[TurnRequest](float("inf"))
            self._turns_in, self._turns_out = trio.open_memory_channel[TurnRequest](float("inf"))
            self.registry.nursery.start_soon(self.main)

    async def main(self) -> None:
        """The run's tasks; returns when the run ends."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._ingest_loop)
                    nursery.start_soon(self._turn_loop)
        finally:
            self.ended = True
            self.registry._forget(self)

    def end(self) -> None:
        """End the run now: its running turn is cancelled and stored as such."""
        self.ended = True
        if self._started:
            self._scope.cancel()
        else:
            self.registry._forget(self)

    def claim(self, holder: RunHolder) -> None:
        """A resume begins: the run stops sending live and will be attached once replay caught up.

        Any connection that held the run is closed with 4409; the grace period stops.
        """
        previous, self.holder, self.claimant = self.holder, None, holder
        self._reattached.set()
        if previous is not None and previous is not holder:
            previous.run_lost(CloseCode.RESUMED_ELSEWHERE, "the session was resumed on another connection")

    def attach(self, holder: RunHolder) -> None:
        """Make ``holder`` the connection that receives this run's events live."""
        self.holder, self.claimant = holder, None
        self._reattached.set()

    def detach(self, holder: RunHolder, *, code: int, by_peer: bool) -> None:
        """``holder``'s connection ended with ``code``: end the run, or keep it for a resume."""
        if self.holder is holder:
            self.holder = None
        elif self.claimant is holder:
            self.claimant = None
        else:
            return
        lost_in_transit = (by_peer and code != CloseCode.NORMAL) or (not by_peer and code not in _FINAL_SERVER_CODES)
        if not lost_in_transit or self.settings.resume_grace_s <= 0:
            self.end()
            return
        self._reattached = trio.Event()
        self.registry.nursery.start_soon(self._grace, self._reattached)

    async def _grace(self, reattached: trio.Event) -> None:
        with trio.move_on_after(self.settings.resume_grace_s):
            await reattached.wait()
            return
        if self.holder is None and self.claimant is None:
            log.info("run %s: not resumed within %gs, ending it", self.run_id, self.settings.resume_grace_s)
            self.end()

    # ------------------------------------------------------------------ events

    @property
    def _session(self) -> Session | None:
        """The attached connection's session, if a connection is attached."""
        return self.holder.session if self.holder is not None else None

    def emit(self, event: ServerEvent) -> None:
        """Number ``event``, log it for replay, and send it to the attached connection."""
        seq = self.state.emit(event)
        session = self._session
        if session is not None:
            session.send_nowait(encode_event(event, seq))

    async def emit_wait(self, event: ServerEvent) -> None:
        """:meth:`emit`, after waiting for room on the connection (a slow reader slows the agent)."""
        session = self._session
        if session is not None:
            await session.wait_for_room()
        else:
            # Detached (waiting for a resume): still a checkpoint, or an agent that never
            # awaits would stream its whole reply without letting anything else run.
            await trio.lowlevel.checkpoint()
        self.emit(event)

    def notify(self, event: ErrorEvent) -> None:
        """Send a connection-level event (no ``seq``) to the attached connection, if any."""
        session = self._session
        if session is not None:
            session.send_nowait(encode_event(event))

    # ------------------------------------------------------------------ messages and turns

    def accept(self, request: TurnRequest) -> None:
        """An accepted message: ack and queue it (after storing it, when there is a store)."""
        self._ensure_started()
        if self.store is None:
            self._acknowledge(request)
        else:
            self._ingest_in.send_nowait(request)

    def cancel(self, id: MessageId) -> None:
        """Stop turn ``id``: cancel it if running, end it at once if still queued."""
        if self._current is not None and self._current[0].id == id:
            self._current[1].cancel()
            return
        if self.state.is_pending(id) and not self.state.turn_running(id):
            request = self.state.request_of(id)
            for event in self.state.turn_ended(request, TurnStatus.CANCELLED):
                self.emit(event)
            self._notify_turn_ended()

    def _acknowledge(self, request: TurnRequest) -> None:
        self.emit(Ack(id=request.id, message_number=request.message_number))
        self._turns_in.send_nowait(request)

    async def _ingest_loop(self) -> None:
        async for request in self._ingest_out:
            record = MessageRecord(
                run_id=self.run_id,
                connector=self.path,
                message_id=str(request.id),
                message_number=request.message_number,
                text=request.message,
                context=dict(request.context),
                received_at=now(),
            )
            try:
                assert self.store is not None
                await self.store.save_message(record)
            except Exception:
                log.exception("run %s: storing message %r failed", self.run_id, request.id)
                self.state.withdraw(request)
                self.notify(ErrorEvent(code=ErrorCode.STORE_ERROR, message="the message could not be stored; send it again", id=request.id))
                continue
            self._acknowledge(request)

    async def _turn_loop(self) -> None:
        async for request in self._turns_out:
            if self.state.is_pending(request.id):
                await self._run_turn(request)

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
        started_at = now()
        status, error = TurnStatus.COMPLETED, None
        try:
            for event in state.turn_started(request):
                await self.emit_wait(event)
            with trio.CancelScope() as scope:
                self._current = (request, scope)
                try:
                    result = start_agent(self.agents[request.agent], turn)
                    if inspect.isasyncgen(result):
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
                    log.warning("run %s: turn %r cut off: %s", self.run_id, request.id, exc)
                    status, error = TurnStatus.FAILED, str(exc)
                except Exception as exc:
                    # The traceback is for the server's log; the client gets the kind only,
                    # since exception text can carry anything (keys, prompts, paths).
                    log.exception("run %s: agent %r failed on turn %r", self.run_id, request.agent, request.id)
                    status, error = TurnStatus.FAILED, f"agent {request.agent!r} failed ({type(exc).__name__})"
            if scope.cancelled_caught:
                status = TurnStatus.CANCELLED
        except trio.Cancelled:
            status = TurnStatus.CANCELLED
            raise
        finally:
            self._current = None
            if state.is_pending(request.id):
                events = state.turn_ended(request, status, turn.usage, error)
                for event in events:
                    self.emit(event)
                last = events[-1]
                if self.store is not None and isinstance(last, (StreamEnd, Response)):
                    with trio.CancelScope(shield=True), trio.move_on_after(STORE_TIMEOUT_S):
                        await self._store_reply(self.store, request, last, started_at)
                self._notify_turn_ended()

    async def _store_reply(
        self, store: TranscriptStore, request: TurnRequest, last: StreamEnd | Response, started_at: float
    ) -> None:
        text = last.full_response if isinstance(last, StreamEnd) else last.response
        record = ReplyRecord(
            run_id=self.run_id,
            message_number=request.message_number,
            agent=request.agent,
            text=text,
            status=str(last.status),
            prompt_tokens=last.token_usage.prompt_tokens,
            candidates_tokens=last.token_usage.candidates_tokens,
            started_at=started_at,
            finished_at=now(),
        )
        try:
            await store.save_reply(record)
        except Exception:
            log.exception("run %s: storing the reply to %r failed", self.run_id, request.id)

    def _notify_turn_ended(self) -> None:
        if self.holder is not None:
            self.holder.turn_ended()


class RunRegistry:
    """The live runs of a gateway, by id, and the nursery their tasks live in."""

    def __init__(self, nursery: trio.Nursery, store: TranscriptStore | None) -> None:
        self.nursery = nursery
        self.store = store
        self.runs: dict[str, LiveRun] = {}

    def create(self, path: str, settings: ChatSettings, agents: Mapping[str, Agent]) -> LiveRun:
        run = LiveRun(self, path, settings, agents, self.store)
        self.runs[run.run_id] = run
        return run

    def find(self, run_id: str, path: str) -> LiveRun | None:
        """The live run ``run_id`` of the connector at ``path``, if it has not ended."""
        run = self.runs.get(run_id)
        if run is None or run.ended or run.path != path:
            return None
        return run

    def _forget(self, run: LiveRun) -> None:
        if self.runs.get(run.run_id) is run:
            del self.runs[run.run_id]
