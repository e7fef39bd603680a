"""The chat session as a sans-IO state machine.

Theory of operation
-------------------
A :class:`ChatSession` is one connection's conversation, with no I/O and no clock. The
Trio layer feeds it what happened and carries out what it answers:

* inputs: :meth:`~ChatSession.open` once the WebSocket is accepted, :meth:`~ChatSession.receive`
  for every frame, :meth:`~ChatSession.timer_expired` when the one timer it asked for
  runs out, :meth:`~ChatSession.shutdown` when the server is stopping, and the turn
  callbacks (:meth:`~ChatSession.turn_started`, :meth:`~ChatSession.turn_chunk`,
  :meth:`~ChatSession.turn_finished`, :meth:`~ChatSession.turn_failed`) while an agent runs;
* outputs: a list of actions - :class:`Send` an event, :class:`StartTurn` (queue an agent
  turn; turns run one at a time, in order), :class:`SetTimer` (replace the one timer:
  the auth deadline before authentication, the inactivity timeout after), and
  :class:`Close` (sent when it is time: at once for a failure, or once every accepted
  turn has finished when the session drains).

States::

    AUTHENTICATING --secret ok--> OPEN --limit reached / shutdown--> DRAINING --turns done--> CLOSED
          |                         |                                                         ^
          +--- bad secret / timeout +--- inactivity timeout ----------------------------------+

A message is *accepted* when it is acked: it gets a message number, counts against
``max_messages`` and its turn will run. A message that is refused (queue full, limit
reached, unknown agent, shutting down) gets an ``error`` event and is not numbered.
Malformed input never ends the session: it gets an ``error`` event and the session
carries on, except before authentication, where anything but the secret fails it.
"""

from __future__ import annotations

import enum
import hmac
import math
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import parse_qsl, urlsplit

from attrs import frozen

from antiphon.errors import ConfigError, DecodeError, LocalProtocolError
from antiphon.proto.chat import (
    Ack,
    Auth,
    CloseCode,
    Connected,
    ErrorCode,
    ErrorEvent,
    MessageId,
    Ping,
    Pong,
    Response,
    ServerEvent,
    StreamChunk,
    StreamEnd,
    StreamStart,
    TokenUsage,
    UserMessage,
    decode_client_message,
)

__all__ = [
    "Action",
    "ChatSession",
    "ChatSettings",
    "Close",
    "HandshakeAuth",
    "HistoryEntry",
    "Send",
    "SessionState",
    "SetTimer",
    "StartTurn",
    "TurnRequest",
    "check_handshake_secret",
    "request_path",
    "estimate_tokens",
]

CHARS_PER_TOKEN: Final = 4
"""The token estimate's rule of thumb: about four characters per token for English text."""

MAX_MESSAGES_RANGE: Final = (1, 10_000)
SESSION_TIMEOUT_RANGE_S: Final = (60.0, 86_400.0)


@frozen(kw_only=True)
class ChatSettings:
    """How one connector behaves; every field is documented in the README's configuration table.

    Raises :class:`ConfigError` naming the field when a value is out of range.
    """

    require_auth: bool = True
    secret: str | None = None
    streaming: bool = True
    session_timeout_s: float = 3600.0
    max_messages: int = 100
    auth_timeout_s: float = 10.0
    max_queued_turns: int = 16
    history_max_chars: int = 1_000_000

    def __attrs_post_init__(self) -> None:
        if self.require_auth and not self.secret:
            raise ConfigError("secret: required when authentication is on")
        lo, hi = MAX_MESSAGES_RANGE
        if not lo <= self.max_messages <= hi:
            raise ConfigError(f"max_messages: must be between {lo} and {hi}, got {self.max_messages}")
        lo_s, hi_s = SESSION_TIMEOUT_RANGE_S
        if not lo_s <= self.session_timeout_s <= hi_s:
            raise ConfigError(
                f"session_timeout: must be between {lo_s:g} and {hi_s:g} seconds, got {self.session_timeout_s:g}"
            )
        if self.auth_timeout_s <= 0:
            raise ConfigError(f"auth_timeout: must be positive, got {self.auth_timeout_s:g}")
        if self.max_queued_turns < 1:
            raise ConfigError(f"max_queued_turns: must be at least 1, got {self.max_queued_turns}")
        if self.history_max_chars < 0:
            raise ConfigError(f"history_max_chars: must not be negative, got {self.history_max_chars}")


