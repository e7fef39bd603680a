"""Where a gateway's runs are shared: :class:`RunsSettings`, :func:`open_backend`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

from attrs import frozen

from antiphon.chat.backends.base import RunBackend
from antiphon.chat.backends.node import LEASE_TTL_S
from antiphon.chat.store.records import redact_url
from antiphon.errors import ConfigError

__all__ = ["LEASE_TTL_RANGE_S", "REDIS_SCHEMES", "RunsSettings", "open_backend"]

REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")
LEASE_TTL_RANGE_S: Final = (0.1, 600.0)
"""Below 0.1 s a busy process would lose its runs to a pause; above 10 min a dead one holds them too long."""


@frozen(kw_only=True)
class RunsSettings:
    """Where runs are shared (``runs``: ``"memory"`` or a Redis URL) and the owner's lease TTL.

    Raises :class:`ConfigError` naming the key for a value it cannot use.
    """

    runs: str = "memory"
    lease_ttl_s: float = LEASE_TTL_S

    def __attrs_post_init__(self) -> None:
        if self.runs != "memory" and not self.runs.startswith(REDIS_SCHEMES):
            raise ConfigError(f"runs: expected 'memory' or a redis:// URL, got {self.runs!r}")
        lo, hi = LEASE_TTL_RANGE_S
        if not lo <= self.lease_ttl_s <= hi:
            raise ConfigError(f"lease_ttl: must be between {lo:g} and {hi:g} seconds, got {self.lease_ttl_s:g}")

    @property
    def shared(self) -> bool:
        """True when runs are shared between processes (a Redis URL)."""
        return self.runs != "memory"

    def __str__(self) -> str:
        return redact_url(self.runs) if self.shared else "memory"


@asynccontextmanager
async def open_backend(settings: RunsSettings) -> AsyncIterator[RunBackend | None]:
    """The backend ``settings`` names, for the block: None for ``memory`` (nothing is shared).

    Raises :class:`ConfigError` when the Redis client is not installed, and
    :class:`~antiphon.errors.RunBackendError` (one line) when Redis cannot be reached.
    """
    if not settings.shared:
        yield None
        return
    try:
        from antiphon.chat.backends.redis import open_redis_backend
    except ImportError as exc:
        raise ConfigError(
            f"runs: a Redis backend needs coredis ({exc.name} is missing): pip install 'antiphon[redis]'"
        ) from None
    async with open_redis_backend(settings.runs, uuid.uuid4().hex[:12]) as backend:
        yield backend
