"""The Trio I/O layer every face stands on: sessions, the server, client connections.

* :mod:`.session` - :class:`Session`, one supervised WebSocket connection;
* :mod:`.server` - :class:`SessionServer`: listeners, handshakes, capacity, shutdown;
* :mod:`.connect` - dialling client connections;
* :mod:`.adapters` - sessions on connections a ``trio_websocket`` server accepted.
"""

from antiphon.engine.adapters import serve_trio_websocket, serve_trio_websocket_request
from antiphon.engine.server import (
    Accept,
    HandshakeRequest,
    Reject,
    Router,
    ServerConfig,
    SessionServer,
)
from antiphon.engine.session import Session, SessionConfig, SessionHandler

__all__ = [
    "Accept",
    "HandshakeRequest",
    "Reject",
    "Router",
    "ServerConfig",
    "Session",
    "SessionConfig",
    "SessionHandler",
    "SessionServer",
    "serve_trio_websocket",
    "serve_trio_websocket_request",
]
