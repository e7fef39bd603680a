"""The sans-IO chat connection and run: auth, numbering, limits, queueing, timers, history, draining, resume."""

from __future__ import annotations

import json
from typing import Any

import pytest

from antiphon.errors import ConfigError, LocalProtocolError
from antiphon.proto.chat.messages import (
    Ack,
    Connected,
    ErrorEvent,
    Pong,
    Response,
    Resumed,
    StreamChunk,
    StreamEnd,
    StreamStart,
    TokenUsage,
    TurnStatus,
)
from antiphon.proto.chat.run import ChatRun
from antiphon.proto.chat.session import (
    Accept,
    CancelTurn,
    ChatSession,
    ChatSettings,
    Close,
    HandshakeAuth,
    HistoryEntry,
    ResumeRun,
    Send,
    SessionState,
    SetTimer,
    TurnRequest,
    check_handshake_secret,
    estimate_tokens,
)
from antiphon.proto.close import CloseCode

SECRET = "s3cret"


def make(authenticated: bool = False, **settings: Any) -> ChatSession:
    ids = iter(range(1, 1000))
    cfg = ChatSettings(secret=SECRET, **settings)
    return ChatSession(
        cfg, authenticated=authenticated, new_run=lambda: ChatRun("run-1", cfg, new_message_id=lambda n: f"auto-{next(ids)}")
    )


def opened(**settings: Any) -> ChatSession:
    """A session authenticated at the handshake, past its `connected`."""
    chat = make(authenticated=True, **settings)
    chat.open()
    return chat


def run_of(chat: ChatSession) -> ChatRun:
    assert chat.run is not None
    return chat.run


def new_run(run_id: str = "r", **settings: Any) -> ChatRun:
    return ChatRun(run_id, ChatSettings(secret=SECRET, **settings))


def msg(text: str = "hi", **extra: Any) -> str:
    return json.dumps({"type": "message", "payload": {"message": text}, **extra})


def events(actions: list[Any]) -> list[Any]:
    """The events among `actions` (connection sends); run events pass through as they are."""
    return [a.event if isinstance(a, Send) else a for a in actions if not isinstance(a, (Accept, SetTimer, Close, CancelTurn, ResumeRun))]


def turns(actions: list[Any]) -> list[TurnRequest]:
    return [a.request for a in actions if isinstance(a, Accept)]


def run_turn(chat: ChatSession, request: TurnRequest, *chunks: str, usage: TokenUsage | None = None) -> list[Any]:
    run = run_of(chat)
    out = run.turn_started(request)
    for c in chunks:
        out += run.turn_chunk(request, c)
    return out + run.turn_ended(request, TurnStatus.COMPLETED, usage) + chat.turn_ended()


CONNECTED = Connected(session_id="run-1", connector_run_id="run-1", agents=("assistant",))


# --------------------------------------------------------------------------- auth


def test_unauthenticated_session_starts_the_auth_clock() -> None:
    """Without a handshake secret the session only arms the auth timeout (10 s by default)."""
    assert make().open() == [SetTimer(10.0)]


def test_handshake_authenticated_session_is_greeted() -> None:
    """A session authenticated at the handshake gets `connected` and the inactivity timer."""
    assert make(authenticated=True).open() == [Send(CONNECTED), SetTimer(3600.0)]


def test_first_message_secret_authenticates() -> None:
    """`{"secret": ...}` with the right secret sends `connected` and switches to the inactivity timer."""
    chat = make()
    chat.open()
    assert chat.receive('{"secret": "s3cret"}') == [Send(CONNECTED), SetTimer(3600.0)]
    assert chat.state is SessionState.OPEN


def test_wrong_first_message_secret_closes_with_4401() -> None:
    """A wrong secret gets an `auth_failed` error and close code 4401."""
    chat = make()
    chat.open()
    [close] = chat.receive('{"secret": "nope"}')
    assert close == Close(CloseCode.AUTH_FAILED, "authentication failed", ErrorEvent(code="auth_failed", message="invalid secret"))
    assert chat.state is SessionState.CLOSED


@pytest.mark.parametrize("first", [msg(), "{garbage", '{"type": "launch"}'])
def test_anything_but_a_secret_first_fails_auth(first: str) -> None:
    """Before authentication any frame other than the secret (or a ping) fails it with `auth_required`."""
    chat = make()
    chat.open()
    [close] = chat.receive(first)
    assert isinstance(close, Close) and close.code is CloseCode.AUTH_FAILED
    assert close.event is not None and close.event.code == "auth_required"


