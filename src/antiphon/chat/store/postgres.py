"""A PostgreSQL store, for several processes or machines sharing one set of transcripts.

psycopg 3's async API runs on asyncio only, so this store runs the sync driver in
worker threads: at most ``pool_size`` at once, each with a connection from a
``psycopg_pool.ConnectionPool`` (checked before use, so a restarted server costs no
failed call). Writes are group-committed as in the SQLite store, one transaction at a
time, each statement once per transaction with ``executemany``; reads run beside them.

Same records and semantics as the SQLite store, in tables prefixed ``antiphon_`` (so a
shared database is fine). The schema is created on first start and migrated forward
under an advisory lock, so several servers can start at once; ``antiphon_schema`` holds
its version. Times are Unix seconds (``double precision``), contexts ``json`` (kept as
sent). PostgreSQL text cannot hold U+0000: this store writes it as U+FFFD.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import psycopg
import psycopg.conninfo
import trio
from psycopg_pool import ConnectionPool

from antiphon.chat.store.batching import GroupCommit
from antiphon.chat.store.records import (
    MessageRecord,
    PostgresUrl,
    ReplyRecord,
    RunSummary,
    TurnRecord,
    decode_context,
    encode_context,
)
from antiphon.errors import ConfigError, StoreError

__all__ = [
    "CLEANUP_CHUNK_RUNS",
    "CONNECT_TIMEOUT_S",
    "POOL_SIZE",
    "POOL_TIMEOUT_S",
    "SCHEMA_VERSION",
    "TCP_USER_TIMEOUT_MS",
    "PostgresStore",
    "read_run",
    "read_runs",
]

T = TypeVar("T")

POOL_SIZE: Final = 4
"""Connections (and worker threads): one for the writer, the rest for reads and the retention sweep."""
CONNECT_TIMEOUT_S: Final = 10
"""A server that does not answer a connection attempt within this is reported unreachable."""
POOL_TIMEOUT_S: Final = 10.0
"""How long a call waits for a connection from the pool before it fails with StoreError."""
TCP_USER_TIMEOUT_MS: Final = 30_000
"""A server gone silent mid-call fails the call after 30 s (not after TCP's ~15 min of retries)."""
CLEANUP_CHUNK_RUNS: Final = 1000
"""The retention sweep deletes this many runs per transaction, so it never holds long locks."""
_LOCK_KEY: Final = 0x616E7469  # "anti": the advisory lock that serialises migrations

_CONNECTION_DEFAULTS: Final[Mapping[str, str | int]] = {
    "connect_timeout": CONNECT_TIMEOUT_S,
    "application_name": "antiphon",
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
}
"""libpq settings unless the URL (or a PG* variable) sets them: bounded waits on a dead network."""

_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE antiphon_runs (
            run_id text PRIMARY KEY,
            connector text NOT NULL,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL
        )""",
        """CREATE TABLE antiphon_turns (
            run_id text NOT NULL REFERENCES antiphon_runs (run_id) ON DELETE CASCADE,
            message_number integer NOT NULL,
            message_id text NOT NULL,
            message text NOT NULL,
            context json NOT NULL,
            received_at double precision NOT NULL,
            agent text,
            reply text,
            status text NOT NULL DEFAULT 'pending',
            prompt_tokens bigint,
            candidates_tokens bigint,
            started_at double precision,
            finished_at double precision,
            PRIMARY KEY (run_id, message_number)
        )""",
        "CREATE INDEX antiphon_runs_by_update ON antiphon_runs (updated_at)",
    ),
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)

_SAVE_RUN: Final = (
    "INSERT INTO antiphon_runs (run_id, connector, created_at, updated_at) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (run_id) DO UPDATE SET updated_at = GREATEST(antiphon_runs.updated_at, excluded.updated_at)"
)
# A message saved again under its number replaces the turn, reply and all (SQLite's INSERT OR REPLACE).
_SAVE_MESSAGE: Final = (
    "INSERT INTO antiphon_turns (run_id, message_number, message_id, message, context, received_at)"
    " VALUES (%s, %s, %s, %s, %s::json, %s) ON CONFLICT (run_id, message_number) DO UPDATE SET"
    " message_id = excluded.message_id, message = excluded.message, context = excluded.context,"
    " received_at = excluded.received_at, agent = NULL, reply = NULL, status = 'pending',"
    " prompt_tokens = NULL, candidates_tokens = NULL, started_at = NULL, finished_at = NULL"
)
_SAVE_REPLY: Final = (
    "UPDATE antiphon_turns SET agent = %s, reply = %s, status = %s, prompt_tokens = %s, candidates_tokens = %s,"
    " started_at = %s, finished_at = %s WHERE run_id = %s AND message_number = %s"
)
_TOUCH_RUN: Final = "UPDATE antiphon_runs SET updated_at = GREATEST(updated_at, %s) WHERE run_id = %s"
_WRITE_ORDER: Final = (_SAVE_RUN, _SAVE_MESSAGE, _SAVE_REPLY, _TOUCH_RUN)
_LIST_RUNS: Final = (
    "SELECT r.run_id, r.connector, r.created_at, r.updated_at, COUNT(t.message_number)"
    " FROM antiphon_runs r LEFT JOIN antiphon_turns t ON t.run_id = r.run_id"
    " GROUP BY r.run_id ORDER BY r.updated_at DESC, r.run_id LIMIT %s"
)
_GET_RUN: Final = "SELECT run_id, connector, created_at, updated_at FROM antiphon_runs WHERE run_id = %s"
_GET_TURNS: Final = (
    "SELECT message_id, message_number, message, context::text, received_at, agent, reply, status,"
    " prompt_tokens, candidates_tokens, finished_at FROM antiphon_turns WHERE run_id = %s ORDER BY message_number"
)
_CLEANUP: Final = (
    "DELETE FROM antiphon_runs WHERE run_id IN"
    " (SELECT run_id FROM antiphon_runs WHERE updated_at < %s LIMIT %s)"
)

_Write = tuple[tuple[str, tuple[Any, ...]], ...]
"""One record's statements with their parameters, checked and encoded before the write is queued."""


class PostgresStore:
    """Transcripts in PostgreSQL; open with :meth:`connect`, close with :meth:`aclose`.

    Every method raises :class:`StoreError` when the database cannot be reached or
    refuses a statement.
    """

    def __init__(self, pool: ConnectionPool, location: PostgresUrl, *, pool_size: int) -> None:
        """Use :meth:`connect`: this takes an open pool whose database is migrated."""
        self.location = location
        self._pool = pool
        self._limiter = trio.CapacityLimiter(pool_size)
        self._commits: GroupCommit[_Write] = GroupCommit(self._write_batch, self._limiter, str(location))

    @classmethod
    async def connect(cls, location: PostgresUrl, *, pool_size: int = POOL_SIZE) -> PostgresStore:
        """Connect, create or migrate the schema, and open the pool; raise :class:`StoreError` when unreachable."""
        pool = await trio.to_thread.run_sync(_open_pool, location, pool_size)
        return cls(pool, location, pool_size=pool_size)

    @property
    def transactions(self) -> int:
        """Write transactions committed so far (group commit makes this far fewer than writes)."""
        return self._commits.transactions

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._pool.close)

    async def save_message(self, record: MessageRecord) -> None:
        r = record
        context = _text(encode_context(r.context))
        run_id = _text(r.run_id)
        await self._commits.write((
            (_SAVE_RUN, (run_id, _text(r.connector), r.received_at, r.received_at)),
            (_SAVE_MESSAGE, (run_id, r.message_number, _text(r.message_id), _text(r.text), context, r.received_at)),
        ))  # fmt: skip

    async def save_reply(self, record: ReplyRecord) -> None:
        r = record
        run_id = _text(r.run_id)
        reply = (_text(r.agent), _text(r.text), _text(r.status), r.prompt_tokens, r.candidates_tokens,
                 r.started_at, r.finished_at, run_id, r.message_number)  # fmt: skip
        await self._commits.write(((_SAVE_REPLY, reply), (_TOUCH_RUN, (r.finished_at, run_id))))

    async def list_runs(self, limit: int = 50) -> list[RunSummary]:
        return await self._call(_list_runs, limit)

    async def get_run(self, run_id: str) -> tuple[RunSummary, list[TurnRecord]] | None:
        return await self._call(_get_run, _text(run_id))

    async def cleanup(self, older_than: float) -> int:
        return await self._call(_cleanup, older_than)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        def run() -> T:
            with self._pool.connection(timeout=POOL_TIMEOUT_S) as conn:
                return fn(conn, *args)

        try:
            return await trio.to_thread.run_sync(run, limiter=self._limiter)
        except (psycopg.Error, StoreError) as exc:
            raise _store_error(self.location, exc) from None

    def _write_batch(self, writes: Sequence[_Write]) -> None:
        # The pool's context manager commits on a clean exit and rolls back on an exception.
        # One executemany per statement (prepared once, pipelined), in _WRITE_ORDER: a turn is
        # inserted before any reply updates it; updated_at takes the latest time in any order.
        rows: dict[str, list[tuple[Any, ...]]] = {sql: [] for sql in _WRITE_ORDER}
        for statements in writes:
            for sql, params in statements:
                rows[sql].append(params)
        with self._pool.connection(timeout=POOL_TIMEOUT_S) as conn, conn.cursor() as cur:
            for sql in _WRITE_ORDER:
                if rows[sql]:
                    cur.executemany(sql, rows[sql])


