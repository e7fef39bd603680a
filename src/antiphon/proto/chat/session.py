"""The chat connection as a sans-IO state machine.

Theory of operation
-------------------
A :class:`ChatSession` is one connection's side of the protocol, with no I/O and no
clock; the conversation itself is a :class:`~antiphon.proto.chat.run.ChatRun`, which
outlives connections. The Trio layer feeds the session what happened and carries out
what it answers:

* inputs: :meth:`~ChatSession.open` once the WebSocket is accepted, :meth:`~ChatSession.receive`
  for every frame, :meth:`~ChatSession.timer_expired` when the one timer it asked for
  runs out, :meth:`~ChatSession.shutdown` when the server is stopping,
  :meth:`~ChatSession.turn_ended` whenever one of the run's turns ends, and
  :meth:`~ChatSession.attach` once a ``resume`` found its run;
* outputs: a list of actions - :class:`Send` a connection event (no ``seq``),
  :class:`Accept` a message (store it, then ack it and queue its turn; turns run one
  at a time, in order), :class:`CancelTurn`, :class:`ResumeRun` (look the run up),
  :class:`SetTimer` (replace the one timer: the auth deadline before authentication,
  the inactivity timeout after), and :class:`Close`.

States::

    AUTHENTICATING --secret ok--> OPEN --limit reached / shutdown--> DRAINING --turns done--> CLOSED
          |                         |                                                         ^
          +--- bad secret / timeout +--- inactivity timeout ----------------------------------+

A message is *accepted* when the run numbers it; it counts against ``max_messages``
and its turn will run. A refused message (queue full, limit reached, unknown agent,
shutting down) gets an ``error`` event and no number. Malformed input never ends the
session: it gets an ``error`` event and the session carries on, except before
authentication, where anything but the secret (or a ping) fails it.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Iterable
from typing import Final, TypeAlias
from urllib.parse import parse_qsl, urlsplit

from attrs import frozen

from antiphon.errors import ConfigError, DecodeError
from antiphon.proto.chat.messages import (
    Ack,
    Auth,
    Cancel,
    Connected,
    ErrorCode,
    ErrorEvent,
    MessageId,
    Ping,
    Pong,
    Resume,
    Resumed,
    ServerEvent,
    UserMessage,
    decode_client_message,
)
from antiphon.proto.chat.run import (
    CHARS_PER_TOKEN,
    REPLAY_MAX_BYTES,
    ChatRun,
    HistoryEntry,
    Refused,
    TurnRequest,
    estimate_tokens,
)
from antiphon.proto.close import CloseCode

__all__ = [
    "CHARS_PER_TOKEN",
    "Accept",
    "Action",
    "CancelTurn",
    "ChatSession",
    "ChatSettings",
    "Close",
    "HandshakeAuth",
    "HistoryEntry",
    "ResumeRun",
    "Send",
    "SessionState",
    "SetTimer",
    "TurnRequest",
    "check_handshake_secret",
    "estimate_tokens",
]

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
    resume_grace_s: float = 60.0
    replay_max_bytes: int = REPLAY_MAX_BYTES
    max_reply_chars: int = 1_000_000

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
        if self.resume_grace_s < 0:
            raise ConfigError(f"resume_grace: must not be negative, got {self.resume_grace_s:g}")
        if self.replay_max_bytes < 0:
            raise ConfigError(f"replay_max_bytes: must not be negative, got {self.replay_max_bytes}")
        if self.max_reply_chars < 1:
            raise ConfigError(f"max_reply_chars: must be at least 1, got {self.max_reply_chars}")

    def new_run(self, run_id: str, agents: tuple[str, ...] = ("assistant",)) -> ChatRun:
        """A fresh :class:`ChatRun` with these settings."""
        return ChatRun(
            run_id,
            agents=agents,
            streaming=self.streaming,
            max_messages=self.max_messages,
            max_queued_turns=self.max_queued_turns,
            history_max_chars=self.history_max_chars,
            replay_max_bytes=self.replay_max_bytes,
            max_reply_chars=self.max_reply_chars,
        )


class SessionState(enum.Enum):
    AUTHENTICATING = "authenticating"
    OPEN = "open"
    DRAINING = "draining"
    CLOSED = "closed"


@frozen
class Send:
    """Send a connection event (it carries no ``seq`` and is not replayed)."""

    event: ServerEvent


@frozen
class Accept:
    """A message was accepted: store it, then ack it (with a ``seq``) and queue its turn."""

    request: TurnRequest


@frozen
class CancelTurn:
    """Stop the turn ``id`` of the current run (queued or running)."""

    id: MessageId


@frozen
class ResumeRun:
    """Find the run ``run_id`` and, if it is there, :meth:`ChatSession.attach` it."""

    run_id: str
    last_seq: int


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


Action: TypeAlias = Send | Accept | CancelTurn | ResumeRun | SetTimer | Close


class ChatSession:
    """One connection's protocol state over a :class:`ChatRun`; see the module docstring."""

    def __init__(self, settings: ChatSettings, run: ChatRun, *, authenticated: bool) -> None:
        self.settings = settings
        self.run = run
        self.state = SessionState.OPEN if authenticated or not settings.require_auth else SessionState.AUTHENTICATING
        self._drain: Close | None = None

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
        if isinstance(msg, Resume):
            return [*self._resume(msg), *self._activity()]
        if isinstance(msg, Cancel):
            if not self.run.is_pending(msg.id):
                error = ErrorEvent(code=ErrorCode.UNKNOWN_TURN, message=f"no turn {msg.id!r} is running or queued", id=msg.id)
                return [Send(error), *self._activity()]
            return [CancelTurn(msg.id), *self._activity()]
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
        return self._start_draining(Close(CloseCode.SERVER_SHUTDOWN, "server shutdown", event), force=True)

    def turn_ended(self) -> list[Action]:
        """One of the run's turns ended: a draining session may now close."""
        return self._maybe_finish_draining()

    def attach(self, run: ChatRun, last_seq: int) -> tuple[list[tuple[int, ServerEvent]], list[Action]]:
        """``resume`` found ``run``: switch to it; returns the events to replay, then the actions."""
        self.run = run
        events, complete = run.replay_after(last_seq)
        resumed = Resumed(connector_run_id=run.run_id, last_seq=run.seq, replayed=len(events), complete=complete)
        return events, [Send(resumed)]

    def resume_failed(self, run_id: str) -> list[Action]:
        """``resume`` named a run that is unknown or expired; this connection keeps its own run."""
        text = f"no resumable run {run_id!r} (unknown or expired); continue in run {self.run.run_id!r}"
        return [Send(ErrorEvent(code=ErrorCode.UNKNOWN_RUN, message=text))]

    # ------------------------------------------------------------------ internals

    def _connected(self) -> Connected:
        rid = self.run.run_id
        return Connected(session_id=rid, connector_run_id=rid, agents=self.run.agents)

    def _activity(self) -> list[Action]:
        if self.state is SessionState.OPEN or self.state is SessionState.DRAINING:
            return [SetTimer(self.settings.session_timeout_s)]
        return []

    def _fail_auth(self, code: ErrorCode, message: str) -> list[Action]:
        self.state = SessionState.CLOSED
        return [Close(CloseCode.AUTH_FAILED, "authentication failed", ErrorEvent(code=code, message=message))]

    def _resume(self, msg: Resume) -> list[Action]:
        if self.run.message_count or self.run.seq:
            text = "resume must come before the first message of a connection"
            return [Send(ErrorEvent(code=ErrorCode.INVALID_MESSAGE, message=text))]
        if msg.connector_run_id == self.run.run_id:
            return []
        return [ResumeRun(msg.connector_run_id, msg.last_seq)]

    def _accept(self, msg: UserMessage) -> list[Action]:
        if self._drain is not None:
            code = ErrorCode.MESSAGE_LIMIT if self._drain.code is CloseCode.MESSAGE_LIMIT else ErrorCode.SERVER_SHUTDOWN
            return [Send(ErrorEvent(code=code, message="the session accepts no more messages", id=msg.id))]
        result = self.run.accept(msg)
        if isinstance(result, TurnRequest):
            return [Accept(result)]
        if isinstance(result, Ack):
            return [Send(result)]
        assert isinstance(result, Refused)
        out: list[Action] = [Send(result.event)]
        if result.limit_reached:
            out += self._start_draining(Close(CloseCode.MESSAGE_LIMIT, "message limit"))
        return out

    def _start_draining(self, close: Close, *, force: bool = False) -> list[Action]:
        self.state = SessionState.DRAINING
        if self._drain is None or force:
            self._drain = close
        return self._maybe_finish_draining()

    def _maybe_finish_draining(self) -> list[Action]:
        if self._drain is None or self.run.pending_turns or self.state is SessionState.CLOSED:
            return []
        self.state = SessionState.CLOSED
        return [self._drain]


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
        for key, given in parse_qsl(query, keep_blank_values=True):
            if key in SECRET_QUERY_KEYS:
                yield given

