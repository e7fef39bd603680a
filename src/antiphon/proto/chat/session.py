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
  at a time, in order), :class:`~antiphon.proto.chat.run.Forward` it (the run is a
  replica: its owner, another process, decides), :class:`CancelTurn`, :class:`ResumeRun` (look the run up),
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
from collections.abc import Callable, Iterable
from typing import Final, TypeAlias
from urllib.parse import parse_qsl, urlsplit

from attrs import frozen

from antiphon.errors import DecodeError
from antiphon.proto._codec import quote
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
    ChatRun,
    Forward,
    HistoryEntry,
    Refused,
    TurnRequest,
    estimate_tokens,
)
from antiphon.proto.chat.settings import ChatSettings
from antiphon.proto.close import CloseCode

__all__ = [
    "CHARS_PER_TOKEN",
    "SECRET_HEADER",
    "SECRET_QUERY_KEYS",
    "Accept",
    "Action",
    "CancelTurn",
    "ChatSession",
    "ChatSettings",
    "Close",
    "Forward",
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


Action: TypeAlias = Send | Accept | Forward | CancelTurn | ResumeRun | SetTimer | Close


class ChatSession:
    """One connection's protocol state; see the module docstring.

    ``new_run`` makes the connection's run once it is authenticated (never before: a
    client that never authenticated costs nothing but its connection and is never
    resumable). After a ``resume``, :meth:`attach` switches to the resumed run.
    """

    def __init__(self, settings: ChatSettings, *, authenticated: bool, new_run: Callable[[], ChatRun]) -> None:
        self.settings = settings
        self.run: ChatRun | None = None
        self._new_run = new_run
        self.state = SessionState.OPEN if authenticated or not settings.require_auth else SessionState.AUTHENTICATING
        self._drain: Close | None = None
        self._touch = SetTimer(settings.session_timeout_s)  # immutable: one for every message

    # ------------------------------------------------------------------ inputs

    def open(self) -> list[Action]:
        """The WebSocket was accepted: greet an authenticated client, or start the auth clock."""
        if self.state is SessionState.OPEN:
            return self._authenticated()
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
        if type(msg) is UserMessage and self.state is SessionState.OPEN:
            # The common frame first: a user message on an open session.
            assert self.run is not None
            out = self._accept(self.run, msg)
            out.append(self._touch)
            return out
        if isinstance(msg, Ping):
            return [Send(Pong()), *self._activity()]
        if isinstance(msg, Auth):
            if self.state is not SessionState.AUTHENTICATING:
                return self._activity()  # already authenticated (header, query or earlier frame)
            if not _secret_matches(msg.secret, self.settings.secret):
                return self._fail_auth(ErrorCode.AUTH_FAILED, "invalid secret")
            self.state = SessionState.OPEN
            return self._authenticated()
        if self.state is SessionState.AUTHENTICATING:
            return self._fail_auth(ErrorCode.AUTH_REQUIRED, 'the first message must be {"secret": ...}')
        run = self.run
        assert run is not None
        if isinstance(msg, Resume):
            return [*self._resume(run, msg), *self._activity()]
        if isinstance(msg, Cancel):
            if not run.is_pending(msg.id):
                text = f"no turn {quote(msg.id)} is running or queued"
                return [Send(ErrorEvent(code=ErrorCode.UNKNOWN_TURN, message=text, id=msg.id)), *self._activity()]
            return [CancelTurn(msg.id), *self._activity()]
        return [*self._accept(run, msg), *self._activity()]

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

    def shutdown(self, *, restart: bool = False) -> list[Action]:
        """The server is stopping: refuse new messages, close once accepted turns are done.

        With ``restart`` (runs live on in a shared backend) the close is 1012, which tells a
        client to reconnect, to another server, and resume.
        """
        if self.state is SessionState.CLOSED:
            return []
        if restart:
            event = ErrorEvent(code=ErrorCode.SERVER_SHUTDOWN, message="the server is restarting: reconnect and resume")
            close = Close(CloseCode.SERVICE_RESTART, "server restart", event)
        else:
            event = ErrorEvent(code=ErrorCode.SERVER_SHUTDOWN, message="the server is shutting down")
            close = Close(CloseCode.SERVER_SHUTDOWN, "server shutdown", event)
        if self.state is SessionState.AUTHENTICATING:
            self.state = SessionState.CLOSED
            return [close]
        return self._start_draining(close, force=True)

    def turn_ended(self) -> list[Action]:
        """One of the run's turns ended: a draining session may now close."""
        return self._maybe_finish_draining()

    def attach(self, run: ChatRun, last_seq: int) -> tuple[list[tuple[int, str]], list[Action]]:
        """``resume`` found ``run``: switch to it; returns the frames to replay (seq, text), then the actions."""
        self.run = run
        frames, complete = run.replay_after(last_seq)
        resumed = Resumed(
            connector_run_id=run.run_id, last_seq=run.visible_seq, replayed=len(frames), complete=complete
        )
        return frames, [Send(resumed)]

    def resume_failed(self, run_id: str) -> list[Action]:
        """``resume`` named a run that is unknown or expired; this connection keeps its own run."""
        own = self.run.run_id if self.run is not None else "?"
        text = f"no resumable run {quote(run_id)} (unknown or expired); continue in run {own!r}"
        return [Send(ErrorEvent(code=ErrorCode.UNKNOWN_RUN, message=text))]

    # ------------------------------------------------------------------ internals

    def _authenticated(self) -> list[Action]:
        run = self.run = self._new_run()
        connected = Connected(session_id=run.run_id, connector_run_id=run.run_id, agents=run.agents)
        return [Send(connected), SetTimer(self.settings.session_timeout_s)]

    def _activity(self) -> list[Action]:
        if self.state is SessionState.OPEN or self.state is SessionState.DRAINING:
            return [self._touch]
        return []

    def _fail_auth(self, code: ErrorCode, message: str) -> list[Action]:
        self.state = SessionState.CLOSED
        return [Close(CloseCode.AUTH_FAILED, "authentication failed", ErrorEvent(code=code, message=message))]

    def _resume(self, run: ChatRun, msg: Resume) -> list[Action]:
        if run.message_count or run.seq:
            text = "resume must come before the first message of a connection"
            return [Send(ErrorEvent(code=ErrorCode.INVALID_MESSAGE, message=text))]
        if msg.connector_run_id == run.run_id:
            return []
        return [ResumeRun(msg.connector_run_id, msg.last_seq)]

    def _accept(self, run: ChatRun, msg: UserMessage) -> list[Action]:
        if self._drain is not None:
            code = ErrorCode.MESSAGE_LIMIT if self._drain.code is CloseCode.MESSAGE_LIMIT else ErrorCode.SERVER_SHUTDOWN
            return [Send(ErrorEvent(code=code, message="the session accepts no more messages", id=msg.id))]
        result = run.accept(msg)
        if type(result) is TurnRequest:
            return [Accept(result)]
        if isinstance(result, Forward):
            return [result]
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
        if self._drain is None or self.state is SessionState.CLOSED:
            return []
        if self.run is not None and self.run.pending_turns:
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
