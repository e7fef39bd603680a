"""The chat protocol's wire messages, close codes and error codes, and their codec.

The protocol is the "Connic" WebSocket connector protocol: JSON text frames, one object
each, discriminated by ``"type"``. Clients send::

    {"secret": "..."}                                   first-message authentication
    {"type": "message", "id": "msg-001",
     "payload": {"message": "...", "context": {...}}}   a user message (id, context optional)
    {"message": "..."}  /  {"content": "..."}           shorthands for the same
    {"type": "ping"}                                    application keepalive for browsers
    {"type": "resume", "connector_run_id": "...",
     "last_seq": 17}                                    pick up a run after a reconnect
    {"type": "cancel", "id": "msg-001"}                 stop a turn

and the gateway answers with ``connected``, ``ack``, ``stream_start`` /
``stream_chunk`` / ``stream_end`` or ``response``, ``pong``, ``resumed`` and ``error``.

Events that belong to the conversation (acks, a turn's events, a turn's error) carry
``seq``: 1, 2, 3... per run, without gaps, so a client can tell what it missed and ask
for it with ``resume``. Events about the connection itself (``connected``, ``pong``,
``resumed``, errors about a frame that was refused) carry no ``seq``: they are not
replayed.

Where the public protocol is silent antiphon defines the ``error`` event and the close
codes below; the README's protocol table is generated from the same facts.

One private cattrs converter (``_converter``) serves this schema family. Decoding never
raises anything but :class:`~antiphon.errors.DecodeError`, whose text locates the
problem (``$.payload.message: expected a string, got an integer``) and is safe to send
back to the peer. A ``context`` may nest objects and lists :data:`CONTEXT_MAX_DEPTH`
levels deep; a deeper one is refused here (``invalid_message``), so nothing downstream
(the store, an agent's own code) has to recurse that far.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, TypeAlias

import attrs
from attrs import frozen
from cattrs.gen import make_dict_unstructure_fn, override

from antiphon.errors import DecodeError
from antiphon.proto._codec import (
    dumps,
    expect_object,
    loads,
    make_converter,
    quote,
    structure,
)

__all__ = [
    "CONTEXT_MAX_DEPTH",
    "ID_MAX_CHARS",
    "Ack",
    "Auth",
    "Cancel",
    "ClientMessage",
    "Connected",
    "ErrorCode",
    "ErrorEvent",
    "MessageId",
    "Ping",
    "Pong",
    "Response",
    "Resume",
    "Resumed",
    "ServerEvent",
    "StreamChunk",
    "StreamEnd",
    "StreamStart",
    "TokenUsage",
    "TurnStatus",
    "UserMessage",
    "decode_client_message",
    "decode_server_event",
    "decode_server_frame",
    "encode_client_message",
    "encode_event",
]


class ErrorCode(enum.StrEnum):
    """The ``code`` of an ``error`` event."""

    AUTH_FAILED = "auth_failed"
    AUTH_REQUIRED = "auth_required"
    AUTH_TIMEOUT = "auth_timeout"
    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_AGENT = "unknown_agent"
    UNKNOWN_RUN = "unknown_run"
    UNKNOWN_TURN = "unknown_turn"
    STORE_ERROR = "store_error"
    QUEUE_FULL = "queue_full"
    MESSAGE_LIMIT = "message_limit"
    SESSION_EXPIRED = "session_expired"
    AGENT_ERROR = "agent_error"
    SERVER_SHUTDOWN = "server_shutdown"
    SERVER_FULL = "server_full"
    SLOW_CONSUMER = "slow_consumer"
    INTERNAL_ERROR = "internal_error"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    """The shared run backend (Redis) cannot be reached: the message was not accepted; send it again later."""
    TURN_INTERRUPTED = "turn_interrupted"
    """The process running the turn stopped; another took the run over and ended the turn ``failed``."""


CONTEXT_MAX_DEPTH: Final = 64
"""Nesting levels a message's ``context`` may have (``{}`` is one): ample for metadata, far from any recursion limit."""

