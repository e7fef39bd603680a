"""`antiphon serve --workers N`: one port, N processes sharing runs through Redis; restarts and drains."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import coredis
import pytest
import trio

from tests.chat.procs import AGENT, REPO, Served, until_end
from tests.helpers import RawClient

CLIENTS = 200
pytestmark = pytest.mark.slow


def test_several_workers_without_shared_runs_are_refused() -> None:
    """`--workers 2` with runs in memory would lose resumes that land on the other worker: one line, exit 2."""
    result = subprocess.run(
        [sys.executable, "-m", "antiphon", "serve", "--workers", "2", "--store", "none"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        'antiphon: --workers: 2 workers need shared runs (runs = "redis://..."): a resume may land on any worker'
    ]


@contextmanager
def workers(redis_url: str, count: int = 2) -> Iterator[tuple[Served, list[int]]]:
    """`antiphon serve --workers COUNT` on port 0; yields the parent and its workers' pids."""
    argv = [sys.executable, "-m", "antiphon", "serve", "--port", "0", "--no-auth", "--agent", AGENT, "--store", "none",
            "--runs", redis_url, "--lease-ttl", "1", "--workers", str(count)]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    served = Served(proc, line)
    try:
        pids = [int(p) for p in re.search(r"pids ([\d ]+)\)", line)[1].split()]  # type: ignore[index]
        assert f", {count} workers" in line and len(pids) == count
        yield served, pids
    finally:
        served.close()


async def drop_and_resume(served: Served, i: int) -> list[dict[str, Any]]:
    """One client: a streamed turn, its TCP connection cut after the first chunk, resumed on a new connection."""
    stream = await trio.open_tcp_stream(served.host, served.port)
    served.clients.append(stream)
    client = RawClient(stream)
    await client.handshake("/")
    run_id = (await client.receive_json())["connector_run_id"]
    await client.send_json({"type": "message", "id": f"m{i}", "payload": {"message": "go", "context": {"chunks": 6, "delay": 0.02}}})
    before = [await client.receive_json() for _ in range(3)]  # ack, stream_start, c0
    await stream.aclose()
    again = await trio.open_tcp_stream(served.host, served.port)
    served.clients.append(again)
    client = RawClient(again)
    await client.handshake("/")
    await client.receive_json()
    await client.send_json({"type": "resume", "connector_run_id": run_id, "last_seq": before[-1]["seq"]})
    resumed = await client.receive_json()
    assert resumed["type"] == "resumed" and resumed["complete"], resumed
    return before + await until_end(client)


async def claims(redis_url: str) -> int:
    """Claims one worker sent another (a resume that landed on the worker not owning the run)."""
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as r:
        total = 0
        async for key in r.scan_iter(match="antiphon:node:*:inbox"):
            total += sum(1 for e in await r.xrange(key) if e.field_values.get("k") == "claim")
        return total


async def test_two_workers_on_one_port_give_200_dropped_clients_their_replies_exactly_once(redis_url: str) -> None:
    """200 clients that each drop and resume once, wherever the kernel sends them: every event once, in order, chunks adding up."""
    with workers(redis_url) as (served, _):
        results: list[list[dict[str, Any]]] = []

        async def one(i: int) -> None:
            results.append(await drop_and_resume(served, i))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(CLIENTS):
                    nursery.start_soon(one, i)
        assert len(results) == CLIENTS
        for events in results:
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), events
            text = "".join(e["chunk"] for e in events if e["type"] == "stream_chunk")
            assert text == events[-1]["full_response"] == "c0 c1 c2 c3 c4 c5 " and events[-1]["status"] == "completed"
        assert await claims(redis_url) > 0  # some resumes did land on the other worker


async def test_a_killed_worker_is_restarted_and_sigterm_drains_them_all(redis_url: str) -> None:
    """SIGKILL one worker: the parent restarts it and the port keeps serving; SIGTERM to the parent: all exit, status 0."""
    with workers(redis_url) as (served, pids):
        os.kill(pids[0], signal.SIGKILL)
        await served.wait_log(f"worker 1 (pid {pids[0]}) exited with -9; restarting it")
        await served.wait_log("worker 1 restarted")
        for i in range(4):
            events = await drop_and_resume(served, i)
            assert events[-1]["status"] == "completed"
        for stream in served.clients:
            await stream.aclose()
        served.proc.send_signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(lambda: served.proc.wait(timeout=30)) == 0
        for pid in pids[1:]:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


async def test_workers_drain_by_themselves_when_the_parent_is_killed(redis_url: str) -> None:
    """SIGKILL the parent: each worker sees its stdin close, logs why and shuts down gracefully; none is left behind."""
    with workers(redis_url) as (served, pids):
        served.proc.send_signal(signal.SIGKILL)
        # The workers hold the parent's stderr pipe: it ends once the last of them has exited.
        await trio.to_thread.run_sync(served._reader.join, 30)
        assert not served._reader.is_alive()
        assert sum("the parent process is gone: shutting down gracefully" in line for line in served.log) == len(pids)
