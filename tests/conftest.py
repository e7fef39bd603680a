"""Shared fixtures for the whole suite: real Redis and PostgreSQL servers (see ``tests/servers.py``).

The servers are session-scoped (one of each per run, started on first use) and every
test gets a clean slate: ``redis_url`` flushes Redis, ``postgres_url`` is a fresh
database dropped afterwards. Without the programs the tests that need them are skipped
with the reason (``pytest -ra`` prints it).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests import servers

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[servers.RedisServer]:
    """A ``redis-server`` on a free loopback port for the whole run."""
    if servers.redis_binary() is None:
        pytest.skip("redis-server is not installed: apt-get install redis-server (.ci/run does)")
    with servers.run_redis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: servers.RedisServer) -> str:
    """The URL of the session's Redis, emptied (FLUSHALL) before the test."""
    assert servers.redis_command(redis_server, "FLUSHALL") == b"+OK"
    return redis_server.url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[servers.PostgresServer]:
    """A throwaway PostgreSQL cluster on a free loopback port for the whole run."""
    why = servers.postgres_unavailable()
    if why is not None:
        pytest.skip(why)
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[test]'")
    with servers.run_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: servers.PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL, dropped after the test."""
    name = f"test_{next(_databases)}"
    url = postgres_server.create_database(name)
    try:
        yield url
    finally:
        postgres_server.drop_database(name)
