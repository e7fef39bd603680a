"""A chat run: one conversation, sans-IO, outliving the connections that carry it.

Theory of operation
-------------------
The Connic protocol calls the conversation a *connector run* (``connector_run_id``).
antiphon keeps it apart from the connection, so that a client that reconnects can pick
it up again (``resume``). A :class:`ChatRun` is the one owner of everything that must
survive a dropped connection:

* numbering: every accepted message gets the next ``message_number``; ids already
  accepted are remembered, so a resent message is acked again and not run twice;
* the history agents see, bounded by ``history_max_chars``, handed out as an immutable
  :class:`HistoryView` that costs nothing to take (no copy per turn);
* the turns: queued or running, each accumulating its reply, bounded in JSON-escaped
  UTF-8 bytes by ``max_reply_bytes``, ending ``completed``, ``cancelled`` or ``failed``;
* the event log: :meth:`ChatRun.emit` gives a conversation event the next ``seq`` and
  returns its *wire text*, which is what the log keeps, up to ``replay_max_bytes`` of
  it, so :meth:`ChatRun.replay_after` returns exactly the frames a reconnecting client
  missed, byte for byte, and whether nothing is missing.

The Trio layer only moves what this produces: it never numbers, encodes or logs an
event itself. Connection matters (authentication, timers, which frame is refused and
why) belong to :class:`~antiphon.proto.chat.session.ChatSession`, which hands accepted
messages here.

Shared runs. With a shared run backend a run has one *owner* process, and other
processes may hold a *replica* of it (``owned = False``) for a client connected there:
a replica numbers nothing; :meth:`ChatRun.accept` answers :class:`Forward` for a
message the owner must decide on, and the owner's frames are fed in with
:meth:`ChatRun.apply_frame`, which updates the replica exactly as :meth:`ChatRun.emit`
and the turn methods updated the owner. :meth:`ChatRun.snapshot` and :meth:`ChatRun.load`
move a run between processes. An owner whose frames must be durable before clients see
them sets ``visible_through``: replay stops there, and the log never drops a frame past
it.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, overload

import attrs
import orjson
from attrs import frozen

from antiphon.errors import LocalProtocolError
from antiphon.proto._codec import quote
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
    encode_event,
)
from antiphon.proto.chat.settings import ChatSettings
from antiphon.proto.chat.snapshot import PendingTurn, RunSnapshot, decode_request

__all__ = [
    "CHARS_PER_TOKEN",
    "LOG_ENTRY_OVERHEAD_BYTES",
    "ChatRun",
    "Forward",
    "HistoryEntry",
    "HistoryView",
    "Refused",
    "ReplyTooLong",
    "TurnRequest",
    "escaped_size",
    "estimate_tokens",
]

CHARS_PER_TOKEN: Final = 4
"""The token estimate's rule of thumb: about four characters per token for English text."""

LOG_ENTRY_OVERHEAD_BYTES: Final = 64
"""What one logged frame costs beyond its text (the tuple, the int), for the replay budget."""


def estimate_tokens(text: str) -> int:
    """The documented estimate used when an agent reports no usage: ceil(len / 4)."""
    return _tokens(len(text))


def _tokens(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN)  # ceil(chars / 4) in integers


