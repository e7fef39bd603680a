"""`antiphon chat` in a pseudo-terminal (pexpect) against an in-process gateway on 127.0.0.1."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pexpect
import trio

from antiphon.chat import Turn
from tests.chat.conftest import SECRET, connector, tcp_gateway

ANTIPHON = [sys.executable, "-m", "antiphon"]
EXPECT_TIMEOUT_S = 30
"""A bound for a broken test, never a measurement: each step takes milliseconds."""
PROMPT_READY = "\x1b[?2004h"
"""prompt_toolkit turns bracketed paste on as each prompt starts reading keys."""
PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"
LEFT, UP, ENTER, ALT_ENTER, CTRL_C = "\x1b[D", "\x1b[A", "\r", "\x1b\r", "\x03"


class Pty:
    """An `antiphon chat` process in a pseudo-terminal; blocking pexpect calls run in a thread."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        base = {k: v for k, v in os.environ.items() if k != "ANTIPHON_SECRET"}
        # No cursor-position requests (nothing answers them here); a terminal prompt_toolkit knows.
        base.update(PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm", PYTHONUNBUFFERED="1")
        self.child = pexpect.spawn(
            ANTIPHON[0], [*ANTIPHON[1:], "chat", *args], env={**base, **(env or {})},
            encoding="utf-8", timeout=EXPECT_TIMEOUT_S, dimensions=(24, 120),
        )

    async def expect(self, pattern: str) -> None:
        await trio.to_thread.run_sync(self.child.expect_exact, pattern)

    async def prompt(self) -> None:
        await self.expect(PROMPT_READY)

    def send(self, *keys: str) -> None:
        self.child.send("".join(keys))

    async def exit_status(self) -> int | None:
        await trio.to_thread.run_sync(self.child.expect, pexpect.EOF)
        self.child.close()
        status: int | None = self.child.exitstatus
        return status

    async def quit(self) -> None:
        """Leave with ``/quit`` at the next prompt (the gateway then has no session left) and check exit status 0."""
        await self.prompt()
        self.send("/quit", ENTER)
        assert await self.exit_status() == 0

    def kill(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)


@contextmanager
def chat_pty(*args: str) -> Iterator[Pty]:
    pty = Pty(*args)
    try:
        yield pty
    finally:
        pty.kill()


async def test_line_editing_history_and_ctrl_c_at_the_prompt() -> None:
    """Cursor keys edit the line, Up recalls the last message, and Ctrl-C at the prompt leaves with status 0."""
    async with tcp_gateway() as gateway:
        with chat_pty(gateway.url, "--secret", SECRET) as pty:
            await pty.expect("connected: run ")
            await pty.prompt()
            pty.send("wrld", LEFT * 3, "o", ENTER)
            await pty.expect("Turn 1. You said: 'world'.")
            await pty.prompt()
            pty.send(UP, ENTER)
            await pty.expect("Turn 2. You said: 'world'. Before that you said: 'world'.")
            await pty.prompt()
            pty.send(CTRL_C)
            assert await pty.exit_status() == 0


async def test_a_paste_and_alt_enter_make_one_message_of_several_lines() -> None:
    """A bracketed paste with newlines, and lines joined by Alt-Enter, each go out as one message."""
    async with tcp_gateway() as gateway:
        with chat_pty(gateway.url, "--secret", SECRET) as pty:
            await pty.prompt()
            pty.send(PASTE_START, "one\ntwo\nthree", PASTE_END, ENTER)
            await pty.expect("Turn 1. You said: 'one\\ntwo\\nthree'.")
            await pty.prompt()
            pty.send("line a", ALT_ENTER, "line b", ENTER)
            await pty.expect("Turn 2. You said: 'line a\\nline b'.")
            await pty.quit()


async def test_ctrl_c_during_a_reply_cancels_that_turn_only() -> None:
    """Ctrl-C while a reply streams sends `cancel`: the agent is cancelled, the turn ends `cancelled`, the chat goes on."""
    cancelled = trio.Event()

    async def slow(turn: Turn) -> AsyncIterator[str]:
        if turn.message != "go":
            yield f"quick answer to {turn.message}"
            return
        yield "thinking"
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    async with tcp_gateway(connector(slow)) as gateway:
        with chat_pty(gateway.url, "--secret", SECRET) as pty:
            await pty.prompt()
            pty.send("go", ENTER)
            await pty.expect("thinking")
            pty.child.sendintr()
            await pty.expect("[cancelled]")
            assert cancelled.is_set()
            await pty.prompt()
            pty.send("next", ENTER)
            await pty.expect("quick answer to next")
            await pty.quit()


async def test_agent_command_picks_an_agent_of_a_multi_agent_connector() -> None:
    """`/agent` lists the agents, `/agent NAME` routes later messages to NAME; `--agent` picks the first one."""

    async def first(turn: Turn) -> str:
        return f"first heard {turn.message}"

    async def second(turn: Turn) -> str:
        return f"second heard {turn.message}"

    async with tcp_gateway(connector({"first": first, "second": second})) as gateway:
        with chat_pty(gateway.url, "--secret", SECRET, "--agent", "second") as pty:
            await pty.prompt()
            pty.send("a", ENTER)
            await pty.expect("second heard a")
            await pty.prompt()
            pty.send("/agent", ENTER)
            await pty.expect("agents: first, second (current)")
            await pty.prompt()
            pty.send("/agent first", ENTER)
            await pty.expect("talking to first")
            await pty.prompt()
            pty.send("b", ENTER)
            await pty.expect("first heard b")
            await pty.prompt()
            pty.send("/agent third", ENTER)
            await pty.expect("no agent 'third' here; this connector has: first, second")
            await pty.quit()


async def test_a_missing_secret_is_reported_at_once() -> None:
    """With no secret given, the gateway's request for one ends the command at once (exit 2), not after auth_timeout."""
    # An hour of auth_timeout: only the fast path can pass this test.
    async with tcp_gateway(connector(auth_timeout_s=3600)) as gateway:
        with chat_pty(gateway.url) as pty:
            await pty.expect(f"antiphon: {gateway.url} asks for a secret: pass --secret or set $ANTIPHON_SECRET")
            assert await pty.exit_status() == 2


async def test_a_wrong_secret_is_reported() -> None:
    """A wrong first-message secret ends the command with one line and exit 2."""
    async with tcp_gateway() as gateway:
        with chat_pty(gateway.url, "--secret", "wrong") as pty:
            await pty.expect(f"antiphon: {gateway.url} refused the secret (invalid secret)")
            assert await pty.exit_status() == 2


async def test_a_gateway_without_auth_ignores_the_empty_secret() -> None:
    """Without a secret against a gateway that needs none, the chat works (the empty probe is ignored)."""
    async with tcp_gateway(connector(require_auth=False)) as gateway:
        with chat_pty(gateway.url) as pty:
            await pty.prompt()
            pty.send("hi", ENTER)
            await pty.expect("Turn 1. You said: 'hi'. This is the first message of our conversation.")
            await pty.quit()


async def test_status_lines_while_reconnecting_and_after_resuming() -> None:
    """A dropped connection shows a reconnecting status line, then a resumed one; the conversation carries on."""
    async with tcp_gateway() as gateway:
        relay_state: dict[str, Any] = {}
        async with _relay(gateway.port, relay_state) as port:
            with chat_pty(f"ws://127.0.0.1:{port}", "--secret", SECRET) as pty:
                await pty.prompt()
                pty.send("before", ENTER)
                await pty.expect("Turn 1. You said: 'before'.")
                await pty.prompt()
                relay_state["cut"]()
                await pty.expect("[connection lost; reconnecting, attempt 1 of 5, in 0.5 s]")
                await pty.expect("events replayed]")
                pty.send("after", ENTER)
                await pty.expect("Turn 2. You said: 'after'. Before that you said: 'before'.")
                await pty.quit()


@asynccontextmanager
async def _relay(target_port: int, state: dict[str, Any]) -> AsyncIterator[int]:
    """A TCP relay on 127.0.0.1 to ``target_port``; ``state["cut"]()`` drops every connection relayed so far."""
    scopes: list[trio.CancelScope] = []

    async def pump(src: trio.abc.Stream, dst: trio.abc.Stream) -> None:
        async for data in src:
            await dst.send_all(data)

    async def relay(client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream("127.0.0.1", target_port) as upstream:
            scope = trio.CancelScope()
            scopes.append(scope)
            with scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pump, client, upstream)
                    nursery.start_soon(pump, upstream, client)
        # Both sockets close without a close frame either way, as when a network goes.

    def cut() -> None:
        for scope in scopes:
            scope.cancel()
        scopes.clear()

    state["cut"] = cut
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, relay, 0, host="127.0.0.1"))
        yield int(listeners[0].socket.getsockname()[1])
        nursery.cancel_scope.cancel()


