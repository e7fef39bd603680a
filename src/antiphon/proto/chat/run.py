"""A chat run: one conversation, sans-IO, outliving the connections that carry it.

Theory of operation
-------------------
The Connic protocol calls the conversation a *connector run* (``connector_run_id``).
antiphon keeps it apart from the connection, so that a client that reconnects can pick
it up again (``resume``). A :class:`ChatRun` owns everything that must survive a dropped
connection:

* numbering: every accepted message gets the next ``message_number``; ids already
  accepted are remembered, so a resent message is acked again and not run twice;
* the history agents see, bounded by ``history_max_chars``;
* the turns: queued or running, each accumulating its reply, ending ``completed``,
  ``cancelled`` or ``failed``;
* the event log: every conversation event gets the next ``seq`` when it is sent
  (:meth:`ChatRun.emit`) and is kept, up to ``replay_max_bytes``, so that
  :meth:`ChatRun.replay_after` can return what a reconnecting client missed and say
  whether that is complete.

Connection matters (authentication, timers, which frame is refused and why) belong to
:class:`~antiphon.proto.chat.session.ChatSession`, which hands accepted messages here.
"""

from __future__ import annotations

import math
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any, Final

from attrs import define, frozen

from antiphon.errors import LocalProtocolError
from antiphon.proto.chat.messages import (
    Ack,
    ErrorCode,
    ErrorEvent,
    MessageId,
    Response,
    ServerEvent,
    StreamChunk,
    StreamEnd,
    StreamStart,
    TokenUsage,
    TurnStatus,
    UserMessage,
)

__all__ = [
    "CHARS_PER_TOKEN",
    "ChatRun",
    "HistoryEntry",
    "Refused",
    "ReplyTooLong",
    "TurnRequest",
    "estimate_tokens",
]

CHARS_PER_TOKEN: Final = 4
"""The token estimate's rule of thumb: about four characters per token for English text."""

EVENT_OVERHEAD_BYTES: Final = 256
"""What one logged event costs beyond its text (the event object, its id, the log entry), for the replay budget."""

REPLAY_MAX_BYTES: Final = 256 * 1024
"""Default replay budget per run: minutes of a streamed reply, far more than a reconnect misses."""


def estimate_tokens(text: str) -> int:
    """The documented estimate used when an agent reports no usage: ceil(len / 4)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@frozen
class HistoryEntry:
    """One earlier utterance of the run, as an agent sees it."""

    role: str  # "user" or "assistant"
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
class Refused:
    """A message the run did not accept; ``event`` says why (no ``seq``: it is not replayed)."""

    event: ErrorEvent
    limit_reached: bool = False


class ReplyTooLong(ValueError):
    """A turn's reply grew past ``max_reply_chars``: the turn must end as failed."""


@define
class _Turn:
    request: TurnRequest
    parts: list[str]
    started: bool = False
    chars: int = 0


def _new_message_id(number: int) -> str:
    return f"msg_{uuid.uuid4().hex[:16]}"


