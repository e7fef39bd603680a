"""The ``antiphon`` command: argument parsing and wiring only; the work is the library's."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import attrs
import trio

from antiphon import __version__
from antiphon.chat.config import (
    ConnectorSpec,
    GatewaySetup,
    GatewaySpec,
    build,
    load_file,
    store_location,
)
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
from antiphon.errors import AntiphonError
from antiphon.tuning import tune_gc

__all__ = ["main"]

SECRET_ENV = "ANTIPHON_SECRET"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="antiphon", description="Trio WebSocket sessions: chat, tools, media.")
    parser.add_argument("--version", action="version", version=f"antiphon {__version__}")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the chat gateway")
    serve.add_argument("--host", help="interface to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind; 0 picks a free one (default: 8765)")
    serve.add_argument("--secret", help=f"the clients' secret (default: ${SECRET_ENV}, else one is generated)")
    serve.add_argument("--no-auth", action="store_true", help="accept clients without a secret")
    serve.add_argument("--no-streaming", action="store_true", help="send one `response` instead of a stream")
    serve.add_argument("--session-timeout", type=float, metavar="S", help="inactivity timeout, 60-86400 s (default: 3600)")
    serve.add_argument("--max-messages", type=int, metavar="N", help="messages per session, 1-10000 (default: 100)")
    serve.add_argument("--agent", metavar="MODULE:FUNCTION", help="the agent to serve (default: the demo agent)")
    serve.add_argument("--path", help="the path to serve at (default: /)")
    serve.add_argument("--shutdown-grace", type=float, metavar="S", help="time running turns get to finish on SIGINT/SIGTERM (default: 10)")
    serve.add_argument("--resume-grace", type=float, metavar="S", help="how long a dropped run waits for a resume (default: 60; 0: off)")
    serve.add_argument("--store", metavar="STORE", help="transcript store: a SQLite file, a postgresql://user@host/db URL, 'memory' or 'none' (default: $ANTIPHON_STORE or ~/.local/state/antiphon/transcripts.db)")
    serve.add_argument("--retention-days", type=float, metavar="D", help="delete transcripts idle this long (default: 30; 0: never)")
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
    chat.add_argument("--auth", choices=["message", "header", "query"], default="message", help="how to send the secret")
    chat.set_defaults(run=_chat)

    from antiphon.tools.cli import add_commands as add_tool_commands  # noqa: PLC0415 (the tools face owns its flags)

    add_tool_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``antiphon`` console script and ``python -m antiphon``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code = args.run(args)
    except AntiphonError as exc:
        print(f"antiphon: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


# --------------------------------------------------------------------------- serve


def _gateway_spec(args: argparse.Namespace) -> GatewaySpec:
    connector_flags = {
        "secret": args.secret,
        "require_auth": False if args.no_auth else None,
        "streaming": False if args.no_streaming else None,
        "session_timeout": args.session_timeout,
        "max_messages": args.max_messages,
        "agent": args.agent,
        "path": args.path,
        "resume_grace": args.resume_grace,
    }
    given = {k: v for k, v in connector_flags.items() if v is not None}
    if args.config:
        spec = load_file(args.config)
        if given:
            names = ", ".join("--" + k.replace("_", "-") for k in given)
            raise AntiphonError(f"{names}: set these in the config file when --config is given")
    else:
        if "secret" not in given and SECRET_ENV in os.environ and not args.no_auth:
            given["secret"] = os.environ[SECRET_ENV]
        spec = GatewaySpec(connectors=[ConnectorSpec(**given)])
    server_flags = {
        "host": args.host,
        "port": args.port,
        "shutdown_grace": args.shutdown_grace,
        "store": args.store,
        "retention_days": args.retention_days,
    }
    return attrs.evolve(spec, **{k: v for k, v in server_flags.items() if v is not None})


def _serve(args: argparse.Namespace) -> int:
    setup = build(_gateway_spec(args), os.environ)
    tune_gc()
    trio.run(_run_gateway, setup)
    return 0


async def _run_gateway(setup: GatewaySetup) -> None:
    if setup.store is None:
        await _serve_gateway(setup, None)
        return
    async with open_store(setup.store) as store:
        await _serve_gateway(setup, store)


async def _serve_gateway(setup: GatewaySetup, store: TranscriptStore | None) -> None:
    gateway = ChatGateway(setup.connectors, setup.server, setup.session, store=store, retention_s=setup.retention_s)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(gateway.run)
            for path, secret in setup.generated_secrets.items():
                print(f"antiphon: generated secret for {path}: {secret}", flush=True)
            paths = " ".join(sorted(gateway.connectors))
            where = setup.store if setup.store is not None else "nowhere"
            logging.getLogger("antiphon").info("transcripts: %s", where)
            print(f"antiphon: chat gateway listening on {gateway.url} (paths: {paths})", flush=True)
            async for signum in signals:
                logging.getLogger("antiphon").info(
                    "%s: shutting down gracefully within %gs (send it again to stop at once)",
                    signal.Signals(signum).name,
                    setup.server.shutdown_grace_s,
                )
                break
            nursery.start_soon(_stop_on_second_signal, signals, nursery.cancel_scope)
            await gateway.shutdown()
            nursery.cancel_scope.cancel()


async def _stop_on_second_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
        return


# --------------------------------------------------------------------------- sessions


def _store_file(args: argparse.Namespace) -> Path | PostgresUrl:
    location: StoreLocation | None = store_location(args.store)
    if not isinstance(location, Path | PostgresUrl):
        raise AntiphonError(f"--store {args.store}: only a SQLite file or a PostgreSQL database keeps transcripts to read")
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
    from antiphon.chat.terminal import run_terminal_chat

    secret = args.secret if args.secret is not None else os.environ.get(SECRET_ENV)
    trio.run(run_terminal_chat, args.url, secret, args.auth)
    return 0
