"""Ceiling: bare trio-websocket echo, no protocol, default settings - the ceiling of this stack."""

from __future__ import annotations

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from benchmarks.targets import _args


async def handler(request: WebSocketRequest) -> None:
    ws = await request.accept()
    while True:
        try:
            message = await ws.get_message()
            await ws.send_message(message)
        except ConnectionClosed:
            return


async def main() -> None:
    args = _args.parse(__doc__ or "")
    async with trio.open_nursery() as nursery:
        server = await nursery.start(lambda task_status: serve_websocket(
            handler, "127.0.0.1", args.port, ssl_context=None, task_status=task_status
        ))
        _args.ready("ws", server.port)


if __name__ == "__main__":
    try:
        trio.run(main)
    except KeyboardInterrupt:
        pass
