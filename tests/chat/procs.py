"""Real ``antiphon serve`` processes for tests, and a raw client to talk to them over TCP.

:func:`serve` starts one (port 0, 127.0.0.1) from the repository root, so that
``--agent tests.chat.run_agents:steered`` imports; it yields a :class:`Served` once the
process prints its URL, keeps every line of its standard error for
:meth:`Served.wait_log`, and kills it on exit. Nothing here sleeps: waits are for lines.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import trio

from tests.helpers import RawClient

__all__ = ["AGENT", "REPO", "Served", "connect", "serve", "until_end"]

REPO: Final = Path(__file__).resolve().parents[2]
AGENT: Final = "tests.chat.run_agents:steered"
URL_LINE: Final = re.compile(r"listening on (ws://(\S+):(\d+))")
START_TIMEOUT_S: Final = 60.0
"""Importing antiphon, connecting to Redis and PostgreSQL: seconds on an idle machine, more on a busy CI."""
STOP_TIMEOUT_S: Final = 30.0
"""A graceful stop with no client left takes well under a second; past this the process is killed."""


class Served:
    """A running ``antiphon serve``: its process, URL, and the lines it logged so far."""

    def __init__(self, proc: subprocess.Popen[str], first_line: str) -> None:
        self.proc = proc
        match = URL_LINE.search(first_line)
        assert match, first_line
        self.url, self.host, self.port = match[1], match[2], int(match[3])
        self.first_line = first_line
        self.log: list[str] = []
        self.clients: list[trio.SocketStream] = []  # closed with the server
        self._changed = threading.Condition()
        assert proc.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._reader.start()

    def close(self) -> None:
        """Close every client connection made to it, stop the process (SIGTERM, SIGKILL after 30 s), close its pipes."""
        for stream in self.clients:
            stream.socket.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait(timeout=15)
        self._reader.join(timeout=15)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self._changed:
                self.log.append(line.rstrip("\n"))
                self._changed.notify_all()

    def _wait_sync(self, text: str, start: int, timeout: float) -> int:
        with self._changed:
            found = self._changed.wait_for(lambda: any(text in line for line in self.log[start:]), timeout)
        assert found, f"{text!r} not logged; log: {self.log}"
        return len(self.log)

    async def wait_log(self, text: str, *, after: int = 0, timeout: float = 30) -> int:
        """Wait until a line containing ``text`` was logged (from line ``after`` on); returns the log's length."""
        return await trio.to_thread.run_sync(self._wait_sync, text, after, timeout)


@contextlib.contextmanager
def serve(*args: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    """``antiphon serve --port 0 --no-auth --agent AGENT ARGS`` until the block ends (then stopped, see :meth:`Served.close`)."""
    argv = [sys.executable, "-m", "antiphon", "serve", "--port", "0", "--no-auth", "--agent", AGENT, *args]
    proc = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    served = None
    try:
        served = Served(proc, _first_url_line(proc))
        yield served
    finally:
        if served is not None:
            served.close()
        else:
            proc.kill()
            _, err = proc.communicate(timeout=15)


def _first_url_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    timer = threading.Timer(START_TIMEOUT_S, proc.kill)
    timer.start()
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if URL_LINE.search(line):
                return line
    finally:
        timer.cancel()
    err = proc.stderr.read() if proc.stderr is not None else ""
    raise AssertionError(f"antiphon serve printed no URL: {''.join(lines)}{err}")


async def connect(served: Served, target: str = "/") -> tuple[RawClient, dict[str, Any]]:
    """A raw client of ``served`` over TCP, past its `connected` event."""
    stream = await trio.open_tcp_stream(served.host, served.port)
    served.clients.append(stream)
    client = RawClient(stream)
    await client.handshake(target)
    return client, await client.receive_json()


async def until_end(client: RawClient, *, kinds: tuple[str, ...] = ("stream_end",)) -> list[dict[str, Any]]:
    """Events up to and including the first whose type is in ``kinds``."""
    events = [await client.receive_json()]
    while events[-1]["type"] not in kinds:
        events.append(await client.receive_json())
    return events
