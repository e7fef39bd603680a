"""The ``antiphon`` command: argument parsing and wiring only; the work is the library's.

Errors the operator can fix (a bad setting, a busy port, an unreadable file) are one line on
standard error, ``antiphon: ...``, and exit status 2; the library raises them as
:class:`~antiphon.errors.AntiphonError` and this module prints them. Anything else is a bug
and keeps its traceback. ``--log-level`` and ``--log-format`` are accepted before or after
any subcommand.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any, Final

import trio

from antiphon import __version__, logs
from antiphon.chat.backends import RunBackend, open_backend
from antiphon.chat.config import GatewaySetup, build, read_file, store_location
from antiphon.chat.gateway import ChatGateway
from antiphon.chat.report import runs_json, runs_table, transcript_json, transcript_text
from antiphon.chat.store import (
    PostgresUrl,
    StoreLocation,
    TranscriptStore,
    open_store,
    read_run,
    read_runs,
)
from antiphon.errors import AntiphonError, ConfigError
from antiphon.tuning import tune_gc
from antiphon.workers import WORKER_FLAG, serve_workers, worker_argv

__all__ = [
    "CONNECTOR_FLAGS",
    "DEFAULT_LOG_LEVEL",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "SECRET_ENV",
    "TOP_LEVEL_FLAGS",
    "main",
]

SECRET_ENV: Final = "ANTIPHON_SECRET"

TOP_LEVEL_FLAGS: Final = (
    "host",
    "port",
    "shutdown_grace",
    "store",
    "retention_days",
    "runs",
    "lease_ttl",
    "workers",
    "certfile",
    "keyfile",
)
"""``antiphon serve`` flags whose dest is a top-level config key (``--shutdown-grace`` is ``shutdown_grace``)."""
CONNECTOR_FLAGS: Final = ("secret", "session_timeout", "max_messages", "agent", "path", "resume_grace")
"""``antiphon serve`` flags whose dest is a connector key; ``--no-auth`` and ``--no-streaming`` set
``require_auth`` and ``streaming`` to false; ``--no-metrics`` sets the top-level ``metrics``."""

DEFAULT_LOG_LEVEL: Final = "INFO"
"""Every command's log level unless ``--log-level`` says otherwise; ``antiphon chat``'s is WARNING."""

EXIT_USAGE: Final = 2
"""Exit status of an error the operator can fix (as argparse uses for bad flags)."""
EXIT_INTERRUPTED: Final = 130
"""Exit status after Ctrl-C stopped a command outright (128 + SIGINT, as shells report it)."""

log = logging.getLogger("antiphon")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose every subcommand also takes the logging flags."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # SUPPRESS: a subcommand that is not given the flag leaves the value the top level set.
        group = self.add_argument_group("logging")
        group.add_argument(
            "--log-level",
            type=str.upper,
            choices=logs.LEVELS,
            default=argparse.SUPPRESS,
            help="DEBUG, INFO (default), WARNING, ...",
        )
        group.add_argument(
            "--log-format",
            choices=("text", "json"),
            default=argparse.SUPPRESS,
            help="text (default) or json: one object per line",
        )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="antiphon", description="Trio WebSocket sessions: chat, tools, media.")
    parser.set_defaults(log_level=None, log_format="text")
    parser.add_argument("--version", action="version", version=f"antiphon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the chat gateway")
    serve.add_argument("--host", help="interface to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind; 0 picks a free one (default: 8765)")
    serve.add_argument("--secret", help=f"the clients' secret (default: ${SECRET_ENV}, else one is generated)")
    serve.add_argument("--no-auth", action="store_true", help="accept clients without a secret")
    serve.add_argument("--no-streaming", action="store_true", help="send one `response` instead of a stream")
    serve.add_argument(
        "--session-timeout", type=float, metavar="S", help="inactivity timeout, 60-86400 s (default: 3600)"
    )
    serve.add_argument("--max-messages", type=int, metavar="N", help="messages per session, 1-10000 (default: 100)")
    serve.add_argument("--agent", metavar="MODULE:FUNCTION", help="the agent to serve (default: the demo agent)")
    serve.add_argument("--path", help="the path to serve at (default: /)")
    serve.add_argument(
        "--shutdown-grace",
        type=float,
        metavar="S",
        help="time running turns get to finish on SIGINT/SIGTERM (default: 10)",
    )
    serve.add_argument(
        "--resume-grace",
        type=float,
        metavar="S",
        help="how long a dropped run waits for a resume (default: 60; 0: off)",
    )
    serve.add_argument(
        "--store",
        metavar="STORE",
        help="transcript store: a SQLite file, a postgresql://user@host/db URL, 'memory' or 'none'"
        " (default: $ANTIPHON_STORE or ~/.local/state/antiphon/transcripts.db)",
    )
    serve.add_argument(
        "--retention-days", type=float, metavar="D", help="delete transcripts idle this long (default: 30; 0: never)"
    )
    serve.add_argument(
        "--runs",
        metavar="RUNS",
        help="share runs between processes: a redis://host:6379/0 URL, or 'memory' (default: memory, not shared)",
    )
    serve.add_argument(
        "--lease-ttl", type=float, metavar="S", help="a dead process's runs are taken over after this (default: 10)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes sharing the port (default: 1; more need --runs redis://...)",
    )
    serve.add_argument(
        WORKER_FLAG, action="store_true", help=argparse.SUPPRESS
    )  # started by --workers: config on stdin
    serve.add_argument("--certfile", metavar="PEM", help="serve wss:// with this certificate chain (PEM)")
    serve.add_argument("--keyfile", metavar="PEM", help="the certificate's private key (default: in --certfile)")
    serve.add_argument("--no-metrics", action="store_true", help="do not answer GET /metrics (GET /healthz stays)")
    serve.add_argument("--config", metavar="FILE", help="a TOML file; it can mount several connectors")
    serve.set_defaults(run=_serve)

    sessions = sub.add_parser("sessions", help="read stored transcripts")
    sessions_sub = sessions.add_subparsers(dest="sessions_command", required=True)
    listing = sessions_sub.add_parser("list", help="list runs, newest first")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default: 50)")
    show = sessions_sub.add_parser("show", help="print one run's transcript")
    show.add_argument("run_id", metavar="RUN_ID")
    for p in (listing, show):
        p.add_argument("--store", metavar="STORE", help="the SQLite file or postgresql:// URL (default: as for serve)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(run=_sessions_list)
    show.set_defaults(run=_sessions_show)

    chat = sub.add_parser("chat", help="talk to a chat gateway from the terminal")
    chat.add_argument("url", help="the gateway's ws:// or wss:// URL")
    chat.add_argument("--secret", help=f"the secret (default: ${SECRET_ENV})")
    chat.add_argument(
        "--auth", choices=["message", "header", "query"], default="message", help="how to send the secret"
    )
    chat.add_argument("--agent", metavar="NAME", help="the agent to talk to first, on a connector with several")
    chat.add_argument(
        "--resume", metavar="RUN_ID", help="continue that run (its replies are replayed) instead of starting one"
    )
    chat.set_defaults(run=_chat, quiet_log_level="WARNING")  # the client's INFO lines would clutter the conversation

    from antiphon.tools.cli import add_commands as add_tool_commands  # noqa: PLC0415 (the tools face owns its flags)

    add_tool_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``antiphon`` console script and ``python -m antiphon``."""
    args = _parser().parse_args(argv)
    logs.configure(_log_level(args), args.log_format)
    sys.exit(_run(args))


