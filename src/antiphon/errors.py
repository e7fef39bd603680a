"""Every exception antiphon raises, in one tree.

::

    AntiphonError                      root: ``except AntiphonError`` catches them all
    ├── ConfigError (ValueError)       a setting, config file or template is invalid
    │   └── TemplateError              a UTCP call template cannot be used as given
    │       ├── VariableNotFound       a ``${VAR}`` / ``$VAR`` has no value
    │       └── PlaceholderError       a ``UTCP_ARG_x_UTCP_ARG`` has no argument
    ├── ProtocolError                  somebody broke a protocol's rules
    │   ├── LocalProtocolError         our caller misused the API (a bug on this side)
    │   └── RemoteProtocolError        the peer misbehaved; carries ``close_code``
    │       ├── DecodeError (ValueError)   a message did not decode; ``path`` locates it
    │       └── ResponseFormatError    a tool reply does not parse as its template says
    ├── TransportError                 the connection itself failed
    │   ├── ListenError (OSError)      a server cannot listen on its address (in use, no permission)
    │   ├── HandshakeError             the WebSocket upgrade failed
    │   │   └── HandshakeRejected      the server answered with an HTTP status
    │   └── ConnectionClosed           the connection closed; carries ``code``, ``reason``
    │       ├── ConnectionClosedOK     ... with 1000 or 1001 (a normal end)
    │       ├── ConnectionClosedError  ... with any other code, or without a close frame (1006)
    │       │   └── ReplyTooLarge      a reply exceeded the client's ``max_message_size`` (1009)
    │       └── ClosedWithoutReply     a tool server closed before it replied
    ├── OperationTimeout (TimeoutError)   a deadline passed (Trio's TooSlowError, translated)
    ├── StoreError                     a transcript store could not be reached, read or written
    ├── RunBackendError                a shared run backend (Redis) could not be reached or refused a command
    ├── RemoteError                    the peer reported a failure in-protocol
    │   ├── ChatError                  the chat gateway sent an ``error`` event
    │   └── ToolCallError              a tool server sent ``tool_error``
    └── ToolError                      raised *by a tool* on purpose: its text is sent to the caller

    AntiphonWarning (UserWarning)      root of antiphon's warnings
    └── TemplateWarning                a call template has keys antiphon ignores
        └── TemplateDeprecationWarning (FutureWarning)   a deprecated key was honoured

Errors split by who is at fault, as in h11 and wsproto: ``LocalProtocolError`` means
the code calling antiphon did something wrong; ``RemoteProtocolError`` means the other
end did, and says which WebSocket close code fits. Trio's own exceptions
(``trio.TooSlowError``, ``trio.BrokenResourceError``) and websockets' never cross a
public boundary: they are translated into the classes above.
"""

from __future__ import annotations

__all__ = [
    "AntiphonError",
    "AntiphonWarning",
    "ChatError",
    "ClosedWithoutReply",
    "ConfigError",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "DecodeError",
    "HandshakeError",
    "HandshakeRejected",
    "ListenError",
    "LocalProtocolError",
    "OperationTimeout",
    "PlaceholderError",
    "ProtocolError",
    "RemoteError",
    "RemoteProtocolError",
    "ReplyTooLarge",
    "ResponseFormatError",
    "RunBackendError",
    "StoreError",
    "TemplateDeprecationWarning",
    "TemplateError",
    "TemplateWarning",
    "ToolCallError",
    "ToolError",
    "TransportError",
    "VariableNotFound",
    "connection_closed",
]


class AntiphonError(Exception):
    """Base class of every exception antiphon raises on purpose."""


class ConfigError(AntiphonError, ValueError):
    """A setting, a config file or a template is invalid; the message names the field."""


class TemplateError(ConfigError):
    """A UTCP call template cannot be used as given."""