class SessionState(enum.Enum):
    AUTHENTICATING = "authenticating"
    OPEN = "open"
    DRAINING = "draining"
    CLOSED = "closed"


@frozen
class HistoryEntry:
    """One earlier utterance of the session, as an agent sees it."""

    role: Literal["user", "assistant"]
    text: str


@frozen(kw_only=True)
class TurnRequest:
    """An accepted message whose agent turn is to run."""

    id: MessageId
    message_number: int
    message: str
    context: Mapping[str, Any]
    agent: str


@frozen
class Send:
    event: ServerEvent


@frozen
class StartTurn:
    request: TurnRequest


@frozen
class SetTimer:
    """Replace the session's single timer; ``None`` disarms it."""

    seconds: float | None


@frozen
class Close:
    """Close the session now with ``code``; ``event``, if any, goes out just before the close frame."""

    code: CloseCode
    reason: str
    event: ErrorEvent | None = None


Action: TypeAlias = Send | StartTurn | SetTimer | Close


def estimate_tokens(text: str) -> int:
    """The documented estimate used when an agent reports no usage: ceil(len / 4)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _new_message_id(number: int) -> str:
    return f"msg_{uuid.uuid4().hex[:16]}"


class ChatSession:
    """One connection's conversation state; see the module docstring for how to drive it."""

    def __init__(
        self,
        settings: ChatSettings,
        *,
        session_id: str,
        authenticated: bool,
        agents: tuple[str, ...] = ("assistant",),
        new_message_id: Callable[[int], str] = _new_message_id,
    ) -> None:
        if not agents:
            raise ConfigError("agents: at least one agent is required")
        self.settings = settings
        self.agents = agents
        self.session_id = session_id
        self.state = SessionState.OPEN if authenticated or not settings.require_auth else SessionState.AUTHENTICATING
        self.message_count = 0
        self._new_message_id = new_message_id
        self._history: deque[HistoryEntry] = deque()
        self._history_chars = 0
        self._pending: dict[MessageId, list[str]] = {}
        self._drain: Close | None = None

    # ------------------------------------------------------------------ queries

    @property
    def pending_turns(self) -> int:
        """Accepted turns not yet finished (running or waiting)."""
        return len(self._pending)

    def history(self) -> tuple[HistoryEntry, ...]:
        """The earlier turns of the session, oldest first, within ``history_max_chars``."""
        return tuple(self._history)

    # ------------------------------------------------------------------ inputs

    def open(self) -> list[Action]:
        """The WebSocket was accepted: greet an authenticated client, or start the auth clock."""
        if self.state is SessionState.OPEN:
            return [Send(self._connected()), SetTimer(self.settings.session_timeout_s)]
        return [SetTimer(self.settings.auth_timeout_s)]

    def receive(self, data: str | bytes) -> list[Action]:
        """One frame arrived from the client."""
        if self.state is SessionState.CLOSED:
            return []
        try:
            msg = decode_client_message(data)
        except DecodeError as exc:
            if self.state is SessionState.AUTHENTICATING:
                return self._fail_auth(ErrorCode.AUTH_REQUIRED, f'the first message must be {{"secret": ...}} ({exc})')
            return [Send(ErrorEvent(code=_decode_error_code(exc), message=str(exc))), *self._activity()]
        if isinstance(msg, Ping):
            return [Send(Pong()), *self._activity()]
        if isinstance(msg, Auth):
            if self.state is not SessionState.AUTHENTICATING:
                return self._activity()  # already authenticated (header, query or earlier frame)
            if not _secret_matches(msg.secret, self.settings.secret):
                return self._fail_auth(ErrorCode.AUTH_FAILED, "invalid secret")
            self.state = SessionState.OPEN
            return [Send(self._connected()), SetTimer(self.settings.session_timeout_s)]
        if self.state is SessionState.AUTHENTICATING:
            return self._fail_auth(ErrorCode.AUTH_REQUIRED, 'the first message must be {"secret": ...}')
        return [*self._accept(msg), *self._activity()]

    def timer_expired(self) -> list[Action]:
        """The timer from the last :class:`SetTimer` ran out."""
        if self.state is SessionState.AUTHENTICATING:
            self.state = SessionState.CLOSED
            event = ErrorEvent(code=ErrorCode.AUTH_TIMEOUT, message="no secret within the authentication timeout")
            return [Close(CloseCode.AUTH_TIMEOUT, "authentication timeout", event)]
        if self.state is SessionState.CLOSED:
            return []
        self.state = SessionState.CLOSED
        event = ErrorEvent(code=ErrorCode.SESSION_EXPIRED, message="session expired after inactivity")
        return [Close(CloseCode.SESSION_EXPIRED, "session expired", event)]

    def shutdown(self) -> list[Action]:
        """The server is stopping: refuse new messages, close once accepted turns are done."""
        if self.state is SessionState.CLOSED:
            return []
        event = ErrorEvent(code=ErrorCode.SERVER_SHUTDOWN, message="the server is shutting down")
        if self.state is SessionState.AUTHENTICATING:
            self.state = SessionState.CLOSED
            return [Close(CloseCode.SERVER_SHUTDOWN, "server shutdown", event)]
        return self._start_draining(Close(CloseCode.SERVER_SHUTDOWN, "server shutdown", event))

    # ------------------------------------------------------------------ turn progress

    def turn_started(self, request: TurnRequest) -> list[Action]:
        """The agent of ``request`` starts; returns ``stream_start`` when streaming."""
        self._require_pending(request)
        if self.settings.streaming:
            return [Send(StreamStart(id=request.id, agent=request.agent))]
        return []

    def turn_chunk(self, request: TurnRequest, chunk: str) -> list[Action]:
        """The agent produced ``chunk``; returns ``stream_chunk`` when streaming (and the chunk is not empty)."""
        parts = self._require_pending(request)
        if not chunk:
            return []
        parts.append(chunk)
        if self.settings.streaming:
            return [Send(StreamChunk(id=request.id, agent=request.agent, chunk=chunk))]
        return []

    def turn_finished(self, request: TurnRequest, usage: TokenUsage | None = None) -> list[Action]:
        """The agent finished: the reply goes out and joins the history."""
        text = "".join(self._require_pending(request))
        del self._pending[request.id]
        if usage is None:
            prompt = sum(len(h.text) for h in self._history) + len(request.message)
            usage = TokenUsage(math.ceil(prompt / CHARS_PER_TOKEN), estimate_tokens(text))
        self._remember(HistoryEntry("user", request.message))
        self._remember(HistoryEntry("assistant", text))
        event: ServerEvent
        if self.settings.streaming:
            event = StreamEnd(id=request.id, agent=request.agent, full_response=text, token_usage=usage)
        else:
            event = Response(id=request.id, agent=request.agent, response=text, token_usage=usage)
        return [Send(event), *self._maybe_finish_draining()]

    def turn_failed(self, request: TurnRequest, message: str) -> list[Action]:
        """The agent raised: an ``agent_error`` for that turn; the session stays usable.

        A failed turn leaves no trace in the history, so the next turn's agent does not
        see a question without its answer.
        """
        self._require_pending(request)
        del self._pending[request.id]
        event = ErrorEvent(code=ErrorCode.AGENT_ERROR, message=message, id=request.id)
        return [Send(event), *self._maybe_finish_draining()]

    # ------------------------------------------------------------------ internals

    def _connected(self) -> Connected:
        sid = self.session_id
        return Connected(session_id=sid, connector_run_id=sid, agents=self.agents)

    def _activity(self) -> list[Action]:
        if self.state is SessionState.OPEN or self.state is SessionState.DRAINING:
            return [SetTimer(self.settings.session_timeout_s)]
        return []

    def _fail_auth(self, code: ErrorCode, message: str) -> list[Action]:
        self.state = SessionState.CLOSED
        return [Close(CloseCode.AUTH_FAILED, "authentication failed", ErrorEvent(code=code, message=message))]

    def _accept(self, msg: UserMessage) -> list[Action]:
        if self._drain is not None:
            code = ErrorCode.MESSAGE_LIMIT if self._drain.code is CloseCode.MESSAGE_LIMIT else ErrorCode.SERVER_SHUTDOWN
            return [Send(ErrorEvent(code=code, message="the session accepts no more messages", id=msg.id))]
        agent = msg.agent if msg.agent is not None else self.agents[0]
        if agent not in self.agents:
            return [Send(ErrorEvent(code=ErrorCode.UNKNOWN_AGENT, message=f"no agent named {agent!r}", id=msg.id))]
        if self.message_count >= self.settings.max_messages:
            limit = self.settings.max_messages
            event = ErrorEvent(
                code=ErrorCode.MESSAGE_LIMIT, message=f"the session reached its limit of {limit} messages", id=msg.id
            )
            return [Send(event), *self._start_draining(Close(CloseCode.MESSAGE_LIMIT, "message limit"))]
        if len(self._pending) >= self.settings.max_queued_turns:
            event = ErrorEvent(
                code=ErrorCode.QUEUE_FULL,
                message=f"{len(self._pending)} turns are already waiting; send again later",
                id=msg.id,
            )
            return [Send(event)]
        if msg.id is not None and msg.id in self._pending:
            event = ErrorEvent(
                code=ErrorCode.INVALID_MESSAGE, message=f"a turn with id {msg.id!r} is already running", id=msg.id
            )
            return [Send(event)]
        self.message_count += 1
        n = self.message_count
        mid = msg.id if msg.id is not None else self._new_message_id(n)
        self._pending[mid] = []
        request = TurnRequest(id=mid, message_number=n, message=msg.message, context=msg.context, agent=agent)
        return [Send(Ack(id=mid, message_number=n)), StartTurn(request)]

    def _start_draining(self, close: Close) -> list[Action]:
        self.state = SessionState.DRAINING
        if self._drain is None or close.code is CloseCode.SERVER_SHUTDOWN:
            self._drain = close
        return self._maybe_finish_draining()

    def _maybe_finish_draining(self) -> list[Action]:
        if self._drain is None or self._pending or self.state is SessionState.CLOSED:
            return []
        self.state = SessionState.CLOSED
        return [self._drain]

    def _require_pending(self, request: TurnRequest) -> list[str]:
        try:
            return self._pending[request.id]
        except KeyError:
            raise LocalProtocolError(f"turn {request.id!r} is not running") from None

    def _remember(self, entry: HistoryEntry) -> None:
        self._history.append(entry)
        self._history_chars += len(entry.text)
        while self._history_chars > self.settings.history_max_chars and self._history:
            self._history_chars -= len(self._history.popleft().text)


