"""Transcript stores: SQLite and memory keep the same records, and retention deletes old runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from antiphon.chat.store import (
    MemoryStore,
    MessageRecord,
    ReplyRecord,
    SqliteStore,
    read_run,
    read_runs,
)
from antiphon.errors import ConfigError


def message(run: str, n: int, at: float) -> MessageRecord:
    return MessageRecord(run_id=run, connector="/", message_id=f"m{n}", message_number=n, text=f"q{n}", context={"n": n}, received_at=at)


def reply(run: str, n: int, at: float) -> ReplyRecord:
    return ReplyRecord(
        run_id=run, message_number=n, agent="a", text=f"r{n}", status="completed",
        prompt_tokens=1, candidates_tokens=2, started_at=at, finished_at=at + 1,
    )


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
async def test_store_round_trip_and_retention(tmp_path: Path, kind: str) -> None:
    """Messages and replies read back in order; cleanup deletes runs idle since before the cutoff."""
    store = SqliteStore(tmp_path / "t.db") if kind == "sqlite" else MemoryStore()
    try:
        await store.save_message(message("old", 1, 100.0))
        await store.save_reply(reply("old", 1, 100.0))
        async with trio.open_nursery() as nursery:  # concurrent writes share commits
            for n in (1, 2, 3):
                nursery.start_soon(store.save_message, message("new", n, 1000.0 + n))
        await store.save_reply(reply("new", 2, 1005.0))
        runs = await store.list_runs()
        assert [(r.run_id, r.turns) for r in runs] == [("new", 3), ("old", 1)]
        found = await store.get_run("new")
        assert found is not None
        turns = found[1]
        assert [(t.message_number, t.message, t.status, t.reply) for t in turns] == [
            (1, "q1", "pending", None), (2, "q2", "completed", "r2"), (3, "q3", "pending", None)
        ]
        assert turns[0].context == {"n": 1}
        assert await store.cleanup(500.0) == 1
        assert [r.run_id for r in await store.list_runs()] == ["new"]
        assert await store.get_run("old") is None
    finally:
        if isinstance(store, SqliteStore):
            await store.aclose()
    if kind == "sqlite":
        assert [r.run_id for r in read_runs(tmp_path / "t.db")] == ["new"]
        assert read_run(tmp_path / "t.db", "new") is not None


def test_reading_a_missing_store_is_a_config_error(tmp_path: Path) -> None:
    """The CLI readers refuse a path with no store rather than creating one."""
    with pytest.raises(ConfigError, match="no transcript store"):
        read_runs(tmp_path / "absent.db")
    assert not (tmp_path / "absent.db").exists()
