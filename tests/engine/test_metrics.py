"""GET /healthz and GET /metrics on the serving port, over real sockets; the text parsed by prometheus_client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import prometheus_client
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from websockets.trio.client import connect

from antiphon.chat import open_chat
from antiphon.chat.store import MemoryStore
from antiphon.engine.metrics import LatencyHistogram, close_code_label
from antiphon.engine.server import Accept, HandshakeRequest, Reject, ServerConfig, SessionServer
from antiphon.engine.session import Session, SessionHandler
from antiphon.errors import HandshakeRejected
from antiphon.proto.close import CloseCode
from antiphon.tools import ToolServer
from tests.chat.conftest import SECRET, tcp_gateway
from tests.tools.conftest import demo_app

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def http_get(port: int, path: str, stream: trio.SocketStream | None = None) -> tuple[int, dict[str, str], str]:
    """A plain HTTP/1.1 GET on 127.0.0.1 (or on ``stream``); the status, the headers and the body."""
    with trio.fail_after(10):
        conn = stream if stream is not None else await trio.open_tcp_stream("127.0.0.1", port)
        async with conn:
            await conn.send_all(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: */*\r\n\r\n".encode())
            data = b""
            while chunk := await conn.receive_some():
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    assert int(headers["content-length"]) == len(body)
    return int(status_line.split()[1]), headers, body.decode()


async def scrape(port: int) -> Samples:
    """GET /metrics, parsed with prometheus_client's own parser: every sample by name and labels."""
    status, headers, body = await http_get(port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the scheduler (checkpoints, not sleeps) until ``condition`` holds: the server saw the socket."""
    with trio.fail_after(10):
        while not condition():
            await trio.sleep(0)


async def test_metrics_count_a_chat_conversation() -> None:
    """Handshakes by result, sessions, messages and bytes both ways, turns, turn and store latency, close codes."""
    async with tcp_gateway(store=MemoryStore()) as gateway:
        port = gateway.port
        with pytest.raises(HandshakeRejected):
            async with open_chat(gateway.url, secret="wrong", auth="header"):
                pass
        with pytest.raises(HandshakeRejected):
            async with open_chat(gateway.url + "/nowhere", secret=SECRET):
                pass
        async with open_chat(gateway.url, secret=SECRET) as chat:
            await chat.ask("one")
            await chat.ask("two")
            client = chat._session
            assert client is not None
            live = await scrape(port)
            sent, received = (client.messages_out, client.wire.bytes_out), (client.messages_in, client.wire.bytes_in)
        after = await scrape(port)

    chat_face = {"face": "chat"}
    assert value(live, "antiphon_handshakes_total", result="accepted", **chat_face) == 1
    assert value(live, "antiphon_handshakes_total", result="401", **chat_face) == 1
    assert value(live, "antiphon_handshakes_total", result="404", **chat_face) == 1
    assert value(live, "antiphon_sessions", **chat_face) == 1
    assert value(live, "antiphon_connections", **chat_face) == 2  # the chat's, and the scrape's own
    # What one side sent, the other received, message for message and byte for byte.
    assert value(live, "antiphon_messages_received_total", **chat_face) == sent[0] == 3  # auth + 2 messages
    assert value(live, "antiphon_messages_sent_total", **chat_face) == received[0]
    assert value(live, "antiphon_received_bytes_total", **chat_face) == sent[1]
    assert value(live, "antiphon_sent_bytes_total", **chat_face) == received[1]
    assert value(live, "antiphon_send_buffer_bytes", **chat_face) == 0
    assert value(live, "antiphon_chat_turns_total", status="completed") == 2
    assert value(live, "antiphon_chat_turn_duration_seconds_count") == 2
    assert value(live, "antiphon_chat_turn_duration_seconds_bucket", le="+Inf") == 2
    assert value(live, "antiphon_chat_store_duration_seconds_count", op="save_message") == 2
    assert value(live, "antiphon_chat_store_duration_seconds_count", op="save_reply") == 2
    assert value(live, "process_open_fds") > 0  # the process collector, in the server's own registry
    # The session ended: its counts moved into the totals (counters never go down); its close code is counted.
    assert value(after, "antiphon_sessions", **chat_face) == 0
    assert value(after, "antiphon_closes_total", code="1000", **chat_face) == 1
    for name in ("antiphon_messages_received_total", "antiphon_messages_sent_total", "antiphon_sent_bytes_total"):
        assert value(after, name, **chat_face) >= value(live, name, **chat_face)


async def test_metrics_hold_no_secret_and_no_message_text() -> None:
    """No label value or sample carries the secret, the path's query, or what was said."""
    async with tcp_gateway() as gateway:
        async with open_chat(gateway.url + "?secret=" + SECRET, secret=SECRET, auth="message") as chat:
            await chat.ask("a very particular sentence")
        _, _, body = await http_get(gateway.port, "/metrics")
    assert SECRET not in body and "particular" not in body and "?" not in body


async def test_every_server_has_its_own_registry() -> None:
    """Two servers in one process count apart, and nothing lands in prometheus_client's global registry."""
    async with tcp_gateway() as a, tcp_gateway() as b:
        async with open_chat(a.url, secret=SECRET) as chat:
            await chat.ask("hi")
        assert value(await scrape(a.port), "antiphon_handshakes_total", face="chat", result="accepted") == 1
        assert value(await scrape(b.port), "antiphon_handshakes_total", face="chat", result="accepted") == 0
    assert not [m for m in prometheus_client.REGISTRY.collect() if m.name.startswith("antiphon")]


async def test_each_face_labels_its_metrics_and_metrics_can_be_turned_off() -> None:
    """A tool server's metrics say face="tools"; with metrics=False GET /metrics is the face's (404), /healthz stays."""
    async with trio.open_nursery() as nursery:
        tools = await nursery.start(ToolServer(demo_app(), ServerConfig(port=0)).run)
        quiet = await nursery.start(ToolServer(demo_app(), ServerConfig(port=0, metrics=False)).run)
        assert value(await scrape(tools.port), "antiphon_sessions", face="tools") == 0
        status, _, body = await http_get(quiet.port, "/metrics")
        assert (status, body) == (404, "not a tool path: call tools at /tools/<name>, discover at /utcp\n")
        assert (await http_get(quiet.port, "/healthz"))[::2] == (200, "ok\n")
        nursery.cancel_scope.cancel()


class _Stubborn(SessionHandler):
    """Ignores the server's shutdown: its session stays open until the peer closes it."""

    def on_shutdown(self, session: Session) -> None:
        pass


@asynccontextmanager
async def stubborn_server() -> AsyncIterator[SessionServer]:
    def route(request: HandshakeRequest, *, full: bool) -> Accept | Reject:
        return Accept(_Stubborn())

    async with trio.open_nursery() as nursery:
        server = await nursery.start(SessionServer(route, ServerConfig(port=0, shutdown_grace_s=60)).run)
        yield server
        nursery.cancel_scope.cancel()


async def test_healthz_is_200_while_accepting_and_503_while_draining() -> None:
    """GET /healthz answers 200 ok; once a shutdown has begun (sessions still finishing), 503 draining."""
    async with stubborn_server() as server, trio.open_nursery() as nursery:
        port = server.port
        status, _, body = await http_get(port, "/healthz")
        assert (status, body) == (200, "ok\n")
        async with connect(server.url, open_timeout=10) as ws:
            probe = await trio.open_tcp_stream("127.0.0.1", port)  # accepted now: the listener closes at shutdown
            await until(lambda: server.connections == 2)
            nursery.start_soon(server.shutdown)
            await until(lambda: not server.accepting)
            status, headers, body = await http_get(port, "/healthz", probe)
            assert (status, body, headers["connection"]) == (503, "draining\n", "close")
            await ws.aclose()
        await until(lambda: server.connections == 0)
    assert server.counters.handshakes == {"accepted": 1}  # health checks are not handshakes


async def test_an_upgrade_to_the_metrics_path_is_the_faces() -> None:
    """Only plain HTTP is the engine's: a WebSocket upgrade to /metrics goes to the face's router."""
    paths: list[str] = []

    def route(request: HandshakeRequest, *, full: bool) -> Accept | Reject:
        paths.append(request.path)
        return Accept(SessionHandler())

    async with trio.open_nursery() as nursery:
        server = await nursery.start(SessionServer(route, ServerConfig(port=0)).run)
        async with connect(f"{server.url}/metrics", open_timeout=10) as ws:
            await ws.send("hi")
        nursery.cancel_scope.cancel()
    assert paths == ["/metrics"]


def test_histogram_buckets_are_cumulative() -> None:
    """Observations land in the first bucket whose bound they do not exceed; +Inf counts them all."""
    h = LatencyHistogram((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 3.0):
        h.observe(seconds)
    assert h.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert (h.count, h.sum) == (4, pytest.approx(3.65))


@pytest.mark.parametrize(
    ("code", "label"), [(1000, "1000"), (CloseCode.TRY_AGAIN_LATER, "1013"), (4999, "other"), (None, "1006")]
)
def test_close_code_labels_are_bounded(code: Any, label: str) -> None:
    """antiphon's close codes are labelled by number; a peer's made-up code is `other`, so labels stay few."""
    assert close_code_label(code) == label
