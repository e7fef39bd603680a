"""The load generator's bookkeeping: a turn counts only with one ack and then one final event."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

if importlib.util.find_spec("picows") is None or importlib.util.find_spec("uvloop") is None:
    pytest.skip("the bench extra is not installed (picows, uvloop)", allow_module_level=True)

from picows import WSMsgType

from benchmarks import loadgen


class Frame:
    """Just what `ChatClient.on_ws_frame` reads of a picows frame."""

    def __init__(self, payload: bytes) -> None:
        self.msg_type = WSMsgType.TEXT
        self._payload = payload

    def get_payload_as_bytes(self) -> bytes:
        return self._payload


class Transport:
    """Records what the client sends."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, msg_type: Any, payload: bytes) -> None:
        self.sent.append(payload)


class Ready:
    """Stands in for the client's `ready` future once `connected` has arrived."""

    def done(self) -> bool:
        return True


ACK = b'{"type":"ack","id":"1","message_number":1}'
RESPONSE = b'{"type":"response","id":"1","agent":"assistant","response":"hi"}'
ERROR = b'{"type":"error","code":"invalid_message","message":"$.payload.message: required"}'
START = b'{"type":"stream_start","id":"1","agent":"assistant"}'
CHUNK = b'{"type":"stream_chunk","id":"1","agent":"assistant","chunk":"hi"}'
END = b'{"type":"stream_end","id":"1","agent":"assistant","full_response":"hi"}'


def _client(frames: list[bytes]) -> loadgen.Run:
    """Feed ``frames`` to one closed-loop client after it sent one message; return the run's counters."""
    run = loadgen.Run({"proto": "chat", "secret": "s", "chunks": 1})
    run.window = (0.0, float("inf"))
    client = loadgen.ChatClient.__new__(loadgen.ChatClient)
    client.run, client.closed_loop, client.ready = run, False, Ready()
    client.turn_done, client.turns, client.closing, client.closed = None, 0, False, False
    transport = Transport()
    client.transport = transport  # type: ignore[assignment]
    client.send()
    for payload in frames:
        client.on_ws_frame(transport, Frame(payload))  # type: ignore[arg-type]
    return run


def test_ack_then_response_is_one_round_trip() -> None:
    """An ack followed by a response completes exactly one turn."""
    run = _client([ACK, RESPONSE])
    assert (run.completed, run.error_events, run.bad_turns) == (1, 0, 0)


def test_ack_then_stream_end_is_one_round_trip_with_its_chunk() -> None:
    """A streamed reply counts once, at stream_end, and its chunk is counted."""
    run = _client([ACK, START, CHUNK, END])
    assert (run.completed, run.chunks, run.bad_turns) == (1, 1, 0)


def test_an_error_event_is_not_a_round_trip() -> None:
    """An `error` answering the message is counted apart, never as a completed turn."""
    run = _client([ERROR])
    assert (run.completed, run.error_events) == (0, 1)


def test_a_final_event_without_its_ack_is_a_bad_turn() -> None:
    """A response that no ack preceded does not count."""
    run = _client([RESPONSE])
    assert (run.completed, run.bad_turns) == (0, 1)


def test_two_acks_for_one_turn_are_a_bad_turn() -> None:
    """A turn acked twice does not count."""
    run = _client([ACK, ACK, RESPONSE])
    assert (run.completed, run.bad_turns) == (0, 1)
