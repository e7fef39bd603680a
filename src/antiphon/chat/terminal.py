"""``antiphon chat URL``: a person talks to a gateway from a terminal.

On a terminal the prompt has line editing and history (prompt_toolkit); Alt-Enter (or
Esc, Enter) starts a new line, and a paste stays one message however many lines it has.
Ctrl-C during a reply cancels that turn (a ``cancel`` goes to the gateway; a second Ctrl-C
leaves); Ctrl-C or Ctrl-D at the prompt leaves. Commands: ``/agent [NAME]``,
``/resume [RUN_ID]``, ``/help``, ``/quit``; ``//text`` sends ``/text``. Replies go to standard output; status lines
(reconnecting, reconnected, cancelled, errors) to standard error. Without a terminal (a
pipe), every line of standard input is one message.

Theory of operation
-------------------
The prompt runs in a worker thread, where prompt_toolkit runs its own asyncio loop; Trio
never blocks on it. One Trio task reads every event of the conversation and routes it:
the current turn's events to the screen, ending the turn on its ``stream_end`` /
``response``; the rest as status lines, printed above the prompt while it is up. A second
task turns SIGINT (Ctrl-C while a reply runs, when the terminal is not in raw mode) into a
``cancel`` of the current turn. Only the public :class:`~antiphon.chat.client.ChatClient`
API is used: reconnect attempts arrive through ``open_chat(on_reconnect=...)``.

``/resume RUN_ID`` (and ``--resume RUN_ID`` at start) continues another run: a second
client resumes it, and only once the gateway has accepted the resume is the current
conversation left (closed with 1000), so a mistyped id costs nothing. Each client runs in
a task of its own, which is what lets the old one close after the new one opened. Replies
of turns this terminal did not start (the resumed run's, replayed) are printed whole.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import signal
import ssl
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final, Literal, TextIO

import trio
from attrs import define, field
from prompt_toolkit import PromptSession
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.patch_stdout import patch_stdout

from antiphon.chat.client import ChatClient, Reconnecting, open_chat
from antiphon.engine._util import open_nursery_unwrapped
from antiphon.errors import ChatError, ConfigError, ConnectionClosed, HandshakeRejected
from antiphon.proto.chat.messages import (
    ErrorCode,
    ErrorEvent,
    Response,
    Resumed,
    ServerEvent,
    StreamChunk,
    StreamEnd,
)
from antiphon.proto.close import CloseCode

__all__ = [
    "AUTH_CLOSE_CODES",
    "AUTH_CODES",
    "CONTINUATION",
    "EXIT_CLOSED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "HELP",
    "run_terminal_chat",
]

EXIT_OK: Final = 0
EXIT_CLOSED: Final = 1
"""The gateway ended the conversation (expired, limit reached, shut down, reconnects failed)."""
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

AUTH_CODES: Final = frozenset({ErrorCode.AUTH_FAILED, ErrorCode.AUTH_REQUIRED, ErrorCode.AUTH_TIMEOUT})
AUTH_CLOSE_CODES: Final = frozenset({CloseCode.AUTH_FAILED, CloseCode.AUTH_TIMEOUT})

HELP: Final = """\
commands:
  /agent         list the connector's agents
  /agent NAME    talk to agent NAME from now on
  /resume        show this conversation's run id
  /resume RUN    leave this conversation and continue run RUN (its replies are replayed)
  /help          this text
  /quit          leave (so do Ctrl-D and Ctrl-C at the prompt)
  //text         send "/text"
