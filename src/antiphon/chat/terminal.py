"""``antiphon chat URL``: a person talks to a gateway from a terminal."""

from __future__ import annotations

import sys
from typing import Literal

import trio

from antiphon.chat.client import open_chat
from antiphon.errors import ChatError, ConnectionClosed

__all__ = ["run_terminal_chat"]


async def run_terminal_chat(url: str, secret: str | None, auth: Literal["message", "header", "query"]) -> None:
    """Read lines from standard input, stream each reply to standard output, until EOF."""
    async with open_chat(url, secret=secret, auth=auth) as chat:
        assert chat.connected is not None
        agents = ", ".join(chat.connected.agents)
        print(f"connected: run {chat.session_id}, agents: {agents}. Ctrl-D to leave.", flush=True)
        while True:
            line = await trio.to_thread.run_sync(_read_line, abandon_on_cancel=True)
            if line is None:
                return
            if not line.strip():
                continue
            try:
                async for chunk in chat.stream(line):
                    print(chunk, end="", flush=True)
                print(flush=True)
            except ChatError as exc:
                print(f"[error {exc.code}] {exc.message}", file=sys.stderr, flush=True)
            except ConnectionClosed as exc:
                print(f"[closed {exc.code}] {exc.reason or ''}", file=sys.stderr, flush=True)
                return


def _read_line() -> str | None:
    try:
        return input("> ")
    except EOFError:
        return None