ID_MAX_CHARS: Final = 256
"""Characters a message or cancel id may have: it is echoed in every event of its turn, and kept for idempotency."""

MessageId: TypeAlias = str | int
"""A turn's id: whatever the client sent (string or integer, at most :data:`ID_MAX_CHARS`), echoed back unchanged."""


# --------------------------------------------------------------------------- client side


@frozen
class Auth:
    """``{"secret": "..."}``: first-message authentication."""

    secret: str


@frozen
class UserMessage:
    """A user message; ``id`` is None when the client sent none."""

    message: str
    id: MessageId | None = None
    context: Mapping[str, Any] = attrs.field(factory=dict)
    agent: str | None = None


@frozen
class Ping:
    """``{"type": "ping"}``: an application-level keepalive (browsers cannot send WebSocket pings)."""


@frozen
class Resume:
    """``{"type": "resume", ...}``: attach this connection to an earlier run and replay what it missed."""

    connector_run_id: str
    last_seq: int = 0


@frozen
class Cancel:
    """``{"type": "cancel", "id": ...}``: stop that turn's generation now."""

    id: str | int


ClientMessage: TypeAlias = Auth | UserMessage | Ping | Resume | Cancel


class TurnStatus(enum.StrEnum):
    """How a turn ended, as ``stream_end`` / ``response`` report it in ``status``."""

    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


@frozen
class _Payload:
    message: str | None = None
    content: str | None = None
    context: dict[str, Any] | None = None
    agent: str | None = None


@frozen
class _MessageEnvelope:
    payload: _Payload
    id: str | int | None = None


@frozen
class _Shorthand:
    message: str | None = None
    content: str | None = None
    id: str | int | None = None
    context: dict[str, Any] | None = None
    agent: str | None = None


# --------------------------------------------------------------------------- server side


@frozen
class TokenUsage:
    """Tokens a turn consumed: ``prompt_tokens`` in, ``candidates_tokens`` out."""

    prompt_tokens: int
    candidates_tokens: int


@frozen(kw_only=True)
class Connected:
    """Sent once authenticated; ``session_id`` and ``connector_run_id`` carry the same id."""

    type: ClassVar[str] = "connected"
    session_id: str
    connector_run_id: str
    agents: tuple[str, ...]


@frozen(kw_only=True)
class Ack:
    """A message was accepted; ``message_number`` counts from 1 in the session."""

    type: ClassVar[str] = "ack"
    id: MessageId
    message_number: int


@frozen(kw_only=True)
class StreamStart:
    type: ClassVar[str] = "stream_start"
    id: MessageId
    agent: str


@frozen(kw_only=True)
class StreamChunk:
    type: ClassVar[str] = "stream_chunk"
    id: MessageId
    agent: str
    chunk: str


@frozen(kw_only=True)
class StreamEnd:
    type: ClassVar[str] = "stream_end"
    id: MessageId
    agent: str
    full_response: str
    token_usage: TokenUsage
    status: str = TurnStatus.COMPLETED


@frozen(kw_only=True)
class Response:
    """The whole reply of a turn when streaming is off."""

    type: ClassVar[str] = "response"
    id: MessageId
    agent: str
    response: str
    token_usage: TokenUsage
    status: str = TurnStatus.COMPLETED


@frozen(kw_only=True)
class ErrorEvent:
    """``{"type": "error", "code", "message", "id"}``; ``id`` is left out when no turn is concerned."""

    type: ClassVar[str] = "error"
    code: str
    message: str
    id: MessageId | None = None


@frozen(kw_only=True)
class Pong:
    type: ClassVar[str] = "pong"


@frozen(kw_only=True)
class Resumed:
    """The answer to ``resume``: ``complete`` is False when some missed events were no longer held."""

    type: ClassVar[str] = "resumed"
    connector_run_id: str
    last_seq: int
    replayed: int
    complete: bool