def escaped_size(text: str) -> int:
    """Bytes ``text`` takes inside a JSON string on the wire (UTF-8, escapes included)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return len(text)
    return len(orjson.dumps(text)) - 2


@frozen
class HistoryEntry:
    """One earlier utterance of the run, as an agent sees it."""

    role: str  # "user" or "assistant"
    text: str


class HistoryView(Sequence[HistoryEntry]):
    """The history as it was when a turn started: immutable, taken without copying.

    The run keeps its history as plain ``(role, text)`` tuples, which the garbage
    collector stops tracking (a thousand long conversations are millions of entries,
    and every full collection would walk them all); entries are made as they are read.
    """

    __slots__ = ("_items", "_start", "_stop")

    def __init__(self, items: list[tuple[str, str]], start: int, stop: int) -> None:
        self._items, self._start, self._stop = items, start, stop

    def __len__(self) -> int:
        return self._stop - self._start

    @overload
    def __getitem__(self, index: int) -> HistoryEntry: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[HistoryEntry, ...]: ...

    def __getitem__(self, index: int | slice) -> HistoryEntry | tuple[HistoryEntry, ...]:
        if isinstance(index, slice):
            return tuple(HistoryEntry(*item) for item in self._items[self._start : self._stop][index])
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("history index out of range")
        return HistoryEntry(*self._items[self._start + index])

    def __iter__(self) -> Iterator[HistoryEntry]:
        items = self._items
        for i in range(self._start, self._stop):
            yield HistoryEntry(*items[i])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"HistoryView({list(self)!r})"


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


@frozen
class Forward:
    """A message for a run this process holds a replica of: the owner numbers it, or refuses it.

    ``message`` carries the id it will have (one is made up when the client sent none).
    """

    message: UserMessage


class ReplyTooLong(ValueError):
    """A turn's reply grew past ``max_reply_bytes``: the turn must end as failed."""


class _Turn:
    """A pending turn's progress (private and per turn: a plain slotted class, the cheapest to make)."""

    __slots__ = ("parts", "request", "size", "started")

    def __init__(self, request: TurnRequest, parts: list[str], started: bool = False, size: int = 0) -> None:
        self.request, self.parts, self.started, self.size = request, parts, started, size


def _new_message_id(number: int) -> str:
    return f"msg_{uuid.uuid4().hex[:16]}"


