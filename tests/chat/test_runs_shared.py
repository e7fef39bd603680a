"""Two gateways sharing runs through the in-process backend, on the autojump clock over memory streams.

The same protocol as two processes sharing Redis (``test_runs_redis.py`` runs that for
real), but deterministic: leases lapse and takeovers happen at exact times.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing
from wsproto.events import TextMessage

from antiphon.chat import ChatGateway, Turn
from antiphon.chat.backends import MemoryBackend, MemoryRuns
from antiphon.chat.backends.node import RETRY_MAX_S
from antiphon.chat.store import MemoryStore
from antiphon.engine.server import ServerConfig
from tests.chat.conftest import SECRET, connect_raw, connector
from tests.helpers import RawClient

AUTHED = f"/?secret={SECRET}"
LEASE_TTL_S = 3.0


@asynccontextmanager
async def two_gateways(
    agent: Any, *, store: MemoryStore | None = None, **settings: Any
) -> AsyncIterator[tuple[MemoryRuns, ChatGateway, ChatGateway, trio.Nursery]]:
    """Gateways A and B on one MemoryRuns (nodes "A" and "B"), started at t=0."""
    shared = MemoryRuns()
    async with trio.open_nursery() as nursery:
        gateways = []
        for name in "AB":
            gateway = ChatGateway(
                connector(agent, **settings), ServerConfig(port=0), runs=shared.node(name), lease_ttl_s=LEASE_TTL_S, store=store
            )
            await nursery.start(functools.partial(gateway.run, listen=False))
            gateways.append(gateway)
        yield shared, gateways[0], gateways[1], nursery
        nursery.cancel_scope.cancel()


async def connect(gateway: ChatGateway, nursery: trio.Nursery) -> tuple[RawClient, str]:
    client = connect_raw(gateway, nursery)
    await client.handshake(AUTHED)
    connected = await client.receive_json()
    return client, str(connected["connector_run_id"])


async def until_end(client: RawClient) -> list[dict[str, Any]]:
    """Events up to and including the turn's stream_end."""
    events = [await client.receive_json()]
    while events[-1]["type"] != "stream_end":
        events.append(await client.receive_json())
    return events


def gated(release: trio.Event, *, first: str = "one ", rest: tuple[str, ...] = ("two ", "three")) -> Any:
    async def agent(turn: Turn) -> AsyncIterator[str]:
        yield first
        await release.wait()
        for chunk in rest:
            yield chunk

    return agent


async def test_resume_elsewhere_replays_then_streams_the_owners_live_rest(autojump_clock: Any) -> None:
    """Dropped on A mid-turn and resumed on B: `resumed`, the missed events once, then A's live chunks through B."""
    release = trio.Event()
    async with two_gateways(gated(release)) as (_, a, b, nursery):
        first, run_id = await connect(a, nursery)
        await first.send_json({"type": "message", "id": "t", "payload": {"message": "go"}})
        assert [(await first.receive_json())["seq"] for _ in range(2)] == [1, 2]  # ack, stream_start
        await first.stream.aclose()  # no close frame: A keeps the run for a resume
        second, _ = await connect(b, nursery)
        await second.send_json({"type": "resume", "connector_run_id": run_id, "last_seq": 2})
        resumed = await second.receive_json()
        assert (resumed["type"], resumed["replayed"], resumed["complete"], resumed["last_seq"]) == ("resumed", 1, True, 3)
        replayed = await second.receive_json()
        assert (replayed["seq"], replayed["chunk"]) == (3, "one ")
        release.set()  # only now does A produce the rest
        live = await until_end(second)
        assert [e["seq"] for e in live] == [4, 5, 6]
        chunks = [replayed["chunk"]] + [e["chunk"] for e in live if e["type"] == "stream_chunk"]
        assert "".join(chunks) == live[-1]["full_response"] == "one two three"
        assert a.registry is not None and a.registry.runs[run_id].follow is None  # A still owns it
        assert b.registry is not None and b.registry.runs[run_id].follow is not None