keys: Alt-Enter (or Esc, Enter) starts a new line; Ctrl-C during a reply cancels it."""

CONTINUATION: Final = ". "
"""Shown before the second and later lines of a message."""

_INTERRUPTED: Final = object()
"""What the prompt returns for Ctrl-C."""


@define
class _Turn:
    id: str
    done: trio.Event = field(factory=trio.Event)
    open_line: bool = False  # chunks were written and no newline yet
    cancelling: bool = False


class _Screen:
    """Where output goes: replies to ``out``, status lines to ``err``; both looked up at each write.

    Looking ``sys.stdout`` up at each write lets prompt_toolkit's ``patch_stdout`` print
    status lines above an active prompt.
    """

    def __init__(self, out: Callable[[], TextIO], err: Callable[[], TextIO]) -> None:
        self._out, self._err = out, err

    def write(self, text: str) -> None:
        stream = self._out()
        stream.write(text)
        stream.flush()

    def status(self, text: str) -> None:
        stream = self._err()
        stream.write(text + "\n")
        stream.flush()


class _Prompt:
    """Reads one message at a time; :meth:`stop` makes a pending or future read return None."""

    async def read(self, prompt: str) -> str | object | None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class _PipePrompt(_Prompt):
    """Standard input is not a terminal: one line, one message."""

    def __init__(self) -> None:
        self._stopped = False

    async def read(self, prompt: str) -> str | object | None:
        if self._stopped:
            return None
        line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        return line.rstrip("\n") if line and not self._stopped else None

    def stop(self) -> None:
        self._stopped = True


class _TerminalPrompt(_Prompt):
    """prompt_toolkit in a worker thread: editing, history, multi-line input, bracketed paste."""

    def __init__(self) -> None:
        bindings = KeyBindings()

        @bindings.add("escape", "enter")
        def _newline(event: KeyPressEvent) -> None:
            event.current_buffer.insert_text("\n")

        self._session: PromptSession[str] = PromptSession(
            history=InMemoryHistory(), key_bindings=bindings, prompt_continuation=CONTINUATION
        )
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False

    async def read(self, prompt: str) -> str | object | None:
        # Not abandoned on cancel: the thread owns the terminal's mode until the prompt ends,
        # so whoever cancels calls stop() first (see _Chat.leave).
        return await trio.to_thread.run_sync(self._read, prompt)

    def _read(self, prompt: str) -> str | object | None:
        def started() -> None:
            with self._lock:
                self._loop = asyncio.get_running_loop()
                if self._stopped:
                    self._session.app.exit(exception=EOFError())

        try:
            with patch_stdout(raw=True):
                return self._session.prompt(prompt, pre_run=started)
        except EOFError:
            return None
        except KeyboardInterrupt:
            return _INTERRUPTED
        finally:
            with self._lock:
                self._loop = None

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._exit)

    def _exit(self) -> None:
        app = self._session.app
        if app.future is not None and not app.future.done():
            app.exit(exception=EOFError())


class _Chat:
    """One terminal conversation over a connected :class:`ChatClient`."""

    def __init__(
        self, chat: ChatClient, prompt: _Prompt, screen: _Screen, agent: str | None, *, resumed: bool = False
    ) -> None:
        self.chat = chat
        self.prompt = prompt
        self.screen = screen
        assert chat.connected is not None
        self.agents = chat.connected.agents
        self.agent = agent
        self.current: _Turn | None = None
        self.exit_code = EXIT_OK
        self.over = False
        self.resume_to: str | None = None
        """Set by ``/resume RUN``: the caller opens that run, then leaves this one."""
        self._resumed = resumed  # the first `resumed` event answers our resume, not a reconnect
        self._ids = itertools.count(1)
        self._id_suffix = secrets.token_hex(4)  # never an id the resumed run has seen
        self._scope = trio.CancelScope()

    async def run(self, signals: AsyncIterator[int]) -> int:
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_events)
                nursery.start_soon(self._watch_interrupts, signals, nursery)
                await self._converse()
                nursery.cancel_scope.cancel()
        return self.exit_code

    def leave(self, code: int) -> None:
        """End the conversation from any task: the prompt first (it owns the terminal), then the rest."""
        self.exit_code = code
        self.prompt.stop()
        self._scope.cancel()

    # ------------------------------------------------------------------ input

    async def _converse(self) -> None:
        while not self.over:
            line = await self.prompt.read(f"{self.agent}> " if len(self.agents) > 1 and self.agent else "> ")
            if line is None or line is _INTERRUPTED:
                return
            assert isinstance(line, str)
            if not line.strip():
                continue
            if line.startswith("/") and not line.startswith("//"):
                if self._command(line.strip()) in ("quit", "resume"):
                    return
                continue
            await self._turn(line[1:] if line.startswith("//") else line)

    def _command(self, line: str) -> str | None:
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name == "/quit":
            return "quit"
        if name == "/resume":
            if not arg:
                self.screen.status(f"run: {self.chat.session_id}")
                return None
            if arg == self.chat.session_id:
                self.screen.status(f"already in run {arg}")
                return None
            self.resume_to = arg
            return "resume"
        if name == "/help":
            self.screen.status(HELP)
        elif name == "/agent":
            if not arg:
                current = self.agent or self.agents[0]
                self.screen.status("agents: " + ", ".join(f"{a} (current)" if a == current else a for a in self.agents))
            elif arg in self.agents:
                self.agent = arg
                self.screen.status(f"talking to {arg}")
            else:
                self.screen.status(f"no agent {arg!r} here; this connector has: {', '.join(self.agents)}")
        else:
            self.screen.status(f"unknown command {name} (/help lists them)")
        return None

    async def _turn(self, text: str) -> None:
        turn = _Turn(id=f"t{next(self._ids)}-{self._id_suffix}")
        self.current = turn
        try:
            await self.chat.send(text, id=turn.id, agent=self.agent)
            await turn.done.wait()
        except ConnectionClosed:
            pass  # the event reader reports the end of the conversation
        finally:
            self.current = None

    async def _watch_interrupts(self, signals: AsyncIterator[int], nursery: trio.Nursery) -> None:
        async for _ in signals:
            turn = self.current
            if turn is None or turn.cancelling or turn.done.is_set():
                self.leave(EXIT_INTERRUPTED)
                return
            turn.cancelling = True
            self._end_line(turn)
            self.screen.status("[cancelling the reply; Ctrl-C again to leave]")
            nursery.start_soon(self._cancel, turn.id)

    async def _cancel(self, id: str) -> None:
        try:
            await self.chat.cancel(id)
        except ConnectionClosed:
            pass

    # ------------------------------------------------------------------ events

    async def _read_events(self) -> None:
        async for event in self.chat:
            self._show(event)
        self.over = True
        code, reason = self.chat.close_code, self.chat.close_reason
        if self.current is not None:
            self._end_line(self.current)
            self.current.done.set()
        self.screen.status(f"[conversation over: closed {code or CloseCode.ABNORMAL}{' ' + reason if reason else ''}]")
        self.leave(EXIT_CLOSED)

    def _show(self, event: ServerEvent) -> None:
        turn = self.current
        mine = turn is not None and getattr(event, "id", None) == turn.id
        if isinstance(event, StreamChunk) and mine:
            assert turn is not None
            if event.chunk:
                self.screen.write(event.chunk)
                turn.open_line = not event.chunk.endswith("\n")
        elif isinstance(event, (StreamEnd, Response)) and mine:
            assert turn is not None
            if isinstance(event, Response):
                self.screen.write(event.response)
                turn.open_line = True
            self._end_line(turn)
            if event.status != "completed":
                self.screen.status(f"[{event.status}]")
            turn.done.set()
        elif isinstance(event, ErrorEvent):
            if turn is not None:
                self._end_line(turn)
            self.screen.status(f"[error {event.code}] {event.message}")
            if mine and event.code != ErrorCode.AGENT_ERROR:
                assert turn is not None
                turn.done.set()  # refused, never accepted: no reply will come
        elif isinstance(event, (StreamEnd, Response)):
            # A turn this terminal did not start: the resumed run's, replayed.
            text = event.full_response if isinstance(event, StreamEnd) else event.response
            self.screen.write(text.rstrip("\n") + "\n")
        elif isinstance(event, Resumed):
            lost = "" if event.complete else "; some events were lost"
            if self._resumed:
                self._resumed = False
                self.screen.status(f"[resumed run {event.connector_run_id}: {event.replayed} events replayed{lost}]")
            else:
                self.screen.status(
                    f"[reconnected: run {event.connector_run_id} resumed, {event.replayed} events replayed{lost}]"
                )

    def _end_line(self, turn: _Turn) -> None:
        if turn.open_line:
            self.screen.write("\n")
            turn.open_line = False


async def run_terminal_chat(
    url: str,
    secret: str | None,
    auth: Literal["message", "header", "query"],
    *,
    agent: str | None = None,
    secret_env: str = "ANTIPHON_SECRET",
    resume: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """Talk to the gateway at ``url`` until the user leaves or the conversation ends; returns the exit status.

    ``resume`` continues that run instead of starting one. Raises :class:`ConfigError` at
    once when the gateway asks for a secret and none was given, ``agent`` is not one of
    the connector's, or ``resume`` names no resumable run; :class:`ChatError` /
    :class:`HandshakeRejected` when it refuses the secret; other connection failures as
    antiphon's errors.
    """
    screen = _Screen(lambda: sys.stdout, lambda: sys.stderr)

    def announce(event: Reconnecting) -> None:
        screen.status(
            f"[connection lost; reconnecting, attempt {event.attempt} of {event.max_attempts}, in {event.delay_s:g} s]"
        )

    async def hold(run: str | None, *, task_status: trio.TaskStatus[tuple[ChatClient, trio.Event]]) -> None:
        # One task per client: the old one can close after the new one opened.
        async with open_chat(
            url, secret=secret, auth=auth, resume_run=run, on_reconnect=announce, ssl_context=ssl_context
        ) as chat:
            leave = trio.Event()
            task_status.started((chat, leave))
            await leave.wait()

    try:
        async with open_nursery_unwrapped() as nursery:
            try:
                chat, leave = await _start(nursery, hold, resume)
            except ChatError as exc:
                if exc.code == ErrorCode.UNKNOWN_RUN and resume is not None:
                    raise ConfigError(f"--resume {resume}: no resumable run here (unknown or expired)") from None
                raise
            assert chat.connected is not None
            agents = chat.connected.agents
            if agent is not None and agent not in agents:
                raise ConfigError(f"--agent {agent}: no such agent here; this connector has: {', '.join(agents)}")
            interactive = sys.stdin.isatty()
            keys = " Alt-Enter: new line; /help: commands." if interactive else ""
            screen.write(f"connected: run {chat.session_id}, agents: {', '.join(agents)}. Ctrl-D to leave.{keys}\n")
            prompt = _TerminalPrompt() if interactive else _PipePrompt()
            # From here on Ctrl-C is ours (while connecting, it simply stops the command).
            with trio.open_signal_receiver(signal.SIGINT) as signals:
                resumed = resume is not None
                while True:
                    talk = _Chat(chat, prompt, screen, agent, resumed=resumed)
                    code = await talk.run(signals)
                    agent = talk.agent
                    if talk.resume_to is None:
                        leave.set()
                        return code
                    screen.status(f"[resuming run {talk.resume_to}]")
                    try:
                        new_chat, new_leave = await _start(nursery, hold, talk.resume_to)
                    except ChatError as exc:
                        if exc.code != ErrorCode.UNKNOWN_RUN:
                            raise
                        gone, here = talk.resume_to, chat.session_id
                        screen.status(f"[no resumable run {gone} (unknown or expired); still in run {here}]")
                        resumed = False
                        continue
                    leave.set()  # this conversation's run ends (1000); the resumed one goes on
                    chat, leave, resumed = new_chat, new_leave, True
    except ChatError as exc:
        if exc.code in AUTH_CODES:
            raise _auth_error(url, secret, exc.message, secret_env) from None
        raise
    except ConnectionClosed as exc:
        if exc.code in AUTH_CLOSE_CODES:
            raise _auth_error(url, secret, exc.reason or "authentication failed", secret_env) from None
        raise
    except HandshakeRejected as exc:
        if exc.status_code == 401:
            raise _auth_error(url, secret, "HTTP 401", secret_env) from None
        raise


async def _start(
    nursery: trio.Nursery,
    hold: Callable[..., Awaitable[None]],
    run: str | None,
) -> tuple[ChatClient, trio.Event]:
    """``nursery.start(hold, run)``, with a failure to connect raised as itself, not in a group."""
    try:
        started: tuple[ChatClient, trio.Event] = await nursery.start(hold, run)
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
            raise group.exceptions[0] from None
        raise
    return started


def _auth_error(url: str, secret: str | None, detail: str, secret_env: str) -> ConfigError:
    if secret is None:
        return ConfigError(f"{url} asks for a secret: pass --secret or set ${secret_env}")
    return ConfigError(f"{url} refused the secret ({detail})")
