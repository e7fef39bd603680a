"""Run backends: where chat runs are shared, so that a conversation outlives the process serving it.

``runs = "memory"`` (the default) shares nothing: each run lives in the process that
made it, as it always did, and costs nothing more. ``runs = "redis://host:6379/0"``
keeps every run's events, snapshot, lease and the processes' inboxes in Redis
(:mod:`.redis`, needs the ``redis`` extra: coredis), so a client may resume on any
process sharing it, and a run whose process died is taken over by another.

* :mod:`.base` - the interface a backend implements, and what it keeps;
* :mod:`.node` - the Trio half: one node per gateway does all the backend I/O;
* :mod:`.memory` - the interface in one process's memory (tests, several gateways in one process);
* :mod:`.redis` - the interface on Redis Streams;
* :mod:`.settings` - the ``runs`` / ``lease_ttl`` settings and :func:`open_backend`.
"""

from __future__ import annotations

from antiphon.chat.backends.base import MESSAGE_ID_WINDOW_S, RunBackend
from antiphon.chat.backends.memory import MemoryBackend, MemoryRuns
from antiphon.chat.backends.node import LEASE_TTL_S, Node
from antiphon.chat.backends.settings import LEASE_TTL_RANGE_S, REDIS_SCHEMES, RunsSettings, open_backend

__all__ = [
    "LEASE_TTL_RANGE_S",
    "LEASE_TTL_S",
    "MESSAGE_ID_WINDOW_S",
    "REDIS_SCHEMES",
    "MemoryBackend",
    "MemoryRuns",
    "Node",
    "RunBackend",
    "RunsSettings",
    "open_backend",
]
