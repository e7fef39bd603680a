"""Probe: the same minimal chat gateway on antiphon's engine alone (no chat face).

``chat_subset.ChatState`` answers each frame inside ``SessionHandler.on_message``, on
``SessionServer``: what the engine costs without antiphon's chat face on top (its
strict codec, runs, replay log, metrics). Not a peer users would write: a probe that
splits antiphon's cost between the engine and the chat face.
"""

from __future__ import annotations

import trio

from antiphon.engine.server import Accept, HandshakeRequest, Reject, ServerConfig, SessionServer
from antiphon.engine.session import Session, SessionConfig, SessionHandler
from benchmarks.targets import _args
from benchmarks.targets.chat_subset import ChatState


class Handler(SessionHandler):
    def __init__(self, secret: str | None, streaming: bool) -> None:
        self.state = ChatState(secret, streaming)

    async def on_open(self, session: Session) -> None:
        if self.state.authenticated:
            session.send_nowait(self.state.connected())

    def on_message(self, session: Session, message: str | bytes) -> None:
        state = self.state
        if not state.authenticated:
            answer, ok = state.auth(message)
            session.send_nowait(answer)
            if not ok:
                session.close(4401, "authentication failed")
            return
        for out in state.replies(message):
            session.send_nowait(out)


async def main() -> None:
    args = _args.parse(__doc__ or "")

    def route(request: HandshakeRequest, *, full: bool) -> Accept | Reject:
        return Accept(Handler(args.secret, args.streaming))

    ping = args.ping_interval or None
    server = SessionServer(
        route,
        ServerConfig(host="127.0.0.1", port=args.port, max_connections=20000),
        SessionConfig(ping_interval_s=ping, ping_timeout_s=ping),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        _args.ready("ws", server.port)


if __name__ == "__main__":
    try:
        trio.run(main)
    except KeyboardInterrupt:
        pass
