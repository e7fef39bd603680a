"""The chat gateway: serves agents to Connic-protocol clients over WebSocket.

The protocol decisions live in :class:`antiphon.proto.chat_session.ChatSession`; this
module is the Trio half. For each connection it runs a :class:`ChatSessionHandler` on
the session engine: frames go into the sans-IO session, and the actions that come out
are carried out (send an event, queue a turn, set the timer, close). Agent turns run
one at a time, in order, in a task of the session's nursery, so closing the session
cancels the turn.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence

import trio
from attrs import field, frozen

from antiphon.chat.agents import Agent, Turn, demo_agent, run_agent
from antiphon.engine import Session, SessionConfig, SessionHandler
from antiphon.errors import ConfigError
from antiphon.proto.chat import CloseCode, ErrorCode, ErrorEvent, encode_event
from antiphon.proto.chat_session import (
    Action,
    ChatSession,
    ChatSettings,
    Close,
    HandshakeAuth,
    Send,
    SetTimer,
    StartTurn,
    TurnRequest,
    check_handshake_secret,
)
from antiphon.server import Accept, HandshakeRequest, Reject, ServerConfig, SessionServer

__all__ = ["ChatGateway", "ChatSessionHandler", "Connector", "serve_chat"]

log = logging.getLogger("antiphon.chat")


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

    @property
    def agent_names(self) -> tuple[str, ...]:
        return tuple(self.agents)


class ChatSessionHandler(SessionHandler):
    """Runs one chat session: the sans-IO :class:`ChatSession` plus its agent turns."""

    def __init__(self, connector: Connector, *, session_id: str, authenticated: bool) -> None:
        self.connector = connector
        self.chat = ChatSession(
            connector.settings, session_id=session_id, authenticated=authenticated, agents=connector.agent_names
        )
        # Unbounded here because ChatSession already bounds accepted turns (max_queued_turns).
        self._turns_in, self._turns_out = trio.open_memory_channel[TurnRequest](math.inf)

    async def on_open(self, session: Session) -> None:
        session.nursery.start_soon(self._run_turns, session)
        self._apply(session, self.chat.open())

    async def on_message(self, session: Session, message: str | bytes) -> None:
        self._apply(session, self.chat.receive(message))

    def on_timer(self, session: Session) -> None:
        self._apply(session, self.chat.timer_expired())

    def on_shutdown(self, session: Session) -> None:
        self._apply(session, self.chat.shutdown())

    def on_close(self, session: Session) -> None:
        self._turns_in.close()
        log.debug("session %s closed: %s %s", session.id, session.close_code, session.close_reason)

    # ------------------------------------------------------------------ actions

    def _apply(self, session: Session, actions: Iterable[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                session.send_nowait(encode_event(action.event))
            elif isinstance(action, StartTurn):
                self._turns_in.send_nowait(action.request)
            elif isinstance(action, SetTimer):
                session.set_timer(action.seconds)
            elif isinstance(action, Close):
                if action.event is not None:
                    session.send_nowait(encode_event(action.event))
                session.close(action.code, action.reason)

    async def _deliver(self, session: Session, actions: Iterable[Action]) -> None:
        # Turn output waits for room in the send queue: a slow reader slows the agent.
        for action in actions:
            if isinstance(action, Send):
                await session.send(encode_event(action.event))
            else:
                self._apply(session, (action,))

    # ------------------------------------------------------------------ turns

    async def _run_turns(self, session: Session) -> None:
        async for request in self._turns_out:
            await self._run_turn(session, request)

    async def _run_turn(self, session: Session, request: TurnRequest) -> None:
        chat = self.chat
        turn = Turn(
            message=request.message,
            context=request.context,
            history=chat.history(),
            session_id=chat.session_id,
            message_id=request.id,
            message_number=request.message_number,
            agent=request.agent,
        )
        agent = self.connector.agents[request.agent]
        await self._deliver(session, chat.turn_started(request))
        try:
            async for chunk in run_agent(agent, turn):
                await self._deliver(session, chat.turn_chunk(request, chunk))
        except Exception as exc:
            # The agent's traceback is for the server's log; the client gets the kind only,
            # since exception text can carry anything (keys, prompts, paths).
            log.exception("session %s: agent %r failed on turn %r", session.id, request.agent, request.id)
            failure = f"agent {request.agent!r} failed ({type(exc).__name__})"
            await self._deliver(session, chat.turn_failed(request, failure))
            return
        await self._deliver(session, chat.turn_finished(request, turn.usage))


class _ServerFullHandler(SessionHandler):
    async def on_open(self, session: Session) -> None:
        event = ErrorEvent(code=ErrorCode.SERVER_FULL, message="the server is at capacity; try again later")
        session.send_nowait(encode_event(event))
        session.close(CloseCode.SERVER_FULL, "server full")


class ChatGateway(SessionServer):
    """A :class:`SessionServer` routing each handshake to its :class:`Connector` by path."""

    def __init__(
        self,
        connectors: Connector | Sequence[Connector],
        config: ServerConfig | None = None,
        session_config: SessionConfig | None = None,
    ) -> None:
        mounted = [connectors] if isinstance(connectors, Connector) else list(connectors)
        if not mounted:
            raise ConfigError("connectors: at least one connector is required")
        self.connectors: dict[str, Connector] = {}
        for c in mounted:
            if c.path in self.connectors:
                raise ConfigError(f"connectors: two connectors are mounted at {c.path!r}")
            self.connectors[c.path] = c
        super().__init__(self._route, config, session_config)

    def _route(self, request: HandshakeRequest, *, full: bool) -> Accept | Reject:
        connector = self.connectors.get(request.path)
        if connector is None:
            return Reject(404, b"no chat connector at this path\n")
        auth = check_handshake_secret(connector.settings, request.headers, request.target)
        if auth is HandshakeAuth.REJECTED:
            log.info("handshake from %s: invalid secret", request.remote)
            return Reject(401, b"invalid secret\n")
        if full:
            return Accept(_ServerFullHandler())
        session_id = uuid.uuid4().hex
        handler = ChatSessionHandler(
            connector, session_id=session_id, authenticated=auth is HandshakeAuth.ACCEPTED
        )
        return Accept(handler, session_id=session_id)


async def serve_chat(
    connectors: Connector | Sequence[Connector],
    config: ServerConfig | None = None,
    session_config: SessionConfig | None = None,
    *,
    task_status: trio.TaskStatus[ChatGateway] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the chat gateway until cancelled or shut down.

    ``gateway = await nursery.start(serve_chat, connector)`` returns once listening;
    ``gateway.port`` / ``gateway.url`` tell where, ``await gateway.shutdown()`` stops it
    gracefully. Cancelling the task instead closes every session at once with 1001.
    """
    gateway = ChatGateway(connectors, config, session_config)
    await gateway.run(task_status=task_status)
