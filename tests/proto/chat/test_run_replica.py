"""A chat run moved between processes, sans-IO: replicas that follow frames, snapshots, held-back frames."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from antiphon.errors import DecodeError, LocalProtocolError
from antiphon.proto.chat.messages import Ack, ErrorCode, TurnStatus, UserMessage
from antiphon.proto.chat.run import ChatRun, Forward, Refused, TurnRequest
from antiphon.proto.chat.settings import ChatSettings
from antiphon.proto.chat.snapshot import (
    PendingTurn,
    RunSnapshot,
    decode_request,
    decode_snapshot,
    encode_request,
    encode_snapshot,
)


def observed(run: ChatRun) -> dict[str, Any]:
    """Everything of a run another process must get right (a turn's progress shows only when it streams)."""
    seen = {
        "seq": run.seq,
        "count": run.message_count,
        "history": [(e.role, e.text) for e in run.history()],
        "pending": [(r.id, r.message_number, r.message, dict(r.context), r.agent) for r in run.pending_requests()],
        "accepted": {id: run.message_number_of(id) for id in run.accepted_ids()},
    }
    if run.streaming:
        seen["started"] = [run.turn_running(r.id) for r in run.pending_requests()]
        seen["partial"] = [run.partial_text(r.id) for r in run.pending_requests()]
    return seen


class Owner:
    """An owner run whose every frame a replica applies as it is emitted."""

    def __init__(self, cfg: ChatSettings) -> None:
        self.run = ChatRun("r", cfg, ("a", "b"))
        self.replica = ChatRun("r", cfg, ("a", "b"))
        self.replica.owned = False
        self.frames: list[tuple[int, str, str | None]] = []

    def emit(self, events: list[Any], request: TurnRequest | None = None) -> None:
        for event in events:
            text = self.run.emit(event)
            extra = encode_request(request.message, request.context, request.agent) if isinstance(event, Ack) and request else None
            self.frames.append((self.run.seq, text, extra))
            self.replica.apply_frame(self.run.seq, text, extra)


_steps = st.lists(
    st.one_of(
        st.tuples(st.just("message"), st.text(min_size=1, max_size=20).filter(str.strip), st.sampled_from(["a", "b"])),
        st.tuples(st.just("chunk"), st.text(max_size=30), st.none()),
        st.tuples(st.just("end"), st.sampled_from(list(TurnStatus)), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(
    steps=_steps,
    streaming=st.booleans(),
    history_max_chars=st.integers(0, 80),
    replay_max_bytes=st.integers(0, 2000),
    cut=st.integers(0, 40),
)
def test_a_replica_and_a_rebuild_end_in_the_owners_state(
    steps: list[tuple[str, Any, Any]], streaming: bool, history_max_chars: int, replay_max_bytes: int, cut: int
) -> None:
    """Whatever the owner did, a replica fed its frames, and a run loaded from a snapshot plus the frames after, agree with it."""
    cfg = ChatSettings(secret="s", streaming=streaming, history_max_chars=history_max_chars, replay_max_bytes=replay_max_bytes)
    o = Owner(cfg)
    snapshot: RunSnapshot | None = None
    for i, (kind, value, agent) in enumerate(steps):
        if i == cut:
            snapshot = o.run.snapshot(path="/p", accepted=o.run.accepted_ids())
        run = o.run
        pending = run.pending_requests()
        if kind == "message":
            result = run.accept(UserMessage(message=value, id=f"m{i}", context={"i": i}, agent=agent))
            if isinstance(result, TurnRequest):
                o.emit([Ack(id=result.id, message_number=result.message_number)], result)
        elif kind == "chunk" and pending:
            request = pending[0]
            if not run.turn_running(request.id):
                o.emit(run.turn_started(request))
            o.emit(run.turn_chunk(request, value))
        elif kind == "end" and pending:
            o.emit(run.turn_ended(pending[0], value))
    assert observed(o.replica) == observed(o.run)
    if snapshot is None:
        snapshot = o.run.snapshot(path="/p", accepted=o.run.accepted_ids())
    rebuilt = ChatRun("r", cfg, ("a", "b"))
    rebuilt.load(decode_snapshot(encode_snapshot(snapshot)), [f for f in o.frames if f[0] > snapshot.seq])
    assert observed(rebuilt) == observed(o.run)
    after = [(s, t) for s, t, _ in o.frames if s > snapshot.seq]
    held = rebuilt.replay_after(snapshot.seq)[0]
    assert held == after[len(after) - len(held) :]


def test_load_keeps_earlier_frames_for_replay_and_applies_the_later_ones() -> None:
    """Frames up to the snapshot's seq are only logged; replay after a reload returns exactly what was held."""
    cfg = ChatSettings(secret="s")
    o = Owner(cfg)
    first = o.run.accept(UserMessage(message="one", id="x"))
    assert isinstance(first, TurnRequest)
    o.emit([Ack(id="x", message_number=1)], first)
    o.emit(o.run.turn_started(first))
    snapshot = o.run.snapshot(path="/", accepted=["x"])
    o.emit(o.run.turn_chunk(first, "hello"))
    rebuilt = ChatRun("r", cfg)
    rebuilt.load(snapshot, o.frames)
    assert rebuilt.replay_after(0) == o.run.replay_after(0)
    assert rebuilt.partial_text("x") == "hello" and rebuilt.turn_running("x")
    assert rebuilt.replay_after(0)[1] is True


def test_load_refuses_frames_that_leave_a_gap_after_the_snapshot() -> None:
    """A log that starts after the snapshot cannot rebuild the run: LocalProtocolError, not a wrong run."""
    cfg = ChatSettings(secret="s")
    o = Owner(cfg)
    request = o.run.accept(UserMessage(message="one", id="x"))
    assert isinstance(request, TurnRequest)
    snapshot = o.run.snapshot(path="/")
    o.emit([Ack(id="x", message_number=1)], request)
    o.emit(o.run.turn_started(request))
    with pytest.raises(LocalProtocolError):
        ChatRun("r", cfg).load(snapshot, o.frames[1:])


def test_a_replica_forwards_what_the_owner_must_number_and_answers_what_it_knows() -> None:
    """Owned elsewhere: a new message is Forward (with an id made up), a known id its ack, an unknown agent refused."""
    cfg = ChatSettings(secret="s")
    o = Owner(cfg)
    first = o.run.accept(UserMessage(message="one", id="x"))
    assert isinstance(first, TurnRequest)
    o.emit([Ack(id="x", message_number=1)], first)
    replica = o.replica
    assert replica.accept(UserMessage(message="one", id="x")) == Ack(id="x", message_number=1)
    forward = replica.accept(UserMessage(message="two"))
    assert isinstance(forward, Forward) and forward.message.id is not None and forward.message.message == "two"
    refused = replica.accept(UserMessage(message="three", agent="nobody"))
    assert isinstance(refused, Refused) and refused.event.code == ErrorCode.UNKNOWN_AGENT
    assert replica.message_count == 1 and replica.seq == 1


def test_apply_frame_refuses_gaps_and_frames_of_unknown_turns() -> None:
    """A frame that does not follow on, or names a turn the replica never saw acked, raises LocalProtocolError."""
    replica = ChatRun("r", ChatSettings(secret="s"))
    replica.owned = False
    with pytest.raises(LocalProtocolError):
        replica.apply_frame(2, '{"type":"ack","id":"x","message_number":1,"seq":2}')
    with pytest.raises(LocalProtocolError):
        replica.apply_frame(1, '{"type":"stream_chunk","id":"x","agent":"a","chunk":"c","seq":1}')
    with pytest.raises(LocalProtocolError):
        replica.apply_frame(1, "not json")
    assert replica.seq == 0


def test_held_back_frames_are_not_replayed_and_never_dropped() -> None:
    """With visible_through set, replay stops there, and the log keeps unsent frames even past its byte budget."""
    run = ChatRun("r", ChatSettings(secret="s", replay_max_bytes=0))
    run.visible_through = 0
    for i in range(5):
        run.emit(Ack(id=f"m{i}", message_number=i + 1))
    assert run.replay_after(0) == ([], True) and run.visible_seq == 0
    assert [seq for seq, _ in run.log_after(0)] == [1, 2, 3, 4, 5]
    run.visible_through = 3
    assert [seq for seq, _ in run.replay_after(0)[0]] == [1, 2, 3]
    run.emit(Ack(id="m5", message_number=6))  # the budget now drops what is visible, and only that
    assert run.log_first_seq == 4


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=100, deadline=None)
@given(
    st.builds(
        RunSnapshot,
        run_id=st.text(max_size=10),
        path=st.text(max_size=10),
        seq=st.integers(0, 10**9),
        message_count=st.integers(0, 10**4),
        history=st.lists(st.tuples(st.sampled_from(["user", "assistant"]), st.text(max_size=20)), max_size=4),
        accepted=st.lists(st.tuples(st.one_of(st.text(min_size=1, max_size=5), st.integers(0, 99)), st.integers(1, 99)), max_size=4),
        turns=st.lists(
            st.builds(
                PendingTurn,
                id=st.one_of(st.text(min_size=1, max_size=5), st.integers(0, 99)),
                message_number=st.integers(1, 99),
                message=st.text(max_size=10),
                context=st.dictionaries(st.text(max_size=5), _json_values, max_size=3),
                agent=st.text(max_size=5),
                started=st.booleans(),
                text=st.text(max_size=20),
            ),
            max_size=3,
        ),
    )
)
def test_a_snapshot_round_trips_through_its_json(snapshot: RunSnapshot) -> None:
    """encode_snapshot then decode_snapshot gives the same snapshot, integer and string ids apart."""
    assert decode_snapshot(encode_snapshot(snapshot)) == snapshot


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=60), _json_values.map(json.dumps), st.binary(max_size=30)))
def test_decoding_anything_else_raises_decode_error(data: Any) -> None:
    """A backend may hold anything: a snapshot or a request either decodes or raises DecodeError, never anything else."""
    for decode in (decode_snapshot, decode_request):
        try:
            decode(data)
        except DecodeError:
            pass


def test_a_snapshot_of_another_version_is_refused() -> None:
    """A snapshot written by another version of the format is a DecodeError naming the version."""
    text = encode_snapshot(ChatRun("r", ChatSettings(secret="s")).snapshot(path="/")).replace('"version":1', '"version":2')
    with pytest.raises(DecodeError, match=r"\$\.version: expected 1, got 2"):
        decode_snapshot(text)
