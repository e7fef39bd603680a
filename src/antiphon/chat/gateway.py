"""The chat gateway: serves agents to Connic-protocol clients over WebSocket.

The protocol decisions live in the sans-IO :class:`~antiphon.proto.chat.session.ChatSession`
(one per connection) and :class:`~antiphon.proto.chat.run.ChatRun` (one per
conversation); this module is the Trio half. For each connection a
:class:`ChatSessionHandler` runs on the session engine: frames go into the
``ChatSession``, and the actions that come out are carried out. Every frame the
connection sends - the session's own events and the run's numbered ones - goes out
through :meth:`ChatSessionHandler.deliver`, its one outgoing path. The conversation's
tasks belong to a :class:`~antiphon.chat.runs.LiveRun` in the gateway's runs nursery,
made when the client authenticates, so a run survives a dropped connection and can be
resumed, and a client that never authenticates costs nothing but its connection.

With a run backend (``runs``) a client may resume a run another process owns: the
lookup goes to the backend (the connection's reading pauses meanwhile), and the run
here is a follower; see :mod:`antiphon.chat.backends.node`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from time import perf_counter
from typing import Final, Self

import trio
from attrs import field, frozen

from antiphon.chat.agents import Agent, demo_agent
from antiphon.chat.backends.base import RunBackend
from antiphon.chat.backends.node import LEASE_TTL_S, Node
from antiphon.chat.metrics import ChatMetrics
from antiphon.chat.runs import LiveRun, RunRegistry
from antiphon.chat.store import TranscriptStore, now
from antiphon.engine.server import Accept as AcceptHandshake
from antiphon.engine.server import HandshakeRequest, Reject, ServerConfig, SessionServer
from antiphon.engine.session import Session, SessionConfig, SessionHandler
from antiphon.errors import ConfigError, RunBackendError
from antiphon.proto.chat.messages import ErrorCode, ErrorEvent, encode_event
from antiphon.proto.chat.run import ChatRun
from antiphon.proto.chat.session import (
    Accept,
    Action,
    CancelTurn,
    ChatSession,
    Close,
    Forward,
    HandshakeAuth,
    ResumeRun,
    Send,
    SetTimer,
    check_handshake_secret,
)
from antiphon.proto.chat.settings import ChatSettings
from antiphon.proto.close import CloseCode

__all__ = [
    "RETENTION_SWEEP_S",
    "ChatGateway",
    "ChatSessionHandler",
    "Connector",
    "serve_chat",
]

log = logging.getLogger("antiphon.chat")

RETENTION_SWEEP_S: Final = 3600.0
"""How often expired transcripts are deleted."""


def _agents_mapping(value: Agent | Mapping[str, Agent]) -> Mapping[str, Agent]:
    if isinstance(value, Mapping):
        return dict(value)
    return {"assistant": value}


@frozen(kw_only=True)
class Connector:
    """One chat endpoint: the ``path`` it is mounted at, its settings and its agents.

    ``agents`` is one agent (named ``"assistant"``) or a mapping of names to agents; the
    first is the default, and a message may pick another with ``payload.agent``.
    """

    settings: ChatSettings
    agents: Mapping[str, Agent] = field(default={"assistant": demo_agent}, converter=_agents_mapping)
    path: str = "/"

    def __attrs_post_init__(self) -> None:
        if not self.agents:
            raise ConfigError("agents: at least one agent is required")
        if not self.path.startswith("/"):
            raise ConfigError(f"path: must start with '/', got {self.path!r}")


class ChatSessionHandler(SessionHandler):
    """Runs one chat connection: the sans-IO :class:`ChatSession`, over a :class:`LiveRun` once authenticated."""

    def __init__(self, registry: RunRegistry, connector: Connector, *, authenticated: bool) -> None:
        self.registry = registry
        self.connector = connector
        self.run: LiveRun | None = None
        self.chat = ChatSession(connector.settings, authenticated=authenticated, new_run=self._new_run)
        self.session: Session | None = None
        self._held: list[str | bytes] | None = None  # frames that came while a shared resume was looked up

    def _new_run(self) -> ChatRun:
        run = self.run = self.registry.create(self.connector.path, self.connector.settings, self.connector.agents)
        run.attach(self)
        return run.state

    async def on_open(self, session: Session) -> None:
        self.session = session
        self._apply(self.chat.open())

    def on_message(self, session: Session, message: str | bytes) -> None:
        if self._held is not None:
            self._held.append(message)  # after the resume, in order (reading is paused: one batch at most)
            return
        self._apply(self.chat.receive(message))

    def on_timer(self, session: Session) -> None:
        self._apply(self.chat.timer_expired())

    def on_shutdown(self, session: Session) -> None:
        self._apply(self.chat.shutdown(restart=self.registry.shared))

    def on_close(self, session: Session) -> None:
        self.session = None
        if self.run is not None:
            self.run.detach(self, code=session.close_code or CloseCode.ABNORMAL, by_peer=session.closed_by_peer)
        log.debug("session %s closed: %s %s", session.id, session.close_code, session.close_reason)

    # ------------------------------------------------------------------ RunHolder

    def deliver(self, text: str) -> None:
        """Send one frame on this connection: the one path every outgoing frame takes."""
        session = self.session
        if session is not None:
            session.send_nowait(text)

    def turn_ended(self) -> None:
        self._apply(self.chat.turn_ended())

    def run_lost(self, code: int, reason: str) -> None:
        if self.session is not None:
            self.session.close(code, reason)

    # ------------------------------------------------------------------ actions

    def _apply(self, actions: Iterable[Action]) -> None:
        session = self.session
        if session is None:
            return
        for action in actions:
            # The two actions of every message first, by identity (no subclasses: same as isinstance).
            if type(action) is Accept:
                assert self.run is not None
                self.run.accept(action.request)
            elif type(action) is SetTimer:
                session.set_timer(action.seconds)
            elif isinstance(action, Send):
                self.deliver(encode_event(action.event))
            elif isinstance(action, Forward):
                assert self.run is not None
                self.run.forward(action.message)
            elif isinstance(action, CancelTurn):
                assert self.run is not None
                self.run.cancel(action.id)
            elif isinstance(action, ResumeRun):
                self._resume(session, action.run_id, action.last_seq)
            elif isinstance(action, Close):
                if action.event is not None:
                    self.deliver(encode_event(action.event))
                session.close(action.code, action.reason)

    def _resume(self, session: Session, run_id: str, last_seq: int) -> None:
        target = self.registry.find(run_id, self.connector.path)
        if target is None and self.registry.shared:
            # The backend may have it: look it up without reading on, and hold what came in
            # the same batch, so that no message lands in the fresh run meanwhile.
            self._held = []
            session.pause_reading()
            session.nursery.start_soon(self._resume_shared, session, run_id, last_seq)
            return
        if target is None:
            self._apply(self.chat.resume_failed(run_id))
            return
        self._resume_into(session, target, last_seq)

    async def _resume_shared(self, session: Session, run_id: str, last_seq: int) -> None:
        c = self.connector
        try:
            target = await self.registry.find_shared(run_id, c.path, c.settings, c.agents)
        except RunBackendError as exc:
            log.warning("resume of run %s: %s", run_id, exc)
            text = "the runs backend cannot be reached; resume again later"
            self.deliver(encode_event(ErrorEvent(code=ErrorCode.BACKEND_UNAVAILABLE, message=text)))
            target = None
        else:
            if target is None:
                self._apply(self.chat.resume_failed(run_id))
        finally:
            session.resume_reading()
        if target is not None and self.session is session:
            self._resume_into(session, target, last_seq)
        held, self._held = self._held or [], None
        for message in held:
            if self.session is not session:
                break
            self._apply(self.chat.receive(message))
        if held:
            session.flush()

    def _resume_into(self, session: Session, target: LiveRun, last_seq: int) -> None:
        fresh, self.run = self.run, target
        if fresh is not None:
            fresh.detach(self, code=CloseCode.NORMAL, by_peer=True)  # unused: a resume comes before any message
        target.claim(self)  # frames are only logged until the replay has caught up
        replay, actions = self.chat.attach(target.state, last_seq)
        self._apply(actions)
        session.nursery.start_soon(self._replay, session, target, replay[-1][0] if replay else last_seq, replay)

    async def _replay(self, session: Session, run: LiveRun, through: int, first: list[tuple[int, str]]) -> None:
        # Replay under backpressure, then keep replaying whatever was logged meanwhile
        # (also when the first batch was empty: frames may have come since the resume);
        # attach with no checkpoint after the last, empty look, so no frame falls in between.
        batch = first
        while True:
            for seq, text in batch:
                await session.wait_for_room()
                self.deliver(text)
                through = seq
            if batch:
                session.flush()
            batch, _ = run.state.replay_after(through)
            if not batch:
                break
        run.attach(self)


class _ServerFullHandler(SessionHandler):
    async def on_open(self, session: Session) -> None:
        event = ErrorEvent(code=ErrorCode.SERVER_FULL, message="the server is at capacity; try again later")
        session.send_nowait(encode_event(event))
        session.close(CloseCode.SERVER_FULL, "server full")


class ChatGateway(SessionServer):
    """A :class:`SessionServer` routing each handshake to its :class:`Connector` by path.

    ``store`` keeps transcripts (None keeps none); ``retention_s`` deletes runs idle for
    longer (None keeps them forever), checked at start and every hour. ``runs`` shares
    runs with other processes through a run backend (None: runs live here alone), whose
    owners hold ``lease_ttl_s`` leases.
    """

    def __init__(
        self,
        connectors: Connector | Sequence[Connector],
        config: ServerConfig | None = None,
        session_config: SessionConfig | None = None,
        *,
        store: TranscriptStore | None = None,
        retention_s: float | None = None,
        runs: RunBackend | None = None,
        lease_ttl_s: float = LEASE_TTL_S,
    ) -> None:
        mounted = [connectors] if isinstance(connectors, Connector) else list(connectors)
        if not mounted:
            raise ConfigError("connectors: at least one connector is required")
        self.connectors: dict[str, Connector] = {}
        for c in mounted:
            if c.path in self.connectors:
                raise ConfigError(f"connectors: two connectors are mounted at {c.path!r}")
            self.connectors[c.path] = c
        self.store = store
        self.retention_s = retention_s
        self.runs_backend = runs
        self.lease_ttl_s = lease_ttl_s
        self.registry: RunRegistry | None = None
        self._finished: trio.Event | None = None  # set once run() has returned
        self.chat_metrics = ChatMetrics()
        """Turns by status, turn latency, store latency; served at ``GET /metrics`` with the engine's."""
        super().__init__(self._route, config, session_config, face="chat")
        if self.metrics_registry is not None:
            self.metrics_registry.register(self.chat_metrics)

    async def run(self, *, listen: bool = True, task_status: trio.TaskStatus[Self] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled or shut down; the runs nursery outlives every connection.

        With a run backend, a :meth:`shutdown` releases every run still here (written, its
        lease let go) for another process to take over, within ``close_timeout``.
        Cancelling instead abandons them: their leases lapse and other processes take
        them over then.
        """
        finished = self._finished = trio.Event()
        try:
            async with trio.open_nursery() as runs:
                registry = self.registry = RunRegistry(runs, self.store, metrics=self.chat_metrics)
                if self.runs_backend is not None:
                    registry.node = Node(self.runs_backend, registry, lease_ttl_s=self.lease_ttl_s)
                    await runs.start(registry.node.run)
                if self.store is not None and self.retention_s is not None:
                    runs.start_soon(self._sweep, self.store, self.retention_s)
                try:
                    await super().run(listen=listen, task_status=task_status)
                    if registry.shared:
                        with trio.move_on_after(self.session_config.close_timeout_s):
                            await registry.release_all()
                finally:
                    runs.cancel_scope.cancel()
        finally:
            finished.set()

    async def shutdown(self, grace_s: float | None = None) -> None:
        """:meth:`SessionServer.shutdown`, then (with a run backend) the release of every run.

        Returns once :meth:`run` has.
        """
        await super().shutdown(grace_s)
        if self._finished is not None:
            await self._finished.wait()

    async def grace_expired(self) -> None:
        """The shutdown grace is over: end every run, each turn with a final ``cancelled`` event, stored so.

        With a run backend the runs are released instead: the running turn ends
        ``cancelled``, queued ones wait for the process that takes the run over.
        """
        if self.registry is not None:
            with trio.move_on_after(self.session_config.close_timeout_s):
                if self.registry.shared:
                    await self.registry.release_all()
                else:
                    await self.registry.end_all()

    async def _sweep(self, store: TranscriptStore, retention_s: float) -> None:
        while True:
            began = perf_counter()
            try:
                removed = await store.cleanup(now() - retention_s)
                if removed:
                    log.info("deleted %d transcripts older than %gs", removed, retention_s)
            except Exception:
                log.exception("transcript cleanup failed")
            self.chat_metrics.store_op("cleanup", perf_counter() - began)
            await trio.sleep(RETENTION_SWEEP_S)

    def _route(self, request: HandshakeRequest, *, full: bool) -> AcceptHandshake | Reject:
        connector = self.connectors.get(request.path)
        if connector is None:
            return Reject(404, b"no chat connector at this path\n")
        auth = check_handshake_secret(connector.settings, request.headers, request.target)
        if auth is HandshakeAuth.REJECTED:
            return Reject(401, b"invalid secret\n")  # the engine logs the refusal (never the secret)
        if full:
            return AcceptHandshake(_ServerFullHandler())
        if self.registry is None:
            raise RuntimeError("ChatGateway.run() is not running")
        handler = ChatSessionHandler(self.registry, connector, authenticated=auth is HandshakeAuth.ACCEPTED)
        return AcceptHandshake(handler)


async def serve_chat(
    connectors: Connector | Sequence[Connector],
    config: ServerConfig | None = None,
    session_config: SessionConfig | None = None,
    *,
    store: TranscriptStore | None = None,
    retention_s: float | None = None,
    runs: RunBackend | None = None,
    lease_ttl_s: float = LEASE_TTL_S,
    task_status: trio.TaskStatus[ChatGateway] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the chat gateway until cancelled or shut down.

    ``gateway = await nursery.start(serve_chat, connector)`` returns once listening;
    ``gateway.port`` / ``gateway.url`` tell where, ``await gateway.shutdown()`` stops it
    gracefully. Cancelling the task instead closes every session at once with 1001.
    """
    gateway = ChatGateway(
        connectors, config, session_config, store=store, retention_s=retention_s, runs=runs, lease_ttl_s=lease_ttl_s
    )
    await gateway.run(task_status=task_status)