def _log_level(args: argparse.Namespace) -> str:
    """``--log-level`` wherever it was given, else the command's default."""
    level: str = args.log_level or getattr(args, "quiet_log_level", DEFAULT_LOG_LEVEL)
    return level


def _run(args: argparse.Namespace) -> int:
    try:
        code: int = args.run(args)
        return code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (Exception, BaseExceptionGroup) as exc:
        leaf = _lone_leaf(exc)
        if isinstance(leaf, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        if not isinstance(leaf, AntiphonError):
            raise  # a bug: keep the traceback
        print(f"antiphon: {leaf}", file=sys.stderr)
        return EXIT_USAGE


def _lone_leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested groups of one, or ``exc`` itself when there are several."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


# --------------------------------------------------------------------------- serve


def _document(args: argparse.Namespace) -> dict[str, Any]:
    """The config document: the ``--config`` file's, or the flags' in the same shape."""
    connector: dict[str, Any] = {key: getattr(args, key) for key in CONNECTOR_FLAGS if getattr(args, key) is not None}
    if args.no_auth:
        connector["require_auth"] = False
    if args.no_streaming:
        connector["streaming"] = False
    if args.config:
        if connector:
            names = ", ".join(sorted(_flag_name(k) for k in connector))
            raise ConfigError(f"{names}: set these in the config file when --config is given")
        doc = read_file(args.config)
    else:
        if "secret" not in connector and os.environ.get(SECRET_ENV) and not args.no_auth:
            connector["secret"] = os.environ[SECRET_ENV]
        doc = {"connectors": [connector]}
    doc.update({key: getattr(args, key) for key in TOP_LEVEL_FLAGS if getattr(args, key) is not None})
    if args.no_metrics:
        doc["metrics"] = False
    return doc


_FLAG_KEYS: Final = {
    **{k: k for k in (*TOP_LEVEL_FLAGS, *CONNECTOR_FLAGS)},
    "require_auth": "no_auth",
    "streaming": "no_streaming",
    "metrics": "no_metrics",
}


def _flag_name(key: str) -> str:
    return "--" + _FLAG_KEYS.get(key, key).replace("_", "-")


_LOCATED: Final = re.compile(r"(?:connectors\[0\]\.)?([a-z_]+)(.*)", re.DOTALL)


def _as_flag_error(exc: ConfigError) -> ConfigError:
    """``connectors[0].session_timeout: ...`` as ``--session-timeout: ...`` when no config file was given."""
    match = _LOCATED.fullmatch(str(exc))
    if match is None or match[1] not in _FLAG_KEYS:
        return exc
    return ConfigError(f"{_flag_name(match[1])}{match[2]}")


def _serve(args: argparse.Namespace) -> int:
    if args.worker:
        return _serve_worker(args)
    try:
        doc = _document(args)
        setup = build(doc, os.environ, source=args.config)
    except ConfigError as exc:
        raise (exc if args.config else _as_flag_error(exc)) from None
    logs.redact(c.settings.secret for c in setup.connectors if c.settings.secret)
    _warn_unauthenticated(setup)
    if setup.workers.workers > 1:
        _pass_generated_secrets(doc, setup)
        argv = worker_argv(args.log_level, args.log_format)
        server = setup.server
        run = partial(
            serve_workers,
            doc,
            setup.workers.workers,
            argv,
            host=server.host,
            port=server.port,
            on_ready=partial(_print_generated, setup),
        )
        code: int = trio.run(run)
        return code
    tune_gc()
    trio.run(_run_gateway, setup)
    return 0


def _serve_worker(args: argparse.Namespace) -> int:
    """One of ``--workers``: the parent's document on stdin's first line; serve until told, or the parent is gone."""
    doc = json.loads(sys.stdin.readline())
    setup = build({**doc, "workers": 1}, os.environ)
    logs.redact(c.settings.secret for c in setup.connectors if c.settings.secret)
    tune_gc()
    trio.run(partial(_run_gateway, setup, worker=True))
    return 0


def _pass_generated_secrets(doc: dict[str, Any], setup: GatewaySetup) -> None:
    """Write the secrets made up for connectors into the document, so every worker uses the same."""
    for table in doc.get("connectors") or [{}]:
        secret = setup.generated_secrets.get(table.get("path") or "/")
        if secret is not None:
            table["secret"] = secret
    doc.setdefault("connectors", doc.get("connectors") or [{}])


def _print_generated(setup: GatewaySetup) -> None:
    for path, secret in setup.generated_secrets.items():
        print(f"antiphon: generated secret for {path}: {secret}", flush=True)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, or "" (every interface): reachable from elsewhere


def _warn_unauthenticated(setup: GatewaySetup) -> None:
    host = setup.server.host
    if _is_loopback(host):
        return
    for c in setup.connectors:
        if not c.settings.require_auth:
            log.warning(
                "connector %s accepts clients without a secret, on %s, which is not a loopback address: "
                "anyone who can reach it can use it",
                c.path,
                host or "every interface",
            )


async def _run_gateway(setup: GatewaySetup, *, worker: bool = False) -> None:
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(setup.store)) if setup.store is not None else None
        backend = await stack.enter_async_context(open_backend(setup.runs))
        await _serve_gateway(setup, store, backend, worker=worker)


