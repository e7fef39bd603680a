"""WebSocket close codes: the one vocabulary every face and the engine use.

RFC 6455 section 7.4.1 defines 1000-1015; 4000-4999 are for applications. antiphon's
own codes are ``4000 + the HTTP status`` of the same meaning, the convention graphql-ws
made familiar (4401, 4408, 4429). Some codes have a second name that says why antiphon
sends them (``SERVER_SHUTDOWN`` is ``GOING_AWAY``, ``SERVER_FULL`` is ``TRY_AGAIN_LATER``);
the README's close-code table lists when each is sent.
"""

from __future__ import annotations

import enum

__all__ = ["CloseCode"]


class CloseCode(enum.IntEnum):
    """A WebSocket close code; an ``int``, so it goes on the wire as it is."""

    NORMAL = 1000
    GOING_AWAY = 1001
    SERVER_SHUTDOWN = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005
    """Never sent: what a close frame without a code reads as."""
    ABNORMAL = 1006
    """Never sent: the connection ended without a close frame."""
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    SERVER_FULL = 1013
    BAD_GATEWAY = 1014
    AUTH_FAILED = 4401
    AUTH_TIMEOUT = 4408
    RESUMED_ELSEWHERE = 4409
    SESSION_EXPIRED = 4410
    MESSAGE_LIMIT = 4429
