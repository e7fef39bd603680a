"""Agents: the user code a chat turn runs, and the built-in demo agent.

An agent is an async callable taking one :class:`Turn`. It either

* is an async generator yielding text chunks (the reply is streamed as they come), or
* returns the whole text, or an :class:`AgentReply` carrying the text and token usage.

Token usage can also be reported from inside a generator with
:meth:`Turn.report_usage`. When an agent reports none, the gateway estimates it as
``ceil(characters / 4)`` for the prompt (history plus message) and for the reply.

The turn runs as a Trio task of its session: when the session closes, the agent is
cancelled at its next checkpoint, and so is any upstream call it is awaiting.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeAlias

import trio
from attrs import define, frozen

from antiphon.errors import ConfigError
from antiphon.proto.chat.messages import MessageId, TokenUsage
from antiphon.proto.chat.run import HistoryEntry

__all__ = [
    "DEMO_AGENT_SPEC",
    "Agent",
    "AgentReply",
    "AgentResultError",
    "Turn",
    "check_chunk",
    "check_result",
    "demo_agent",
    "is_agent_function",
    "load_agent",
    "reply_text",
    "start_agent",
    "whole_reply",
]


@define(kw_only=True)
class Turn:
    """Everything an agent knows about the message it answers."""

    message: str
    context: Mapping[str, Any]
    history: Sequence[HistoryEntry]
    """Earlier turns, oldest first (immutable; index, slice, iterate, len)."""
    session_id: str
    message_id: MessageId
    message_number: int
    agent: str
    usage: TokenUsage | None = None

    def report_usage(self, prompt_tokens: int, candidates_tokens: int) -> None:
        """Record the real token usage of this turn (replaces the estimate)."""
        self.usage = TokenUsage(prompt_tokens, candidates_tokens)


@frozen
class AgentReply:
    """A whole reply with its token usage, for agents that do not stream."""

    text: str
    token_usage: TokenUsage | None = None


Agent: TypeAlias = Callable[[Turn], "AsyncIterator[str] | Awaitable[str | AgentReply]"]


class AgentResultError(TypeError):
    """An agent produced something that is not text."""


def start_agent(agent: Agent, turn: Turn) -> Any:
    """Call ``agent``: an async generator of chunks, or an awaitable of the whole reply."""
    return check_result(agent(turn))


def check_result(result: Any) -> Any:
    """What an agent returned, checked to be an async generator or an awaitable."""
    if not inspect.isasyncgen(result) and not inspect.isawaitable(result):
        raise AgentResultError(f"agent returned {type(result).__name__}, expected a coroutine or an async generator")
    return result


def check_chunk(chunk: object) -> str:
    """A streamed chunk, checked to be text."""
    if not isinstance(chunk, str):
        raise AgentResultError(f"agent yielded {type(chunk).__name__}, expected str")
    return chunk


async def whole_reply(result: Awaitable[str | AgentReply], turn: Turn) -> str:
    """Await a non-streaming agent's reply; an :class:`AgentReply`'s usage goes on ``turn``."""
    return reply_text(await result, turn)


def reply_text(value: object, turn: Turn) -> str:
    """A non-streaming agent's awaited reply as text; an :class:`AgentReply`'s usage goes on ``turn``."""
    if type(value) is str:
        return value
    if isinstance(value, AgentReply):
        if value.token_usage is not None:
            turn.usage = value.token_usage
        value = value.text
    if not isinstance(value, str):
        raise AgentResultError(f"agent returned {type(value).__name__}, expected str or AgentReply")
    return value


async def demo_agent(turn: Turn) -> AsyncIterator[str]:
    """The built-in agent: deterministic, streamed word by word, and aware of the history.

    It answers with the turn number, what the user just said and what the user said
    before, so a newcomer sees acks, chunks, history and token usage all at work.
    """
    earlier = [h.text for h in turn.history if h.role == "user"]
    text = f"Turn {turn.message_number}. You said: {turn.message!r}."
    if earlier:
        text += f" Before that you said: {earlier[-1]!r}."
    else:
        text += " This is the first message of our conversation."
    words = text.split(" ")
    for i, word in enumerate(words):
        # A checkpoint per chunk, like a real model stream: the turn stays cancellable.
        await trio.lowlevel.checkpoint()
        yield word if i == len(words) - 1 else word + " "


DEMO_AGENT_SPEC = "antiphon.chat.agents:demo_agent"


def load_agent(spec: str) -> Agent:
    """Import ``module:attribute`` (``attribute`` may be dotted) and return the agent.

    The current directory is importable, as for ``python -m``. Raises :class:`ConfigError`
    naming the spec when it cannot be imported, or when it is not an agent: an async
    generator function or a coroutine function (a plain ``def`` is refused here, at load,
    rather than failing every turn).
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ConfigError(f"agent: expected 'module:function', got {spec!r}")
    _current_directory_importable()
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"agent: cannot import module {module_name!r} ({exc})") from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"agent: {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise ConfigError(f"agent: {spec!r} is {type(obj).__name__}, not a function")
    if not is_agent_function(obj):
        raise ConfigError(
            f"agent: {spec!r} is a plain function; an agent is an async generator function "
            f"(async def ... yield chunks) or a coroutine function (async def ... return text)"
        )
    return obj  # type: ignore[no-any-return]


def is_agent_function(obj: object) -> bool:
    """Whether calling ``obj`` makes an async generator or a coroutine, as far as Python can tell.

    Looks through ``functools.partial``, decorators that set ``__wrapped__``, and objects
    with an async ``__call__``.
    """
    candidates = [obj, inspect.unwrap(obj) if callable(obj) else obj, getattr(obj, "__call__", None)]  # noqa: B004
    return any(inspect.iscoroutinefunction(c) or inspect.isasyncgenfunction(c) for c in candidates if c is not None)


def _current_directory_importable() -> None:
    # `python -m antiphon` puts the current directory on sys.path; the `antiphon` console
    # script does not, and users expect `--agent mymodule:fn` to find ./mymodule.py either way.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
