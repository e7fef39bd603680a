"""Gateway timing on the autojump clock over memory streams: auth, inactivity, heartbeat, turns, shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import trio
import trio.testing
from wsproto.events import AcceptConnection, Ping, Pong

from antiphon.chat import Turn
from antiphon.engine.session import SessionConfig
from tests.chat.conftest import SECRET, connector, memory_gateway

AUTHED = f"/?secret={SECRET}"


async def slow_agent(turn: Turn) -> AsyncIterator[str]:
    """Streams two chunks 100 s apart."""
    yield "first "
    await trio.sleep(100)
    yield "second"


async def test_auth_timeout_fires_at_exactly_10s(autojump_clock: Any) -> None:
    """No secret within 10 s: an `auth_timeout` error at t+10 s, then close 4408."""
    async with memory_gateway() as (_, client):
        assert isinstance(await client.handshake("/"), AcceptConnection)
        t0 = trio.current_time()
        error = await client.receive_json()
        assert error == {"type": "error", "code": "auth_timeout", "message": "no secret within the authentication timeout"}
        assert trio.current_time() - t0 == 10.0
        assert (await client.expect_close()).code == 4408


async def test_inactivity_timeout_counts_from_the_last_client_message(autojump_clock: Any) -> None:
    """With a 60 s timeout and a last message at t+30 s, the session expires at t+90 s with 4410."""
    async with memory_gateway(connector(session_timeout_s=60)) as (_, client):
        await client.handshake(AUTHED)
        t0 = trio.current_time()
        assert (await client.receive_json())["type"] == "connected"
        await trio.sleep(30)
        await client.send_json({"type": "ping"})
        assert await client.receive_json() == {"type": "pong"}
        error = await client.receive_json()
        assert error["code"] == "session_expired"
        assert trio.current_time() - t0 == 90.0
        assert (await client.expect_close()).code == 4410


async def test_heartbeat_pings_every_20s_and_keeps_a_live_session(autojump_clock: Any) -> None:
    """A peer that answers pings is pinged at 20, 40, 60 ... s and stays connected."""
    async with memory_gateway() as (_, client):
        await client.handshake(AUTHED)
        t0 = trio.current_time()
        await client.receive_json()
        with trio.move_on_after(101):
            await client.next_event()  # reading answers pings; nothing else arrives
        await client.send_json({"type": "ping"})
        assert await client.receive_json() == {"type": "pong"}
        assert [t - t0 for t in client.pings] == [20.0, 40.0, 60.0, 80.0, 100.0]


async def test_dead_peer_is_closed_1011_after_ping_timeout(autojump_clock: Any) -> None:
    """No pong within 20 s of the ping at t+20 s: the session closes with 1011 at t+40 s."""
    async with memory_gateway(answer_pings=False) as (_, client):
        await client.handshake(AUTHED)
        t0 = trio.current_time()
        await client.receive_json()
        close = await client.expect_close()
        assert close.code == 1011 and close.reason == "keepalive ping timeout"
        assert [t - t0 for t in client.pings] == [20.0]
        assert trio.current_time() - t0 == 40.0


async def test_custom_heartbeat_settings(autojump_clock: Any) -> None:
    """ping_interval and ping_timeout are honoured: 5 s + 2 s closes a dead peer at t+7 s."""
    async with memory_gateway(session=SessionConfig(ping_interval_s=5, ping_timeout_s=2), answer_pings=False) as (_, client):
        await client.handshake(AUTHED)
        t0 = trio.current_time()
        await client.receive_json()
        assert (await client.expect_close()).code == 1011
        assert trio.current_time() - t0 == 7.0


async def test_socket_keeps_draining_during_a_long_turn(autojump_clock: Any) -> None:
    """During a 100 s turn, later messages are acked at once and WebSocket pings are answered."""
    async with memory_gateway(connector(slow_agent)) as (_, client):
        await client.handshake(AUTHED)
        await client.receive_json()
        await client.send_json({"message": "go", "id": "t1"})
        assert (await client.receive_json())["type"] == "ack"
        assert (await client.receive_json())["type"] == "stream_start"
        assert (await client.receive_json())["chunk"] == "first "
        t0 = trio.current_time()
        for i in range(10):
            await client.send_json({"message": f"queued {i}", "id": f"q{i}"})
        for i in range(10):
            assert await client.receive_json() == {"type": "ack", "id": f"q{i}", "message_number": i + 2, "seq": i + 4}
        await client.stream.send_all(client.ws.send(Ping(payload=b"hello")))
        pong = await client.next_event()
        assert isinstance(pong, Pong) and pong.payload == b"hello"
        assert trio.current_time() == t0
        assert (await client.receive_json())["chunk"] == "second"
        assert trio.current_time() - t0 == 100.0


async def test_turns_of_a_session_run_in_order(autojump_clock: Any) -> None:
    """A message sent during a turn starts its turn only after the previous one ended."""
    async with memory_gateway(connector(slow_agent)) as (_, client):
        await client.handshake(AUTHED)
        await client.receive_json()
        await client.send_json({"message": "a", "id": "a"})
        await client.send_json({"message": "b", "id": "b"})
        kinds = []
        while len(kinds) < 10:
            e = await client.receive_json()
            kinds.append((e["type"], e.get("id")))
        acks = [k for k in kinds if k[0] == "ack"]
        assert acks == [("ack", "a"), ("ack", "b")]
        assert kinds.index(("ack", "b")) < kinds.index(("stream_end", "a"))
        assert [k for k in kinds if k[0] != "ack"] == [
            ("stream_start", "a"), ("stream_chunk", "a"), ("stream_chunk", "a"), ("stream_end", "a"),
            ("stream_start", "b"), ("stream_chunk", "b"), ("stream_chunk", "b"), ("stream_end", "b"),
        ]


async def test_graceful_shutdown_lets_the_running_turn_finish(autojump_clock: Any) -> None:
    """Shutdown during a turn: the reply completes, then `server_shutdown` and close 1001."""
    async with memory_gateway(connector(slow_agent)) as (gateway, client):
        await client.handshake(AUTHED)
        await client.receive_json()
        await client.send_json({"message": "go", "id": "t"})
        for _ in range(3):
            await client.receive_json()
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gateway.shutdown, 200.0)
            assert (await client.receive_json())["chunk"] == "second"
            end = await client.receive_json()
            assert end["type"] == "stream_end" and end["full_response"] == "first second"
            assert (await client.receive_json())["code"] == "server_shutdown"
            assert (await client.expect_close()).code == 1001
            assert trio.current_time() - t0 == 100.0


async def test_shutdown_grace_is_bounded(autojump_clock: Any) -> None:
    """A turn longer than the grace is cut off when it ends: its stream_end says `cancelled`, then close 1001."""
    async with memory_gateway(connector(slow_agent)) as (gateway, client):
        await client.handshake(AUTHED)
        await client.receive_json()
        await client.send_json({"message": "go"})
        for _ in range(3):
            await client.receive_json()
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gateway.shutdown, 5.0)
            end = await client.receive_json()
            assert (end["type"], end["status"], trio.current_time() - t0) == ("stream_end", "cancelled", 5.0)
            assert (await client.receive_json())["code"] == "server_shutdown"
            assert (await client.expect_close()).code == 1001
            assert trio.current_time() - t0 == 5.0


async def test_closing_the_session_cancels_the_turn(autojump_clock: Any) -> None:
    """When the client goes away mid-turn the agent is cancelled, not left running."""
    cancelled = trio.Event()

    async def agent(turn: Turn) -> AsyncIterator[str]:
        try:
            yield "x"
            await trio.sleep_forever()
        finally:
            cancelled.set()
            yield "never"  # pragma: no cover - proves nothing escapes a cancelled generator

    async with memory_gateway(connector(agent)) as (gateway, client):
        await client.handshake(AUTHED)
        await client.receive_json()
        await client.send_json({"message": "go"})
        for _ in range(3):
            await client.receive_json()
        await client.close()
        with trio.fail_after(1):
            await cancelled.wait()
            await gateway.wait_idle()
        assert gateway.connections == 0


async def test_message_limit_closes_4429_after_the_accepted_turn(autojump_clock: Any) -> None:
    """With max_messages=1, message 2 gets `message_limit`; close 4429 follows once turn 1 has ended."""
    async with memory_gateway(connector(slow_agent, max_messages=1)) as (_, client):
        await client.handshake(AUTHED)
        await client.receive_json()
        await client.send_json({"message": "one", "id": "a"})
        for _ in range(3):
            await client.receive_json()
        t0 = trio.current_time()
        await client.send_json({"message": "two", "id": "b"})
        refused = await client.receive_json()
        assert (refused["code"], refused["id"], "seq" in refused) == ("message_limit", "b", False)
        assert (await client.receive_json())["chunk"] == "second"
        end = await client.receive_json()
        assert (end["type"], end["id"]) == ("stream_end", "a")
        assert (await client.expect_close()).code == 4429
        assert trio.current_time() - t0 == 100.0
