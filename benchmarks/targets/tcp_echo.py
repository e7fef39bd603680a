"""Ceiling: raw TCP echo on Trio - the ceiling of the loopback path for a Trio server."""

from __future__ import annotations

import functools

import trio

from benchmarks.targets import _args


async def handler(stream: trio.SocketStream) -> None:
    try:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


async def main() -> None:
    args = _args.parse(__doc__ or "")
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, args.port, host="127.0.0.1"))
        _args.ready("tcp", listeners[0].socket.getsockname()[1])


if __name__ == "__main__":
    try:
        trio.run(main)
    except KeyboardInterrupt:
        pass