ServerEvent: TypeAlias = (
    Connected | Ack | StreamStart | StreamChunk | StreamEnd | Response | ErrorEvent | Pong | Resumed
)

_EVENT_TYPES: Final[dict[str, type]] = {
    cls.type: cls for cls in (Connected, Ack, StreamStart, StreamChunk, StreamEnd, Response, ErrorEvent, Pong, Resumed)
}

# --------------------------------------------------------------------------- the converter

_converter = make_converter()


def _register_event(cls: type) -> None:
    overrides: dict[str, Any] = {a.name: override(omit_if_default=True) for a in attrs.fields(cls) if a.default is None}
    body: Callable[[Any], dict[str, Any]] = make_dict_unstructure_fn(cls, _converter, **overrides)
    tag = cls.type  # type: ignore[attr-defined]

    def unstructure(event: Any) -> dict[str, Any]:
        return {"type": tag, **body(event)}

    _converter.register_unstructure_hook(cls, unstructure)


for _cls in _EVENT_TYPES.values():
    _register_event(_cls)


def _usage(u: TokenUsage) -> dict[str, int]:
    return {"prompt_tokens": u.prompt_tokens, "candidates_tokens": u.candidates_tokens}


# The events of every turn, built by hand: the same documents the converter makes
# (a test holds them equal), for a fraction of the cost on the hot path.
_FAST_ENCODERS: Final[dict[type, Any]] = {
    Ack: lambda e: {"type": "ack", "id": e.id, "message_number": e.message_number},
    StreamStart: lambda e: {"type": "stream_start", "id": e.id, "agent": e.agent},
    StreamChunk: lambda e: {"type": "stream_chunk", "id": e.id, "agent": e.agent, "chunk": e.chunk},
    StreamEnd: lambda e: {
        "type": "stream_end",
        "id": e.id,
        "agent": e.agent,
        "full_response": e.full_response,
        "token_usage": _usage(e.token_usage),
        "status": e.status,
    },
    Response: lambda e: {
        "type": "response",
        "id": e.id,
        "agent": e.agent,
        "response": e.response,
        "token_usage": _usage(e.token_usage),
        "status": e.status,
    },
}


def encode_event(event: ServerEvent, seq: int | None = None) -> str:
    """The JSON text of a server event, ``type`` first and ``seq`` last when given."""
    fast = _FAST_ENCODERS.get(type(event))
    doc = fast(event) if fast is not None else _converter.unstructure(event)
    if seq is not None:
        doc["seq"] = seq
    return dumps(doc)


def decode_server_frame(data: str | bytes) -> tuple[ServerEvent, int | None]:
    """Parse a gateway frame into its event and its ``seq`` (None when it has none)."""
    obj = expect_object(loads(data))
    kind = obj.get("type")
    cls = _EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise DecodeError(f"$.type: unknown event type {quote(kind)}")
    seq = obj.get("seq")
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
        raise DecodeError("$.seq: expected an integer")
    body = {k: v for k, v in obj.items() if k != "type" and k != "seq"}
    return structure(_converter, body, cls), seq


def decode_server_event(data: str | bytes) -> ServerEvent:
    """Parse a gateway event (the client's side of the protocol); raise :class:`DecodeError`."""
    return decode_server_frame(data)[0]


