"""Peer: a minimal chat gateway on websockets' asyncio server (the default event loop).

The handler is written the way most users would: read, answer in line, await each send.
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

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
    async with serve(handler, "127.0.0.1", args.port, compression=None, ping_interval=ping, ping_timeout=ping) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        _args.ready("ws", port)
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
