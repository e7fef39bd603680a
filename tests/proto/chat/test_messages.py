"""The chat protocol's codec: every client form, every event, and located errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from antiphon.errors import DecodeError
from antiphon.proto.chat.messages import (
    CONTEXT_MAX_DEPTH,
    ID_MAX_CHARS,
    Ack,
    Auth,
    Cancel,
    Connected,
    ErrorEvent,
    Ping,
    Pong,
    Response,
    Resume,
    Resumed,
    StreamChunk,
    StreamEnd,
    StreamStart,
    TokenUsage,
    TurnStatus,
    UserMessage,
    decode_client_message,
    decode_server_event,
    decode_server_frame,
    encode_client_message,
    encode_event,
)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"secret": "s"}, Auth("s")),
        ({"type": "auth", "secret": "s"}, Auth("s")),
        ({"message": "Hello!"}, UserMessage("Hello!")),
        ({"content": "Hello!"}, UserMessage("Hello!")),
        ({"message": "hi", "id": "m1", "context": {"a": 1}}, UserMessage("hi", "m1", {"a": 1})),
        (
            {"type": "message", "id": "msg-001", "payload": {"message": "Weather?", "context": {"location": "NY"}}},
            UserMessage("Weather?", "msg-001", {"location": "NY"}),
        ),
        ({"type": "message", "payload": {"message": "x"}}, UserMessage("x")),
        ({"type": "message", "id": 7, "payload": {"content": "x"}}, UserMessage("x", 7)),
        ({"type": "message", "payload": {"message": "x", "agent": "b"}}, UserMessage("x", agent="b")),
        ({"type": "ping"}, Ping()),
        ({"type": "resume", "connector_run_id": "r1", "last_seq": 17}, Resume("r1", 17)),
        ({"type": "resume", "connector_run_id": "r1"}, Resume("r1", 0)),
        ({"type": "cancel", "id": "msg-001"}, Cancel("msg-001")),
        ({"type": "message", "payload": {"message": "x"}, "extra": True}, UserMessage("x")),
    ],
)
def test_client_forms_decode(doc: dict[str, Any], expected: object) -> None:
    """Every documented client form, shorthands included, decodes to its typed message."""
    assert decode_client_message(json.dumps(doc)) == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"type": "message", "payload": {"message": 3}}', "$.payload.message: expected a string, got an integer"),
        ('{"type": "message", "payload": {"message": "x", "context": 1}}', "$.payload.context: expected an object, got an integer"),
        ('{"type": "message"}', "$.payload: required field missing"),
        ('{"type": "message", "payload": {}}', "$.payload.message: required field missing"),
        ('{"type": "message", "payload": {"message": "  "}}', "$.payload.message: must not be empty"),
        ('{"type": "message", "id": true, "payload": {"message": "x"}}', "$.id: expected a string or an integer, got a boolean"),
        ('{"type": "message", "id": "", "payload": {"message": "x"}}', "$.id: must not be empty"),
        ('{"message": ["x"]}', "$.message: expected a string, got a list"),
        ('{"secret": 5}', "$.secret: expected a string, got an integer"),
        ('{"type": "launch"}', "$.type: unknown message type 'launch'"),
        ('{"type": 5}', "$.type: expected a string"),
        ('{"hello": 1}', '$: expected a "type", a "message" or a "secret"'),
        ("[1, 2]", "$: expected an object, got a list"),
        ('"hi"', "$: expected an object, got a string"),
        ('{"type": "resume", "last_seq": 1}', "$.connector_run_id: required field missing"),
        ('{"type": "resume", "connector_run_id": "r", "last_seq": -1}', "$.last_seq: must not be negative"),
        ('{"type": "cancel"}', "$.id: required field missing"),
    ],
)
def test_bad_client_frames_are_located(text: str, error: str) -> None:
    """A bad frame raises DecodeError whose first message locates the problem."""
    with pytest.raises(DecodeError) as info:
        decode_client_message(text)
    assert info.value.errors[0] == error


def test_invalid_json_is_reported_as_such() -> None:
    """Text that is not JSON is a DecodeError at `$` saying so."""
    with pytest.raises(DecodeError, match=r"^\$: invalid JSON"):
        decode_client_message("{not json")


def test_binary_utf8_frames_decode_like_text() -> None:
    """A binary frame holding UTF-8 JSON is read like the same text."""
    assert decode_client_message('{"message": "é"}'.encode()) == UserMessage("é")


@pytest.mark.parametrize(
    ("event", "wire"),
    [
        (
            Connected(session_id="r1", connector_run_id="r1", agents=("assistant",)),
            {"type": "connected", "session_id": "r1", "connector_run_id": "r1", "agents": ["assistant"]},
        ),
        (Ack(id="msg-001", message_number=1), {"type": "ack", "id": "msg-001", "message_number": 1}),
        (StreamStart(id="m", agent="a"), {"type": "stream_start", "id": "m", "agent": "a"}),
        (StreamChunk(id="m", agent="a", chunk="The "), {"type": "stream_chunk", "id": "m", "agent": "a", "chunk": "The "}),
        (
            StreamEnd(id="m", agent="a", full_response="The x", token_usage=TokenUsage(45, 15)),
            {
                "type": "stream_end",
                "id": "m",
                "agent": "a",
                "full_response": "The x",
                "token_usage": {"prompt_tokens": 45, "candidates_tokens": 15},
                "status": "completed",
            },
        ),
        (
            Response(id="m", agent="a", response="ok", token_usage=TokenUsage(1, 2)),
            {"type": "response", "id": "m", "agent": "a", "response": "ok", "token_usage": {"prompt_tokens": 1, "candidates_tokens": 2}, "status": "completed"},
        ),
        (ErrorEvent(code="queue_full", message="later", id=3), {"type": "error", "code": "queue_full", "message": "later", "id": 3}),
        (ErrorEvent(code="auth_failed", message="no"), {"type": "error", "code": "auth_failed", "message": "no"}),
        (Pong(), {"type": "pong"}),
    ],
)
def test_events_encode_exactly(event: Any, wire: dict[str, Any]) -> None:
    """Each event encodes to the documented JSON, `type` first, and decodes back equal."""
    text = encode_event(event)
    assert json.loads(text) == wire
    assert next(iter(json.loads(text))) == "type"
    assert decode_server_event(text) == event


@pytest.mark.parametrize(
    "message", [Auth("s"), Ping(), Resume("r", 3), Cancel(5), UserMessage("hi"), UserMessage("hi", "m1", {"k": [1]}, "b"), UserMessage("x", 5)]
)
def test_client_messages_round_trip(message: Any) -> None:
    """What antiphon's client sends decodes on the server to the same message."""
    assert decode_client_message(encode_client_message(message)) == message


