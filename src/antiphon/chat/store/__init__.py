"""Transcript stores: where every turn of every run is kept.

A store records, per run (``connector_run_id``), each accepted user message (id,
number, text, context, time) *before* it is acked, and each reply (text, agent, token
usage, status, timing) when its turn ends. Three come with antiphon:

* :class:`SqliteStore` (``sqlite``): the embedded default, one file;
* :class:`~antiphon.chat.store.postgres.PostgresStore` (``postgres``): PostgreSQL, for
  several processes or machines (needs the ``postgres`` extra: psycopg 3);
* :class:`MemoryStore` (``memory``): this process's memory, for tests.

Anything with the :class:`TranscriptStore` methods can be plugged in. Writes are
group-committed (``batching``): concurrent writes share transactions.
:func:`open_store` opens any of them from a :data:`StoreLocation`; :func:`read_runs`
and :func:`read_run` read one without Trio, for the CLI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import trio

from antiphon.chat.store import sqlite as _sqlite
from antiphon.chat.store.memory import MemoryStore
from antiphon.chat.store.records import (
    CONTEXT_STORE_MAX_DEPTH,
    POSTGRES_SCHEMES,
    STORE_ENV,
    MessageRecord,
    PostgresUrl,
    ReplyRecord,
    RunSummary,
    StoreLocation,
    TranscriptStore,
    TurnRecord,
    default_store_path,
    now,
)
from antiphon.chat.store.sqlite import SqliteStore
from antiphon.errors import ConfigError

if TYPE_CHECKING:
    from types import ModuleType

    from antiphon.chat.store.postgres import PostgresStore

AnyStore: TypeAlias = "SqliteStore | PostgresStore | MemoryStore"
"""A store :func:`open_store` opens: each is a :class:`TranscriptStore` with an ``aclose``."""

__all__ = [
    "CONTEXT_STORE_MAX_DEPTH",
    "POSTGRES_SCHEMES",
    "STORE_ENV",
    "AnyStore",
    "ConfigError",
    "MemoryStore",
    "MessageRecord",
    "PostgresUrl",
    "ReplyRecord",
    "RunSummary",
    "SqliteStore",
    "StoreLocation",
    "TranscriptStore",
    "TurnRecord",
    "default_store_path",
    "now",
    "open_store",
    "read_run",
    "read_runs",
]


def _postgres() -> ModuleType:
    try:
        from antiphon.chat.store import postgres
    except ImportError as exc:
        raise ConfigError(
            f"store: a postgresql:// store needs psycopg ({exc.name} is missing): pip install 'antiphon[postgres]'"
        ) from None
    return postgres


@asynccontextmanager
async def open_store(location: StoreLocation) -> AsyncIterator[AnyStore]:
    """Open the store at ``location`` for the duration of the block, and close it after.

    Raises :class:`ConfigError` for a file that cannot be opened or a missing driver, and
    :class:`~antiphon.errors.StoreError` for a database that cannot be reached.
    """
    store: AnyStore
    if location == "memory":
        store = MemoryStore()
    elif isinstance(location, PostgresUrl):
        store = await _postgres().PostgresStore.connect(location)
    else:
        store = SqliteStore(location)
    try:
        yield store
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()


def read_runs(location: Path | str | PostgresUrl, limit: int = 50) -> list[RunSummary]:
    """List the runs in a store, newest first, without Trio (for the CLI); never creates one."""
    if isinstance(location, PostgresUrl):
        runs: list[RunSummary] = _postgres().read_runs(location, limit)
        return runs
    return _sqlite.read_runs(location, limit)


def read_run(location: Path | str | PostgresUrl, run_id: str) -> tuple[RunSummary, list[TurnRecord]] | None:
    """One run's transcript, without Trio (for the CLI); None when the store has no such run."""
    if isinstance(location, PostgresUrl):
        found: tuple[RunSummary, list[TurnRecord]] | None = _postgres().read_run(location, run_id)
        return found
    return _sqlite.read_run(location, run_id)
