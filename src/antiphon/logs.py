"""Logging for the ``antiphon`` command: text or one JSON object per line, quiet dependencies, no secrets.

The library only logs (to loggers under ``antiphon``); this module is what the CLI calls
to send those records somewhere. :func:`configure` installs one handler on the root
logger; :func:`redact` makes it replace given strings (the secrets the process knows)
with ``***`` in every record it writes, traceback included.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from typing import Any, Final, Literal, TextIO

import orjson

__all__ = [
    "LEVELS",
    "QUIET_LOGGERS",
    "REDACT_MIN_CHARS",
    "TEXT_FORMAT",
    "JsonFormatter",
    "LogFormat",
    "configure",
    "redact",
]

LogFormat = Literal["text", "json"]

LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

QUIET_LOGGERS: Final = ("websockets", "antiphon.wire", "asyncio", "coredis")
"""Loggers kept at WARNING whatever the level: websockets logs every handshake line at DEBUG
(headers and query string, where a chat secret may travel), every frame (the first of which
may carry it), and "connection open" at INFO for each connection; asyncio logs its selector;
coredis logs each of its own retries (a script reloaded after a Redis restart) at INFO.
None of it helps an operator, and antiphon logs its own connection and backend lines."""

REDACT_MIN_CHARS: Final = 8
"""Shorter secrets are not redacted: replacing every "s" would garble the logs, and a secret that
short is no secret (generated ones have 32 characters)."""

_HANDLER_NAME: Final = "antiphon-cli"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``.

    ``exception`` holds the formatted traceback when there is one; extra attributes passed
    with ``extra={...}`` are included when JSON can carry them.
    """

    _STANDARD: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return orjson.dumps(out, default=str).decode()


def _iso_utc(created: float) -> str:
    millis = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


class _Redactor(logging.Filter):
    """Replaces each secret with ``***`` in the record's message and traceback."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        clean = _scrub(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info:
            # Format once here so the handler's formatter uses the scrubbed text.
            record.exc_text = _scrub(logging.Formatter().formatException(record.exc_info), self.secrets)
            record.exc_info = None
        return True


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def configure(level: str = "INFO", fmt: LogFormat = "text", stream: TextIO | None = None) -> logging.Handler:
    """Send every log record at ``level`` or above to ``stream`` (standard error) in ``fmt``.

    Replaces the handler an earlier call installed, so calling it twice is safe. The
    :data:`QUIET_LOGGERS` stay at WARNING: debugging antiphon shows antiphon's decisions, not
    every frame. Returns the handler.
    """
    if level.upper() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(_Redactor())
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    return handler


def redact(secrets: Iterable[str]) -> None:
    """Never write these strings through the handler :func:`configure` installed (see :data:`REDACT_MIN_CHARS`)."""
    for handler in logging.getLogger().handlers:
        if handler.get_name() == _HANDLER_NAME:
            for f in handler.filters:
                if isinstance(f, _Redactor):
                    f.secrets.update(s for s in secrets if len(s) >= REDACT_MIN_CHARS)
