"""The per-run halves of shared runs: what an owner has made durable, a follower's link to the owner.

* :class:`Replica` - an owned run's bookkeeping: the last ``seq`` the backend holds, the
  requests behind acks not yet written, the ids accepted within the idempotency
  window, when to snapshot and trim; it builds each :class:`Append` and applies its result.
* :class:`Follow` - a followed run's link to its owner: the local connection's token,
  and the messages forwarded and not yet acked (re-sent, or accepted, if the owner changes).
* :class:`RemoteHolder` - the owner's stand-in for a connection on another node.

The :class:`~antiphon.chat.backends.node.Node` drives all three; see its module docstring.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Final, Literal

import orjson
import trio

from antiphon.chat.backends.base import (
    MESSAGE_ID_WINDOW_S,
    Append,
    AppendStatus,
    Command,
    CommandKind,
    Frame,
    Lease,
    NodeId,
)
from antiphon.proto.chat.messages import MessageId, UserMessage, encode_client_message
from antiphon.proto.chat.snapshot import encode_request, encode_snapshot

if TYPE_CHECKING:
    from antiphon.chat.backends.node import Node
    from antiphon.chat.runs import LiveRun, RunHolder
    from antiphon.engine.session import Session
    from antiphon.proto.chat.run import TurnRequest

__all__ = [
    "APPEND_MAX_BYTES",
    "TRIM_EVERY_FRAMES",
    "UNFLUSHED_HIGH_BYTES",
    "Follow",
    "RemoteHolder",
    "Replica",
    "now",
]

log = logging.getLogger("antiphon.runs")

UNFLUSHED_HIGH_BYTES: Final = 64 * 1024
"""A turn waits while more than this of its run's frames is not yet durable (a slow backend slows agents)."""
APPEND_MAX_BYTES: Final = 256 * 1024
"""Frame text per run per write: bounds one round trip; the rest goes in the next."""
TRIM_EVERY_FRAMES: Final = 64
"""The backend's log is trimmed once this many frames may go (not at every append: trimming costs Redis a scan)."""


def now() -> float:
    """Wall-clock time for the idempotency window (it crosses processes)."""
    return time.time()


class RemoteHolder:
    """The owner's stand-in for a connection on another node: frames without ``seq`` go to it as replies."""

    def __init__(self, node: Node, run: LiveRun, conn: str) -> None:
        self.node, self.run, self.conn = node, run, conn
        self.session: Session | None = None  # never a local session: numbered frames reach it through the backend
        self.node_id = conn.partition("/")[0]

    def deliver(self, text: str) -> None:
        self.node.send(self.node_id, Command(kind=CommandKind.REPLY, run_id=self.run.run_id, conn=self.conn, body=text))

    def turn_ended(self) -> None:
        """Nothing: the connection's own node sees the turn end in the log."""

    def run_lost(self, code: int, reason: str) -> None:
        body = f"{int(code)} {reason}"
        self.node.send(self.node_id, Command(kind=CommandKind.CLOSE, run_id=self.run.run_id, conn=self.conn, body=body))