def decode_client_message(data: str | bytes) -> ClientMessage:
    """Parse one client frame into :data:`ClientMessage`; raise :class:`DecodeError`.

    Frames without ``type`` are read by their keys: ``secret`` is authentication,
    ``message`` or ``content`` a shorthand user message. ``DecodeError.errors[0]`` starts
    with ``$.type: unknown message type`` for a type the gateway does not know, so the
    caller can answer ``unknown_type`` rather than ``invalid_message``.
    """
    obj = expect_object(loads(data))
    kind = obj.get("type")
    if kind is None:
        if "secret" in obj:
            return structure(_converter, obj, Auth)
        if "message" in obj or "content" in obj:
            short = structure(_converter, obj, _Shorthand)
            return _user_message(short.message, short.content, short.id, short.context, short.agent, "$")
        raise DecodeError('$: expected a "type", a "message" or a "secret"')
    if kind == "message":
        fast = _fast_user_message(obj)
        if fast is not None:
            return fast
        # Something is off: the strict converter says exactly what, and where.
        env = structure(_converter, obj, _MessageEnvelope)
        p = env.payload
        return _user_message(p.message, p.content, env.id, p.context, p.agent, "$.payload")
    if kind == "ping":
        return Ping()
    if kind == "resume":
        resume = structure(_converter, obj, Resume)
        if resume.last_seq < 0:
            raise DecodeError("$.last_seq: must not be negative")
        return resume
    if kind == "cancel":
        cancel = structure(_converter, obj, Cancel)
        _check_id(cancel.id)
        return cancel
    if kind == "auth":
        return structure(_converter, obj, Auth)
    if not isinstance(kind, str):
        raise DecodeError("$.type: expected a string")
    raise DecodeError(f"$.type: unknown message type {quote(kind)}")


def _fast_user_message(obj: dict[str, Any]) -> UserMessage | None:
    """The common, well-formed ``message`` envelope decoded by hand (what the converter would give); None otherwise."""
    payload, mid = obj.get("payload"), obj.get("id")
    if type(payload) is not dict or not (mid is None or type(mid) is str or type(mid) is int):
        return None
    message, content = payload.get("message"), payload.get("content")
    context, agent = payload.get("context"), payload.get("agent")
    if (
        (message is None or type(message) is str)
        and (content is None or type(content) is str)
        and (context is None or type(context) is dict)
        and (agent is None or type(agent) is str)
    ):
        return _user_message(message, content, mid, context, agent, "$.payload")
    return None


def _user_message(
    message: str | None,
    content: str | None,
    id: MessageId | None,
    context: dict[str, Any] | None,
    agent: str | None,
    where: str,
) -> UserMessage:
    text = message if message is not None else content
    if text is None:
        raise DecodeError(f"{where}.message: required field missing")
    if not text.strip():
        raise DecodeError(f"{where}.message: must not be empty")
    _check_id(id)
    if context and _nesting_exceeds(context, CONTEXT_MAX_DEPTH):
        raise DecodeError(f"{where}.context: nested deeper than {CONTEXT_MAX_DEPTH} levels")
    return UserMessage(message=text, id=id, context=context or {}, agent=agent)


def _check_id(id: MessageId | None) -> None:
    if isinstance(id, str) and not 0 < len(id) <= ID_MAX_CHARS:
        raise DecodeError("$.id: must not be empty" if not id else f"$.id: longer than {ID_MAX_CHARS} characters")


def _nesting_exceeds(value: dict[str, Any], limit: int) -> bool:
    """Whether objects and lists in ``value`` nest more than ``limit`` levels (iteratively: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def encode_client_message(message: ClientMessage) -> str:
    """The JSON text a client sends for ``message`` (used by antiphon's own client)."""
    if isinstance(message, Auth):
        return dumps({"secret": message.secret})
    if isinstance(message, Ping):
        return dumps({"type": "ping"})
    if isinstance(message, Resume):
        return dumps({"type": "resume", "connector_run_id": message.connector_run_id, "last_seq": message.last_seq})
    if isinstance(message, Cancel):
        return dumps({"type": "cancel", "id": message.id})
    payload: dict[str, Any] = {"message": message.message}
    if message.context:
        payload["context"] = dict(message.context)
    if message.agent is not None:
        payload["agent"] = message.agent
    doc: dict[str, Any] = {"type": "message"}
    if message.id is not None:
        doc["id"] = message.id
    doc["payload"] = payload
    return dumps(doc)
