"""The real-server fixtures: Redis and PostgreSQL on loopback, clean for every test."""

from __future__ import annotations

from urllib.parse import urlsplit

import psycopg

from tests import servers


def test_redis_fixture_is_an_empty_loopback_server(redis_server: servers.RedisServer, redis_url: str) -> None:
    """redis_url points at 127.0.0.1, answers PING and starts the test empty."""
    assert urlsplit(redis_url).hostname == "127.0.0.1"
    assert servers.redis_command(redis_server, "PING") == b"+PONG"
    assert servers.redis_command(redis_server, "DBSIZE") == b":0"


def test_postgres_fixture_is_a_fresh_database(postgres_url: str) -> None:
    """postgres_url is a fresh database of its own on 127.0.0.1, with no tables yet."""
    assert urlsplit(postgres_url).hostname == "127.0.0.1"
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SELECT current_database(), count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert row is not None and row[0] == urlsplit(postgres_url).path.lstrip("/") and row[1] == 0