class ChatRun:
    """One conversation; see the module docstring. Not thread-safe, like every sans-IO object."""

    def __init__(
        self,
        run_id: str,
        settings: ChatSettings,
        agents: tuple[str, ...] = ("assistant",),
        *,
        new_message_id: Callable[[int], str] = _new_message_id,
    ) -> None:
        self.run_id = run_id
        self.settings = settings
        self.agents = agents
        self.streaming = settings.streaming
        self.message_count = 0
        self.seq = 0
        self._new_message_id = new_message_id
        self._history: list[tuple[str, str]] = []  # (role, text): see HistoryView
        self._history_start = 0  # entries before it are beyond history_max_chars
        self._history_chars = 0
        self._turns: OrderedDict[MessageId, _Turn] = OrderedDict()
        self._accepted: dict[MessageId, int] = {}
        self._log: deque[tuple[int, str]] = deque()
        self._log_bytes = 0
        self._log_dropped_through = 0  # highest seq no longer held
        self.owned = True
        """False for a replica of a run another process owns (see the module docstring)."""
        self.visible_through: int | None = None
        """Frames after this seq are logged but may not be sent yet; None: every logged frame may be."""

    # ------------------------------------------------------------------ queries

    @property
    def pending_turns(self) -> int:
        """Accepted turns not yet ended (running or queued)."""
        return len(self._turns)

    def pending_requests(self) -> list[TurnRequest]:
        """The requests of every turn not yet ended, oldest first."""
        return [t.request for t in self._turns.values()]

    def history(self) -> HistoryView:
        """The earlier turns, oldest first, within ``history_max_chars``; immutable."""
        return HistoryView(self._history, self._history_start, len(self._history))

    def is_pending(self, id: MessageId) -> bool:
        return id in self._turns

    def request_of(self, id: MessageId) -> TurnRequest:
        """The request of the pending turn ``id``."""
        return self._require(id).request

    def partial_text(self, id: MessageId) -> str:
        """What the turn ``id`` has produced so far."""
        return "".join(self._require(id).parts)

    def turn_running(self, id: MessageId) -> bool:
        """True when ``id`` is accepted, not ended, and its agent has started."""
        turn = self._turns.get(id)
        return turn is not None and turn.started

    @property
    def visible_seq(self) -> int:
        """The last ``seq`` a client may have been sent (``seq`` unless ``visible_through`` holds frames back)."""
        return self.seq if self.visible_through is None else self.visible_through

    def message_number_of(self, id: MessageId) -> int | None:
        """The number of the accepted message ``id``, or None."""
        return self._accepted.get(id)

    def accepted_ids(self) -> list[MessageId]:
        """Every message id the run has accepted (and so remembers), oldest first."""
        return list(self._accepted)

    # ------------------------------------------------------------------ accepting messages

    def accept(self, msg: UserMessage) -> TurnRequest | Ack | Refused | Forward:
        """Take a user message: a new :class:`TurnRequest`, an :class:`Ack` to resend, or :class:`Refused`.

        An id the run accepted before is not run again and does not count: the original
        ack is the answer (not logged again; the turn's events are in the log). A replica
        (``owned = False``) answers :class:`Forward` where the owner would have numbered it.
        """
        if msg.id is not None and msg.id in self._accepted:
            return Ack(id=msg.id, message_number=self._accepted[msg.id])
        agent = msg.agent if msg.agent is not None else self.agents[0]
        if agent not in self.agents:
            return Refused(
                ErrorEvent(code=ErrorCode.UNKNOWN_AGENT, message=f"no agent named {quote(agent)}", id=msg.id)
            )
        limit = self.settings.max_messages
        if self.message_count >= limit:
            text = f"the session reached its limit of {limit} messages"
            return Refused(ErrorEvent(code=ErrorCode.MESSAGE_LIMIT, message=text, id=msg.id), limit_reached=True)
        if len(self._turns) >= self.settings.max_queued_turns:
            text = f"{len(self._turns)} turns are already waiting; send again later"
            return Refused(ErrorEvent(code=ErrorCode.QUEUE_FULL, message=text, id=msg.id))
        if not self.owned:
            if msg.id is None:
                msg = attrs.evolve(msg, id=self._new_message_id(self.message_count + 1))
            return Forward(msg)
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
        exceed ``max_reply_bytes`` as JSON-escaped UTF-8: a turn holds its whole reply for
        ``full_response``, so this bounds a runaway agent's memory, and the ``stream_end``
        frame that carries it fits common clients' 1 MiB frame limit whatever the script.
        """
        turn = self._require(request.id)
        if not chunk:
            return []
        size = escaped_size(chunk)
        if turn.size + size > self.settings.max_reply_bytes:
            raise ReplyTooLong(f"the reply exceeded {self.settings.max_reply_bytes} bytes (max_reply_bytes)")
        turn.size += size
        turn.parts.append(chunk)
        return [StreamChunk(id=request.id, agent=request.agent, chunk=chunk)] if self.streaming else []

    def turn_ended(
        self,
        request: TurnRequest,
        status: TurnStatus,
        usage: TokenUsage | None = None,
        error: str | None = None,
        code: ErrorCode = ErrorCode.AGENT_ERROR,
    ) -> list[ServerEvent]:
        """The turn is over; returns its last events (an ``error`` with ``code`` first when it failed).

        A completed turn joins the history. A cancelled or failed one does not, so the
        next turn's agent never sees a question without its answer.
        """
        turn = self._turns.pop(request.id, None)
        if turn is None:
            raise LocalProtocolError(f"turn {request.id!r} is not pending")
        parts = turn.parts
        text = parts[0] if len(parts) == 1 else "".join(parts)
        if usage is None:
            prompt = self._history_chars + len(request.message)
            usage = TokenUsage(_tokens(prompt), _tokens(len(text)))
        if status is TurnStatus.COMPLETED:
            self._remember("user", request.message)
            self._remember("assistant", text)
        out: list[ServerEvent] = []
        if status is TurnStatus.FAILED:
            out.append(ErrorEvent(code=code, message=error or "the agent failed", id=request.id))
        if self.streaming:
            out.append(
                StreamEnd(id=request.id, agent=request.agent, full_response=text, token_usage=usage, status=status)
            )
        else:
            out.append(Response(id=request.id, agent=request.agent, response=text, token_usage=usage, status=status))
        return out

    # ------------------------------------------------------------------ the event log

    def emit(self, event: ServerEvent) -> str:
        """Give a conversation event its ``seq``, log its wire text for replay, and return the text."""
        self.seq += 1
        text = encode_event(event, self.seq)
        log = self._log
        log.append((self.seq, text))
        self._log_bytes += len(text) + LOG_ENTRY_OVERHEAD_BYTES
        budget = self.settings.replay_max_bytes
        if self._log_bytes > budget:
            held = self.visible_through
            while self._log_bytes > budget and len(log) > 1:
                if held is not None and log[0][0] > held:
                    break  # not yet durable in the shared backend: it may not go yet
                seq, dropped = log.popleft()
                self._log_bytes -= len(dropped) + LOG_ENTRY_OVERHEAD_BYTES
                self._log_dropped_through = seq
        return text

    def replay_after(self, last_seq: int) -> tuple[list[tuple[int, str]], bool]:
        """Frames a client may have with ``seq > last_seq`` (seq, wire text), and whether none is missing."""
        top = self.visible_seq
        frames = [frame for frame in self.log_after(last_seq) if frame[0] <= top]
        complete = last_seq >= self._log_dropped_through and last_seq <= top
        return frames, complete

    def log_after(self, seq: int) -> list[tuple[int, str]]:
        """Every logged frame with a ``seq`` above ``seq``, visible or not, oldest first (costs what it returns)."""
        out = []
        for frame in reversed(self._log):
            if frame[0] <= seq:
                break
            out.append(frame)
        out.reverse()
        return out

    @property
    def log_first_seq(self) -> int:
        """The oldest ``seq`` the log still holds (``seq + 1`` when it holds none)."""
        return self._log[0][0] if self._log else self.seq + 1

    @property
    def log_bytes(self) -> int:
        """What the replay log holds now, in bytes (bounded by ``replay_max_bytes``)."""
        return self._log_bytes

    # ------------------------------------------------------------------ moving a run between processes

    def snapshot(self, *, path: str, accepted: Iterable[MessageId] = ()) -> RunSnapshot:
        """The run as it is now, for another process; ``accepted`` picks the ids it keeps remembering."""
        numbers = self._accepted
        return RunSnapshot(
            run_id=self.run_id,
            path=path,
            seq=self.seq,
            message_count=self.message_count,
            history=self._history[self._history_start :],
            accepted=[(id, numbers[id]) for id in accepted if id in numbers],
            turns=[
                PendingTurn(
                    id=t.request.id,
                    message_number=t.request.message_number,
                    message=t.request.message,
                    context=dict(t.request.context),
                    agent=t.request.agent,
                    started=t.started,
                    text="".join(t.parts),
                )
                for t in self._turns.values()
            ],
        )

    def load(self, snapshot: RunSnapshot, frames: Iterable[tuple[int, str, str | None]]) -> None:
        """Become the run ``snapshot`` and the ``frames`` (seq, text, request) held with it describe.

        ``frames`` are consecutive; those up to the snapshot's ``seq`` are only logged for
        replay, the later ones are applied. Raises :class:`LocalProtocolError` when they do
        not line up with the snapshot.
        """
        self.seq = self.message_count = 0
        self._history, self._history_start, self._history_chars = [], 0, 0
        for role, text in snapshot.history:
            self._remember(role, text)
        self.message_count = snapshot.message_count
        self._accepted = dict(snapshot.accepted)
        self._turns = OrderedDict()
        for p in snapshot.turns:
            pending = TurnRequest(
                id=p.id, message_number=p.message_number, message=p.message, context=p.context, agent=p.agent
            )
            self._accepted[p.id] = p.message_number
            self._turns[p.id] = _Turn(pending, [p.text] if p.text else [], p.started, escaped_size(p.text))
        self._log.clear()
        self._log_bytes = 0
        self._log_dropped_through = self.seq = snapshot.seq
        for seq, text, request in frames:
            if seq <= snapshot.seq:
                if self._log and seq != self._log[-1][0] + 1:
                    raise LocalProtocolError(f"run {self.run_id}: frame {seq} does not follow {self._log[-1][0]}")
                if not self._log:
                    self._log_dropped_through = seq - 1
                self._keep(seq, text)
            else:
                self.apply_frame(seq, text, request)
        if self._log and self._log[-1][0] < snapshot.seq:
            raise LocalProtocolError(f"run {self.run_id}: the frames end at {self._log[-1][0]}, before the snapshot")

    def apply_frame(self, seq: int, text: str, request: str | None = None) -> None:
        """Apply a frame the owner emitted (a replica's way of following it); ``request`` comes with acks.

        Raises :class:`LocalProtocolError` when ``seq`` does not follow the last one, or
        the frame is not one of this run's.
        """
        if seq != self.seq + 1:
            raise LocalProtocolError(f"run {self.run_id}: frame {seq} does not follow {self.seq}")
        try:
            event = orjson.loads(text)
            kind = event["type"]
            if kind == "ack":
                id, n = event["id"], event["message_number"]
                record = decode_request(request) if request is not None else None
                turn_request = TurnRequest(
                    id=id,
                    message_number=n,
                    message=record.message if record else "",
                    context=record.context if record else {},
                    agent=record.agent if record else self.agents[0],
                )
                self._accepted[id] = n
                self.message_count = max(self.message_count, n)
                self._turns[id] = _Turn(turn_request, [])
            elif kind == "stream_start":
                self._turns[event["id"]].started = True
            elif kind == "stream_chunk":
                turn = self._turns[event["id"]]
                chunk = event["chunk"]
                turn.started = True
                turn.parts.append(chunk)
                turn.size += escaped_size(chunk)
            elif kind == "stream_end" or kind == "response":
                ended = self._turns.pop(event["id"])
                if event["status"] == TurnStatus.COMPLETED:
                    self._remember("user", ended.request.message)
                    self._remember("assistant", event["full_response" if kind == "stream_end" else "response"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise LocalProtocolError(
                f"run {self.run_id}: frame {seq} does not apply ({type(exc).__name__}: {exc})"
            ) from None
        self.seq = seq
        self._keep(seq, text)

    # ------------------------------------------------------------------ internals

    def _keep(self, seq: int, text: str) -> None:
        self._log.append((seq, text))
        self._log_bytes += len(text) + LOG_ENTRY_OVERHEAD_BYTES
        if self._log_bytes > self.settings.replay_max_bytes:
            self._trim_log()

    def _trim_log(self) -> None:
        log, budget, held = self._log, self.settings.replay_max_bytes, self.visible_through
        while self._log_bytes > budget and len(log) > 1:
            if held is not None and log[0][0] > held:
                break  # not yet durable: it must reach the backend before it may go
            seq, dropped = log.popleft()
            self._log_bytes -= len(dropped) + LOG_ENTRY_OVERHEAD_BYTES
            self._log_dropped_through = seq

    def _require(self, id: MessageId) -> _Turn:
        try:
            return self._turns[id]
        except KeyError:
            raise LocalProtocolError(f"turn {id!r} is not pending") from None

    def _remember(self, role: str, text: str) -> None:
        history = self._history
        history.append((role, text))
        self._history_chars += len(text)
        limit = self.settings.history_max_chars
        while self._history_chars > limit and self._history_start < len(history):
            self._history_chars -= len(history[self._history_start][1])
            self._history_start += 1
        if self._history_start > 64 and self._history_start > len(history) // 2:
            # Compact: views handed out earlier keep the old list, so they stay as they were.
            self._history = history[self._history_start :]
            self._history_start = 0
