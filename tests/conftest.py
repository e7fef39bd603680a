"""Shared fixtures for the whole suite: real Redis and PostgreSQL servers (see ``tests/servers.py``), a test CA.

The servers are session-scoped (one of each per run, started on first use) and every
test gets a clean slate: ``redis_url`` flushes Redis, ``postgres_url`` is a fresh
database dropped afterwards. Without the programs the tests that need them are skipped
with the reason (``pytest -ra`` prints it).
"""

from __future__ import annotations

import itertools
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

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


TLS_NAMES = ("localhost", "127.0.0.1", "antiphon.test")
"""What the test certificate is good for: loopback by name and address, and a name no DNS knows."""


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A certificate authority of the test run's own."""
    return trustme.CA()


@pytest.fixture(scope="session")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    """A server certificate for :data:`TLS_NAMES`, signed by :func:`ca`."""
    return ca.issue_cert(*TLS_NAMES)


@pytest.fixture
def server_ssl(server_cert: trustme.LeafCert) -> ssl.SSLContext:
    """A server-side context holding :func:`server_cert`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    return context


@pytest.fixture
def client_ssl(ca: trustme.CA) -> ssl.SSLContext:
    """A client-side context that trusts :func:`ca` only (hostname checks on)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def pem_files(tmp_path: Path, server_cert: trustme.LeafCert) -> tuple[Path, Path]:
    """``(certfile, keyfile)``: :func:`server_cert` as PEM files."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    for blob in server_cert.cert_chain_pems:
        blob.write_to_path(cert, append=True)
    server_cert.private_key_pem.write_to_path(key)
    return cert, key