def test_ping_is_answered_before_authentication() -> None:
    """An application ping gets a pong even before the secret, and does not move the auth clock."""
    chat = make()
    chat.open()
    assert chat.receive('{"type": "ping"}') == [Send(Pong())]


def test_auth_timeout_closes_with_4408() -> None:
    """The timer expiring before authentication sends `auth_timeout` and closes with 4408."""
    chat = make()
    chat.open()
    [close] = chat.timer_expired()
    assert isinstance(close, Close) and close.code is CloseCode.AUTH_TIMEOUT
    assert close.event is not None and close.event.code == "auth_timeout"


def test_secret_after_authentication_is_ignored() -> None:
    """A client that authenticated by header and still sends `{"secret": ...}` is not disturbed."""
    chat = opened()
    chat.open()
    assert chat.receive('{"secret": "whatever"}') == [SetTimer(3600.0)]


def test_auth_off_needs_no_secret() -> None:
    """With `require_auth` off the session opens at once, whatever the handshake carried."""
    chat = ChatSession(ChatSettings(require_auth=False), authenticated=False, new_run=lambda: new_run(require_auth=False))
    assert isinstance(events(chat.open())[0], Connected)


# --------------------------------------------------------------------------- messages


def test_message_is_acked_numbered_and_queued() -> None:
    """An accepted message gets an ack with its number and a turn request carrying its context."""
    chat = opened()
    out = chat.receive(json.dumps({"type": "message", "id": "msg-001", "payload": {"message": "q", "context": {"k": 1}}}))
    assert out == [
        Accept(TurnRequest(id="msg-001", message_number=1, message="q", context={"k": 1}, agent="assistant")),
        SetTimer(3600.0),
    ]


def test_message_without_id_gets_a_server_id_used_throughout() -> None:
    """A message without id gets a server-assigned one, used for its turn throughout."""
    chat = opened()
    out = chat.receive('{"message": "Hello!"}')
    assert turns(out)[0].id == "auto-1" and turns(out)[0].message_number == 1


def test_streamed_turn_events() -> None:
    """A streamed turn emits stream_start, one stream_chunk per non-empty chunk, then stream_end."""
    chat = opened()
    [req] = turns(chat.receive(msg("q", id="m")))
    out = run_turn(chat, req, "Hel", "", "lo", usage=TokenUsage(3, 4))
    assert events(out) == [
        StreamStart(id="m", agent="assistant"),
        StreamChunk(id="m", agent="assistant", chunk="Hel"),
        StreamChunk(id="m", agent="assistant", chunk="lo"),
        StreamEnd(id="m", agent="assistant", full_response="Hello", token_usage=TokenUsage(3, 4)),
    ]


def test_non_streaming_turn_sends_one_response() -> None:
    """With streaming off the turn produces a single `response` with the whole text."""
    chat = opened(streaming=False)
    [req] = turns(chat.receive(msg("q", id="m")))
    assert events(run_turn(chat, req, "a", "b")) == [
        Response(id="m", agent="assistant", response="ab", token_usage=TokenUsage(1, 1))
    ]


def test_token_usage_estimate() -> None:
    """Without reported usage, tokens are ceil(chars / 4) of prompt (history + message) and reply."""
    chat = opened()
    [r1] = turns(chat.receive(msg("12345", id="a")))
    assert events(run_turn(chat, r1, "x" * 9))[-1].token_usage == TokenUsage(2, 3)
    [r2] = turns(chat.receive(msg("abc", id="b")))
    # prompt = 5 + 9 (history) + 3 = 17 chars -> 5 tokens
    assert events(run_turn(chat, r2, "y"))[-1].token_usage == TokenUsage(5, 1)
    assert estimate_tokens("") == 0


def test_history_grows_with_finished_turns_only() -> None:
    """The history holds finished turns (user, assistant); a failed turn adds nothing."""
    chat = opened()
    [r1] = turns(chat.receive(msg("one", id="a")))
    run_turn(chat, r1, "ONE")
    [r2] = turns(chat.receive(msg("two", id="b")))
    run_of(chat).turn_started(r2)
    failed = run_of(chat).turn_ended(r2, TurnStatus.FAILED, error="boom")
    assert failed[0] == ErrorEvent(code="agent_error", message="boom", id="b")
    assert isinstance(failed[1], StreamEnd) and failed[1].status == "failed"
    assert run_of(chat).history() == (HistoryEntry("user", "one"), HistoryEntry("assistant", "ONE"))


