"""The Trio I/O layer every face stands on: sessions, the server, client connections.

* :mod:`.session` - :class:`Session`, one supervised WebSocket connection;
* :mod:`.server` - :class:`SessionServer`: listeners, handshakes, capacity, shutdown;
* :mod:`.connect` - dialling client connections.
"""

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
]