def test_unknown_event_type_is_a_decode_error() -> None:
    """A client reading an event of unknown type gets a located DecodeError."""
    with pytest.raises(DecodeError, match=r"^\$\.type: unknown event type 'surprise'$"):
        decode_server_event('{"type": "surprise"}')


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_frames = st.one_of(
    st.text(),
    st.binary(),
    _json.map(json.dumps),
    st.fixed_dictionaries({"type": st.sampled_from(["message", "ping", "auth", "x"])}, optional={"payload": _json, "id": _json, "secret": _json}).map(json.dumps),
    st.fixed_dictionaries({}, optional={"message": _json, "content": _json, "context": _json, "id": _json}).map(json.dumps),
)


@given(_frames)
def test_any_frame_decodes_or_raises_decode_error(frame: str | bytes) -> None:
    """Whatever arrives, decoding yields a message or raises DecodeError: never anything else."""
    try:
        decode_client_message(frame)
    except DecodeError as exc:
        assert exc.errors and all(e.startswith("$") for e in exc.errors)


def test_seq_goes_last_and_decodes_apart() -> None:
    """A numbered event carries `seq` as its last key; decode_server_frame returns it beside the event."""
    text = encode_event(Ack(id="m", message_number=2), seq=9)
    assert list(json.loads(text)) == ["type", "id", "message_number", "seq"]
    assert decode_server_frame(text) == (Ack(id="m", message_number=2), 9)
    assert decode_server_frame(encode_event(Pong())) == (Pong(), None)


def test_resumed_event_shape() -> None:
    """`resumed` says which run, its last seq, how many events follow, and whether that is all."""
    event = Resumed(connector_run_id="r", last_seq=12, replayed=3, complete=False)
    assert json.loads(encode_event(event)) == {
        "type": "resumed", "connector_run_id": "r", "last_seq": 12, "replayed": 3, "complete": False
    }


def _nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


@pytest.mark.parametrize("form", ["envelope", "shorthand"])
def test_context_nesting_is_bounded_at_decode(form: str) -> None:
    """A context nested CONTEXT_MAX_DEPTH levels decodes; one level more is a located DecodeError."""
    def frame(context: Any) -> str:
        if form == "envelope":
            return json.dumps({"type": "message", "payload": {"message": "x", "context": context}})
        return json.dumps({"message": "x", "context": context})

    ok = {"k": _nested(CONTEXT_MAX_DEPTH - 1)}
    decoded = decode_client_message(frame(ok))
    assert isinstance(decoded, UserMessage) and decoded.context == ok
    where = "$.payload.context" if form == "envelope" else "$.context"
    with pytest.raises(DecodeError) as info:
        decode_client_message(frame({"k": _nested(CONTEXT_MAX_DEPTH)}))
    assert str(info.value) == f"{where}: nested deeper than {CONTEXT_MAX_DEPTH} levels"