def test_history_is_bounded_by_characters() -> None:
    """The oldest entries are dropped once the history exceeds `history_max_chars`."""
    chat = opened(history_max_chars=10)
    for i, text in enumerate(["aaaa", "bbbb", "cccc"]):
        [r] = turns(chat.receive(msg(text, id=i)))
        run_turn(chat, r, text.upper())
    assert run_of(chat).history() == (HistoryEntry("user", "cccc"), HistoryEntry("assistant", "CCCC"))


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{nope", "invalid_json"),
        ('{"type": "launch"}', "unknown_type"),
        ('{"type": "message", "payload": {"message": 1}}', "invalid_message"),
    ],
)
def test_malformed_input_gets_an_error_and_the_session_stays_open(frame: str, code: str) -> None:
    """Bad JSON, an unknown type or a schema violation get an error event; nothing closes."""
    chat = opened()
    out = chat.receive(frame)
    [error] = events(out)
    assert isinstance(error, ErrorEvent) and error.code == code and error.id is None
    assert not any(isinstance(a, Close) for a in out)
    assert chat.state is SessionState.OPEN
    assert turns(chat.receive(msg()))[0].message_number == 1


def test_unknown_agent_is_refused_without_a_number() -> None:
    """A message naming an agent the connector lacks gets `unknown_agent` and is not numbered."""
    chat = opened()
    out = chat.receive(json.dumps({"type": "message", "id": "x", "payload": {"message": "q", "agent": "ghost"}}))
    assert events(out) == [ErrorEvent(code="unknown_agent", message="no agent named 'ghost'", id="x")]
    assert run_of(chat).message_count == 0


def test_queue_is_bounded() -> None:
    """Past `max_queued_turns` unfinished turns a message gets `queue_full` and is not numbered."""
    chat = opened(max_queued_turns=2)
    chat.receive(msg(id=1))
    chat.receive(msg(id=2))
    [error] = events(chat.receive(msg(id=3)))
    assert isinstance(error, ErrorEvent) and error.code == "queue_full" and error.id == 3
    assert run_of(chat).message_count == 2


def test_resent_id_is_acked_again_and_not_run_twice() -> None:
    """A message whose id was accepted before gets its original ack back and is not counted."""
    chat = opened(max_messages=2)
    [first] = turns(chat.receive(msg(id="same")))
    run_turn(chat, first, "done")
    out = chat.receive(msg(id="same"))
    assert events(out) == [Ack(id="same", message_number=1)]
    assert turns(out) == [] and run_of(chat).message_count == 1


def test_message_limit_refuses_then_closes_after_running_turns() -> None:
    """Message max+1 gets `message_limit`; the session closes with 4429 once accepted turns finish."""
    chat = opened(max_messages=1)
    [r1] = turns(chat.receive(msg(id="a")))
    out = chat.receive(msg(id="b"))
    assert events(out)[0] == ErrorEvent(code="message_limit", message="the session reached its limit of 1 messages", id="b")
    assert not any(isinstance(a, Close) for a in out)
    assert chat.state is SessionState.DRAINING
    assert events(chat.receive(msg(id="c")))[0].code == "message_limit"
    out = run_turn(chat, r1, "done")
    assert isinstance(events(out)[-1], StreamEnd)
    assert out[-1] == Close(CloseCode.MESSAGE_LIMIT, "message limit")


def test_inactivity_timer_restarts_on_every_client_frame() -> None:
    """Every client frame after authentication re-arms the inactivity timer; its expiry closes with 4410."""
    chat = opened(session_timeout_s=60)
    assert SetTimer(60) in chat.receive('{"type": "ping"}')
    assert SetTimer(60) in chat.receive("{bad")
    [close] = chat.timer_expired()
    assert isinstance(close, Close) and close.code is CloseCode.SESSION_EXPIRED
    assert close.event is not None and close.event.code == "session_expired"