async def test_the_gateway_ending_the_conversation_ends_the_command() -> None:
    """When the gateway closes the run (here: past the message limit), the client says why and how, and exits 1."""
    async with tcp_gateway(connector(max_messages=1)) as gateway:
        with chat_pty(gateway.url, "--secret", SECRET) as pty:
            await pty.prompt()
            pty.send("only", ENTER)
            await pty.expect("Turn 1. You said: 'only'.")
            await pty.prompt()
            pty.send("one more", ENTER)
            await pty.expect("[error message_limit]")
            await pty.expect("[conversation over: closed 4429 message limit]")
            assert await pty.exit_status() == 1


async def _run_id(pty: Pty) -> str:
    """The run id the `connected: run ...` line announces."""
    await trio.to_thread.run_sync(pty.child.expect, r"connected: run ([0-9a-f]+),")
    return str(pty.child.match.group(1))


async def test_resume_command_takes_over_another_terminals_run() -> None:
    """`/resume RUN` leaves this run for RUN: its replies are replayed, the other terminal is told, the talk goes on."""
    async with tcp_gateway() as gateway:
        with chat_pty(gateway.url, "--secret", SECRET) as first, chat_pty(gateway.url, "--secret", SECRET) as second:
            run_id = await _run_id(first)
            await first.prompt()
            first.send("remember this", ENTER)
            await first.expect("Turn 1. You said: 'remember this'.")
            await second.prompt()
            second.send("/resume no-such-run", ENTER)
            await second.expect("[no resumable run no-such-run (unknown or expired); still in run ")
            await second.prompt()
            second.send("/resume ", run_id, ENTER)
            await second.expect(f"[resumed run {run_id}: ")
            await second.expect("Turn 1. You said: 'remember this'.")  # the replayed reply, printed whole
            await first.expect("[conversation over: closed 4409")
            assert await first.exit_status() == 1
            await second.prompt()
            second.send("/resume", ENTER)
            await second.expect(f"run: {run_id}")
            await second.prompt()
            second.send("and now", ENTER)
            await second.expect("Turn 2. You said: 'and now'. Before that you said: 'remember this'.")
            await second.quit()


async def test_resume_flag_continues_a_run_or_says_it_cannot() -> None:
    """`--resume RUN` starts in that run; an unknown run is one line and exit 2."""
    async with tcp_gateway() as gateway:
        with chat_pty(gateway.url, "--secret", SECRET) as first:
            run_id = await _run_id(first)
            await first.prompt()
            first.send("hello", ENTER)
            await first.expect("Turn 1. You said: 'hello'.")
            with chat_pty(gateway.url, "--secret", SECRET, "--resume", run_id) as second:
                await second.expect(f"connected: run {run_id},")
                await second.expect(f"[resumed run {run_id}: ")
                await second.prompt()
                second.send("again", ENTER)
                await second.expect("Turn 2. You said: 'again'. Before that you said: 'hello'.")
                await second.quit()
        with chat_pty(gateway.url, "--secret", SECRET, "--resume", "gone") as third:
            await third.expect("antiphon: --resume gone: no resumable run here (unknown or expired)")
            assert await third.exit_status() == 2