class Replica:
    """What an owned run has written to the backend, and what it has yet to."""

    def __init__(self, node: Node, run: LiveRun, *, snapshot_seq: int | None = None) -> None:
        self.node, self.run = node, run
        state = run.state
        self.flushed = state.seq  # the last seq the backend holds
        state.visible_through = state.seq
        self.written = snapshot_seq is not None  # the backend knows the run (taken over, or appended to)
        self.snapshot_seq = -1 if snapshot_seq is None else snapshot_seq
        self.snapshot_bytes = 0
        self.since_snapshot_bytes = 0
        self.unflushed_bytes = 0
        self.trimmed_from = 0  # the backend's log holds no frame below this seq
        self.requests: dict[int, str] = {}  # ack seq -> its request, until written
        self.accepted: deque[tuple[float, MessageId]] = deque()
        self.replace = False
        self.finishing: Literal["end", "release"] | None = None  # once the run is over here
        self.done = False
        self.room = trio.lowlevel.ParkingLot()
        if snapshot_seq is not None:  # taken over: the ids it knows stay known for another window
            t = now()
            self.accepted.extend((t, id) for id in state.accepted_ids())

    def lease(self) -> Lease:
        settings = self.run.settings
        ttl = self.node.lease_ttl_s
        return Lease(run_id=self.run.run_id, lease_ttl_s=ttl, state_ttl_s=settings.resume_grace_s + ttl)

    # ------------------------------------------------------------------ called by the run

    def emitted(self, size: int) -> None:
        """The run logged a frame of ``size`` bytes: write it (it is sent once written)."""
        self.unflushed_bytes += size
        self.node.mark(self)

    def acked(self, seq: int, request: TurnRequest) -> None:
        """Frame ``seq`` acks ``request``: keep the request beside it, and its id for the window."""
        self.requests[seq] = encode_request(request.message, request.context, request.agent)
        self.accepted.append((now(), request.id))

    async def wait_for_room(self) -> None:
        """Wait while too much of the run is not yet durable (the backend is slow, or away)."""
        while self.unflushed_bytes > UNFLUSHED_HIGH_BYTES and not self.done:
            await self.room.park()

    # ------------------------------------------------------------------ called by the writer

    def build(self) -> Append | None:
        state = self.run.state
        frames: list[Frame] = []
        size = 0
        start = state.log_first_seq - 1 if self.replace else self.flushed
        for seq, text in state.log_after(start):
            frames.append(Frame(seq, text, self.requests.get(seq)))
            size += len(text)
            if size >= APPEND_MAX_BYTES and not self.replace:
                break
        last = frames[-1].seq if frames else start
        snapshot = None
        due = (
            self.replace
            or self.snapshot_seq < 0
            or self.since_snapshot_bytes + size >= max(self.run.settings.replay_max_bytes, self.snapshot_bytes)
        )
        if due and last == state.seq:  # a snapshot is of the run now: only with every frame up to now
            snapshot = encode_snapshot(state.snapshot(path=self.run.path, accepted=self._recent_ids()))
        if not frames and snapshot is None and not self.replace:
            return None
        snap_seq = last if snapshot is not None else self.snapshot_seq
        keep_from = min(state.log_first_seq, snap_seq + 1) if snap_seq >= 0 else None
        if keep_from is not None and keep_from < self.trimmed_from + TRIM_EVERY_FRAMES and snapshot is None:
            keep_from = None
        return Append(
            lease=self.lease(), frames=frames, after=start, snapshot=snapshot, keep_from=keep_from, replace=self.replace
        )

    def _recent_ids(self) -> list[MessageId]:
        horizon = now() - MESSAGE_ID_WINDOW_S
        accepted = self.accepted
        while accepted and accepted[0][0] < horizon:
            accepted.popleft()
        return [id for _, id in accepted]

    def written_as(self, append: Append, status: AppendStatus) -> None:
        if status is AppendStatus.LOST:
            log.warning("run %s: another process owns it now; letting it go here", self.run.run_id)
            self.run.lose()
            return
        if status is AppendStatus.MISSING:
            log.warning("run %s: the runs backend lost it (restarted empty?); writing it again whole", self.run.run_id)
            self.replace = True
            self.node.mark(self)
            return
        state = self.run.state
        size = sum(len(f.text) for f in append.frames)
        if append.frames:
            self.flushed = append.frames[-1].seq
            for f in append.frames:
                self.requests.pop(f.seq, None)
        state.visible_through = self.flushed
        self.unflushed_bytes = max(0, self.unflushed_bytes - size) if not append.replace else 0
        if append.keep_from is not None:
            self.trimmed_from = append.keep_from
        if append.snapshot is not None:
            self.snapshot_seq, self.snapshot_bytes, self.since_snapshot_bytes = self.flushed, len(append.snapshot), 0
        else:
            self.since_snapshot_bytes += size
        self.written, self.replace = True, False
        self.room.unpark_all()
        self.run.deliver_visible()
        if state.seq > self.flushed or (self.snapshot_seq < 0 and not self.done):
            self.node.mark(self)


class Follow:
    """A followed run's link to its owner: the local connection's token, the messages forwarded and not yet acked."""

    def __init__(self, node: Node, run: LiveRun, owner: NodeId | None) -> None:
        self.node, self.run, self.owner = node, run, owner
        self.conn = ""
        self.forwarded: dict[MessageId, UserMessage] = {}

    def _send(self, kind: CommandKind, body: str = "") -> None:
        if self.owner is not None and self.conn:
            self.node.send(self.owner, Command(kind=kind, run_id=self.run.run_id, conn=self.conn, body=body))

    def claimed(self) -> None:
        self.conn = self.node.new_conn()
        self._send(CommandKind.CLAIM)

    def reclaim(self, owner: NodeId) -> None:
        """The run has a new owner: claim it there again, and re-send what the old one never acked."""
        self.owner = owner
        if not self.conn:
            return
        self._send(CommandKind.CLAIM)
        if self.run.holder is not None:
            self._send(CommandKind.ATTACH)
        for message in self.forwarded.values():
            self._send(CommandKind.MESSAGE, encode_client_message(message))

    def attached(self) -> None:
        self._send(CommandKind.ATTACH)

    def detached(self, code: int, by_peer: bool) -> None:
        self._send(CommandKind.DETACH, f"{int(code)} {int(by_peer)}")
        self.node.unfollow(self.run)

    def cancel(self, id: MessageId) -> None:
        self._send(CommandKind.CANCEL, orjson.dumps(id).decode())

    def forward(self, message: UserMessage) -> bool:
        """Send a client's message to the owner; False when the backend is unreachable (refuse it)."""
        if not self.node.available:
            return False
        assert message.id is not None
        self.forwarded[message.id] = message
        self._send(CommandKind.MESSAGE, encode_client_message(message))
        return True

    def holder_for(self, conn: str) -> RunHolder | None:
        run = self.run
        if conn != self.conn:
            return None
        return run.holder if run.holder is not None else run.claimant

    def settled(self) -> None:
        """Frames were applied: forget forwarded messages the owner has acked."""
        if self.forwarded:
            state = self.run.state
            for id in [id for id in self.forwarded if state.message_number_of(id) is not None]:
                del self.forwarded[id]

    def replied(self, text: str) -> None:
        """A reply without ``seq`` (a repeated ack, a refusal) settles the message it is about."""
        try:
            id = orjson.loads(text).get("id")
        except (orjson.JSONDecodeError, AttributeError):
            return
        if isinstance(id, str | int):
            self.forwarded.pop(id, None)
