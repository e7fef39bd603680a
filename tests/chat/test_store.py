"""Transcript stores: SQLite, PostgreSQL and memory keep the same records; retention deletes old runs."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from antiphon.chat.report import transcript_json, transcript_text
from antiphon.chat.store import (
    AnyStore,
    MemoryStore,
    MessageRecord,
    PostgresUrl,
    ReplyRecord,
    SqliteStore,
    StoreLocation,
    open_store,
    read_run,
    read_runs,
)
from antiphon.chat.store.postgres import PostgresStore
from antiphon.chat.store.records import decode_context, encode_context
from antiphon.errors import ConfigError, StoreError
from antiphon.proto.chat.messages import Response, StreamEnd, TokenUsage
from tests.chat.conftest import SECRET, memory_gateway


def message(run: str, n: int, at: float, context: dict[str, Any] | None = None) -> MessageRecord:
    return MessageRecord(
        run_id=run, connector="/", message_id=f"m{n}", message_number=n, text=f"q{n}",
        context={"n": n} if context is None else context, received_at=at,
    )  # fmt: skip


def reply(run: str, n: int, at: float, text: str | None = None) -> ReplyRecord:
    return ReplyRecord(
        run_id=run, message_number=n, agent="a", text=f"r{n}" if text is None else text, status="completed",
        prompt_tokens=1, candidates_tokens=2, started_at=at, finished_at=at + 1,
    )  # fmt: skip


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def location(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreLocation:
    if kind == "sqlite":
        return tmp_path / "t.db"
    if kind == "postgres":
        return PostgresUrl(request.getfixturevalue("postgres_url"))
    return "memory"


@pytest.fixture(params=["sqlite", "postgres", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AnyStore]:
    """Each store in turn: what holds for all three."""
    async with open_store(location(request.param, request, tmp_path)) as opened:
        yield opened


@pytest.fixture(params=["sqlite", "postgres"])
async def db_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqliteStore | PostgresStore]:
    """The stores backed by a database: transactions, encodings and limits."""
    async with open_store(location(request.param, request, tmp_path)) as opened:
        assert isinstance(opened, SqliteStore | PostgresStore)
        yield opened


async def test_store_round_trip_and_retention(store: AnyStore) -> None:
    """Messages and replies read back in order; cleanup deletes runs idle since before the cutoff."""
    await store.save_message(message("old", 1, 100.0))
    await store.save_reply(reply("old", 1, 100.0))
    await store.save_message(message("new", 1, 1001.0))
    async with trio.open_nursery() as nursery:  # concurrent writes share commits
        for n in (2, 3):
            nursery.start_soon(store.save_message, message("new", n, 1001.0 + n))
    await store.save_reply(reply("new", 2, 1005.0))
    runs = await store.list_runs()
    assert [(r.run_id, r.turns, r.created_at, r.updated_at) for r in runs] == [
        ("new", 3, 1001.0, 1006.0), ("old", 1, 100.0, 101.0)
    ]  # fmt: skip
    found = await store.get_run("new")
    assert found is not None
    turns = found[1]
    assert [(t.message_number, t.message, t.status, t.reply) for t in turns] == [
        (1, "q1", "pending", None), (2, "q2", "completed", "r2"), (3, "q3", "pending", None)
    ]  # fmt: skip
    assert (turns[1].agent, turns[1].prompt_tokens, turns[1].candidates_tokens, turns[1].finished_at) == ("a", 1, 2, 1006.0)
    assert turns[0].context == {"n": 1} and turns[0].received_at == 1001.0
    assert await store.cleanup(500.0) == 1
    assert [r.run_id for r in await store.list_runs()] == ["new"]
    assert await store.get_run("old") is None
    assert await store.get_run("never") is None


async def test_a_message_saved_again_replaces_its_turn(store: AnyStore) -> None:
    """Saving message N again (after a failed store, a resend) leaves one pending turn N with the new text."""
    await store.save_message(message("r", 1, 10.0))
    await store.save_reply(reply("r", 1, 10.0))
    await store.save_message(message("r", 1, 20.0, {"again": True}))
    found = await store.get_run("r")
    assert found is not None
    (turn,) = found[1]
    assert (turn.status, turn.reply, turn.context, turn.received_at) == ("pending", None, {"again": True}, 20.0)


async def test_list_runs_honours_the_limit_newest_first(store: AnyStore) -> None:
    """list_runs(limit) returns the most recently active runs, newest first."""
    for i in range(5):
        await store.save_message(message(f"run{i}", 1, 100.0 + i))
    assert [r.run_id for r in await store.list_runs(limit=2)] == ["run4", "run3"]


async def test_concurrent_writes_are_group_committed(db_store: SqliteStore | PostgresStore) -> None:
    """200 sessions acking at once cost a few transactions, not 200, and every record is kept."""
    store = db_store
    before = store.transactions
    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(store.save_message, message(f"run{i}", 1, 100.0))
    assert store.transactions - before <= 3
    assert len(await store.list_runs(limit=1000)) == 200


async def test_a_record_the_database_refuses_fails_alone(db_store: SqliteStore | PostgresStore) -> None:
    """A reply the database cannot encode raises StoreError for its writer only; the batch around it is kept."""
    store = db_store
    await store.save_message(message("r", 1, 1.0))
    await store.save_message(message("r", 2, 1.0))
    await store.save_message(message("r", 3, 1.0))
    errors: list[BaseException] = []

    async def save(record: ReplyRecord) -> None:
        try:
            await store.save_reply(record)
        except StoreError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(save, reply("r", 1, 2.0))
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(save, reply("r", 2, 2.0))
        nursery.start_soon(save, reply("r", 3, 2.0, text="lone surrogate \ud800"))
    assert len(errors) == 1 and "cannot write" in str(errors[0])
    found = await store.get_run("r")
    assert found is not None
    assert [t.status for t in found[1]] == ["completed", "completed", "pending"]


async def test_contexts_nested_deeper_than_the_store_bound_are_refused_cleanly(db_store: SqliteStore | PostgresStore) -> None:
    """A 1000-deep context raises StoreError (never RecursionError); a 200-deep one round-trips and prints."""
    store = db_store
    with pytest.raises(StoreError, match="the context cannot be stored"):
        await store.save_message(message("r", 1, 1.0, nested(1000)))
    await store.save_message(message("r", 1, 1.0, nested(200)))
    found = await store.get_run("r")
    assert found is not None
    assert found[1][0].context == nested(200)
    assert transcript_text(*found).count('{"a":') == 199
    assert '"a": {' in transcript_json(*found)


async def test_contexts_keep_unicode_and_nul(store: AnyStore) -> None:
    """Contexts come back equal, U+0000, emoji and big floats included."""
    context = {"nul": "a\x00b", "emoji": "🦜", "list": [1, 2.5, None, True], "big": 1e300}
    await store.save_message(message("r", 1, 1.0, context))
    found = await store.get_run("r")
    assert found is not None and found[1][0].context == context


async def test_reply_record_of_a_final_event() -> None:
    """ReplyRecord.of_final_event takes text, agent, status and usage from stream_end or response."""
    usage = TokenUsage(prompt_tokens=3, candidates_tokens=4)
    end = StreamEnd(id="m", agent="bot", full_response="all", token_usage=usage, status="cancelled")
    record = ReplyRecord.of_final_event(end, run_id="r", message_number=2, started_at=1.0, finished_at=2.0)
    assert (record.text, record.agent, record.status, record.prompt_tokens, record.candidates_tokens) == (
        "all", "bot", "cancelled", 3, 4
    )  # fmt: skip
    response = Response(id="m", agent="bot", response="whole", token_usage=usage)
    assert ReplyRecord.of_final_event(response, run_id="r", message_number=2, started_at=1.0, finished_at=2.0).text == "whole"


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _json_values, max_size=4))
def test_any_context_round_trips_or_raises_store_error(context: dict[str, Any]) -> None:
    """encode_context/decode_context: a JSON context comes back equal, or encoding raises StoreError (ints past 64 bits)."""
    try:
        text = encode_context(context)
    except StoreError:
        return
    assert decode_context(text) == context


# --------------------------------------------------------------------------- SQLite specifics


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)  # the common default, under which a file created plainly is 0644
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask_022")
async def test_a_new_sqlite_store_is_private(tmp_path: Path) -> None:
    """A new store file and its WAL are 0600, in directories created 0700: it holds every conversation."""
    path = tmp_path / "state" / "antiphon" / "t.db"
    store = SqliteStore(path)
    try:
        await store.save_message(message("r", 1, 1.0))
        wal = path.with_name("t.db-wal")
        assert wal.exists()
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (path, wal, path.parent, path.parent.parent)}
    finally:
        await store.aclose()
    assert modes == {"t.db": 0o600, "t.db-wal": 0o600, "antiphon": 0o700, "state": 0o700}


@pytest.mark.usefixtures("umask_022")
async def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    """Only what the store creates is made private: a directory the operator chose is left as it is."""
    tmp_path.chmod(0o755)
    store = SqliteStore(tmp_path / "t.db")
    await store.aclose()
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "t.db").stat().st_mode) == 0o600


async def test_sqlite_readers_see_what_the_store_wrote(tmp_path: Path) -> None:
    """read_runs and read_run (the CLI's, without Trio) read the file the store wrote."""
    async with open_store(tmp_path / "t.db") as store:
        await store.save_message(message("r", 1, 1.0))
    assert [r.run_id for r in read_runs(tmp_path / "t.db")] == ["r"]
    found = read_run(tmp_path / "t.db", "r")
    assert found is not None and found[1][0].message == "q1"


def test_reading_a_missing_store_is_a_config_error(tmp_path: Path) -> None:
    """The CLI readers refuse a path with no store rather than creating one."""
    with pytest.raises(ConfigError, match="no transcript store"):
        read_runs(tmp_path / "absent.db")
    assert not (tmp_path / "absent.db").exists()


def test_an_unopenable_sqlite_store_is_a_config_error(tmp_path: Path) -> None:
    """A store path that is a directory fails at start with a one-line ConfigError."""
    with pytest.raises(ConfigError, match=r"^store: cannot open .*\)$"):
        SqliteStore(tmp_path)


async def test_a_deeply_nested_context_is_refused_and_never_stored(autojump_clock: trio.testing.MockClock) -> None:
    """A message whose context nests 1000 deep gets invalid_message; the connection carries on and stores the next."""
    store = MemoryStore()
    async with memory_gateway(store=store) as (_, client):
        await client.handshake(f"/?secret={SECRET}")
        assert (await client.receive_json())["type"] == "connected"
        deep = '{"a": ' + "[" * 999 + "]" * 999 + "}"
        await client.send_text('{"type": "message", "id": "m1", "payload": {"message": "x", "context": ' + deep + "}}")
        assert await client.receive_json() == {
            "type": "error", "code": "invalid_message", "message": "$.payload.context: nested deeper than 64 levels"
        }  # fmt: skip
        await client.send_json({"type": "message", "id": "m2", "payload": {"message": "y"}})
        assert (await client.receive_json())["type"] == "ack"
    (summary,) = store.runs.values()
    assert [t.message_id for t in store.turns[summary.run_id].values()] == ["m2"]