# --------------------------------------------------------------------------- plumbing


def _text(value: str) -> str:
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _store_error(location: PostgresUrl, exc: BaseException) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    # libpq's messages run over several lines ("...failed: Connection refused\n\tIs the server running..."):
    # the first says what happened.
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StoreError(f"store {location}: {first.removeprefix('connection failed: ')}")


def _conninfo(location: PostgresUrl) -> str:
    try:
        given = psycopg.conninfo.conninfo_to_dict(location.url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"store: {location} is not a valid PostgreSQL URL ({exc})") from None
    return psycopg.conninfo.make_conninfo("", **{**_CONNECTION_DEFAULTS, **given})


def _open_pool(location: PostgresUrl, pool_size: int) -> ConnectionPool:
    conninfo = _conninfo(location)
    try:
        with psycopg.connect(conninfo) as conn:
            _migrate(conn, location)
    except psycopg.Error as exc:
        raise _store_error(location, exc) from None
    pool: ConnectionPool = ConnectionPool(
        conninfo,
        min_size=1,
        max_size=pool_size,
        open=False,
        timeout=POOL_TIMEOUT_S,
        check=ConnectionPool.check_connection,
        name="antiphon-store",
    )
    try:
        pool.open(wait=True, timeout=POOL_TIMEOUT_S)
    except Exception as exc:
        pool.close()
        raise _store_error(location, exc) from None
    return pool