def test_shutdown_drains_then_closes_1001() -> None:
    """On shutdown new messages get `server_shutdown`; the close (1001) waits for accepted turns."""
    chat = opened()
    [r1] = turns(chat.receive(msg(id="a")))
    assert chat.shutdown() == []
    assert events(chat.receive(msg(id="b")))[0].code == "server_shutdown"
    out = run_turn(chat, r1, "x")
    assert isinstance(out[-1], Close) and out[-1].code is CloseCode.SERVER_SHUTDOWN
    assert out[-1].event is not None and out[-1].event.code == "server_shutdown"


def test_idle_shutdown_closes_at_once() -> None:
    """A session with no running turn closes with 1001 as soon as shutdown is asked."""
    chat = opened()
    [close] = chat.shutdown()
    assert isinstance(close, Close) and close.code is CloseCode.SERVER_SHUTDOWN


def test_turn_callbacks_reject_unknown_turns() -> None:
    """Reporting progress for a turn that is not running is a LocalProtocolError."""
    chat = opened()
    ghost = TurnRequest(id="g", message_number=1, message="m", context={}, agent="assistant")
    with pytest.raises(LocalProtocolError):
        run_of(chat).turn_chunk(ghost, "x")


def test_closed_session_ignores_input() -> None:
    """After closing, frames and timers produce nothing."""
    chat = make()
    chat.receive('{"secret": "bad"}')
    assert chat.receive(msg()) == [] and chat.timer_expired() == []


# --------------------------------------------------------------------------- settings and handshake


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_messages": 0}, "max_messages: must be between 1 and 10000, got 0"),
        ({"max_messages": 10_001}, "max_messages: must be between 1 and 10000, got 10001"),
        ({"session_timeout_s": 59}, "session_timeout: must be between 60 and 86400 seconds, got 59"),
        ({"session_timeout_s": 86_401}, "session_timeout: must be between 60 and 86400 seconds, got 86401"),
        ({"secret": None}, "secret: required when authentication is on"),
        ({"auth_timeout_s": 0}, "auth_timeout: must be positive, got 0"),
    ],
)
def test_settings_are_range_checked(kwargs: dict[str, Any], error: str) -> None:
    """Out-of-range settings raise ConfigError naming the field and the allowed range."""
    with pytest.raises(ConfigError) as info:
        ChatSettings(**{"secret": SECRET, **kwargs})
    assert str(info.value) == error


@pytest.mark.parametrize(
    ("headers", "target", "expected"),
    [
        ([], "/", HandshakeAuth.ABSENT),
        ([(b"X-Connic-Secret", b"s3cret")], "/", HandshakeAuth.ACCEPTED),
        ([(b"x-connic-secret", b"wrong")], "/", HandshakeAuth.REJECTED),
        ([(b"Authorization", b"Bearer s3cret")], "/", HandshakeAuth.ACCEPTED),
        ([(b"authorization", b"bearer wrong")], "/", HandshakeAuth.REJECTED),
        ([(b"Authorization", b"Basic dTpw")], "/", HandshakeAuth.ABSENT),
        ([], "/?secret=s3cret", HandshakeAuth.ACCEPTED),
        ([], "/chat?X-Connic-Secret=s3cret&x=1", HandshakeAuth.ACCEPTED),
        ([], "/?secret=nope", HandshakeAuth.REJECTED),
        ([(b"X-Connic-Secret", b"s3cret")], "/?secret=nope", HandshakeAuth.REJECTED),
    ],
)
def test_handshake_secret_locations(headers: list[tuple[bytes, bytes]], target: str, expected: HandshakeAuth) -> None:
    """Header, bearer token and both query names are checked; any wrong secret rejects."""
    assert check_handshake_secret(ChatSettings(secret=SECRET), headers, target) is expected


# --------------------------------------------------------------------------- run: cancel, seq, replay, resume


def test_cancel_of_a_pending_turn_asks_the_io_layer() -> None:
    """`cancel` for a queued or running turn becomes a CancelTurn action."""
    chat = opened()
    chat.receive(msg(id="t"))
    assert CancelTurn("t") in chat.receive('{"type": "cancel", "id": "t"}')


def test_cancel_of_an_unknown_turn_is_an_error() -> None:
    """`cancel` naming no pending turn gets `unknown_turn`."""
    chat = opened()
    [error] = events(chat.receive('{"type": "cancel", "id": "nope"}'))
    assert error.code == "unknown_turn" and error.id == "nope"