async def test_cancel_through_the_follower_stops_the_owners_turn(autojump_clock: Any) -> None:
    """`cancel` sent to B reaches A's running turn at once: `cancelled` with the partial text, stored so by A."""
    never = trio.Event()
    store = MemoryStore()
    async with two_gateways(gated(never), store=store) as (_, a, b, nursery):
        first, run_id = await connect(a, nursery)
        await first.send_json({"type": "message", "id": "t", "payload": {"message": "go"}})
        for _ in range(3):
            await first.receive_json()
        await first.stream.aclose()
        second, _ = await connect(b, nursery)
        await second.send_json({"type": "resume", "connector_run_id": run_id, "last_seq": 3})
        assert (await second.receive_json())["type"] == "resumed"
        t0 = trio.current_time()
        await second.send_json({"type": "cancel", "id": "t"})
        end = await second.receive_json()
        assert (end["type"], end["status"], end["full_response"], end["seq"]) == ("stream_end", "cancelled", "one ", 4)
        assert trio.current_time() == t0
        found = await store.get_run(run_id)
        assert found is not None and [(t.status, t.reply) for t in found[1]] == [("cancelled", "one ")]


async def test_an_owner_cut_off_is_replaced_when_its_lease_lapses(autojump_clock: Any) -> None:
    """A stops renewing at t=10.5: at t=13 B owns the run, ends the turn `failed` (turn_interrupted), and runs the next one with the history."""
    release = trio.Event()
    seen: list[list[str]] = []

    async def agent(turn: Turn) -> AsyncIterator[str]:
        seen.append([h.text for h in turn.history])
        yield f"answer to {turn.message}"
        if turn.message == "second":
            await release.wait()
            yield " (never)"

    async with two_gateways(agent) as (_, a, b, nursery):
        first, run_id = await connect(a, nursery)
        await first.send_json({"type": "message", "id": "m1", "payload": {"message": "first"}})
        await until_end(first)
        await trio.sleep(10.5 - trio.current_time())
        await first.send_json({"type": "message", "id": "m2", "payload": {"message": "second"}})
        assert [(await first.receive_json())["seq"] for _ in range(3)] == [5, 6, 7]
        backend = a.runs_backend
        assert isinstance(backend, MemoryBackend)
        backend.set_cut(True)  # A's process is gone, as far as everybody else can tell
        await first.stream.aclose()
        second, _ = await connect(b, nursery)
        await second.send_json({"type": "resume", "connector_run_id": run_id, "last_seq": 7})
        assert (await second.receive_json())["type"] == "resumed"
        error, end = await second.receive_json(), await second.receive_json()
        assert trio.current_time() == 13.0
        assert (error["type"], error["code"], error["id"], error["seq"]) == ("error", "turn_interrupted", "m2", 8)
        assert (end["status"], end["full_response"], end["seq"]) == ("failed", "answer to second", 9)
        await second.send_json({"type": "message", "id": "m3", "payload": {"message": "third"}})
        third = await until_end(second)
        assert [e["seq"] for e in third] == [10, 11, 12, 13] and third[-1]["status"] == "completed"
        assert seen[-1] == ["first", "answer to first"]  # the failed turn is not history


