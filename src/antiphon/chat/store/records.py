"""What every transcript store keeps, and the interface the gateway calls.

Times are Unix seconds (floats) in every store. A context is stored as JSON text encoded
by orjson, which refuses (rather than recursing into) values nested deeper than
:data:`CONTEXT_STORE_MAX_DEPTH`; the gateway never gets that far, since it refuses
contexts nested deeper than :data:`~antiphon.proto.chat.messages.CONTEXT_MAX_DEPTH` when
it decodes them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from attrs import field, frozen

from antiphon.errors import StoreError
from antiphon.proto.chat.messages import Response, StreamEnd

__all__ = [
    "CONTEXT_STORE_MAX_DEPTH",
    "POSTGRES_SCHEMES",
    "STORE_ENV",
    "MessageRecord",
    "PostgresUrl",
    "ReplyRecord",
    "RunSummary",
    "StoreLocation",
    "TranscriptStore",
    "TurnRecord",
    "decode_context",
    "default_store_path",
    "encode_context",
    "now",
    "redact_url",
]

STORE_ENV: Final = "ANTIPHON_STORE"
CONTEXT_STORE_MAX_DEPTH: Final = 254
"""orjson's own limit on nesting when it encodes: deeper contexts raise StoreError, never RecursionError."""
POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")


def default_store_path() -> Path:
    """``$ANTIPHON_STORE``, else ``$XDG_STATE_HOME/antiphon/transcripts.db`` (``~/.local/state/...``)."""
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV])
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "antiphon" / "transcripts.db"


def now() -> float:
    """Wall-clock time for records (the store keeps Unix times)."""
    return time.time()


@frozen
class PostgresUrl:
    """A ``postgresql://user@host/db`` store location; ``str()`` shows it with any password masked.

    Anything libpq reads also applies: ``PGPASSWORD``, ``~/.pgpass``, ``PGSSLMODE`` and the
    rest, so the password need not be in the URL (and is better kept out of it).
    """

    url: str = field(repr=False)

    def __str__(self) -> str:
        return redact_url(self.url)

    def __repr__(self) -> str:
        return f"PostgresUrl({str(self)!r})"


StoreLocation: TypeAlias = Path | PostgresUrl | Literal["memory"]
"""Where transcripts go: a SQLite file, a PostgreSQL database, or this process's memory."""


def redact_url(url: str) -> str:
    """``url`` with the password (in the authority or a ``password=`` parameter) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, hostinfo = netloc.rpartition("@")
            netloc = f"{userinfo.partition(':')[0]}:***@{hostinfo}"
        params = parse_qsl(parts.query, keep_blank_values=True)
        query = urlencode([(k, "***" if k == "password" else v) for k, v in params])
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return f"{url.partition('://')[0]}://(unparsable URL)"


# --------------------------------------------------------------------------- records


@frozen(kw_only=True)
class MessageRecord:
    """An accepted user message."""

    run_id: str
    connector: str
    message_id: str
    message_number: int
    text: str
    context: dict[str, Any]
    received_at: float


@frozen(kw_only=True)
class ReplyRecord:
    """How a turn ended."""

    run_id: str
    message_number: int
    agent: str
    text: str
    status: str
    prompt_tokens: int
    candidates_tokens: int
    started_at: float
    finished_at: float

    @classmethod
    def of_final_event(
        cls, event: StreamEnd | Response, *, run_id: str, message_number: int, started_at: float, finished_at: float
    ) -> ReplyRecord:
        """The record of a turn whose final event is ``event`` (a ``stream_end`` or a ``response``)."""
        return cls(
            run_id=run_id,
            message_number=message_number,
            agent=event.agent,
            text=event.full_response if isinstance(event, StreamEnd) else event.response,
            status=str(event.status),
            prompt_tokens=event.token_usage.prompt_tokens,
            candidates_tokens=event.token_usage.candidates_tokens,
            started_at=started_at,
            finished_at=finished_at,
        )


@frozen(kw_only=True)
class TurnRecord:
    """One stored turn: the message, and the reply once there is one (``status`` ``pending`` before)."""

    message_id: str
    message_number: int
    message: str
    context: dict[str, Any]
    received_at: float
    agent: str | None
    reply: str | None
    status: str
    prompt_tokens: int | None
    candidates_tokens: int | None
    finished_at: float | None


@frozen(kw_only=True)
class RunSummary:
    """One run in a listing: ``turns`` counts its stored messages."""

    run_id: str
    connector: str
    created_at: float
    updated_at: float
    turns: int


class TranscriptStore(Protocol):
    """What the gateway needs from a store.

    Methods raise :class:`~antiphon.errors.StoreError` (a library user's own store may
    raise anything; the gateway reports ``store_error`` either way). ``save_message`` and
    ``save_reply`` return once the record is committed: the gateway acks a message, and
    sends a turn's final event, only after that.
    """

    async def save_message(self, record: MessageRecord) -> None: ...

    async def save_reply(self, record: ReplyRecord) -> None: ...

    async def list_runs(self, limit: int = 50) -> list[RunSummary]: ...

    async def get_run(self, run_id: str) -> tuple[RunSummary, list[TurnRecord]] | None: ...

    async def cleanup(self, older_than: float) -> int: ...


# --------------------------------------------------------------------------- contexts


def encode_context(context: dict[str, Any]) -> str:
    """A context as compact JSON text; raise :class:`StoreError` if it cannot be (too deep, not JSON).

    Integers must fit in 64 bits; NaN and infinities, which JSON cannot carry, become null
    (neither can come from the wire: the gateway's decoder refuses them).
    """
    try:
        return orjson.dumps(context).decode()
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise StoreError(f"store: the context cannot be stored ({exc})") from None


def decode_context(text: str) -> dict[str, Any]:
    """A stored context back as a dict (contexts written by older versions included)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:  # NaN or Infinity, which the stdlib json of earlier versions wrote
            value = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise StoreError(f"store: a stored context does not decode ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise StoreError("store: a stored context is not a JSON object")
    return value
