"""Peer: the same minimal chat gateway on websockets' Trio server (``websockets.trio``)."""

from __future__ import annotations

import trio
from websockets.exceptions import ConnectionClosed
from websockets.trio.server import ServerConnection, serve

from benchmarks.targets import _args
from benchmarks.targets.chat_subset import ChatState


async def main() -> None:
    args = _args.parse(__doc__ or "")

    async def handler(ws: ServerConnection) -> None:
        state = ChatState(args.secret, args.streaming)
        try:
            if not state.authenticated:
                answer, ok = state.auth(await ws.recv())
                await ws.send(answer)
                if not ok:
                    await ws.close(4401, "authentication failed")
                    return
            else:
                await ws.send(state.connected())
            async for raw in ws:
                for out in state.replies(raw):
                    await ws.send(out)
        except ConnectionClosed:
            pass

    ping = args.ping_interval or None
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: serve(
                handler,
                args.port,
                host="127.0.0.1",
                compression=None,
                ping_interval=ping,
                ping_timeout=ping,
                task_status=task_status,
            )
        )
        _args.ready("ws", server.listeners[0].socket.getsockname()[1])


if __name__ == "__main__":
    try:
        trio.run(main)
    except KeyboardInterrupt:
        pass
