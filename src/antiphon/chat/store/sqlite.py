"""The embedded default store: one SQLite file.

One file in WAL mode with ``synchronous=NORMAL``, so a committed record survives the
process being killed (it is in the WAL, handed to the OS) but not a power cut; pass
``durable=True`` for an fsync per commit. ``sqlite3`` blocks, so every call runs in a
worker thread, one at a time on the store's one connection, and writes are
group-committed (:mod:`antiphon.chat.store.batching`).

The file holds every conversation: a new one is created readable by its owner only
(0600), in directories created 0700 (SQLite gives its ``-wal`` and ``-shm`` files the
database file's mode). An existing file or directory keeps its mode.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import trio

from antiphon.chat.store.batching import GroupCommit
from antiphon.chat.store.records import (
    MessageRecord,
    ReplyRecord,
    RunSummary,
    TurnRecord,
    decode_context,
    encode_context,
)
from antiphon.errors import ConfigError, StoreError

__all__ = [
    "BUSY_TIMEOUT_MS",
    "DIR_MODE",
    "FILE_MODE",
    "SqliteStore",
    "read_run",
    "read_runs",
]

T = TypeVar("T")

FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700
BUSY_TIMEOUT_MS: Final = 5000
"""How long a write waits for another process holding the file's write lock (e.g. the CLI)."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    connector TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS turns (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    message_number INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    message TEXT NOT NULL,
    context TEXT NOT NULL,
    received_at REAL NOT NULL,
    agent TEXT,
    reply TEXT,
    status TEXT NOT NULL DEFAULT 'pending',
    prompt_tokens INTEGER,
    candidates_tokens INTEGER,
    started_at REAL,
    finished_at REAL,
    PRIMARY KEY (run_id, message_number)
);
CREATE INDEX IF NOT EXISTS runs_by_update ON runs(updated_at);
"""

_SAVE_RUN: Final = (
    "INSERT INTO runs VALUES (?, ?, ?, ?)"
    " ON CONFLICT(run_id) DO UPDATE SET updated_at = max(updated_at, excluded.updated_at)"
)
_SAVE_MESSAGE: Final = (
    "INSERT OR REPLACE INTO turns (run_id, message_number, message_id, message, context, received_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_SAVE_REPLY: Final = (
    "UPDATE turns SET agent = ?, reply = ?, status = ?, prompt_tokens = ?, candidates_tokens = ?,"
    " started_at = ?, finished_at = ? WHERE run_id = ? AND message_number = ?"
)
_TOUCH_RUN: Final = "UPDATE runs SET updated_at = max(updated_at, ?) WHERE run_id = ?"
_LIST_RUNS: Final = (
    "SELECT r.run_id, r.connector, r.created_at, r.updated_at, COUNT(t.message_number)"
    " FROM runs r LEFT JOIN turns t ON t.run_id = r.run_id"
    " GROUP BY r.run_id ORDER BY r.updated_at DESC, r.run_id LIMIT ?"
)
_GET_RUN: Final = "SELECT run_id, connector, created_at, updated_at FROM runs WHERE run_id = ?"
_GET_TURNS: Final = (
    "SELECT message_id, message_number, message, context, received_at, agent, reply, status,"
    " prompt_tokens, candidates_tokens, finished_at FROM turns WHERE run_id = ? ORDER BY message_number"
)

_Write = tuple[MessageRecord, str] | ReplyRecord
"""A message with its context already encoded (so a bad one fails before it is queued), or a reply."""


def _create_private(path: Path) -> None:
    """Create ``path`` (and missing parent directories) readable by its owner only, unless it exists."""
    missing = [p for p in reversed(path.parents) if not p.exists()]
    for directory in missing:
        directory.mkdir(mode=DIR_MODE, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
    except FileExistsError:
        pass


def _connect(path: Path, *, durable: bool) -> sqlite3.Connection:
    _create_private(path)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    db.executescript(_SCHEMA)
    return db


class SqliteStore:
    """The embedded default store; see the module docstring. Close it with :meth:`aclose`.

    Opening raises :class:`ConfigError` when the file cannot be opened or created; the
    other methods raise :class:`StoreError`.
    """

    def __init__(self, path: str | Path, *, durable: bool = False) -> None:
        self.path = Path(path)
        try:
            self._db = _connect(self.path, durable=durable)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"store: cannot open {str(self.path)!r} ({exc})") from None
        self._limiter = trio.CapacityLimiter(1)  # one connection: one thread uses it at a time
        self._commits: GroupCommit[_Write] = GroupCommit(self._write_batch, self._limiter, repr(str(self.path)))

    @property
    def transactions(self) -> int:
        """Write transactions committed so far (group commit makes this far fewer than writes)."""
        return self._commits.transactions

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._db.close, limiter=self._limiter)

    async def save_message(self, record: MessageRecord) -> None:
        await self._commits.write((record, encode_context(record.context)))

    async def save_reply(self, record: ReplyRecord) -> None:
        await self._commits.write(record)

    async def list_runs(self, limit: int = 50) -> list[RunSummary]:
        return await self._read(_list_runs, self._db, limit)

    async def get_run(self, run_id: str) -> tuple[RunSummary, list[TurnRecord]] | None:
        return await self._read(_get_run, self._db, run_id)

    async def cleanup(self, older_than: float) -> int:
        return await self._read(_cleanup, self._db, older_than)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        except sqlite3.Error as exc:
            raise StoreError(f"store {str(self.path)!r}: {exc}") from None

    def _write_batch(self, writes: Sequence[_Write]) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            for w in writes:
                if isinstance(w, ReplyRecord):
                    db.execute(
                        _SAVE_REPLY,
                        (w.agent, w.text, w.status, w.prompt_tokens, w.candidates_tokens, w.started_at,
                         w.finished_at, w.run_id, w.message_number),
                    )  # fmt: skip
                    db.execute(_TOUCH_RUN, (w.finished_at, w.run_id))
                else:
                    m, context = w
                    db.execute(_SAVE_RUN, (m.run_id, m.connector, m.received_at, m.received_at))
                    message = (m.run_id, m.message_number, m.message_id, m.text, context, m.received_at)
                    db.execute(_SAVE_MESSAGE, message)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


def _list_runs(db: sqlite3.Connection, limit: int) -> list[RunSummary]:
    rows = db.execute(_LIST_RUNS, (limit,)).fetchall()
    return [RunSummary(run_id=r[0], connector=r[1], created_at=r[2], updated_at=r[3], turns=r[4]) for r in rows]


def _get_run(db: sqlite3.Connection, run_id: str) -> tuple[RunSummary, list[TurnRecord]] | None:
    row = db.execute(_GET_RUN, (run_id,)).fetchone()
    if row is None:
        return None
    turns = [
        TurnRecord(
            message_id=t[0],
            message_number=t[1],
            message=t[2],
            context=decode_context(t[3]),
            received_at=t[4],
            agent=t[5],
            reply=t[6],
            status=t[7],
            prompt_tokens=t[8],
            candidates_tokens=t[9],
            finished_at=t[10],
        )
        for t in db.execute(_GET_TURNS, (run_id,))
    ]
    return RunSummary(run_id=row[0], connector=row[1], created_at=row[2], updated_at=row[3], turns=len(turns)), turns


def _cleanup(db: sqlite3.Connection, older_than: float) -> int:
    with db:
        cur = db.execute("DELETE FROM runs WHERE updated_at < ?", (older_than,))
    return cur.rowcount


def read_runs(path: str | Path, limit: int = 50) -> list[RunSummary]:
    """List runs from a store file, newest first, without Trio (for the CLI)."""
    db = _open_read(path)
    try:
        return _list_runs(db, limit)
    finally:
        db.close()


def read_run(path: str | Path, run_id: str) -> tuple[RunSummary, list[TurnRecord]] | None:
    """One run's transcript from a store file, without Trio (for the CLI)."""
    db = _open_read(path)
    try:
        return _get_run(db, run_id)
    finally:
        db.close()


def _open_read(path: str | Path) -> sqlite3.Connection:
    if not Path(path).exists():
        raise ConfigError(f"store: no transcript store at {str(path)!r}")
    try:
        return _connect(Path(path), durable=False)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"store: cannot open {str(path)!r} ({exc})") from None
