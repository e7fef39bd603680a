"""Which sans-I/O WebSocket core the engine drives: wsproto or websockets, by measurement.

``python -m benchmarks.sansio_cores`` times, in this process and on the same bytes, what
the engine asks of its core for one chat round trip on the server side: parse one masked
~130-byte client text frame (the ``message``) and build two unmasked server frames (the
``ack`` and the ``response``), then the same for the client side (build one masked frame,
parse two). It also times building one 200-chunk streamed reply. Each figure is the
median of 5 runs of ``--n`` messages, in microseconds per message; the ratio is what
counts (the machine is shared). Both cores are driven the way antiphon's engine drives
one: bytes in, events out, bytes to send collected once per batch.

No sockets and no event loop: this is the core alone, the part the engine cannot write
faster itself without a hand-written framer (which the design rules out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata

MESSAGE = (
    '{"type":"message","id":"m1","payload":{"message":'
    '"The quick brown fox jumps over the lazy dog while the benchmark waits."}}'
)
ACK = '{"type":"ack","id":"m1","message_number":1}'
RESPONSE = (
    '{"type":"response","id":"m1","agent":"assistant","response":'
    '"The quick brown fox jumps over the lazy dog while the benchmark waits.",'
    '"token_usage":{"prompt_tokens":18,"candidates_tokens":18}}'
)
CHUNK = '{"type":"stream_chunk","id":"m1","agent":"assistant","chunk":"The quick brown fox jumps over the lazy dog."}'
CHUNKS = 200


# ------------------------------------------------------------------------- websockets


def _websockets_pair() -> tuple[object, object]:
    """A server and a client protocol, opened by a real handshake between them."""
    from websockets.client import ClientProtocol
    from websockets.protocol import State
    from websockets.server import ServerProtocol
    from websockets.uri import parse_uri

    server, client = ServerProtocol(max_size=2**20), ClientProtocol(parse_uri("ws://127.0.0.1/"), max_size=2**20)
    client.send_request(client.connect())
    server.receive_data(b"".join(client.data_to_send()))
    (request,) = server.events_received()
    server.send_response(server.accept(request))
    client.receive_data(b"".join(server.data_to_send()))
    client.events_received()
    assert server.state is State.OPEN and client.state is State.OPEN
    return server, client


def websockets_server_rt(n: int) -> float:
    server, client = _websockets_pair()
    client.send_text(MESSAGE.encode())  # type: ignore[attr-defined]
    wire = client.data_to_send()[0]  # type: ignore[attr-defined]
    t = time.perf_counter()
    for _ in range(n):
        server.receive_data(wire)  # type: ignore[attr-defined]
        for event in server.events_received():  # type: ignore[attr-defined]
            event.data.decode()
        server.send_text(ACK.encode())  # type: ignore[attr-defined]
        server.send_text(RESPONSE.encode())  # type: ignore[attr-defined]
        b"".join(server.data_to_send())  # type: ignore[attr-defined]
    return time.perf_counter() - t


def websockets_client_rt(n: int) -> float:
    server, client = _websockets_pair()
    server.send_text(ACK.encode())  # type: ignore[attr-defined]
    server.send_text(RESPONSE.encode())  # type: ignore[attr-defined]
    wire = b"".join(server.data_to_send())  # type: ignore[attr-defined]
    t = time.perf_counter()
    for _ in range(n):
        client.send_text(MESSAGE.encode())  # type: ignore[attr-defined]
        b"".join(client.data_to_send())  # type: ignore[attr-defined]
        client.receive_data(wire)  # type: ignore[attr-defined]
        for event in client.events_received():  # type: ignore[attr-defined]
            event.data.decode()
    return time.perf_counter() - t


def websockets_stream(n: int) -> float:
    server, _ = _websockets_pair()
    chunk = CHUNK.encode()
    t = time.perf_counter()
    for _ in range(n):
        for _ in range(CHUNKS):
            server.send_text(chunk)  # type: ignore[attr-defined]
        b"".join(server.data_to_send())  # type: ignore[attr-defined]
    return time.perf_counter() - t


# ------------------------------------------------------------------------- wsproto


def _wsproto_pair() -> tuple[object, object]:
    """A server and a client connection, opened by a real handshake between them."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request

    server, client = WSConnection(ConnectionType.SERVER), WSConnection(ConnectionType.CLIENT)
    server.receive_data(client.send(Request(host="127.0.0.1", target="/")))
    next(server.events())
    client.receive_data(server.send(AcceptConnection()))
    next(client.events())
    return server, client