async def _serve_gateway(
    setup: GatewaySetup, store: TranscriptStore | None, backend: RunBackend | None, *, worker: bool
) -> None:
    gateway = ChatGateway(
        setup.connectors,
        setup.server,
        setup.session,
        store=store,
        retention_s=setup.retention_s,
        runs=backend,
        lease_ttl_s=setup.runs.lease_ttl_s,
    )
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(gateway.run)
            if not worker:
                _print_generated(setup)
            paths = " ".join(sorted(gateway.connectors))
            where = setup.store if setup.store is not None else "nowhere"
            log.info("transcripts: %s; runs: %s", where, setup.runs)
            print(f"antiphon: chat gateway listening on {gateway.url} (paths: {paths})", flush=True)
            stop = trio.Event()
            nursery.start_soon(_first_signal, signals, stop, setup.server.shutdown_grace_s)
            if worker:
                nursery.start_soon(_parent_gone, stop)
            await stop.wait()
            nursery.start_soon(_stop_on_second_signal, signals, nursery.cancel_scope)
            await gateway.shutdown()
            nursery.cancel_scope.cancel()


async def _first_signal(signals: AsyncIterator[int], stop: trio.Event, grace_s: float) -> None:
    async for signum in signals:
        log.info(
            "%s: shutting down gracefully within %gs (send it again to stop at once)",
            signal.Signals(signum).name,
            grace_s,
        )
        stop.set()
        return


