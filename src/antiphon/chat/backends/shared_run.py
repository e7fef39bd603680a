"""What a :class:`~antiphon.chat.runs.LiveRun` does when its run is shared through a run backend.

Kept apart from :mod:`antiphon.chat.runs`, whose memory path stays as it is: a LiveRun
is a :class:`SharedRun`, and these methods are only ever called with a backend - by the
node (:mod:`antiphon.chat.backends.node`) when frames become durable or arrive from an
owner, when commands come from other processes, and when a run changes hands.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from antiphon.proto.chat.messages import (
    Ack,
    ErrorCode,
    ErrorEvent,
    UserMessage,
    encode_event,
)
from antiphon.proto.chat.run import Refused, TurnRequest
from antiphon.proto.close import CloseCode

if TYPE_CHECKING:

    from antiphon.chat.backends.base import Frame
    from antiphon.chat.backends.replica import Follow
    from antiphon.chat.runs import RunHolder
    from antiphon.proto.chat.run import ChatRun

__all__ = ["SharedRun"]


class SharedRun:
    """LiveRun's shared-run half (a mixin: ``self`` is the LiveRun, which defines what is declared here)."""

    # What this half assigns; LiveRun declares the rest (slots: no __dict__ per run).
    __slots__ = ("_delivered", "_interrupted", "_unacked", "follow", "lost", "releasing")

    if TYPE_CHECKING:
        state: ChatRun
        holder: RunHolder | None
        claimant: RunHolder | None
        follow: Follow | None
        lost: bool
        releasing: bool
        ended: bool
        _delivered: int
        _interrupted: list[TurnRequest]
        _unacked: list[UserMessage]
        _turns: list[TurnRequest]

        def notify(self, event: ErrorEvent) -> None: ...
        def accept(self, request: TurnRequest) -> None: ...
        def end(self) -> None: ...
        def _ensure_started(self) -> None: ...

    def deliver_visible(self) -> None:
        """Send the attached connection every frame that became visible (durable, or arrived from the owner).

        Corked: one write for the lot. Once it has everything, the connection hears the
        turn ended (a draining connection may close then, never before its last frames).
        """
        holder = self.holder
        top = self.state.visible_seq
        if holder is None or self._delivered >= top:
            return
        session = holder.session
        if session is None:  # a connection on another node: it reads the backend itself
            self._delivered = top
            return
        session.cork()
        try:
            for seq, text in self.state.log_after(self._delivered):
                if seq > top:
                    break
                holder.deliver(text)
        finally:
            session.uncork()
        self._delivered = top
        if top == self.state.seq:
            holder.turn_ended()

    def frames_arrived(self, frames: Iterable[Frame]) -> None:
        """A follower: the owner's frames, in order; apply them to the replica and deliver them.

        Raises :class:`~antiphon.errors.LocalProtocolError` when they do not follow on (reload the run).
        """
        state = self.state
        for frame in frames:
            if frame.seq > state.seq:
                state.apply_frame(frame.seq, frame.text, frame.request)
        if self.follow is not None:
            self.follow.settled()
        self.deliver_visible()

    def forward(self, message: UserMessage) -> None:
        """A follower: a client's message for the owner to number (``backend_unavailable`` when it cannot go)."""
        follow = self.follow
        if follow is None or not follow.forward(message):
            text = "the runs backend cannot be reached; send the message again later"
            self.notify(ErrorEvent(code=ErrorCode.BACKEND_UNAVAILABLE, message=text, id=message.id))

    def receive_forwarded(self, message: UserMessage, holder: RunHolder) -> None:
        """The owner: a message a client connected elsewhere sent, as the gateway would have handled it."""
        if holder is not self.holder and holder is not self.claimant:
            return  # from a connection the run no longer has (a claimant's count: it is replaying)
        result = self.state.accept(message)
        if isinstance(result, TurnRequest):
            self.accept(result)
        elif isinstance(result, Ack):
            holder.deliver(encode_event(result))
        elif isinstance(result, Refused):
            holder.deliver(encode_event(result.event))

    def became_owner(self, forwarded: Iterable[UserMessage]) -> None:
        """A follower took the run over: end the interrupted turn, run the queued ones, accept what was never acked.

        The interrupted turn is the oldest pending one, ended ``failed`` (``turn_interrupted``)
        with the text its clients were sent; an agent call is never made twice.
        """
        self.follow = None
        state = self.state
        pending = state.pending_requests()
        # The oldest turn was running, or about to: its agent may have been called before
        # its first frame was durable, so it ends failed and is never run twice.
        self._interrupted = pending[:1]
        self._turns.extend(pending[1:])
        self._unacked = list(forwarded)  # accepted once the interrupted turn has ended
        self._ensure_started()

    def _accept_unacked(self) -> None:
        messages, self._unacked = self._unacked, []
        for message in messages:
            result = self.state.accept(message)
            holder = self.holder
            if isinstance(result, TurnRequest):
                self.accept(result)
            elif holder is not None and isinstance(result, Ack | Refused):
                holder.deliver(encode_event(result.event if isinstance(result, Refused) else result))

    def lose(self) -> None:
        """Another process owns the run now: stop here without a word; clients reconnect and resume there."""
        if self.lost or self.ended:
            return
        self.lost = True
        for holder in (self.holder, self.claimant):
            if holder is not None:
                holder.run_lost(CloseCode.SERVICE_RESTART, "the run moved to another server: reconnect and resume")
        self.end()

    def release(self) -> None:
        """Shutting down: stop the running turn (``cancelled``), keep the queued ones, let another process own the run.

        A follower's connection is closed with 1012: its client reconnects and resumes elsewhere.
        """
        if self.ended:
            return
        if self.follow is not None:
            for holder in (self.holder, self.claimant):
                if holder is not None:
                    holder.run_lost(CloseCode.SERVICE_RESTART, "server restart: reconnect and resume")
            self.end()
            return
        self.releasing = True
        self.end()
