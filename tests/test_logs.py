"""The CLI's logging setup: JSON lines, quiet dependencies at DEBUG, secrets redacted."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from antiphon import logs
from antiphon.chat import open_chat
from tests.chat.conftest import SECRET, tcp_gateway


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """A stream :func:`logs.configure` writes to; the root logger and the quiet loggers are restored after."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), {n: logging.getLogger(n).level for n in logs.QUIET_LOGGERS})
    out = io.StringIO()
    yield out
    level, handlers, quiet = saved
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    for name, lvl in quiet.items():
        logging.getLogger(name).setLevel(lvl)


def test_json_format_is_one_object_per_line(stream: io.StringIO) -> None:
    """Each record is one JSON object with time, level, logger, message, extras and the traceback."""
    logs.configure("INFO", "json", stream)
    log = logging.getLogger("antiphon.test")
    log.info("session %s opened", "abc", extra={"remote": "127.0.0.1:5"})
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        log.exception("it failed")
    log.debug("not shown at INFO")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert {k: first[k] for k in ("level", "logger", "message", "remote")} == {
        "level": "INFO",
        "logger": "antiphon.test",
        "message": "session abc opened",
        "remote": "127.0.0.1:5",
    }
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert second["message"] == "it failed" and second["exception"].endswith("ValueError: boom\nsecond line")


def test_debug_keeps_per_frame_loggers_quiet(stream: io.StringIO) -> None:
    """At DEBUG, antiphon's debug records show; websockets' per-frame and per-connection ones do not."""
    logs.configure("DEBUG", "text", stream)
    logging.getLogger("antiphon.chat.gateway").debug("a decision")
    logging.getLogger("websockets.server").debug("< TEXT '{\"secret\": ...}' [20 bytes]")
    logging.getLogger("websockets.server").info("connection open")
    logging.getLogger("websockets.server").warning("something is wrong")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("DEBUG antiphon.chat.gateway: a decision")
    assert lines[1].endswith("WARNING websockets.server: something is wrong")


@pytest.mark.parametrize("auth", ["header", "query", "message"])
async def test_debug_logs_of_a_real_handshake_hold_no_secret(stream: io.StringIO, auth: Any) -> None:
    """A gateway and a client at DEBUG: the secret, sent in a header, the query or the first frame, is never logged.

    The secret is short enough to escape redaction: only the quiet loggers keep it out.
    """
    logs.configure("DEBUG", "text", stream)
    assert len(SECRET) < logs.REDACT_MIN_CHARS
    async with tcp_gateway() as gateway, open_chat(gateway.url, secret=SECRET, auth=auth) as chat:
        await chat.ask("hi")
    text = stream.getvalue()
    assert "DEBUG antiphon." in text
    assert SECRET not in text


def test_redacted_secrets_never_reach_the_stream(stream: io.StringIO) -> None:
    """A secret given to redact() is replaced in messages, arguments and tracebacks; short strings are left alone."""
    logs.configure("INFO", "text", stream)
    secret = "s3cret-s3cret-s3cret"
    logs.redact([secret, "s", ""])
    log = logging.getLogger("antiphon.test")
    log.info("auth frame %s", {"secret": secret})
    try:
        raise RuntimeError(f"bad {secret}")
    except RuntimeError:
        log.exception("failed with %s", secret)
    text = stream.getvalue()
    assert secret not in text
    # The key 'secret' is intact: the one-letter "s" was not redacted.
    assert "auth frame {'secret': '***'}" in text and "failed with ***" in text and "RuntimeError: bad ***" in text


def test_configure_twice_replaces_its_handler(stream: io.StringIO) -> None:
    """A second configure() swaps the handler instead of doubling every line."""
    logs.configure("INFO", "text", io.StringIO())
    logs.configure("INFO", "text", stream)
    logging.getLogger("antiphon.test").info("once")
    assert stream.getvalue().count("once") == 1


def test_unknown_level_is_refused(stream: io.StringIO) -> None:
    """A level name logging does not know is a ValueError naming the valid ones."""
    with pytest.raises(ValueError, match="log level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"):
        logs.configure("verbose", "text", stream)