def _migrate(conn: psycopg.Connection[Any], location: PostgresUrl) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute("CREATE TABLE IF NOT EXISTS antiphon_schema (version integer NOT NULL)")
        row = conn.execute("SELECT version FROM antiphon_schema").fetchone()
        version = 0 if row is None else int(row[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {location}: the schema is at version {version}, newer than this antiphon's"
                f" {SCHEMA_VERSION}: upgrade antiphon"
            )
        for statements in _MIGRATIONS[version:]:
            for sql in statements:
                conn.execute(sql.encode())
        if row is None:
            conn.execute("INSERT INTO antiphon_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
        elif version < SCHEMA_VERSION:
            conn.execute("UPDATE antiphon_schema SET version = %s", (SCHEMA_VERSION,))


def _list_runs(conn: psycopg.Connection[Any], limit: int) -> list[RunSummary]:
    rows = conn.execute(_LIST_RUNS, (limit,)).fetchall()
    return [RunSummary(run_id=r[0], connector=r[1], created_at=r[2], updated_at=r[3], turns=r[4]) for r in rows]


def _get_run(conn: psycopg.Connection[Any], run_id: str) -> tuple[RunSummary, list[TurnRecord]] | None:
    row = conn.execute(_GET_RUN, (run_id,)).fetchone()
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
        for t in conn.execute(_GET_TURNS, (run_id,)).fetchall()
    ]
    return RunSummary(run_id=row[0], connector=row[1], created_at=row[2], updated_at=row[3], turns=len(turns)), turns


def _cleanup(conn: psycopg.Connection[Any], older_than: float) -> int:
    removed = 0
    while True:
        with conn.transaction():
            count = conn.execute(_CLEANUP, (older_than, CLEANUP_CHUNK_RUNS)).rowcount
        removed += count
        if count < CLEANUP_CHUNK_RUNS:
            return removed


# --------------------------------------------------------------------------- the CLI's readers


def read_runs(location: PostgresUrl, limit: int = 50) -> list[RunSummary]:
    """List runs, newest first, without Trio (for the CLI); never creates the schema."""
    return _read(location, _list_runs, limit)


def read_run(location: PostgresUrl, run_id: str) -> tuple[RunSummary, list[TurnRecord]] | None:
    """One run's transcript without Trio (for the CLI); never creates the schema."""
    return _read(location, _get_run, _text(run_id))


def _read(location: PostgresUrl, fn: Callable[..., T], *args: Any) -> T:
    try:
        with psycopg.connect(_conninfo(location)) as conn:
            if conn.execute("SELECT to_regclass('antiphon_runs')").fetchone() == (None,):
                raise ConfigError(f"store: no transcript store in {location} (no antiphon_runs table)")
            return fn(conn, *args)
    except psycopg.Error as exc:
        raise _store_error(location, exc) from None
