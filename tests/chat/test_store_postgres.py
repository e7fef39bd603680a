"""The PostgreSQL store against a real server: schema migrations, failures, the CLI, and a real gateway process."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import trio
import websockets.sync.client

from antiphon.chat.store import (
    MessageRecord,
    PostgresUrl,
    ReplyRecord,
    open_store,
    read_run,
    read_runs,
)
from antiphon.chat.store import postgres as pg
from antiphon.chat.store.postgres import SCHEMA_VERSION, PostgresStore
from antiphon.errors import ConfigError, StoreError

ANTIPHON = [sys.executable, "-m", "antiphon"]
ESC = "\x1b"


def message(run: str, n: int, at: float, text: str = "q") -> MessageRecord:
    return MessageRecord(run_id=run, connector="/", message_id=f"m{n}", message_number=n, text=text, context={}, received_at=at)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens here once the socket is closed


async def test_an_unreachable_database_is_one_clear_line_without_the_password() -> None:
    """Connecting to a port with no server raises StoreError: one line, the reason, the password masked."""
    url = PostgresUrl(f"postgresql://app:hunter2@127.0.0.1:{closed_port()}/transcripts")
    with pytest.raises(StoreError) as info:
        await PostgresStore.connect(url)
    text = str(info.value)
    assert "\n" not in text and "hunter2" not in text
    assert text.startswith("store postgresql://app:***@127.0.0.1:") and "Connection refused" in text


def test_serve_refuses_to_start_when_the_database_is_unreachable() -> None:
    """`antiphon serve --store postgresql://...` on a dead server exits 2 with a one-line error, no traceback."""
    url = f"postgresql://app@127.0.0.1:{closed_port()}/db"
    result = subprocess.run([*ANTIPHON, "serve", "--port", "0", "--store", url], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "INFO" not in line]
    assert len(errors) == 1 and errors[0].startswith("antiphon: store postgresql://app@127.0.0.1:"), result.stderr
    assert "Connection refused" in errors[0]


async def test_the_schema_is_created_once_by_servers_starting_together(postgres_url: str) -> None:
    """Three stores connecting at once to an empty database create the schema once, at the current version."""
    stores: list[PostgresStore] = []

    async def connect() -> None:
        stores.append(await PostgresStore.connect(PostgresUrl(postgres_url)))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(connect)
    for store in stores:
        await store.aclose()
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT version FROM antiphon_schema").fetchall() == [(SCHEMA_VERSION,)]


async def test_a_schema_newer_than_this_version_is_refused(postgres_url: str) -> None:
    """A database migrated by a later antiphon is not written to: StoreError says to upgrade."""
    async with open_store(PostgresUrl(postgres_url)):
        pass
    with psycopg.connect(postgres_url) as conn:
        conn.execute("UPDATE antiphon_schema SET version = 99")
    with pytest.raises(StoreError, match=r"schema is at version 99, newer than this antiphon's 1: upgrade antiphon$"):
        await PostgresStore.connect(PostgresUrl(postgres_url))


async def test_nul_in_text_is_stored_as_the_replacement_character(postgres_url: str) -> None:
    """PostgreSQL text cannot hold U+0000: messages and replies keep everything else, with U+FFFD for it."""
    async with open_store(PostgresUrl(postgres_url)) as store:
        await store.save_message(message("r", 1, 1.0, text="a\x00b"))
        await store.save_reply(ReplyRecord(
            run_id="r", message_number=1, agent="a", text="c\x00d", status="completed",
            prompt_tokens=1, candidates_tokens=1, started_at=1.0, finished_at=2.0,
        ))  # fmt: skip
        found = await store.get_run("r")
    assert found is not None
    assert (found[1][0].message, found[1][0].reply) == ("a\ufffdb", "c\ufffdd")


async def test_retention_deletes_in_chunks(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep deletes old runs a chunk per transaction until none is left, and counts them all."""
    monkeypatch.setattr(pg, "CLEANUP_CHUNK_RUNS", 2)
    async with open_store(PostgresUrl(postgres_url)) as store:
        for i in range(5):
            await store.save_message(message(f"old{i}", 1, 10.0))
        await store.save_message(message("new", 1, 1000.0))
        assert await store.cleanup(500.0) == 5
        assert [r.run_id for r in await store.list_runs()] == ["new"]


async def test_a_connection_the_server_dropped_is_replaced(postgres_url: str) -> None:
    """After the server kills the store's connections (a restart, a failover), the next call still succeeds."""
    async with open_store(PostgresUrl(postgres_url)) as store:
        await store.save_message(message("r", 1, 1.0))
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'antiphon' AND pid <> pg_backend_pid()"
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        await store.save_message(message("r", 2, 2.0))
        assert [r.turns for r in await store.list_runs()] == [2]


def test_readers_refuse_a_database_without_transcripts(postgres_url: str) -> None:
    """The CLI's readers do not create the schema: an empty database is 'no transcript store'."""
    with pytest.raises(ConfigError, match="no transcript store in postgresql://"):
        read_runs(PostgresUrl(postgres_url))
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT to_regclass('antiphon_schema')").fetchone() == (None,)


def test_a_real_gateway_stores_in_postgres_and_sessions_show_reads_it(postgres_url: str, tmp_path: Path) -> None:
    """`antiphon serve --store postgresql://` stores a turn; `sessions list/show --store` read it, escaped."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [*ANTIPHON, "serve", "--port", "0", "--secret", "s", "--store", postgres_url]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            found = re.search(r"listening on (ws://127\.0\.0\.1:\d+)", line)
            assert found, line
            with websockets.sync.client.connect(found.group(1), open_timeout=10, close_timeout=10) as ws:
                ws.send(json.dumps({"secret": "s"}))
                run_id = json.loads(ws.recv(timeout=10))["connector_run_id"]
                ws.send(json.dumps({"type": "message", "id": "m1", "payload": {"message": f"hi {ESC}[2J there"}}))
                while json.loads(ws.recv(timeout=10))["type"] != "stream_end":
                    pass
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stored = read_run(PostgresUrl(postgres_url), run_id)
    assert stored is not None and stored[1][0].status == "completed"
    listing = subprocess.run([*ANTIPHON, "sessions", "list", "--store", postgres_url, "--json"], capture_output=True, text=True, timeout=60)
    assert [(r["run_id"], r["turns"]) for r in json.loads(listing.stdout)] == [(run_id, 1)]
    show = subprocess.run([*ANTIPHON, "sessions", "show", run_id, "--store", postgres_url], capture_output=True, text=True, timeout=60)
    assert show.returncode == 0 and ESC not in show.stdout
    assert "    hi \\x1b[2J there" in show.stdout and "assistant (completed" in show.stdout
