"""antiphon: a Trio structured-concurrency engine for long-lived WebSocket sessions.

One engine, three faces:

* :mod:`antiphon.chat` - a chat gateway speaking the Connic WebSocket connector protocol;
* :mod:`antiphon.tools` - UTCP ``websocket`` tool calls: a client and a tool server;
* :mod:`antiphon.media` - Pipecat-compatible media transports.

Every session runs under its own nursery (receive, send, heartbeat and timer tasks);
the protocol logic lives, sans-IO, in :mod:`antiphon.proto`.
"""

from antiphon._version import __version__
from antiphon.chat import (
    Agent,
    AgentReply,
    ChatClient,
    ChatGateway,
    ChatSettings,
    Connector,
    Reply,
    Turn,
    open_chat,
    serve_chat,
)
from antiphon.engine import (
    ServerConfig,
    Session,
    SessionConfig,
    SessionHandler,
    SessionServer,
)
from antiphon.errors import AntiphonError

__all__ = [
    "Agent",
    "AgentReply",
    "AntiphonError",
    "ChatClient",
    "ChatGateway",
    "ChatSettings",
    "Connector",
    "Reply",
    "ServerConfig",
    "Session",
    "SessionConfig",
    "SessionHandler",
    "SessionServer",
    "Turn",
    "__version__",
    "open_chat",
    "serve_chat",
]