def test_cancelled_turn_ends_with_its_partial_text() -> None:
    """A cancelled turn ends with stream_end status `cancelled`, the text so far, and joins no history."""
    chat = opened()
    [req] = turns(chat.receive(msg("q", id="t")))
    run_of(chat).turn_started(req)
    run_of(chat).turn_chunk(req, "half")
    [end] = run_of(chat).turn_ended(req, TurnStatus.CANCELLED)
    assert end == StreamEnd(id="t", agent="assistant", full_response="half", token_usage=TokenUsage(1, 1), status="cancelled")
    assert run_of(chat).history() == ()


def test_seq_counts_emitted_events_and_replay_returns_what_follows() -> None:
    """emit numbers events 1, 2, 3...; replay_after(n) returns those after n, complete."""
    run = new_run()
    for i in range(5):
        text = run.emit(Ack(id=i, message_number=i + 1))
        assert json.loads(text)["seq"] == i + 1 and run.seq == i + 1
    replay, complete = run.replay_after(3)
    assert [seq for seq, _ in replay] == [4, 5] and complete
    assert run.replay_after(5) == ([], True)


def test_replay_is_incomplete_once_the_log_dropped_events() -> None:
    """Past replay_max_bytes the oldest events are dropped, and replay says it is not complete."""
    run = new_run(replay_max_bytes=1000)
    for _i in range(50):
        run.emit(StreamChunk(id="t", agent="a", chunk="x" * 40))
    replay, complete = run.replay_after(0)
    assert not complete and replay[0][0] > 1 and replay[-1][0] == 50
    assert run.replay_after(replay[0][0] - 1)[1]


def test_resume_asks_for_the_run_before_any_message() -> None:
    """`resume` on a fresh connection becomes ResumeRun; after a message it is refused."""
    chat = opened()
    assert chat.receive('{"type": "resume", "connector_run_id": "old", "last_seq": 4}')[0] == ResumeRun("old", 4)
    chat.receive(msg())
    [error] = events(chat.receive('{"type": "resume", "connector_run_id": "old", "last_seq": 4}'))
    assert error.code == "invalid_message"


def test_attach_switches_runs_and_reports_completeness() -> None:
    """attach() moves the connection to the resumed run and answers `resumed` with what is replayed."""
    chat = opened()
    old = new_run("old")
    for i in range(3):
        old.emit(Ack(id=i, message_number=i + 1))
    replay, actions = chat.attach(old, 1)
    assert [seq for seq, _ in replay] == [2, 3]
    assert actions == [Send(Resumed(connector_run_id="old", last_seq=3, replayed=2, complete=True))]
    assert chat.run is old


def test_resume_of_an_unknown_run_is_an_error() -> None:
    """resume_failed() reports `unknown_run` and names the run the connection keeps."""
    chat = opened()
    [error] = events(chat.resume_failed("ghost"))
    assert error.code == "unknown_run" and "'run-1'" in error.message


def test_a_reply_past_max_reply_bytes_is_refused() -> None:
    """A chunk that would take the reply past max_reply_bytes raises ReplyTooLong and is not kept."""
    from antiphon.proto.chat.run import ReplyTooLong

    chat = opened(max_reply_bytes=10)
    [req] = turns(chat.receive(msg(id="t")))
    run = run_of(chat)
    run.turn_started(req)
    run.turn_chunk(req, "0123456789")
    with pytest.raises(ReplyTooLong, match="exceeded 10 bytes"):
        run.turn_chunk(req, "x")
    assert run.partial_text("t") == "0123456789"


@pytest.mark.parametrize(("chunk", "size"), [("é" * 5, 10), ("😀" * 3, 12), ('"' * 5, 10), ("\x00" * 2, 12)])
def test_reply_bound_counts_encoded_bytes_not_characters(chunk: str, size: int) -> None:
    """max_reply_bytes counts what the text takes inside the JSON frame: UTF-8 bytes and escapes."""
    from antiphon.proto.chat.run import ReplyTooLong

    chat = opened(max_reply_bytes=size)
    [req] = turns(chat.receive(msg(id="t")))
    run = run_of(chat)
    run.turn_chunk(req, chunk)
    with pytest.raises(ReplyTooLong):
        run.turn_chunk(req, "x")
