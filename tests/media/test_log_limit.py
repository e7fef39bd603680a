"""The warning rate limiter: the first lines of each window, then one summary; driven by explicit times."""

from __future__ import annotations

import logging

import pytest

from antiphon.media.log_limit import LogLimiter

log = logging.getLogger("tests.media.limiter")


def test_burst_then_one_summary_per_window(caplog: pytest.LogCaptureFixture) -> None:
    """5 lines per 10 s window; the next window's first line is preceded by a summary counting each reason."""
    counted: list[int] = []
    limiter = LogLimiter(log, "conn x: skipped", on_suppressed=counted.append)
    with caplog.at_level(logging.WARNING, logger="tests.media.limiter"):
        written = [limiter.log(0.001 * i, logging.WARNING, "bad_audio" if i % 2 else "malformed", "line %d", i) for i in range(20)]
        assert written == [True] * 5 + [False] * 15 and len(counted) == 15
        assert limiter.log(10.0, logging.WARNING, "malformed", "line %d", 20)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:5] == [f"line {i}" for i in range(5)]
    assert messages[5] == "conn x: skipped: 15 more in the last 10 s, not logged one by one (bad_audio: 8, malformed: 7)"
    assert messages[6] == "line 20" and len(messages) == 7


def test_close_writes_the_pending_summary_at_the_highest_level(caplog: pytest.LogCaptureFixture) -> None:
    """At close, suppressed lines are summarized once, at the most severe level among them; nothing if none."""
    limiter = LogLimiter(log, "conn y", burst=1)
    with caplog.at_level(logging.DEBUG, logger="tests.media.limiter"):
        limiter.log(0.0, logging.WARNING, "a", "first")
        limiter.log(0.1, logging.ERROR, "b", "second")
        limiter.log(0.2, logging.WARNING, "a", "third")
        limiter.close()
        limiter.close()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "first"),
        (logging.ERROR, "conn y: 2 more in the last 10 s, not logged one by one (b: 1, a: 1)"),
    ]
