"""open_chat's hooks over real sockets: resume_run/last_seq, on_reconnect, and a missing secret failing at once."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from antiphon.chat import open_chat
from antiphon.chat.client import Reconnecting, ReconnectPolicy
from antiphon.errors import ChatError
from antiphon.proto.chat.messages import Ack, Pong, Resumed, StreamEnd
from tests.chat.conftest import SECRET, connector, tcp_gateway

NO_RECONNECT = ReconnectPolicy(max_attempts=0)


async def _drop(chat: Any) -> None:
    """The network goes: the client's TCP connection closes without a close frame."""
    await chat._session.wire.aclose()


async def test_resume_run_continues_another_clients_run_from_last_seq() -> None:
    """A second client resumes the first one's run: `resumed`, then exactly the events after last_seq, then it goes on."""
    async with tcp_gateway() as gateway:
        async with open_chat(gateway.url, secret=SECRET, reconnect=NO_RECONNECT) as first:
            run_id = first.session_id
            await first.ask("one")
            seen_up_to = first.last_seq
            await first.ask("two")
            last = first.last_seq
            await _drop(first)
        async with open_chat(gateway.url, secret=SECRET, resume_run=run_id, last_seq=seen_up_to) as second:
            assert second.session_id == run_id
            resumed = await second.receive()
            assert isinstance(resumed, Resumed) and (resumed.connector_run_id, resumed.replayed) == (run_id, last - seen_up_to)
            replayed = [await second.receive() for _ in range(last - seen_up_to)]
            assert isinstance(replayed[0], Ack) and isinstance(replayed[-1], StreamEnd)
            assert "You said: 'two'" in replayed[-1].full_response
            assert second.last_seq == last
            reply = await second.ask("three")
            assert reply.text.startswith("Turn 3. You said: 'three'. Before that you said: 'two'.")


async def test_resume_run_of_an_unknown_run_fails_open_chat() -> None:
    """A run the gateway does not hold (unknown, expired) is a ChatError `unknown_run` from open_chat."""
    async with tcp_gateway() as gateway:
        with pytest.raises(ChatError) as caught:
            async with open_chat(gateway.url, secret=SECRET, resume_run="no-such-run"):
                pass
        assert caught.value.code == "unknown_run"


async def test_on_reconnect_hears_each_attempt_before_its_delay(caplog: pytest.LogCaptureFixture) -> None:
    """A dropped connection: on_reconnect gets Reconnecting(attempt 1 of 3, the policy's delay, why); a failing hook is logged."""
    heard: list[Reconnecting] = []

    def hook(event: Reconnecting) -> None:
        heard.append(event)
        raise RuntimeError("the application's bug")

    policy = ReconnectPolicy(max_attempts=3, initial_delay_s=0.01)
    async with tcp_gateway() as gateway, open_chat(gateway.url, secret=SECRET, reconnect=policy, on_reconnect=hook) as chat:
        await chat.ask("before")
        await _drop(chat)
        with trio.fail_after(10):
            event = await chat.receive()
        assert isinstance(event, Resumed)
        assert (await chat.ask("after")).text.startswith("Turn 2.")
    (only,) = heard
    assert (only.attempt, only.max_attempts, only.delay_s) == (1, 3, 0.01) and only.reason.startswith("closed 1006")
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == ["the on_reconnect callback failed"]


async def test_a_missing_secret_fails_at_once() -> None:
    """No secret, a gateway that wants one: ChatError `auth_required` now, not after its (hour-long) auth timeout."""
    async with tcp_gateway(connector(auth_timeout_s=3600)) as gateway:
        with pytest.raises(ChatError) as caught:
            async with open_chat(gateway.url, connect_timeout_s=3600):  # only the probe can end this
                pass
    assert (caught.value.code, caught.value.message) == ("auth_required", "the gateway asks for a secret and none was given")


async def test_the_probe_is_invisible_to_the_application() -> None:
    """Without a secret on an open gateway the chat works, and the probe's pong never reaches the application."""
    async with tcp_gateway(connector(require_auth=False)) as gateway, open_chat(gateway.url) as chat:
        await chat.ask("hi")
        await chat.ping()
        assert isinstance(await chat.receive(), Pong)  # the application's own
        await chat.ping()
        assert isinstance(await chat.receive(), Pong)
