"""Transcript stores: where every turn of every run is kept.

A store records, per run (``connector_run_id``), each accepted user message (id,
number, text, context, time) *before* it is acked, and each reply (text, agent, token
usage, status, timing) when its turn ends. :class:`SqliteStore` is the embedded
default; :class:`MemoryStore` serves tests; anything with the :class:`TranscriptStore`
methods can be plugged in.

SQLite details: one file in WAL mode with ``synchronous=NORMAL``, so a committed
message survives the process being killed (it is in the WAL, handed to the OS) but not
a power cut; pass ``durable=True`` for an fsync per commit. ``sqlite3`` blocks, so every
call runs in a worker thread (``trio.to_thread``), and writes are *group-committed*:
while one batch is being written, new writes queue up and go together in the next
transaction, so a thousand sessions acking at once cost a handful of commits.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import trio
from attrs import define, frozen

from antiphon.errors import ConfigError

__all__ = [
    "MemoryStore",
    "MessageRecord",
    "ReplyRecord",
    "RunSummary",
    "SqliteStore",
    "TranscriptStore",
    "TurnRecord",
    "default_store_path",
    "read_run",
    "read_runs",
]

STORE_ENV: Final = "ANTIPHON_STORE"


def default_store_path() -> Path:
    """``$ANTIPHON_STORE``, else ``$XDG_STATE_HOME/antiphon/transcripts.db`` (``~/.local/state/...``)."""
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV])
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "antiphon" / "transcripts.db"


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
    run_id: str
    connector: str
    created_at: float
    updated_at: float
    turns: int


class TranscriptStore(Protocol):
    """What the gateway needs from a store. Methods may raise; the gateway reports ``store_error``."""

    async def save_message(self, record: MessageRecord) -> None: ...

    async def save_reply(self, record: ReplyRecord) -> None: ...

    async def list_runs(self, limit: int = 50) -> list[RunSummary]: ...

    async def get_run(self, run_id: str) -> tuple[RunSummary, list[TurnRecord]] | None: ...

    async def cleanup(self, older_than: float) -> int: ...


@define
class MemoryStore:
    """Keeps transcripts in a dict: for tests and for deployments that want none kept."""

    runs: dict[str, RunSummary] = {}
    turns: dict[str, dict[int, TurnRecord]] = {}

    def __attrs_post_init__(self) -> None:
        self.runs, self.turns = {}, {}

    async def save_message(self, record: MessageRecord) -> None:
        await trio.lowlevel.checkpoint()
        prev = self.runs.get(record.run_id)
        created = prev.created_at if prev else record.received_at
        turns = self.turns.setdefault(record.run_id, {})
        turns[record.message_number] = TurnRecord(
            message_id=record.message_id,
            message_number=record.message_number,
            message=record.text,
            context=record.context,
            received_at=record.received_at,
            agent=None,
            reply=None,
            status="pending",
            prompt_tokens=None,
            candidates_tokens=None,
            finished_at=None,
        )
        self.runs[record.run_id] = RunSummary(
            run_id=record.run_id, connector=record.connector, created_at=created, updated_at=record.received_at, turns=len(turns)
        )

    async def save_reply(self, record: ReplyRecord) -> None:
        await trio.lowlevel.checkpoint()
        turn = self.turns.get(record.run_id, {}).get(record.message_number)
        if turn is None:
            return
        self.turns[record.run_id][record.message_number] = TurnRecord(
            message_id=turn.message_id,
            message_number=turn.message_number,
            message=turn.message,
            context=turn.context,
            received_at=turn.received_at,
            agent=record.agent,
            reply=record.text,
            status=record.status,
            prompt_tokens=record.prompt_tokens,
            candidates_tokens=record.candidates_tokens,
            finished_at=record.finished_at,
        )

    async def list_runs(self, limit: int = 50) -> list[RunSummary]:
        await trio.lowlevel.checkpoint()
        return sorted(self.runs.values(), key=lambda r: r.updated_at, reverse=True)[:limit]

    async def get_run(self, run_id: str) -> tuple[RunSummary, list[TurnRecord]] | None:
        await trio.lowlevel.checkpoint()
        if run_id not in self.runs:
            return None
        return self.runs[run_id], [t for _, t in sorted(self.turns[run_id].items())]

    async def cleanup(self, older_than: float) -> int:
        await trio.lowlevel.checkpoint()
        old = [rid for rid, r in self.runs.items() if r.updated_at < older_than]
        for rid in old:
            del self.runs[rid], self.turns[rid]
        return len(old)


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


def _connect(path: Path, *, durable: bool) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("PRAGMA busy_timeout=5000")
    db.executescript(_SCHEMA)
    return db


class _Pending:
    __slots__ = ("done", "error", "op")

    def __init__(self, op: tuple[str, tuple[Any, ...]]) -> None:
        self.op = op
        self.done = trio.Event()
        self.error: BaseException | None = None


class SqliteStore:
    """The embedded default store; see the module docstring. Close it with :meth:`aclose`."""

    def __init__(self, path: str | Path, *, durable: bool = False) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = _connect(self.path, durable=durable)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"store: cannot open {str(self.path)!r} ({exc})") from None
        self._queue: list[_Pending] = []
        self._writing = False
        self._lock = trio.Lock()

    async def aclose(self) -> None:
        async with self._lock:
            await trio.to_thread.run_sync(self._db.close)

    async def save_message(self, record: MessageRecord) -> None:
        await self._write(
            "message",
            (
                record.run_id,
                record.connector,
                record.received_at,
                record.message_number,
                record.message_id,
                record.text,
                json.dumps(record.context),
            ),
        )

    async def save_reply(self, record: ReplyRecord) -> None:
        await self._write(
            "reply",
            (
                record.agent,
                record.text,
                record.status,
                record.prompt_tokens,
                record.candidates_tokens,
                record.started_at,
                record.finished_at,
                record.run_id,
                record.message_number,
            ),
        )

    async def list_runs(self, limit: int = 50) -> list[RunSummary]:
        async with self._lock:
            return await trio.to_thread.run_sync(_list_runs, self._db, limit)

    async def get_run(self, run_id: str) -> tuple[RunSummary, list[TurnRecord]] | None:
        async with self._lock:
            return await trio.to_thread.run_sync(_get_run, self._db, run_id)

    async def cleanup(self, older_than: float) -> int:
        async with self._lock:
            return await trio.to_thread.run_sync(_cleanup, self._db, older_than)

    async def _write(self, kind: str, args: tuple[Any, ...]) -> None:
        entry = _Pending((kind, args))
        self._queue.append(entry)
        if not self._writing:
            # This task leads: it writes batches until the queue is empty. Shielded, so
            # the waiting followers are never stranded by the leader's cancellation.
            self._writing = True
            try:
                with trio.CancelScope(shield=True):
                    async with self._lock:
                        while self._queue:
                            batch, self._queue = self._queue, []
                            error = await trio.to_thread.run_sync(_write_batch, self._db, [e.op for e in batch])
                            for e in batch:
                                e.error = error
                                e.done.set()
            finally:
                self._writing = False
        await entry.done.wait()
        if entry.error is not None:
            raise entry.error


def _write_batch(db: sqlite3.Connection, ops: Sequence[tuple[str, tuple[Any, ...]]]) -> BaseException | None:
    try:
        db.execute("BEGIN")
        for kind, args in ops:
            if kind == "message":
                run_id, connector, at, number, mid, text, context = args
                db.execute(
                    "INSERT INTO runs VALUES (?, ?, ?, ?) ON CONFLICT(run_id) DO UPDATE SET updated_at = excluded.updated_at",
                    (run_id, connector, at, at),
                )
                db.execute(
                    "INSERT OR REPLACE INTO turns (run_id, message_number, message_id, message, context, received_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (run_id, number, mid, text, context, at),
                )
            else:
                db.execute(
                    "UPDATE turns SET agent = ?, reply = ?, status = ?, prompt_tokens = ?, candidates_tokens = ?,"
                    " started_at = ?, finished_at = ? WHERE run_id = ? AND message_number = ?",
                    args,
                )
                db.execute("UPDATE runs SET updated_at = ? WHERE run_id = ?", (args[6], args[7]))
        db.execute("COMMIT")
        return None
    except sqlite3.Error as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        return exc


def _list_runs(db: sqlite3.Connection, limit: int) -> list[RunSummary]:
    rows = db.execute(
        "SELECT r.run_id, r.connector, r.created_at, r.updated_at, COUNT(t.message_number)"
        " FROM runs r LEFT JOIN turns t ON t.run_id = r.run_id"
        " GROUP BY r.run_id ORDER BY r.updated_at DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [RunSummary(run_id=r[0], connector=r[1], created_at=r[2], updated_at=r[3], turns=r[4]) for r in rows]


def _get_run(db: sqlite3.Connection, run_id: str) -> tuple[RunSummary, list[TurnRecord]] | None:
    row = db.execute("SELECT run_id, connector, created_at, updated_at FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        return None
    turns = [
        TurnRecord(
            message_id=t[0],
            message_number=t[1],
            message=t[2],
            context=json.loads(t[3]),
            received_at=t[4],
            agent=t[5],
            reply=t[6],
            status=t[7],
            prompt_tokens=t[8],
            candidates_tokens=t[9],
            finished_at=t[10],
        )
        for t in db.execute(
            "SELECT message_id, message_number, message, context, received_at, agent, reply, status,"
            " prompt_tokens, candidates_tokens, finished_at FROM turns WHERE run_id = ? ORDER BY message_number",
            (run_id,),
        )
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
    return _connect(Path(path), durable=False)


def now() -> float:
    """Wall-clock time for records (the store keeps Unix times)."""
    return time.time()
