"""What another process needs to rebuild a chat run: a snapshot, and the requests behind acks.

A shared run backend keeps each run as an event log (the frames clients receive, each
``ack`` carrying the request it acknowledges) plus, now and then, a :class:`RunSnapshot`
of the :class:`~antiphon.proto.chat.run.ChatRun` at some ``seq``. The snapshot plus the
frames after it rebuild the run exactly (:meth:`~antiphon.proto.chat.run.ChatRun.load`):
numbering, the message ids accepted recently, the history within ``history_max_chars``,
and every turn still pending with the text it has produced so far.

Both travel as JSON text through this schema family's own converter; decoding raises
:class:`~antiphon.errors.DecodeError` and nothing else (a backend holds what another
version of antiphon, or something else entirely, may have written).
"""

from __future__ import annotations

from typing import Any, Final

from attrs import frozen

from antiphon.errors import DecodeError
from antiphon.proto._codec import dumps, expect_object, loads, make_converter, structure
from antiphon.proto.chat.messages import MessageId

__all__ = [
    "SNAPSHOT_VERSION",
    "PendingTurn",
    "RequestRecord",
    "RunSnapshot",
    "decode_request",
    "decode_snapshot",
    "encode_request",
    "encode_snapshot",
]

SNAPSHOT_VERSION: Final = 1
"""Bumped when the snapshot's shape changes; a process refuses a snapshot of another version."""


@frozen(kw_only=True)
class PendingTurn:
    """A turn accepted and not ended when the snapshot was taken; ``text`` is what it produced so far."""

    id: MessageId
    message_number: int
    message: str
    context: dict[str, Any]
    agent: str
    started: bool
    text: str


@frozen(kw_only=True)
class RunSnapshot:
    """A :class:`~antiphon.proto.chat.run.ChatRun` at ``seq``, with the connector ``path`` it belongs to."""

    version: int = SNAPSHOT_VERSION
    run_id: str
    path: str
    seq: int
    message_count: int
    history: list[tuple[str, str]]
    """(role, text), oldest first: the history agents see, within ``history_max_chars``."""
    accepted: list[tuple[MessageId, int]]
    """(id, message number) of the messages accepted within the idempotency window."""
    turns: list[PendingTurn]


@frozen(kw_only=True)
class RequestRecord:
    """What an ``ack`` frame's request adds to the frame: the message itself."""

    message: str
    context: dict[str, Any]
    agent: str


_converter = make_converter()


def encode_snapshot(snapshot: RunSnapshot) -> str:
    """The snapshot as compact JSON text."""
    return dumps(_converter.unstructure(snapshot))


def decode_snapshot(text: str | bytes) -> RunSnapshot:
    """A snapshot back from its JSON text; raise :class:`DecodeError` for anything else (another version too)."""
    obj = expect_object(loads(text))
    version = obj.get("version")
    if version != SNAPSHOT_VERSION:
        raise DecodeError(f"$.version: expected {SNAPSHOT_VERSION}, got {version!r}")
    snapshot: RunSnapshot = structure(_converter, obj, RunSnapshot)
    return snapshot


def encode_request(message: str, context: Any, agent: str) -> str:
    """The request an ``ack`` acknowledges, as JSON text (kept beside the frame, never sent to clients)."""
    return dumps({"message": message, "context": dict(context), "agent": agent})


def decode_request(text: str | bytes) -> RequestRecord:
    """A request back from :func:`encode_request`'s text; raise :class:`DecodeError` otherwise."""
    record: RequestRecord = structure(_converter, expect_object(loads(text)), RequestRecord)
    return record
