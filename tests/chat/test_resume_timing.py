"""Resume, grace window, cancel and idempotent ids on the autojump clock over memory streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import trio

from antiphon.chat import Turn
from antiphon.chat.store import MemoryStore, ReplyRecord
from tests.chat.conftest import SECRET, connect_raw, connector, memory_gateway

AUTHED = f"/?secret={SECRET}"


async def slow_agent(turn: Turn) -> AsyncIterator[str]:
    """Two chunks 100 s apart."""
    yield "first "
    await trio.sleep(100)
    yield "second"


class TimedStore(MemoryStore):
    """A memory store that notes when each reply was stored."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.reply_times: list[tuple[float, ReplyRecord]] = []

    async def save_reply(self, record: ReplyRecord) -> None:
        self.reply_times.append((trio.current_time(), record))
        await super().save_reply(record)


async def start_turn(client: Any, message: str = "go", id: str = "t") -> str:
    """Authenticate, send a message, read ack, stream_start and the first chunk; returns the run id."""
    await client.handshake(AUTHED)
    run_id = (await client.receive_json())["connector_run_id"]
    await client.send_json({"type": "message", "id": id, "payload": {"message": message}})
    assert [(await client.receive_json())["seq"] for _ in range(3)] == [1, 2, 3]
    return str(run_id)


async def test_resume_within_grace_gets_the_rest_of_the_reply(autojump_clock: Any) -> None:
    """Dropped mid-turn, resumed 30 s later: `resumed`, then the rest live at t+100 s, seq unbroken."""
    async with memory_gateway(connector(slow_agent)) as (gateway, first):
        run_id = await start_turn(first)
        t0 = trio.current_time()
        await first.stream.aclose()  # the network goes: no close frame
        await trio.sleep(30)
        async with trio.open_nursery() as nursery:
            second = connect_raw(gateway, nursery)
            await second.handshake(AUTHED)
            assert (await second.receive_json())["type"] == "connected"
            await second.send_json({"type": "resume", "connector_run_id": run_id, "last_seq": 3})
            assert await second.receive_json() == {
                "type": "resumed", "connector_run_id": run_id, "last_seq": 3, "replayed": 0, "complete": True
            }
            chunk = await second.receive_json()
            assert (chunk["chunk"], chunk["seq"], trio.current_time() - t0) == ("second", 4, 100.0)
            end = await second.receive_json()
            assert (end["type"], end["full_response"], end["status"], end["seq"]) == ("stream_end", "first second", "completed", 5)
            nursery.cancel_scope.cancel()


async def test_resume_replays_what_was_missed(autojump_clock: Any) -> None:
    """A client back after the turn ended gets the missed events replayed, then carries on in the same run."""
    async with memory_gateway(connector(slow_agent, resume_grace_s=200)) as (gateway, first):
        run_id = await start_turn(first)
        await first.stream.aclose()
        await trio.sleep(110)
        async with trio.open_nursery() as nursery:
            second = connect_raw(gateway, nursery)
            await second.handshake(AUTHED)
            await second.receive_json()
            await second.send_json({"type": "resume", "connector_run_id": run_id, "last_seq": 2})
            resumed = await second.receive_json()
            assert (resumed["replayed"], resumed["complete"], resumed["last_seq"]) == (3, True, 5)
            replayed = [await second.receive_json() for _ in range(3)]
            assert [(e["type"], e["seq"]) for e in replayed] == [("stream_chunk", 3), ("stream_chunk", 4), ("stream_end", 5)]
            await second.send_json({"type": "message", "id": "t2", "payload": {"message": "next"}})
            ack = await second.receive_json()
            assert (ack["message_number"], ack["seq"]) == (2, 6)
            nursery.cancel_scope.cancel()


async def test_unresumed_run_is_cancelled_when_the_grace_ends(autojump_clock: Any) -> None:
    """Without a resume, the turn is cancelled exactly 60 s after the drop; its partial reply is stored."""
    store = TimedStore()
    async with memory_gateway(connector(slow_agent), store=store) as (_, client):
        await start_turn(client)
        t0 = trio.current_time()
        await client.stream.aclose()
        await trio.sleep(61)
        [(when, record)] = store.reply_times
        assert when - t0 == 60.0
        assert (record.status, record.text) == ("cancelled", "first ")


async def test_zero_grace_cancels_at_once(autojump_clock: Any) -> None:
    """With resume_grace 0 a dropped connection ends its run immediately."""
    store = TimedStore()
    async with memory_gateway(connector(slow_agent, resume_grace_s=0), store=store) as (_, client):
        await start_turn(client)
        t0 = trio.current_time()
        await client.stream.aclose()
        await trio.sleep(1)
        assert [(when - t0, r.status) for when, r in store.reply_times] == [(0.0, "cancelled")]


async def test_normal_close_ends_the_run_at_once(autojump_clock: Any) -> None:
    """A client that closes with 1000 ends its run: the turn is cancelled, not kept for a resume."""
    store = TimedStore()
    async with memory_gateway(connector(slow_agent), store=store) as (_, client):
        await start_turn(client)
        t0 = trio.current_time()
        await client.close(1000)
        await trio.sleep(1)
        assert [(when - t0, r.status) for when, r in store.reply_times] == [(0.0, "cancelled")]


