"""How the chat client retries a dropped connection: which closes count as lost, the backoff, the status it reports.

:class:`ReconnectPolicy` says how often and how patiently; :class:`Reconnecting` is what
``open_chat(on_reconnect=...)`` hears before each attempt.
"""

from __future__ import annotations

from typing import Final

from attrs import frozen

from antiphon.proto.close import CloseCode

__all__ = ["NO_RECONNECT", "RECONNECT_CODES", "ReconnectPolicy", "Reconnecting"]

RECONNECT_CODES: Final = frozenset(
    {
        CloseCode.ABNORMAL,
        CloseCode.INTERNAL_ERROR,
        CloseCode.SERVICE_RESTART,
        CloseCode.TRY_AGAIN_LATER,
        CloseCode.BAD_GATEWAY,
    }
)
"""Close codes after which the client reconnects and resumes: the connection was lost, not ended."""


@frozen(kw_only=True)
class ReconnectPolicy:
    """How the client retries after a dropped connection: ``max_attempts`` tries, delays growing by ``factor``.

    The delays carry no jitter, so tests can pin them; runs are per client, so a
    thundering herd only follows a server restart, after which no run is resumable anyway.
    """

    max_attempts: int = 5
    initial_delay_s: float = 0.5
    max_delay_s: float = 10.0
    factor: float = 2.0

    def delay(self, attempt: int) -> float:
        """The wait before try number ``attempt`` (1-based)."""
        return min(self.max_delay_s, self.initial_delay_s * self.factor ** (attempt - 1))


NO_RECONNECT: Final = ReconnectPolicy(max_attempts=0)


@frozen(kw_only=True)
class Reconnecting:
    """The connection was lost: the client waits ``delay_s``, then makes try ``attempt`` of ``max_attempts``.

    ``reason`` says what ended the last connection or failed the last try (a close code,
    an error's text). Given to ``open_chat(on_reconnect=...)``.
    """

    attempt: int
    max_attempts: int
    delay_s: float
    reason: str