def _decode_error_code(exc: DecodeError) -> ErrorCode:
    first = exc.errors[0]
    if first.startswith("$: invalid JSON"):
        return ErrorCode.INVALID_JSON
    if first.startswith("$.type: unknown message type"):
        return ErrorCode.UNKNOWN_TYPE
    return ErrorCode.INVALID_MESSAGE


def _secret_matches(given: str, expected: str | None) -> bool:
    # Constant time, on bytes: compare_digest refuses non-ASCII str.
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


class HandshakeAuth(enum.Enum):
    """What the opening handshake said about the secret."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    ABSENT = "absent"


SECRET_HEADER: Final = b"x-connic-secret"
SECRET_QUERY_KEYS: Final = ("secret", "X-Connic-Secret")


def check_handshake_secret(
    settings: ChatSettings, headers: Iterable[tuple[bytes, bytes]], target: str
) -> HandshakeAuth:
    """Check a secret sent as header ``X-Connic-Secret``, ``Authorization: Bearer``, or query parameter.

    ``REJECTED`` means the handshake must be refused with HTTP 401; ``ABSENT`` means the
    client may still authenticate with its first message.
    """
    if not settings.require_auth:
        return HandshakeAuth.ACCEPTED
    offered = list(_offered_secrets(headers, target))
    if not offered:
        return HandshakeAuth.ABSENT
    if all(_secret_matches(s, settings.secret) for s in offered):
        return HandshakeAuth.ACCEPTED
    return HandshakeAuth.REJECTED


def _offered_secrets(headers: Iterable[tuple[bytes, bytes]], target: str) -> Iterable[str]:
    for name, value in headers:
        lname = name.lower()
        if lname == SECRET_HEADER:
            yield value.decode("latin-1").strip()
        elif lname == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                yield token.strip()
    query = urlsplit(target).query
    if query:
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key in SECRET_QUERY_KEYS:
                yield value


def request_path(target: str) -> str:
    """The path of a request target, without its query string."""
    return urlsplit(target).path or "/"

