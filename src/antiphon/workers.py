"""Several ``antiphon serve`` processes on one port: a parent that starts, restarts and drains them.

Theory of operation
-------------------
:func:`serve_workers` is the parent. It never serves a connection itself: it starts
``count`` worker processes (``antiphon serve --worker``), each given the whole
configuration document on its standard input (secrets included, so they are never
on a command line), and each binding the same port with SO_REUSEPORT; the kernel
spreads new connections among them. Port 0 is resolved first by the parent, which
binds (without listening) a SO_REUSEPORT socket to pick a free port and holds it for
its lifetime, so that the port stays the group's.

* A worker is ready once it prints its ``listening on`` line. The first worker is
  started alone: when it cannot start (a busy port, Redis unreachable, a bad agent) its
  one-line error is the only one, and the parent exits with its status (2).
* A worker that exits while the parent is not stopping is restarted, after a delay
  that doubles while it keeps failing (up to :data:`RESTART_MAX_DELAY_S`).
* SIGINT or SIGTERM sends SIGTERM to every worker: each drains gracefully (as a
  single ``antiphon serve`` does). A second signal is passed on too: the workers stop
  at once. The parent returns once every worker has exited.
* A worker whose parent is gone (its standard input reaches end of file) drains itself.

With more than one worker a resume may land on any of them, so the configuration must
share runs through a backend (``runs = "redis://..."``); :mod:`antiphon.chat.config`
refuses anything else.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Final

import trio
from attrs import define, frozen

from antiphon.errors import ConfigError, ListenError

__all__ = [
    "READY_MARK",
    "READY_TIMEOUT_S",
    "RESTART_MAX_DELAY_S",
    "RESTART_MIN_DELAY_S",
    "STABLE_S",
    "WORKERS_RANGE",
    "WORKER_FLAG",
    "WorkerSettings",
    "reserve_port",
    "serve_workers",
    "worker_argv",
]

log = logging.getLogger("antiphon.workers")

WORKER_FLAG: Final = "--worker"
"""``antiphon serve`` flag of a worker process: it reads its configuration from standard input."""
WORKERS_RANGE: Final = (1, 256)
READY_TIMEOUT_S: Final = 60.0
"""How long a worker may take to start listening (agents import, stores and Redis connect)."""
RESTART_MIN_DELAY_S: Final = 0.5
RESTART_MAX_DELAY_S: Final = 30.0
"""A worker that keeps failing is restarted at most this often."""
STABLE_S: Final = 30.0
"""A worker that ran this long before it exited is restarted after the shortest delay again."""
READY_MARK: Final = "listening on "


@frozen(kw_only=True)
class WorkerSettings:
    """How many processes serve the port (``workers``); raises :class:`ConfigError` out of range."""

    workers: int = 1

    def __attrs_post_init__(self) -> None:
        lo, hi = WORKERS_RANGE
        if not lo <= self.workers <= hi:
            raise ConfigError(f"workers: must be between {lo} and {hi}, got {self.workers}")


@define
class _Worker:
    number: int
    process: trio.Process | None = None
    lines: AsyncIterator[str] | None = None  # its standard output, line by line, read on after the ready line
    restarts: int = 0


class _Supervisor:
    def __init__(self, argv: Sequence[str], document: Mapping[str, Any], count: int) -> None:
        self.argv = list(argv)
        self.payload = (json.dumps(document) + "\n").encode()
        self.workers = [_Worker(i + 1) for i in range(count)]
        self.stopping = False
        self.ready_line = ""

    async def start(self, worker: _Worker) -> int | None:
        """Start ``worker`` and wait until it listens; its exit status when it exits first."""
        process = await trio.lowlevel.open_process(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
        )
        worker.process = process
        assert process.stdin is not None and process.stdout is not None
        await process.stdin.send_all(self.payload)  # the pipe stays open: its end tells the worker we are gone
        lines = worker.lines = _lines(process.stdout)
        with trio.move_on_after(READY_TIMEOUT_S):
            async for line in lines:
                if READY_MARK in line:
                    self.ready_line = self.ready_line or line
                    return None
                print(line, flush=True)  # anything else a worker prints is the operator's
        if process.poll() is None:
            log.error(
                "worker %d (pid %d) did not start listening within %gs", worker.number, process.pid, READY_TIMEOUT_S
            )
            process.kill()
        return await process.wait()

    async def supervise(self, worker: _Worker, nursery: trio.Nursery) -> None:
        delay = RESTART_MIN_DELAY_S
        while True:
            process = worker.process
            assert process is not None and worker.lines is not None
            started = trio.current_time()
            nursery.start_soon(_drain, worker.lines)
            code = await process.wait()
            if self.stopping:
                return
            delay = (
                RESTART_MIN_DELAY_S
                if trio.current_time() - started >= STABLE_S
                else min(2 * delay, RESTART_MAX_DELAY_S)
            )
            log.warning(
                "worker %d (pid %d) exited with %s; restarting it in %gs", worker.number, process.pid, code, delay
            )
            await trio.sleep(delay)
            while not self.stopping:
                worker.restarts += 1
                failed = await self.start(worker)
                if failed is None:
                    assert worker.process is not None
                    log.info("worker %d restarted (pid %d)", worker.number, worker.process.pid)
                    break
                log.warning("worker %d failed to start again (%s); retrying in %gs", worker.number, failed, delay)
                await trio.sleep(delay)
                delay = min(2 * delay, RESTART_MAX_DELAY_S)
            if self.stopping:
                return

    def signal_all(self, signum: int) -> None:
        for worker in self.workers:
            process = worker.process
            if process is not None and process.poll() is None:
                try:
                    process.send_signal(signum)
                except ProcessLookupError:
                    pass


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[str]:
    buffer = b""
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return
        buffer += data
        while b"\n" in buffer:
            line, _, buffer = buffer.partition(b"\n")
            yield line.decode(errors="replace")


async def _drain(lines: AsyncIterator[str]) -> None:
    async for line in lines:
        print(line, flush=True)


def reserve_port(host: str, port: int) -> tuple[socket.socket | None, int]:
    """For port 0: bind a SO_REUSEPORT socket (not listening) to pick a free port and hold it; else nothing."""
    if port != 0:
        return None, port
    try:
        infos = socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, type_, proto, _, addr = infos[0]
        sock = socket.socket(family, type_, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except OSError as exc:
        raise ListenError(f"cannot listen on {host or '*'}:0: {exc.strerror or exc}", errno=exc.errno) from None
    return sock, int(sock.getsockname()[1])


async def serve_workers(
    document: dict[str, Any],
    count: int,
    argv: Sequence[str],
    *,
    host: str,
    port: int,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Run ``count`` workers (``argv`` starts one) serving ``document`` on ``host:port`` until a signal.

    See the module docstring.

    ``on_ready`` is called once every worker listens, before the ready line is printed.
    Returns the exit status: 0 after a drain, a worker's own status when the first
    could not start. Raises :class:`ListenError` when port 0 cannot be resolved.
    """
    reserved, port = reserve_port(host, port)
    doc = {**document, "port": port, "reuse_port": True}
    supervisor = _Supervisor(argv, doc, count)
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                first = await supervisor.start(supervisor.workers[0])
                if first is not None:
                    return first
                results = await _start_rest(supervisor)
                if any(r is not None for r in results):
                    supervisor.stopping = True
                    supervisor.signal_all(signal.SIGTERM)
                    await _wait_all(supervisor)
                    return next(r for r in results if r is not None) or 1
                if on_ready is not None:
                    on_ready()
                print(f"{supervisor.ready_line}, {count} workers (pids {_pids(supervisor)})", flush=True)
                for worker in supervisor.workers:
                    nursery.start_soon(supervisor.supervise, worker, nursery)
                async for signum in signals:
                    log.info(
                        "%s: draining %d workers (send it again to stop them at once)",
                        signal.Signals(signum).name,
                        count,
                    )
                    break
                supervisor.stopping = True
                supervisor.signal_all(signal.SIGTERM)
                nursery.start_soon(_pass_on, signals, supervisor)
                await _wait_all(supervisor)
                nursery.cancel_scope.cancel()
        return 0
    finally:
        supervisor.stopping = True
        with trio.CancelScope(shield=True):
            supervisor.signal_all(signal.SIGKILL)
        if reserved is not None:
            reserved.close()


async def _start_rest(supervisor: _Supervisor) -> list[int | None]:
    results: list[int | None] = [None] * (len(supervisor.workers) - 1)

    async def one(i: int) -> None:
        results[i] = await supervisor.start(supervisor.workers[i + 1])

    async with trio.open_nursery() as nursery:
        for i in range(len(results)):
            nursery.start_soon(one, i)
    return results


async def _wait_all(supervisor: _Supervisor) -> None:
    for worker in supervisor.workers:
        if worker.process is not None:
            await worker.process.wait()


async def _pass_on(signals: Any, supervisor: _Supervisor) -> None:
    async for _ in signals:
        log.info("stopping the workers at once")
        supervisor.signal_all(signal.SIGTERM)


def _pids(supervisor: _Supervisor) -> str:
    return " ".join(str(w.process.pid) for w in supervisor.workers if w.process is not None)


def worker_argv(log_level: str | None, log_format: str) -> list[str]:
    """The command that starts one worker with the parent's logging flags."""
    argv = [sys.executable, "-m", "antiphon", "serve", WORKER_FLAG, "--log-format", log_format]
    if log_level:
        argv += ["--log-level", log_level]
    return argv
