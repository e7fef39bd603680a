"""Interruptions both ways on the autojump clock: what reaches the wire when, and what the event reports (exact)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from wsproto.events import AcceptConnection, TextMessage

from antiphon.media import (
    CLIENT_EVENTS,
    AudioRawFrame,
    Interruption,
    InterruptionFrame,
    InterruptionSource,
    JsonFrameSerializer,
    WebsocketClientParams,
    WebsocketClientTransport,
    WebsocketServerParams,
    WebsocketServerTransport,
)
from tests.media import pb_schema as pb
from tests.media.conftest import Recorder, memory_server
from tests.media.test_client import MemoryDialer
from tests.media.test_server_timing import MONO_40MS, connected, pcm, reading, rel


async def test_application_interrupt_reaches_the_wire_at_once_and_reports_what_was_heard(autojump_clock: Any) -> None:
    """Interrupting 100 ms into 400 ms: the frame leaves at +100 ms exactly (latency 0), no audio after; 160 sent, 100 heard."""
    async with memory_server() as (transport, rec, new_client):
        client, t0 = await connected(rec, new_client)
        async with reading(client, t0 + 2) as frames:
            await transport.output().send(AudioRawFrame(pcm(10 * MONO_40MS), 16000, 1))
            await trio.sleep(0.1)
            interrupt_called_at = trio.current_time()
            await transport.output().send(InterruptionFrame())
        _, at, (conn, report) = await rec.wait_for("on_interruption")
        assert conn is transport.client
    assert [(round(t - t0, 9), kind) for t, kind, _ in frames] == [
        (0.0, "audio"), (0.0, "audio"), (0.04, "audio"), (0.08, "audio"), (0.1, "interruption"),
    ]
    interruption_on_wire = frames[-1][0]
    last_audio_on_wire = max(t for t, kind, _ in frames if kind == "audio")
    assert interruption_on_wire - interrupt_called_at == 0.0  # the measured interrupt latency
    assert last_audio_on_wire < interrupt_called_at
    assert report == Interruption(source=InterruptionSource.APPLICATION, at=interrupt_called_at, sent_ms=160.0, heard_ms=100.0, dropped_ms=240.0)
    assert transport.stats.interruptions == 1


async def test_the_listener_barging_in_stops_the_audio_at_once(autojump_clock: Any) -> None:
    """A client's InterruptionFrame at +100 ms: no audio after it, on_interruption (peer) fires, the frame is on input()."""
    async with memory_server() as (transport, rec, new_client):
        client, t0 = await connected(rec, new_client)
        async with reading(client, t0 + 2) as frames:
            await transport.output().send(AudioRawFrame(pcm(10 * MONO_40MS), 16000, 1))
            await trio.sleep(0.1)
            await client.send_bytes(pb.interruption())
            assert await transport.input().receive() == InterruptionFrame()
        _, _, (_, report) = await rec.wait_for("on_interruption")
    assert rel(frames, t0) == [0.0, 0.0, 0.04, 0.08]
    assert report == Interruption(source=InterruptionSource.PEER, at=t0 + 0.1, sent_ms=160.0, heard_ms=100.0, dropped_ms=240.0)
    assert transport.stats.interrupted_audio_bytes == 6 * MONO_40MS


async def test_with_lead_pacing_an_interruption_reports_what_was_sent_ahead(autojump_clock: Any) -> None:
    """pacing="lead" (200 ms): at +100 ms, 320 ms had been sent but only 100 ms heard; 80 ms were dropped."""
    async with memory_server(WebsocketServerParams(pacing="lead")) as (transport, rec, new_client):
        client, t0 = await connected(rec, new_client)
        async with reading(client, t0 + 2) as frames:
            await transport.output().send(AudioRawFrame(pcm(10 * MONO_40MS), 16000, 1))
            await trio.sleep(0.1)
            await transport.output().send(InterruptionFrame())
        _, _, (_, report) = await rec.wait_for("on_interruption")
    assert rel(frames, t0) == [0.0] * 6 + [0.04, 0.08, 0.1]
    assert (report.sent_ms, report.heard_ms, report.dropped_ms) == (320.0, 100.0, 80.0)


async def test_after_an_interruption_the_next_audio_is_a_new_stream(autojump_clock: Any) -> None:
    """Audio after an interruption starts at once with its own count: a second interruption reports only it."""
    async with memory_server() as (transport, rec, new_client):
        client, t0 = await connected(rec, new_client)
        async with reading(client, t0 + 2) as frames:
            await transport.output().send(AudioRawFrame(pcm(10 * MONO_40MS), 16000, 1))
            await trio.sleep(0.1)
            await transport.output().send(InterruptionFrame())
            await transport.output().send(AudioRawFrame(pcm(5 * MONO_40MS), 16000, 1))
            await trio.sleep(0.05)
            await transport.output().send(InterruptionFrame())
        _, _, (_, second) = await rec.wait_for("on_interruption", 2)
    assert rel(frames, t0)[4:] == [0.1, 0.1, 0.1, 0.14, 0.15]
    assert (second.sent_ms, second.heard_ms, second.dropped_ms) == (120.0, 50.0, 80.0)


async def test_json_peers_interrupt_both_ways(autojump_clock: Any) -> None:
    """With the JSON protocol, {"type":"interruption"} from the client drops the audio; ours goes out as the same text."""
    async with memory_server(WebsocketServerParams(serializer=JsonFrameSerializer)) as (transport, rec, new_client):
        client = new_client()
        assert isinstance(await client.handshake(), AcceptConnection)
        await rec.wait_for("on_client_connected")
        await transport.output().send(AudioRawFrame(pcm(10 * MONO_40MS), 16000, 1))
        await trio.sleep(0.01)
        await client.send_text('{"type":"interruption"}')
        _, _, (_, report) = await rec.wait_for("on_interruption")
        await transport.output().send(InterruptionFrame())
        texts = []
        with trio.move_on_after(1):
            while True:
                event = await client.next_event()
                assert isinstance(event, TextMessage)
                texts.append(event.data)
    assert report.source is InterruptionSource.PEER and report.dropped_ms == 320.0
    assert [t for t in texts if '"audio"' not in t] == ['{"type":"interruption"}']


async def test_client_transport_drops_its_queued_audio_when_the_server_interrupts(autojump_clock: Any) -> None:
    """The server's InterruptionFrame at +100 ms stops the client's paced upload at once; the client reports it."""
    server = WebsocketServerTransport(WebsocketServerParams(), port=0)
    server_rec = Recorder(server, ("on_client_connected",))
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: server.run(listen=False, task_status=task_status))
        dialer = MemoryDialer(server, nursery, fail=set())
        transport = WebsocketClientTransport("ws://media.test/", WebsocketClientParams(open_stream=dialer))
        rec = Recorder(transport, CLIENT_EVENTS)
        arrivals: list[float] = []

        async def collect() -> None:
            async for frame in server.input():
                if isinstance(frame, AudioRawFrame):
                    arrivals.append(trio.current_time())

        nursery.start_soon(collect)
        async with transport:
            await transport.connect()
            await server_rec.wait_for("on_client_connected")
            t0 = trio.current_time()
            await transport.output().send(AudioRawFrame(pcm(10 * MONO_40MS), 16000, 1))
            await trio.sleep(0.1)
            await server.output().send(InterruptionFrame())
            _, _, (_, report) = await rec.wait_for("on_interruption")
            await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert [round(t - t0, 9) for t in arrivals] == [0.0, 0.0, 0.04, 0.08]
    assert report.source is InterruptionSource.PEER and (report.sent_ms, report.heard_ms) == (160.0, 100.0)
