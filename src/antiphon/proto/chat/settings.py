"""How one chat connector behaves: :class:`ChatSettings`, the one source of its defaults."""

from __future__ import annotations

from typing import Final

from attrs import frozen

from antiphon.errors import ConfigError

__all__ = [
    "MAX_MESSAGES_RANGE",
    "MAX_REPLY_BYTES",
    "REPLAY_MAX_BYTES",
    "SESSION_TIMEOUT_RANGE_S",
    "ChatSettings",
]

MAX_MESSAGES_RANGE: Final = (1, 10_000)
SESSION_TIMEOUT_RANGE_S: Final = (60.0, 86_400.0)

REPLAY_MAX_BYTES: Final = 256 * 1024
"""Default replay budget per run: minutes of a streamed reply, far more than a reconnect misses."""

MAX_REPLY_BYTES: Final = 1_000_000
"""Default bound of a reply, JSON-escaped UTF-8: its ``stream_end`` stays within common clients' 1 MiB frame limit."""


@frozen(kw_only=True)
class ChatSettings:
    """How one connector behaves; every field is documented in the README's configuration table.

    Raises :class:`ConfigError` naming the field when a value is out of range.
    """

    require_auth: bool = True
    secret: str | None = None
    streaming: bool = True
    session_timeout_s: float = 3600.0
    max_messages: int = 100
    auth_timeout_s: float = 10.0
    max_queued_turns: int = 16
    history_max_chars: int = 1_000_000
    resume_grace_s: float = 60.0
    replay_max_bytes: int = REPLAY_MAX_BYTES
    max_reply_bytes: int = MAX_REPLY_BYTES

    def __attrs_post_init__(self) -> None:
        if self.require_auth and not self.secret:
            raise ConfigError("secret: required when authentication is on")
        lo, hi = MAX_MESSAGES_RANGE
        if not lo <= self.max_messages <= hi:
            raise ConfigError(f"max_messages: must be between {lo} and {hi}, got {self.max_messages}")
        lo_s, hi_s = SESSION_TIMEOUT_RANGE_S
        if not lo_s <= self.session_timeout_s <= hi_s:
            raise ConfigError(
                f"session_timeout: must be between {lo_s:g} and {hi_s:g} seconds, got {self.session_timeout_s:g}"
            )
        if self.auth_timeout_s <= 0:
            raise ConfigError(f"auth_timeout: must be positive, got {self.auth_timeout_s:g}")
        if self.max_queued_turns < 1:
            raise ConfigError(f"max_queued_turns: must be at least 1, got {self.max_queued_turns}")
        if self.history_max_chars < 0:
            raise ConfigError(f"history_max_chars: must not be negative, got {self.history_max_chars}")
        if self.resume_grace_s < 0:
            raise ConfigError(f"resume_grace: must not be negative, got {self.resume_grace_s:g}")
        if self.replay_max_bytes < 0:
            raise ConfigError(f"replay_max_bytes: must not be negative, got {self.replay_max_bytes}")
        if self.max_reply_bytes < 1:
            raise ConfigError(f"max_reply_bytes: must be at least 1, got {self.max_reply_bytes}")
