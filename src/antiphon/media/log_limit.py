"""Rate-limited warnings: a peer's flood of bad frames must not become a flood of log lines.

Theory of operation
-------------------
Every skipped or dropped media frame is worth knowing about, but one log line per frame
lets a single client write megabytes of log per second (one bad 40 ms audio frame is
25 lines a second; a malformed flood is tens of thousands). A :class:`LogLimiter`
guards one kind of line for one connection: within each ``interval_s`` window the first
``burst`` lines are written as they come; the rest are counted (by reason) and not
written, and the first line after the window - or :meth:`LogLimiter.close` when the
connection ends - writes one summary: ``... 4312 more in the last 10 s (bad_audio:
4300, malformed: 12)``. Suppressed lines are also counted in the connection's stats
(``logs_suppressed``), so nothing is lost, only not repeated.

Time comes in as ``now`` (the transports pass ``trio.current_time()``): no timer task.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Final

__all__ = ["LOG_BURST", "LOG_INTERVAL_S", "LogLimiter"]

LOG_BURST: Final = 5
"""Lines written per window before the rest are only counted: enough to see the pattern."""
LOG_INTERVAL_S: Final = 10.0
"""Window length: at most ``LOG_BURST + 1`` lines per kind per connection every 10 s."""


class LogLimiter:
    """Writes the first ``burst`` lines of each ``interval_s`` window, then one summary (see the module docstring).

    ``on_suppressed(n)`` is called for every line not written (to count it in stats).
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        burst: int = LOG_BURST,
        interval_s: float = LOG_INTERVAL_S,
        on_suppressed: Callable[[int], None] | None = None,
    ) -> None:
        self._logger = logger
        self._what = what
        self._burst = burst
        self._interval_s = interval_s
        self._on_suppressed = on_suppressed
        self._window_end = -float("inf")
        self._written = 0
        self._suppressed: Counter[str] = Counter()
        self._level = logging.WARNING

    def log(self, now: float, level: int, reason: str, msg: str, *args: object) -> bool:
        """Write ``msg % args`` unless this window's burst is spent; True if it was written."""
        if now >= self._window_end:
            self._summarize()
            self._window_end = now + self._interval_s
            self._written = 0
        if self._written < self._burst:
            self._written += 1
            self._logger.log(level, msg, *args)
            return True
        self._suppressed[reason] += 1
        self._level = max(self._level, level)
        if self._on_suppressed is not None:
            self._on_suppressed(1)
        return False

    def close(self) -> None:
        """Write the pending summary, if lines were suppressed since the last one."""
        self._summarize()

    def _summarize(self) -> None:
        if not self._suppressed:
            return
        total = sum(self._suppressed.values())
        reasons = ", ".join(f"{reason}: {n}" for reason, n in self._suppressed.most_common())
        self._logger.log(
            self._level,
            "%s: %d more in the last %g s, not logged one by one (%s)",
            self._what,
            total,
            self._interval_s,
            reasons,
        )
        self._suppressed.clear()
        self._level = logging.WARNING