async def _parent_gone(stop: trio.Event) -> None:
    # A worker's stdin is the parent's pipe: its end means the parent is gone, so drain.
    async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as parent:
        while await parent.receive_some():
            pass
    if not stop.is_set():
        log.warning("the parent process is gone: shutting down gracefully")
        stop.set()


async def _stop_on_second_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
        return


# --------------------------------------------------------------------------- sessions


def _store_file(args: argparse.Namespace) -> Path | PostgresUrl:
    location: StoreLocation | None = store_location(args.store)
    if not isinstance(location, Path | PostgresUrl):
        raise ConfigError(
            f"--store {args.store}: only a SQLite file or a PostgreSQL database keeps transcripts to read"
        )
    if isinstance(location, Path) and location.is_dir():
        raise ConfigError(f"store: {str(location)!r} is a directory, not a transcript store")
    return location


def _sessions_list(args: argparse.Namespace) -> int:
    runs = read_runs(_store_file(args), args.limit)
    print(runs_json(runs) if args.json else runs_table(runs))
    return 0


def _sessions_show(args: argparse.Namespace) -> int:
    found = read_run(_store_file(args), args.run_id)
    if found is None:
        print(f"antiphon: no run {args.run_id!r} in the store", file=sys.stderr)
        return 1
    print(transcript_json(*found) if args.json else transcript_text(*found), end="" if not args.json else "\n")
    return 0


# --------------------------------------------------------------------------- chat


def _chat(args: argparse.Namespace) -> int:
    from antiphon.chat.terminal import run_terminal_chat  # noqa: PLC0415 (prompt_toolkit only when chatting)

    secret = args.secret if args.secret is not None else os.environ.get(SECRET_ENV) or None
    code: int = trio.run(
        partial(
            run_terminal_chat, args.url, secret, args.auth, agent=args.agent, secret_env=SECRET_ENV, resume=args.resume
        )
    )
    return code
