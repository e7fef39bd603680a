"""UTCP ``websocket`` tools on Trio: a pooling tool client and a tool server.

* :func:`open_tool_client` / :class:`ToolClient` - call tools (``call``), stream them
  (``call_streaming``) and discover manuals (``register_manual``), with connections pooled
  per handshake; :func:`call_tool`, :func:`call_tool_streaming` and :func:`register_manual`
  do one operation on a connection of their own.
* :class:`ToolApp` + :func:`serve_tools` / :class:`ToolServer` - serve plain Python functions
  as tools, one path per tool (``/tools/<name>``), the manual at ``/utcp``. A tool raises
  :class:`ToolError` to fail with a message meant for its caller.

The data model (:class:`WebSocketCallTemplate` and friends) is re-exported from the sans-IO
:mod:`antiphon.proto.utcp.templates`.
"""

from antiphon.errors import ToolError
from antiphon.proto.utcp.templates import (
    ApiKeyAuth,
    BasicAuth,
    OAuth2Auth,
    Tool,
    UtcpManual,
    WebSocketCallTemplate,
)
from antiphon.tools.app import ToolApp
from antiphon.tools.client import (
    ToolClient,
    call_tool,
    call_tool_streaming,
    open_tool_client,
    register_manual,
)
from antiphon.tools.oauth import TokenCache, fetch_oauth2_token
from antiphon.tools.schema import ToolSpec
from antiphon.tools.server import ToolServer, serve_tools

__all__ = [
    "ApiKeyAuth",
    "BasicAuth",
    "OAuth2Auth",
    "TokenCache",
    "Tool",
    "ToolApp",
    "ToolClient",
    "ToolError",
    "ToolServer",
    "ToolSpec",
    "UtcpManual",
    "WebSocketCallTemplate",
    "call_tool",
    "call_tool_streaming",
    "fetch_oauth2_token",
    "open_tool_client",
    "register_manual",
    "serve_tools",
]
