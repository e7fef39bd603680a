"""Agents for tests that run real ``antiphon serve`` processes (``--agent tests.chat.run_agents:NAME``).

A message's ``context`` steers them, so one server serves every case of a test:

* ``chunks`` (int): how many chunks to stream (default 3), each ``c0 ``, ``c1 ``...;
* ``delay`` (seconds): a pause before each chunk after the first (default 0);
* ``gate`` (a path): after ``before`` chunks (default 1), wait until that file exists,
  so a test decides when the rest of the reply comes, without sleeping itself;
* ``history``: answer with the user messages of the history instead.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Final

import trio

from antiphon.chat import Turn

GATE_POLL_S: Final = 0.01
"""How often a gated turn looks for its file (the server sleeps, never the test)."""


async def steered(turn: Turn) -> AsyncIterator[str]:
    """See the module docstring."""
    ctx = turn.context
    if ctx.get("history"):
        yield "history: " + " | ".join(h.text for h in turn.history if h.role == "user")
        return
    chunks, delay = int(ctx.get("chunks", 3)), float(ctx.get("delay", 0))
    gate, before = ctx.get("gate"), int(ctx.get("before", 1))
    for i in range(chunks):
        if i == before and gate:
            while not os.path.exists(str(gate)):
                await trio.sleep(GATE_POLL_S)
        elif i and delay:
            await trio.sleep(delay)
        else:
            await trio.lowlevel.checkpoint()
        yield f"c{i} "