def test_a_context_1000_deep_is_refused_not_stored() -> None:
    """The 1000-deep context orjson accepts (it stops at 1024) is refused before anything recurses into it."""
    text = '{"message": "x", "context": {"a": ' + "[" * 999 + "]" * 999 + "}}"
    with pytest.raises(DecodeError, match=r"^\$\.context: nested deeper than 64 levels$"):
        decode_client_message(text)


_nests = st.recursive(
    st.integers() | st.text(max_size=3),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=2), kids, max_size=3),
    max_leaves=80,
)


@settings(max_examples=100, deadline=None)
@given(_nests)
def test_context_depth_check_matches_the_json_depth(value: Any) -> None:
    """Any context decodes exactly when its nesting (the context object counted) is within the bound."""
    def depth(v: Any) -> int:
        children = list(v.values()) if isinstance(v, dict) else v if isinstance(v, list) else []
        return 1 + max(map(depth, children), default=0) if isinstance(v, dict | list) else 0

    context = {"v": _nested(CONTEXT_MAX_DEPTH - 3, value)}
    frame = json.dumps({"message": "x", "context": context})
    if depth(context) <= CONTEXT_MAX_DEPTH:
        assert decode_client_message(frame) == UserMessage("x", context=context)
    else:
        with pytest.raises(DecodeError, match="nested deeper than"):
            decode_client_message(frame)


_ids = st.one_of(st.none(), st.text(max_size=5), st.integers(-5, 5), st.booleans(), st.floats(allow_nan=False))
_texts = st.one_of(st.none(), st.text(max_size=8), st.integers(0, 3), st.lists(st.integers(), max_size=2))
_envelopes = st.fixed_dictionaries(
    {"type": st.just("message")},
    optional={
        "id": _ids,
        "payload": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "message": _texts,
                    "content": _texts,
                    "context": st.one_of(st.none(), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), _texts),
                    "agent": _texts,
                },
            ),
            _texts,
        ),
        "extra": _texts,
    },
)


@given(_envelopes)
@settings(max_examples=300)
def test_the_fast_message_decoder_agrees_with_the_converter(doc: dict[str, Any]) -> None:
    """The hand-written path for `message` envelopes gives what the strict converter gives, or declines."""
    from antiphon.proto._codec import structure
    from antiphon.proto.chat import messages

    try:
        fast: Any = messages._fast_user_message(doc)
    except DecodeError as exc:
        fast = exc
    try:
        env = structure(messages._converter, doc, messages._MessageEnvelope)
        p = env.payload
        slow: Any = messages._user_message(p.message, p.content, env.id, p.context, p.agent, "$.payload")
    except DecodeError as exc:
        slow = exc
    if fast is None:
        return  # declined: the converter's answer is what the caller gets
    if isinstance(fast, DecodeError) or isinstance(slow, DecodeError):
        assert str(fast) == str(slow)
    else:
        assert fast == slow


@pytest.mark.parametrize(
    "event",
    [
        Ack(id="m", message_number=3),
        Ack(id=7, message_number=1),
        StreamStart(id="m", agent="a"),
        StreamChunk(id="m", agent="a", chunk="é\n\"x\""),
        StreamEnd(id="m", agent="a", full_response="f", token_usage=TokenUsage(1, 2), status=TurnStatus.CANCELLED),
        Response(id=2, agent="a", response="r", token_usage=TokenUsage(3, 4)),
    ],
)
def test_the_fast_event_encoders_agree_with_the_converter(event: Any) -> None:
    """Turn events built by hand are the very documents the converter makes, key order included."""
    from antiphon.proto.chat import messages

    assert messages._FAST_ENCODERS[type(event)](event) == messages._converter.unstructure(event)
    assert list(messages._FAST_ENCODERS[type(event)](event)) == list(messages._converter.unstructure(event))
    assert encode_event(event, 5) == messages.dumps({**messages._converter.unstructure(event), "seq": 5})


@pytest.mark.parametrize("kind", ["message", "cancel"])
def test_ids_are_bounded_in_length(kind: str) -> None:
    """A message or cancel id of ID_MAX_CHARS characters is accepted; one more is a located error."""
    def frame(mid: str) -> str:
        payload = ',"payload":{"message":"hi"}' if kind == "message" else ""
        return f'{{"type":"{kind}","id":"{mid}"{payload}}}'

    assert decode_client_message(frame("i" * ID_MAX_CHARS)).id == "i" * ID_MAX_CHARS  # type: ignore[union-attr]
    with pytest.raises(DecodeError, match=rf"^\$\.id: longer than {ID_MAX_CHARS} characters$"):
        decode_client_message(frame("i" * (ID_MAX_CHARS + 1)))
