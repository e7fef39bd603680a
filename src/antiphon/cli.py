"""The ``antiphon`` command: argument parsing and wiring only; the work is the library's."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

import attrs
import trio

from antiphon.chat.config import ConnectorSpec, GatewaySetup, GatewaySpec, build, load_file
from antiphon.chat.gateway import ChatGateway
from antiphon.errors import AntiphonError

__all__ = ["main"]

SECRET_ENV = "ANTIPHON_SECRET"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="antiphon", description="Trio WebSocket sessions: chat, tools, media.")
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
    serve.add_argument("--config", metavar="FILE", help="a TOML file; it can mount several connectors")
    serve.set_defaults(run=_serve)

    chat = sub.add_parser("chat", help="talk to a chat gateway from the terminal")
    chat.add_argument("url", help="the gateway's ws:// or wss:// URL")
    chat.add_argument("--secret", help=f"the secret (default: ${SECRET_ENV})")
    chat.add_argument("--auth", choices=["message", "header", "query"], default="message", help="how to send the secret")
    chat.set_defaults(run=_chat)
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
    server_flags = {"host": args.host, "port": args.port, "shutdown_grace": args.shutdown_grace}
    return attrs.evolve(spec, **{k: v for k, v in server_flags.items() if v is not None})


def _serve(args: argparse.Namespace) -> int:
    setup = build(_gateway_spec(args), os.environ)
    trio.run(_run_gateway, setup)
    return 0


async def _run_gateway(setup: GatewaySetup) -> None:
    gateway = ChatGateway(setup.connectors, setup.server, setup.session)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(gateway.run)
            for path, secret in setup.generated_secrets.items():
                print(f"antiphon: generated secret for {path}: {secret}", flush=True)
            paths = " ".join(sorted(gateway.connectors))
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


async def _stop_on_second_signal(signals: trio.abc.ReceiveChannel[int], scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
        return


# --------------------------------------------------------------------------- chat


def _chat(args: argparse.Namespace) -> int:
    from antiphon.chat.terminal import run_terminal_chat

    secret = args.secret if args.secret is not None else os.environ.get(SECRET_ENV)
    trio.run(run_terminal_chat, args.url, secret, args.auth)
    return 0