class VariableNotFound(TemplateError):
    """A ``${VAR}`` or ``$VAR`` in a template resolved from neither the mapping nor the environment."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"variable {name!r} is referenced in the call template but has no value: "
            f"pass it in `variables=` or set it in the environment"
        )
        self.name = name


class PlaceholderError(TemplateError):
    """A ``UTCP_ARG_<name>_UTCP_ARG`` placeholder names an argument the call did not pass."""

    def __init__(self, name: str) -> None:
        super().__init__(f"message template uses UTCP_ARG_{name}_UTCP_ARG but no argument {name!r} was given")
        self.name = name


class ProtocolError(AntiphonError):
    """Somebody broke the rules of a protocol antiphon speaks."""


class LocalProtocolError(ProtocolError):
    """The caller used antiphon's API in a way the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow.

    ``close_code`` is the WebSocket close code that fits, when the right answer is to
    close; ``None`` when the session can carry on.
    """

    def __init__(self, message: str, *, close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code


class DecodeError(RemoteProtocolError, ValueError):
    """A message did not decode.

    ``str(err)`` reads like ``$.payload.message: expected a string``: the JSON path of
    the first problem, then what is wrong there. ``errors`` holds every problem found,
    in the same form. Safe to show to the peer: it never contains a traceback.
    """

    def __init__(self, errors: list[str] | str, *, close_code: int | None = None) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("; ".join(self.errors), close_code=close_code)

    @property
    def path(self) -> str:
        """The JSON path of the first problem (``$`` for the whole message)."""
        first = self.errors[0]
        head, sep, _ = first.partition(": ")
        return head if sep and head.startswith("$") else "$"


class ResponseFormatError(RemoteProtocolError):
    """A tool's reply does not parse as the template's ``response_format`` says."""


class TransportError(AntiphonError):
    """The WebSocket connection failed, or is gone."""


class ListenError(TransportError, OSError):
    """A server cannot listen on its address; the message names it (``cannot listen on host:port: ...``)."""

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        TransportError.__init__(self, message)
        self.errno = errno

    def __str__(self) -> str:
        return str(self.args[0])


class HandshakeError(TransportError):
    """The WebSocket opening handshake failed (refused, redirected, timed out, bad URL)."""


class HandshakeRejected(HandshakeError):
    """The server answered the upgrade with an HTTP status instead of 101."""

    def __init__(self, status_code: int, message: str | None = None) -> None:
        super().__init__(message or f"WebSocket upgrade rejected with HTTP {status_code}")
        self.status_code = status_code


class ConnectionClosed(TransportError):
    """The WebSocket connection is closed; ``code`` and ``reason`` say how (1006: no close frame)."""

    def __init__(self, code: int, reason: str | None = None, message: str | None = None) -> None:
        super().__init__(message or f"connection closed with code {code}" + (f" ({reason})" if reason else ""))
        self.code = code
        self.reason = reason


class ConnectionClosedOK(ConnectionClosed):
    """The connection ended normally: 1000 (done) or 1001 (going away)."""


class ConnectionClosedError(ConnectionClosed):
    """The connection ended with an error code, or without a close frame (1006)."""


def connection_closed(code: int, reason: str | None = None, message: str | None = None) -> ConnectionClosed:
    """The :class:`ConnectionClosed` subclass that fits ``code``."""
    kind = ConnectionClosedOK if code in (1000, 1001) else ConnectionClosedError
    return kind(code, reason, message)


class ClosedWithoutReply(ConnectionClosed):
    """A tool server closed the connection before it sent a reply."""


class ReplyTooLarge(ConnectionClosedError):
    """A reply frame was bigger than the client's ``max_message_size``; the client closed with 1009.

    ``limit`` is that size in bytes (None when unknown). Raise the client's limit, or ask
    the tool for less.
    """

    def __init__(
        self, code: int, reason: str | None = None, message: str | None = None, *, limit: int | None = None
    ) -> None:
        super().__init__(code, reason, message)
        self.limit = limit


class OperationTimeout(AntiphonError, TimeoutError):
    """An operation did not finish before its deadline."""


class StoreError(AntiphonError):
    """A transcript store could not be reached, read or written; the message says which store and why."""


class RunBackendError(AntiphonError):
    """A shared run backend could not be reached or refused a command; the message names it and says why."""


class RemoteError(AntiphonError):
    """The peer reported, inside the protocol, that something failed."""


class ChatError(RemoteError):
    """The chat gateway sent an ``error`` event: ``code``, ``message`` and the turn ``id`` if any."""

    def __init__(self, code: str, message: str, id: str | int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.id = id


class ToolCallError(RemoteError):
    """A tool server answered a call with ``tool_error``; ``error`` is what it sent."""

    def __init__(self, tool: str, error: object) -> None:
        super().__init__(f"tool {tool!r} failed: {error}")
        self.tool = tool
        self.error = error


class ToolError(AntiphonError):
    """Raise it in a tool to fail the call with a message meant for the caller (FastMCP's convention).

    ``str(err)`` always reaches the peer as the ``tool_error``; any other exception a tool
    raises is reported by its type only, unless the app sets ``expose_errors``.
    """


class AntiphonWarning(UserWarning):
    """Base class of every warning antiphon emits."""


class TemplateWarning(AntiphonWarning):
    """A call template carries keys antiphon does not use; the message names them."""


class TemplateDeprecationWarning(TemplateWarning, FutureWarning):
    """A call template uses a deprecated key that antiphon still honours; the message says what to write instead.

    A ``FutureWarning``, so it is shown by default: templates are written by users, not
    only by the code that loads them.
    """