def wsproto_server_rt(n: int) -> float:
    from wsproto.events import TextMessage

    server, client = _wsproto_pair()
    wire = client.send(TextMessage(data=MESSAGE))  # type: ignore[attr-defined]
    t = time.perf_counter()
    for _ in range(n):
        server.receive_data(wire)  # type: ignore[attr-defined]
        for event in server.events():  # type: ignore[attr-defined]
            event.data  # noqa: B018 - wsproto has decoded the text already
        out = server.send(TextMessage(data=ACK)) + server.send(TextMessage(data=RESPONSE))  # type: ignore[attr-defined]
        del out
    return time.perf_counter() - t


def wsproto_client_rt(n: int) -> float:
    from wsproto.events import TextMessage

    server, client = _wsproto_pair()
    wire = server.send(TextMessage(data=ACK)) + server.send(TextMessage(data=RESPONSE))  # type: ignore[attr-defined]
    t = time.perf_counter()
    for _ in range(n):
        client.send(TextMessage(data=MESSAGE))  # type: ignore[attr-defined]
        client.receive_data(wire)  # type: ignore[attr-defined]
        for event in client.events():  # type: ignore[attr-defined]
            event.data  # noqa: B018
    return time.perf_counter() - t


def wsproto_stream(n: int) -> float:
    from wsproto.events import TextMessage

    server, _ = _wsproto_pair()
    t = time.perf_counter()
    for _ in range(n):
        b"".join(server.send(TextMessage(data=CHUNK)) for _ in range(CHUNKS))  # type: ignore[attr-defined]
    return time.perf_counter() - t


CASES: dict[str, dict[str, Callable[[int], float]]] = {
    "server round trip (parse 1 masked frame, build 2)": {
        "websockets": websockets_server_rt,
        "wsproto": wsproto_server_rt,
    },
    "client round trip (build 1 masked frame, parse 2)": {
        "websockets": websockets_client_rt,
        "wsproto": wsproto_client_rt,
    },
    f"one {CHUNKS}-chunk streamed reply (build {CHUNKS} frames)": {
        "websockets": websockets_stream,
        "wsproto": wsproto_stream,
    },
}


def measure(n: int, reps: int = 5) -> dict[str, dict[str, float]]:
    """Median microseconds per message (per reply for the stream case) of each core in each case."""
    out: dict[str, dict[str, float]] = {}
    for case, cores in CASES.items():
        per_core: dict[str, list[float]] = {core: [] for core in cores}
        m = max(1, n // CHUNKS) if "stream" in case else n
        for _ in range(reps):  # interleaved, so a noisy moment hits both
            for core, fn in cores.items():
                per_core[core].append(fn(m) / m * 1e6)
        out[case] = {core: round(statistics.median(v), 2) for core, v in per_core.items()}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sansio_cores", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000, help="messages per run (default 20000)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    result = measure(args.n)
    versions = {d: metadata.version(d) for d in ("websockets", "wsproto")}
    if args.json:
        json.dump({"versions": versions, "us_per_message": result}, sys.stdout)
        print()
        return
    print(f"python {sys.version.split()[0]}, websockets {versions['websockets']}, wsproto {versions['wsproto']}")
    print("| case | websockets us | wsproto us | wsproto / websockets |")
    print("|---|---|---|---|")
    for case, r in result.items():
        print(f"| {case} | {r['websockets']:.2f} | {r['wsproto']:.2f} | {r['wsproto'] / r['websockets']:.1f}x |")


if __name__ == "__main__":
    main()