async def test_cancel_stops_the_turn_at_once(autojump_clock: Any) -> None:
    """`cancel` 10 s into a turn ends it then: stream_end `cancelled` with the partial text and usage."""
    async with memory_gateway(connector(slow_agent)) as (_, client):
        await start_turn(client)
        await trio.sleep(10)
        t0 = trio.current_time()
        await client.send_json({"type": "cancel", "id": "t"})
        end = await client.receive_json()
        assert trio.current_time() == t0
        assert end == {
            "type": "stream_end", "id": "t", "agent": "assistant", "full_response": "first ",
            "token_usage": {"prompt_tokens": 1, "candidates_tokens": 2}, "status": "cancelled", "seq": 4,
        }
        await client.send_json({"type": "message", "id": "t2", "payload": {"message": "again"}})
        assert (await client.receive_json())["message_number"] == 2


async def test_cancel_of_a_queued_turn(autojump_clock: Any) -> None:
    """A queued turn cancelled before it starts ends at once with empty text and never runs."""
    async with memory_gateway(connector(slow_agent)) as (_, client):
        await start_turn(client)
        await client.send_json({"type": "message", "id": "q", "payload": {"message": "later"}})
        assert (await client.receive_json())["type"] == "ack"
        await client.send_json({"type": "cancel", "id": "q"})
        end = await client.receive_json()
        assert (end["id"], end["status"], end["full_response"]) == ("q", "cancelled", "")
        second = await client.receive_json()
        assert (second["id"], second["chunk"]) == ("t", "second")
        assert (await client.receive_json())["id"] == "t"
        await client.send_json({"type": "ping"})
        assert await client.receive_json() == {"type": "pong"}


async def test_resent_id_is_acked_again_and_not_rerun(autojump_clock: Any) -> None:
    """A message id sent twice is acked twice with the same number (the repeat without seq) and runs once."""
    calls = 0

    async def counting(turn: Turn) -> str:
        nonlocal calls
        calls += 1
        return "ok"

    async with memory_gateway(connector(counting)) as (_, client):
        await client.handshake(AUTHED)
        await client.receive_json()
        await client.send_json({"type": "message", "id": "m", "payload": {"message": "x"}})
        assert [(await client.receive_json())["type"] for _ in range(4)] == ["ack", "stream_start", "stream_chunk", "stream_end"]
        await client.send_json({"type": "message", "id": "m", "payload": {"message": "x"}})
        assert await client.receive_json() == {"type": "ack", "id": "m", "message_number": 1}
        await client.send_json({"type": "ping"})
        assert await client.receive_json() == {"type": "pong"}
        assert calls == 1


async def test_unknown_run_cannot_be_resumed(autojump_clock: Any) -> None:
    """Resuming an unknown run id gets `unknown_run`; the connection keeps its own fresh run."""
    async with memory_gateway() as (_, client):
        await client.handshake(AUTHED)
        own = (await client.receive_json())["connector_run_id"]
        await client.send_json({"type": "resume", "connector_run_id": "nope", "last_seq": 0})
        error = await client.receive_json()
        assert error["code"] == "unknown_run" and own in error["message"]
        await client.send_json({"message": "still works"})
        assert (await client.receive_json())["type"] == "ack"


async def test_resume_takes_over_from_a_ghost_connection(autojump_clock: Any) -> None:
    """A resume while an old connection still holds the run closes the old one with 4409."""
    async with memory_gateway(connector(slow_agent)) as (gateway, first):
        run_id = await start_turn(first)
        async with trio.open_nursery() as nursery:
            second = connect_raw(gateway, nursery)
            await second.handshake(AUTHED)
            await second.receive_json()
            await second.send_json({"type": "resume", "connector_run_id": run_id, "last_seq": 3})
            assert (await first.expect_close()).code == 4409
            assert (await second.receive_json())["type"] == "resumed"
            assert (await second.receive_json())["chunk"] == "second"
            nursery.cancel_scope.cancel()


async def test_runaway_reply_ends_the_turn_failed(autojump_clock: Any) -> None:
    """An endless agent is cut off at max_reply_bytes: agent_error, then stream_end `failed` with what fits."""

    async def endless(turn: Turn) -> AsyncIterator[str]:
        while True:
            yield "abcd"

    async with memory_gateway(connector(endless, max_reply_bytes=10)) as (_, client):
        await client.handshake(AUTHED)
        await client.receive_json()
        await client.send_json({"type": "message", "id": "t", "payload": {"message": "go"}})
        kinds = [await client.receive_json() for _ in range(6)]
        assert [k["type"] for k in kinds] == ["ack", "stream_start", "stream_chunk", "stream_chunk", "error", "stream_end"]
        assert kinds[4]["code"] == "agent_error" and "max_reply_bytes" in kinds[4]["message"]
        assert (kinds[5]["status"], kinds[5]["full_response"]) == ("failed", "abcdabcd")