async def test_a_message_sent_while_the_owner_is_gone_is_run_by_the_taker(autojump_clock: Any) -> None:
    """A message forwarded to an owner that died is not lost: B accepts it when it takes the run over, and runs it."""
    never = trio.Event()

    async def agent(turn: Turn) -> AsyncIterator[str]:
        yield f"to {turn.message}"
        if turn.message == "first":
            await never.wait()

    async with two_gateways(agent) as (_, a, b, nursery):
        first, run_id = await connect(a, nursery)
        await first.send_json({"type": "message", "id": "m1", "payload": {"message": "first"}})
        await first.receive_json()
        await first.stream.aclose()
        second, _ = await connect(b, nursery)
        await second.send_json({"type": "resume", "connector_run_id": run_id, "last_seq": 0})
        assert [(await second.receive_json())["type"] for _ in range(4)] == ["resumed", "ack", "stream_start", "stream_chunk"]
        backend = a.runs_backend
        assert isinstance(backend, MemoryBackend)
        backend.set_cut(True)
        await second.send_json({"type": "message", "id": "m2", "payload": {"message": "second"}})
        events = [await second.receive_json() for _ in range(3)]
        assert [(e["type"], e.get("id"), e["seq"]) for e in events] == [("error", "m1", 4), ("stream_end", "m1", 5), ("ack", "m2", 6)]
        rest = await until_end(second)
        assert (rest[-1]["status"], rest[-1]["full_response"], rest[-1]["seq"]) == ("completed", "to second", 9)


async def test_a_resent_id_is_acked_again_and_run_once_across_gateways(autojump_clock: Any) -> None:
    """A message id A accepted, sent again through B, gets its ack again (no seq) and no second turn."""
    calls = 0

    async def counting(turn: Turn) -> AsyncIterator[str]:
        nonlocal calls
        calls += 1
        yield "done"

    async with two_gateways(counting) as (_, a, b, nursery):
        first, run_id = await connect(a, nursery)
        await first.send_json({"type": "message", "id": "once", "payload": {"message": "go"}})
        await until_end(first)
        await first.stream.aclose()
        second, _ = await connect(b, nursery)
        await second.send_json({"type": "resume", "connector_run_id": run_id, "last_seq": 4})
        assert (await second.receive_json())["type"] == "resumed"
        await second.send_json({"type": "message", "id": "once", "payload": {"message": "go"}})
        assert await second.receive_json() == {"type": "ack", "id": "once", "message_number": 1}
        await second.send_json({"type": "ping"})
        assert await second.receive_json() == {"type": "pong"}
        assert calls == 1


async def test_backend_outage_refuses_new_messages_and_resumes_after(autojump_clock: Any) -> None:
    """Backend down: a new message gets `backend_unavailable` at once; a running turn waits; back up, all goes on."""
    release = trio.Event()
    async with two_gateways(gated(release)) as (shared, a, _, nursery):
        client, _ = await connect(a, nursery)
        await client.send_json({"type": "message", "id": "t", "payload": {"message": "go"}})
        assert [(await client.receive_json())["seq"] for _ in range(3)] == [1, 2, 3]
        shared.set_down(True)
        await trio.testing.wait_all_tasks_blocked()
        release.set()  # the turn goes on, but its frames wait for the backend
        await client.send_json({"type": "message", "id": "u", "payload": {"message": "again"}})
        refused = await client.receive_json()
        assert (refused["type"], refused["code"], refused["id"], "seq" in refused) == ("error", "backend_unavailable", "u", False)
        await trio.sleep(5)
        shared.set_down(False)
        back = trio.current_time()
        rest = await until_end(client)
        assert [e["seq"] for e in rest] == [4, 5, 6] and rest[-1]["full_response"] == "one two three"
        assert trio.current_time() <= back + RETRY_MAX_S
        await client.send_json({"type": "message", "id": "u", "payload": {"message": "again"}})
        assert (await client.receive_json())["type"] == "ack"


