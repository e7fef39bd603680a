"""Runs shared by real `antiphon serve` processes through a real Redis (and PostgreSQL as the store).

Issue 11's "what must work", one test each (the workers one is in tests/test_workers.py).
Leases are 1 s, so a killed owner is replaced within about a second; nothing else waits.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from antiphon.chat.store import PostgresUrl, read_run
from tests import servers
from tests.chat.procs import Served, connect, serve, until_end

LEASE = ("--lease-ttl", "1")
pytestmark = pytest.mark.slow


@contextlib.contextmanager
def two(redis_url: str, store: str = "none") -> Iterator[tuple[Served, Served]]:
    """Processes A and B sharing ``redis_url`` (and the store)."""
    with serve("--runs", redis_url, "--store", store, *LEASE) as a, serve("--runs", redis_url, "--store", store, *LEASE) as b:
        yield a, b


def message(id: str, text: str = "go", **context: Any) -> dict[str, Any]:
    return {"type": "message", "id": id, "payload": {"message": text, "context": context}}


def chunks(events: list[dict[str, Any]]) -> str:
    return "".join(e["chunk"] for e in events if e["type"] == "stream_chunk")


async def test_resume_on_another_process_replays_then_streams_the_live_rest(redis_url: str, tmp_path: Path) -> None:
    """Dropped on A, resumed on B: `resumed`, each missed event once, in order, then what A generates after; chunks add up."""
    gate = tmp_path / "gate"
    with two(redis_url) as (a, b):
        first, connected = await connect(a)
        run_id = connected["connector_run_id"]
        await first.send_json(message("t", chunks=6, gate=str(gate), before=2))
        seen = [await first.receive_json() for _ in range(3)]  # ack, stream_start, c0
        assert [e["seq"] for e in seen] == [1, 2, 3]
        await first.stream.aclose()  # the TCP connection drops: no close frame
        second, _ = await connect(b)
        await second.send_json({"type": "resume", "connector_run_id": run_id, "last_seq": 2})
        resumed = await second.receive_json()
        assert (resumed["type"], resumed["replayed"], resumed["complete"]) == ("resumed", 2, True)  # c0, c1
        replayed = [await second.receive_json() for _ in range(2)]
        assert [e["seq"] for e in replayed] == [3, 4]
        gate.touch()  # only now does A generate the rest
        with trio.fail_after(10):
            live = await until_end(second)
        events = replayed + live
        assert [e["seq"] for e in events] == list(range(3, 3 + len(events)))
        assert chunks(events) == live[-1]["full_response"] == "c0 c1 c2 c3 c4 c5 "
        assert live[-1]["status"] == "completed"


async def test_cancel_through_another_process_stops_the_owners_turn_and_is_stored(redis_url: str, postgres_url: str, tmp_path: Path) -> None:
    """`cancel` sent to B stops the turn running on A: `cancelled` with the partial text, stored so in PostgreSQL."""
    never = tmp_path / "never"
    with two(redis_url, postgres_url) as (a, b):
        first, connected = await connect(a)
        run_id = connected["connector_run_id"]
        await first.send_json(message("t", chunks=5, gate=str(never), before=2))
        for _ in range(4):
            await first.receive_json()
        await first.stream.aclose()
        second, _ = await connect(b)
        await second.send_json({"type": "resume", "connector_run_id": run_id, "last_seq": 4})
        assert (await second.receive_json())["type"] == "resumed"
        await second.send_json({"type": "cancel", "id": "t"})
        with trio.fail_after(5):
            end = await second.receive_json()
        assert (end["type"], end["status"], end["full_response"], end["seq"]) == ("stream_end", "cancelled", "c0 c1 ", 5)
    found = read_run(PostgresUrl(postgres_url), run_id)
    assert found is not None
    assert [(t.message_id, t.status, t.reply) for t in found[1]] == [("t", "cancelled", "c0 c1 ")]


async def test_a_killed_owner_is_replaced_and_its_turn_ends_failed(redis_url: str, postgres_url: str, tmp_path: Path) -> None:
    """SIGKILL A mid-turn: once its lease lapses B ends the turn `failed` (turn_interrupted) with its partial text, and runs the next message with the history."""
    never = tmp_path / "never"
    with two(redis_url, postgres_url) as (a, b):
        first, connected = await connect(a)
        run_id = connected["connector_run_id"]
        await first.send_json(message("m1", "first", chunks=1))
        await until_end(first)
        await first.send_json(message("m2", "second", chunks=3, gate=str(never), before=1))
        assert [(await first.receive_json())["seq"] for _ in range(3)] == [5, 6, 7]
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(timeout=10)
        second, _ = await connect(b)
        await second.send_json({"type": "resume", "connector_run_id": run_id, "last_seq": 7})
        assert (await second.receive_json())["type"] == "resumed"
        with trio.fail_after(10):
            error, end = await second.receive_json(), await second.receive_json()
        assert (error["type"], error["code"], error["id"], error["seq"]) == ("error", "turn_interrupted", "m2", 8)
        assert (end["type"], end["status"], end["full_response"], end["seq"]) == ("stream_end", "failed", "c0 ", 9)
        await second.send_json(message("m3", "third", history=True))
        third = await until_end(second)
        assert third[-1]["full_response"] == "history: first" and third[0]["seq"] == 10
    found = read_run(PostgresUrl(postgres_url), run_id)
    assert found is not None
    turns = [(t.message_id, t.status, t.reply) for t in found[1]]
    assert turns == [("m1", "completed", "c0 "), ("m2", "failed", "c0 "), ("m3", "completed", "history: first")]


async def test_an_id_accepted_by_one_process_is_acked_again_by_another_and_not_run_twice(redis_url: str, postgres_url: str) -> None:
    """A message id A accepted, resent through B: the original ack again (no seq), no second turn, one stored turn."""
    with two(redis_url, postgres_url) as (a, b):
        first, connected = await connect(a)
        run_id = connected["connector_run_id"]
        await first.send_json(message("once", chunks=2))
        done = await until_end(first)
        await first.stream.aclose()
        second, _ = await connect(b)
        await second.send_json({"type": "resume", "connector_run_id": run_id, "last_seq": done[-1]["seq"]})
        assert (await second.receive_json())["replayed"] == 0
        await second.send_json(message("once", chunks=2))
        assert await second.receive_json() == {"type": "ack", "id": "once", "message_number": 1}
        await second.send_json({"type": "ping"})
        assert await second.receive_json() == {"type": "pong"}  # and no turn events before it
    found = read_run(PostgresUrl(postgres_url), run_id)
    assert found is not None and [t.message_id for t in found[1]] == ["once"]


def test_redis_unreachable_at_start_is_one_line_and_exit_2() -> None:
    """`antiphon serve --runs redis://...` with nothing listening exits 2 with one line naming the URL and why."""
    port = servers._free_port()
    result = subprocess.run(
        [sys.executable, "-m", "antiphon", "serve", "--port", "0", "--store", "none", "--runs", f"redis://127.0.0.1:{port}/0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert errors == [f"antiphon: runs redis://127.0.0.1:{port}/0: cannot connect (Unable to establish a connection to 127.0.0.1:{port})"], result.stderr


async def test_redis_lost_while_serving_refuses_new_messages_and_service_resumes_when_it_returns() -> None:
    """Redis stops: a new message gets `backend_unavailable` (no hang, no traceback); Redis back on its port: messages work again."""
    if servers.redis_binary() is None:
        pytest.skip("redis-server is not installed: apt-get install redis-server (.ci/run does)")
    with servers.run_redis() as redis:
        with serve("--runs", redis.url, "--store", "none", *LEASE) as a:
            client, _ = await connect(a)
            await client.send_json(message("m1", chunks=2))
            assert (await until_end(client))[-1]["status"] == "completed"
            port = redis.port
            seen = len(a.log)
            servers.stop_redis(redis)
            seen = await a.wait_log("runs backend unavailable", after=seen)
            await client.send_json(message("m2", chunks=2))
            with trio.fail_after(5):
                refused = await client.receive_json()
            assert (refused["type"], refused["code"], refused["id"]) == ("error", "backend_unavailable", "m2")
            with servers.run_redis(port=port):
                await a.wait_log("runs backend available again", after=seen)
                await client.send_json(message("m2", chunks=2))
                with trio.fail_after(10):
                    events = await until_end(client)
                assert events[0]["type"] == "ack" and events[-1]["status"] == "completed"
                fresh, _ = await connect(a)
                await fresh.send_json(message("n1", chunks=1))
                assert (await until_end(fresh))[-1]["status"] == "completed"
                a.close()  # while Redis is up, so its runs are released at once
            assert a.proc.returncode == 0
            assert not [line for line in a.log if "Traceback" in line]
