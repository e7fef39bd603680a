"""Real servers for tests: Debian's ``redis-server`` and PostgreSQL, each on a free port in a temp dir.

Each ``run_*`` context manager starts one server process on 127.0.0.1, waits until its log
says it is ready, and on exit stops it (SIGINT/SIGTERM, then SIGKILL after
``STOP_TIMEOUT_S``) and deletes its directory. A server that cannot start raises
:class:`ServerStartError` with the tail of its log. Finding the programs is separate
(:func:`redis_binary`, :func:`postgres_bindir`) so fixtures can skip loudly when they are
absent. PostgreSQL refuses to run as root: under root it runs as the ``postgres`` user
that Debian's package creates.

Nothing here sleeps in a test: the only waits are for a server to start or stop.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from attrs import field, frozen

__all__ = [
    "PostgresServer",
    "RedisServer",
    "ServerStartError",
    "postgres_bindir",
    "postgres_unavailable",
    "redis_binary",
    "redis_command",
    "run_postgres",
    "run_redis",
    "stop_redis",
]

HOST: Final = "127.0.0.1"
START_TIMEOUT_S: Final = 60.0
"""initdb plus a first start can take several seconds on a busy 2-core CI machine."""
STOP_TIMEOUT_S: Final = 15.0
"""A fast shutdown finishes in well under a second; past this the process is killed."""
POLL_S: Final = 0.02
"""How often a starting server's log is read for its ready line."""
PORT_ATTEMPTS: Final = 5
"""A free port can be taken between picking it and the server binding it: try a few."""
PG_USER: Final = "antiphon"
"""The PostgreSQL superuser the test cluster is initialised with (trust auth, loopback only)."""


class ServerStartError(RuntimeError):
    """A test server exited or never became ready; the message carries its log's tail."""


@frozen
class RedisServer:
    """A running ``redis-server``."""

    host: str
    port: int
    proc: subprocess.Popen[bytes] | None = field(default=None, eq=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


@frozen
class PostgresServer:
    """A running PostgreSQL cluster whose superuser is ``user`` (trust auth on loopback)."""

    host: str
    port: int
    user: str

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (a plain identifier) and return its URL."""
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, sql: str) -> None:
        import psycopg  # a test dependency; imported here so the Redis fixture never needs it

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.encode())


# --------------------------------------------------------------------------- finding programs


def redis_binary() -> str | None:
    """The ``redis-server`` program on PATH, or None."""
    return shutil.which("redis-server")


def postgres_bindir() -> Path | None:
    """Where ``initdb`` and ``postgres`` are: on PATH, else Debian's newest ``/usr/lib/postgresql/N/bin``."""
    found = shutil.which("initdb")
    if found and (Path(found).parent / "postgres").exists():
        return Path(found).parent
    candidates = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
    )
    return candidates[-1] if candidates else None


def postgres_unavailable() -> str | None:
    """Why PostgreSQL cannot run here (a sentence for ``pytest.skip``), or None when it can."""
    if postgres_bindir() is None:
        return "PostgreSQL is not installed (no initdb): apt-get install postgresql (.ci/run does)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run PostgreSQL as"
    return None


# --------------------------------------------------------------------------- running them


@contextlib.contextmanager
def run_redis(port: int | None = None) -> Iterator[RedisServer]:
    """Run ``redis-server`` on a free loopback port (or ``port``: a restart), in memory only (no RDB, no AOF)."""
    binary = redis_binary()
    if binary is None:
        raise ServerStartError("redis-server is not installed")
    with _tempdir("antiphon-redis-", owner=None) as base:

        def argv(port: int) -> list[str]:
            return [
                binary, "--port", str(port), "--bind", HOST, "--dir", str(base),
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "",
            ]  # fmt: skip

        proc, port = _start(argv, base, "Ready to accept connections", owner=None, port=port)
        try:
            yield RedisServer(HOST, port, proc)
        finally:
            _stop(proc, signal.SIGTERM)


def stop_redis(server: RedisServer) -> None:
    """Kill a server from :func:`run_redis` now (SIGKILL: it vanishes as in a crash), inside its block."""
    assert server.proc is not None
    _stop(server.proc, signal.SIGKILL)


@contextlib.contextmanager
def run_postgres() -> Iterator[PostgresServer]:
    """Run a throwaway PostgreSQL cluster (fsync off: a test cluster, never a real one)."""
    why = postgres_unavailable()
    if why is not None:
        raise ServerStartError(why)
    bindir = postgres_bindir()
    assert bindir is not None
    owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    with _tempdir("antiphon-pg-", owner=owner) as base:
        data = base / "data"
        init = subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8",
             "--locale=C", "--no-sync", "--no-instructions"],
            cwd=base, capture_output=True, text=True, timeout=START_TIMEOUT_S, **_as(owner),
        )  # fmt: skip
        if init.returncode != 0:
            raise ServerStartError(f"initdb failed ({init.returncode}):\n{init.stdout}{init.stderr}")

        def argv(port: int) -> list[str]:
            return [
                str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", HOST, "-k", str(base),
                "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "logging_collector=off",
            ]  # fmt: skip

        proc, port = _start(argv, base, "database system is ready to accept connections", owner=owner)
        try:
            yield PostgresServer(HOST, port, PG_USER)
        finally:
            _stop(proc, signal.SIGINT)  # SIGINT is PostgreSQL's "fast" shutdown


def redis_command(server: RedisServer, *args: str) -> bytes:
    """Send one command in RESP and return the first reply line (enough for PING and FLUSHALL)."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(b"".join(parts))
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.rstrip(b"\r\n")


# --------------------------------------------------------------------------- plumbing


@contextlib.contextmanager
def _tempdir(prefix: str, owner: pwd.struct_passwd | None) -> Iterator[Path]:
    # Directly under the system temp dir (not pytest's 0700 tree), so another user can enter it.
    base = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        if owner is not None:
            os.chown(base, owner.pw_uid, owner.pw_gid)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _as(owner: pwd.struct_passwd | None) -> dict[str, Any]:
    return {} if owner is None else {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}


def _start(
    argv: Callable[[int], list[str]], base: Path, ready: str, *, owner: pwd.struct_passwd | None, port: int | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a server on a free port (another port if that one was taken meanwhile), or on ``port``, and wait until ready."""
    wanted = port
    for attempt in range(PORT_ATTEMPTS if wanted is None else 1):
        port = _free_port() if wanted is None else wanted
        log = base / f"server-{attempt}.log"
        # The log is a file, not a pipe: a pipe nobody drains would block a chatty server.
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv(port), cwd=base, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, **_as(owner),
            )  # fmt: skip
        try:
            if _wait_ready(proc, log, ready, name=Path(argv(0)[0]).name):
                return proc, port
        except BaseException:
            _stop(proc, signal.SIGKILL)
            raise
    raise ServerStartError(f"{argv(0)[0]} found no free port in {PORT_ATTEMPTS} attempts:\n{_tail(log)}")


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, ready: str, *, name: str) -> bool:
    """True once ``ready`` is in the log; False when the port was taken; raise on other failures."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if ready in text:
            return True
        if proc.poll() is not None:
            if "in use" in text:  # "Address already in use": another process took the port
                return False
            raise ServerStartError(f"{name} exited with {proc.returncode}:\n{_tail(log)}")
        time.sleep(POLL_S)
    raise ServerStartError(f"{name} not ready after {START_TIMEOUT_S:g}s:\n{_tail(log)}")


def _stop(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT_S)
            return
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