async def test_a_gracefully_stopping_owner_hands_its_runs_over_at_once(autojump_clock: Any) -> None:
    """A's shutdown releases a run whose client is on B: B owns it at once, with no lease to wait for."""
    never = trio.Event()
    async with two_gateways(gated(never), resume_grace_s=60) as (_, a, b, nursery):
        first, run_id = await connect(a, nursery)
        await first.send_json({"type": "message", "id": "t", "payload": {"message": "go"}})
        for _ in range(3):
            await first.receive_json()
        await first.stream.aclose()
        second, _ = await connect(b, nursery)
        await second.send_json({"type": "resume", "connector_run_id": run_id, "last_seq": 3})
        assert (await second.receive_json())["type"] == "resumed"
        t0 = trio.current_time()
        nursery.start_soon(functools.partial(a.shutdown, grace_s=1))
        end = await second.receive_json()
        assert (end["type"], end["status"], end["full_response"]) == ("stream_end", "cancelled", "one ")
        await second.send_json({"type": "message", "id": "u", "payload": {"message": "next"}})
        assert (await second.receive_json())["type"] == "ack"
        assert trio.current_time() - t0 < LEASE_TTL_S
        assert b.registry is not None and b.registry.runs[run_id].follow is None  # B owns it now


async def test_turns_queued_behind_the_interrupted_one_run_on_the_new_owner(autojump_clock: Any) -> None:
    """A dies with m1 running and m2 queued (acked): B ends m1 `failed` and then runs m2, once, to completion."""
    never = trio.Event()
    calls: list[str] = []

    async def agent(turn: Turn) -> AsyncIterator[str]:
        calls.append(turn.message)
        yield f"to {turn.message}"
        if turn.message == "first":
            await never.wait()

    async with two_gateways(agent) as (_, a, b, nursery):
        first, run_id = await connect(a, nursery)
        await first.send_json({"type": "message", "id": "m1", "payload": {"message": "first"}})
        await first.send_json({"type": "message", "id": "m2", "payload": {"message": "second"}})
        got = [await first.receive_json() for _ in range(4)]
        assert sorted((e["type"], e["id"]) for e in got) == [("ack", "m1"), ("ack", "m2"), ("stream_chunk", "m1"), ("stream_start", "m1")]
        backend = a.runs_backend
        assert isinstance(backend, MemoryBackend)
        backend.set_cut(True)
        await first.stream.aclose()
        second, _ = await connect(b, nursery)
        await second.send_json({"type": "resume", "connector_run_id": run_id, "last_seq": 4})
        assert (await second.receive_json())["type"] == "resumed"
        events = await until_end(second)  # m1's end
        assert [(e["type"], e["id"]) for e in events] == [("error", "m1"), ("stream_end", "m1")] and events[-1]["status"] == "failed"
        events = await until_end(second)  # then m2, run by B
        assert [(e["type"], e["seq"]) for e in events] == [("stream_start", 7), ("stream_chunk", 8), ("stream_end", 9)]
        assert events[-1]["status"] == "completed" and calls == ["first", "second"]


async def test_a_message_sent_right_after_resumed_elsewhere_is_accepted_while_the_replay_runs(autojump_clock: Any) -> None:
    """A client that sends its next message as soon as it reads `resumed` on B gets it acked and run by A."""
    async with two_gateways(gated(trio.Event(), first="done", rest=())) as (_, a, b, nursery):
        first, run_id = await connect(a, nursery)
        await first.send_json({"type": "message", "id": "m1", "payload": {"message": "go"}})
        # the agent waits forever after its first chunk: m1 stays running on A
        assert [(await first.receive_json())["type"] for _ in range(3)] == ["ack", "stream_start", "stream_chunk"]
        await first.stream.aclose()
        second, _ = await connect(b, nursery)
        resume = json.dumps({"type": "resume", "connector_run_id": run_id, "last_seq": 0})
        message = json.dumps({"type": "message", "id": "m2", "payload": {"message": "next"}})
        # One write: B reads both in one batch, so the message is handled while the resume is
        # still being looked up, and reaches A before B's connection has caught up.
        await second.stream.send_all(second.ws.send(TextMessage(data=resume)) + second.ws.send(TextMessage(data=message)))
        events = [await second.receive_json() for _ in range(5)]
        assert [(e["type"], e.get("id")) for e in events] == [
            ("resumed", None), ("ack", "m1"), ("stream_start", "m1"), ("stream_chunk", "m1"), ("ack", "m2")
        ]
        assert events[-1]["seq"] == 4