class ChatRun:
    """One conversation; see the module docstring. Not thread-safe, like every sans-IO object."""

    def __init__(
        self,
        run_id: str,
        *,
        agents: tuple[str, ...] = ("assistant",),
        streaming: bool = True,
        max_messages: int = 100,
        max_queued_turns: int = 16,
        history_max_chars: int = 1_000_000,
        replay_max_bytes: int = REPLAY_MAX_BYTES,
        max_reply_chars: int = 1_000_000,
        new_message_id: Callable[[int], str] = _new_message_id,
    ) -> None:
        self.run_id = run_id
        self.agents = agents
        self.streaming = streaming
        self.max_messages = max_messages
        self.max_queued_turns = max_queued_turns
        self.history_max_chars = history_max_chars
        self.replay_max_bytes = replay_max_bytes
        self.max_reply_chars = max_reply_chars
        self.message_count = 0
        self.seq = 0
        self._new_message_id = new_message_id
        self._history: deque[HistoryEntry] = deque()
        self._history_view: tuple[HistoryEntry, ...] | None = ()  # what history() returns, until it changes
        self._history_chars = 0
        self._turns: OrderedDict[MessageId, _Turn] = OrderedDict()
        self._accepted: dict[MessageId, int] = {}
        self._log: deque[tuple[int, ServerEvent, int]] = deque()
        self._log_bytes = 0
        self._log_dropped_through = 0  # highest seq no longer held

    # ------------------------------------------------------------------ queries

    @property
    def pending_turns(self) -> int:
        """Accepted turns not yet ended (running or queued)."""
        return len(self._turns)

    def history(self) -> tuple[HistoryEntry, ...]:
        """The earlier turns, oldest first, within ``history_max_chars``."""
        if self._history_view is None:
            self._history_view = tuple(self._history)
        return self._history_view

    def is_pending(self, id: MessageId) -> bool:
        return id in self._turns

    def request_of(self, id: MessageId) -> TurnRequest:
        """The request of the pending turn ``id``."""
        return self._require(id).request

    def partial_text(self, id: MessageId) -> str:
        """What the turn ``id`` has produced so far."""
        return "".join(self._require(id).parts)

    # ------------------------------------------------------------------ accepting messages

    def accept(self, msg: UserMessage) -> TurnRequest | Ack | Refused:
        """Take a user message: a new :class:`TurnRequest`, an :class:`Ack` to resend, or :class:`Refused`.

        An id the run accepted before is not run again and does not count: the original
        ack is the answer (not logged again; the turn's events are in the log).
        """
        if msg.id is not None and msg.id in self._accepted:
            return Ack(id=msg.id, message_number=self._accepted[msg.id])
        agent = msg.agent if msg.agent is not None else self.agents[0]
        if agent not in self.agents:
            return Refused(ErrorEvent(code=ErrorCode.UNKNOWN_AGENT, message=f"no agent named {agent!r}", id=msg.id))
        if self.message_count >= self.max_messages:
            text = f"the session reached its limit of {self.max_messages} messages"
            return Refused(ErrorEvent(code=ErrorCode.MESSAGE_LIMIT, message=text, id=msg.id), limit_reached=True)
        if len(self._turns) >= self.max_queued_turns:
            text = f"{len(self._turns)} turns are already waiting; send again later"
            return Refused(ErrorEvent(code=ErrorCode.QUEUE_FULL, message=text, id=msg.id))
        self.message_count += 1
        n = self.message_count
        mid = msg.id if msg.id is not None else self._new_message_id(n)
        self._accepted[mid] = n
        request = TurnRequest(id=mid, message_number=n, message=msg.message, context=msg.context, agent=agent)
        self._turns[mid] = _Turn(request, [])
        return request

    def withdraw(self, request: TurnRequest) -> None:
        """Forget an accepted message that could not be stored: it was never acked."""
        self._turns.pop(request.id, None)
        self._accepted.pop(request.id, None)
        self.message_count -= 1

    # ------------------------------------------------------------------ turn progress

    def turn_started(self, request: TurnRequest) -> list[ServerEvent]:
        """The agent starts: ``stream_start`` when streaming."""
        self._require(request.id).started = True
        return [StreamStart(id=request.id, agent=request.agent)] if self.streaming else []

    def turn_chunk(self, request: TurnRequest, chunk: str) -> list[ServerEvent]:
        """The agent produced ``chunk``: a ``stream_chunk`` when streaming and not empty.

        Raises :class:`ReplyTooLong` (and keeps nothing of ``chunk``) once the reply would
        exceed ``max_reply_chars``: a turn holds its whole reply for ``full_response``, so
        this is what bounds a runaway agent's memory, and the ``stream_end`` frame that
        carries it stays within common clients' 1 MiB frame limit.
        """
        turn = self._require(request.id)
        if not chunk:
            return []
        if turn.chars + len(chunk) > self.max_reply_chars:
            raise ReplyTooLong(f"the reply exceeded {self.max_reply_chars} characters (max_reply_chars)")
        turn.chars += len(chunk)
        turn.parts.append(chunk)
        return [StreamChunk(id=request.id, agent=request.agent, chunk=chunk)] if self.streaming else []

    def turn_ended(
        self, request: TurnRequest, status: TurnStatus, usage: TokenUsage | None = None, error: str | None = None
    ) -> list[ServerEvent]:
        """The turn is over; returns its last events (an ``error`` first when it failed).

        A completed turn joins the history. A cancelled or failed one does not, so the
        next turn's agent never sees a question without its answer.
        """
        turn = self._require(request.id)
        del self._turns[request.id]
        text = "".join(turn.parts)
        if usage is None:
            prompt = self._history_chars + len(request.message)
            usage = TokenUsage(math.ceil(prompt / CHARS_PER_TOKEN), estimate_tokens(text))
        if status is TurnStatus.COMPLETED:
            self._remember(HistoryEntry("user", request.message))
            self._remember(HistoryEntry("assistant", text))
        out: list[ServerEvent] = []
        if status is TurnStatus.FAILED:
            out.append(ErrorEvent(code=ErrorCode.AGENT_ERROR, message=error or "the agent failed", id=request.id))
        if self.streaming:
            out.append(StreamEnd(id=request.id, agent=request.agent, full_response=text, token_usage=usage, status=status))
        else:
            out.append(Response(id=request.id, agent=request.agent, response=text, token_usage=usage, status=status))
        return out

    def turn_running(self, id: MessageId) -> bool:
        """True when ``id`` is accepted, not ended, and its agent has started."""
        turn = self._turns.get(id)
        return turn is not None and turn.started

    # ------------------------------------------------------------------ the event log

    def emit(self, event: ServerEvent) -> int:
        """Give a conversation event its ``seq`` and log it for replay; returns the seq."""
        self.seq += 1
        size = _event_size(event)
        self._log.append((self.seq, event, size))
        self._log_bytes += size
        while self._log_bytes > self.replay_max_bytes and len(self._log) > 1:
            seq, _, dropped = self._log.popleft()
            self._log_bytes -= dropped
            self._log_dropped_through = seq
        return self.seq

    def replay_after(self, last_seq: int) -> tuple[list[tuple[int, ServerEvent]], bool]:
        """Logged events with ``seq > last_seq``, and whether none of them is missing."""
        events = [(seq, ev) for seq, ev, _ in self._log if seq > last_seq]
        complete = last_seq >= self._log_dropped_through and last_seq <= self.seq
        return events, complete

    # ------------------------------------------------------------------ internals

    def _require(self, id: MessageId) -> _Turn:
        try:
            return self._turns[id]
        except KeyError:
            raise LocalProtocolError(f"turn {id!r} is not pending") from None

    def _remember(self, entry: HistoryEntry) -> None:
        self._history_view = None
        self._history.append(entry)
        self._history_chars += len(entry.text)
        while self._history_chars > self.history_max_chars and self._history:
            self._history_chars -= len(self._history.popleft().text)


def _event_size(event: ServerEvent) -> int:
    size = EVENT_OVERHEAD_BYTES
    for name in ("chunk", "full_response", "response", "message"):
        value = getattr(event, name, None)
        if isinstance(value, str):
            size += len(value)
    return size
