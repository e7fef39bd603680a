"""How a tool connection's close becomes an error: a 1009 this client sent says the reply was too big.

The engine reports who closed (``closed_by_peer``); these tests drive a ToolConnection with a
stand-in session so the mapping is pinned whatever engine delivers the close.
"""

from __future__ import annotations

import pytest
from attrs import define

from antiphon.errors import (
    ClosedWithoutReply,
    ConnectionClosed,
    ConnectionClosedError,
    ReplyTooLarge,
)
from antiphon.proto.close import CloseCode
from antiphon.tools.pool import ToolConnection, closed_error


@define
class ClosedSession:
    """The three facts of a finished session that the tool client reads."""

    close_code: int | None
    close_reason: str | None
    closed_by_peer: bool
    closing: bool = True


async def _receive_after(session: ClosedSession, *, replied: bool = False) -> object:
    conn = ToolConnection("ws://127.0.0.1/tools/t", max_message_size=4096)
    conn.session = session  # type: ignore[assignment]
    conn.begin()
    conn.on_close(session)  # type: ignore[arg-type]
    return await conn.receive(5, "tool 't'", replied=replied)


@pytest.mark.parametrize("replied", [False, True])
async def test_a_1009_the_client_sent_is_a_reply_too_large_error_naming_the_limit(replied: bool) -> None:
    """closed_by_peer False + 1009: ReplyTooLarge saying the reply exceeded max_message_size (4096 bytes)."""
    with pytest.raises(ReplyTooLarge) as info:
        await _receive_after(ClosedSession(CloseCode.MESSAGE_TOO_BIG, "message too big", False), replied=replied)
    assert str(info.value).startswith("tool 't': a reply frame exceeded this client's max_message_size (4096 bytes)")
    assert info.value.code == 1009 and info.value.limit == 4096
    assert isinstance(info.value, ConnectionClosed)


async def test_a_1009_from_the_server_says_the_calls_message_was_too_big() -> None:
    """A 1009 the peer sent is ClosedWithoutReply saying our message was over the server's limit."""
    with pytest.raises(ClosedWithoutReply) as info:
        await _receive_after(ClosedSession(CloseCode.MESSAGE_TOO_BIG, "", True))
    assert str(info.value) == (
        "tool 't': the server closed the connection with 1009 (message too big): the call's message exceeded its limit"
    )
    assert not isinstance(info.value, ReplyTooLarge)


async def test_other_closes_before_a_reply_are_closed_without_reply_and_after_one_end_the_read() -> None:
    """1000 before any frame: ClosedWithoutReply with the code; after a frame (a stream): the read just ends."""
    with pytest.raises(ClosedWithoutReply, match=r"^tool 't': the server closed the connection \(1000\) without replying$"):
        await _receive_after(ClosedSession(CloseCode.NORMAL, "bye", True))
    assert await _receive_after(ClosedSession(CloseCode.NORMAL, "bye", True), replied=True) is None


def test_closed_error_after_a_reply_is_a_connection_closed_error() -> None:
    """Mid-stream, an abnormal close is ConnectionClosedError carrying the code and reason."""
    error = closed_error(ClosedSession(CloseCode.INTERNAL_ERROR, "boom", True), "tool 't'", limit=None, replied=True)  # type: ignore[arg-type]
    assert type(error) is ConnectionClosedError and error.code == 1011 and error.reason == "boom"
    assert str(error) == "tool 't': the connection closed with code 1011 (boom)"
