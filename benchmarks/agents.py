"""The echo agents antiphon serves in the benchmarks (``--agent benchmarks.agents:echo``).

The peer gateways in :mod:`benchmarks.targets.chat_subset` implement exactly the same
behaviour, so every gateway does the same work per message: the reply is the user's
text, once (``echo``), or ``context["chunks"]`` times as a stream (``stream``). Neither
reports token usage, so each gateway pays for its own estimate, as a user's agent
that reports none would make it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from antiphon.chat.agents import Turn


async def echo(turn: Turn) -> str:
    """The whole reply at once: the user's text."""
    return turn.message


async def stream(turn: Turn) -> AsyncIterator[str]:
    """``context["chunks"]`` chunks (default 1), each the user's text, as fast as the session takes them."""
    n = turn.context.get("chunks", 1)
    text = turn.message
    for _ in range(n if isinstance(n, int) else 1):
        yield text
