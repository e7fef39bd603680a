"""Autobahn conformance of the engine: an echo app on SessionServer, driven by kosoku's fuzzing client.

``python -m benchmarks.autobahn`` runs every case of the Autobahn TestSuite (kosoku runs
Autobahn's own case files under Python 3) against :class:`EchoHandler` served by
:class:`~antiphon.engine.server.SessionServer` on 127.0.0.1, with permessage-deflate
offered (``--compression none`` turns it off: then 12.x/13.x are UNIMPLEMENTED, as
they must be), and writes kosoku's Autobahn-format report (``index.html``,
``index.json``, one file per case) plus ``summary.json`` and ``summary.md`` (counts per
section and verdict) to ``--out``. It is bounded: the run stops by itself after
``--timeout-s`` (the whole suite takes a few minutes on two cores). Exit status 0 when
no case FAILED, 1 otherwise. Needs ``pip install -e '.[test]'`` (kosoku is in the test
extra).

``--side client`` tests the engine's client instead: kosoku's fuzzing server on
127.0.0.1, and :func:`drive_echo_client` connecting to each case with
``connect_websocket`` (deflate offered) and echoing in a session.

The same :func:`run_suite` and :func:`run_client_suite` back the CI subsets
(``tests/engine/test_autobahn.py``). The engine runs in a thread of its own
(``trio.run``), kosoku in asyncio in the caller's thread; they meet only over a loopback
socket.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import trio

from antiphon.engine.connect import connect_websocket
from antiphon.engine.server import (
    Accept,
    HandshakeRequest,
    Reject,
    ServerConfig,
    SessionServer,
)
from antiphon.engine.session import Session, SessionConfig, SessionHandler
from antiphon.errors import AntiphonError

__all__ = [
    "NOT_OK",
    "EchoHandler",
    "SuiteResult",
    "TrioThread",
    "drive_echo_client",
    "echo_server",
    "run_client_suite",
    "run_suite",
    "serve_echo",
    "trio_thread",
]

MIB: Final = 1024 * 1024
MAX_MESSAGE_SIZE_BYTES: Final = 32 * MIB
"""Above the largest Autobahn message (9.1.6 and 9.2.6: 16 MiB), so 9.x measures echoing, not refusing."""
SEND_BUFFER_MAX_BYTES: Final = 64 * MIB
"""Room for 9.x's bursts of large echoes while kosoku reads them back."""
DEFAULT_TIMEOUT_S: Final = 900.0
"""The full run's bound: a few minutes are expected on two cores; past this the run is abandoned."""
THREAD_START_TIMEOUT_S: Final = 10.0
"""How long the echo server may take to bind its listener (and either side's thread to stop)."""
ACCEPTABLE: Final = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})
"""Verdicts that pass (kosoku's ``CaseResult.passed``); UNIMPLEMENTED is acceptable only where a feature is off."""


NOT_OK: Final[dict[str, tuple[str, str]]] = {
    **dict.fromkeys(
        ("3.2", "3.3", "3.4", "4.1.3", "4.1.4", "4.1.5", "4.2.3", "4.2.4", "4.2.5", "5.15"),
        (
            "NON-STRICT",
            "the violation comes in the same read as a valid message before it: websockets' parser fails the"
            " connection while parsing that read, so the echo of the earlier message is dropped (RFC 6455 lets an"
            " endpoint fail at once; websockets' own servers score the same)",
        ),
    ),
    **dict.fromkeys(
        ("6.4.3", "6.4.4"),
        (
            "NON-STRICT",
            "the bad UTF-8 arrives mid-frame, in chops of one frame: websockets parses whole frames, so it is caught"
            " when the frame is complete; per-fragment fail-fast (6.4.1, 6.4.2) is strict",
        ),
    ),
    "7.1.6": ("INFORMATIONAL", "the close frame was handled before the large echo could be returned"),
    **dict.fromkeys(("7.13.1", "7.13.2"), ("INFORMATIONAL", "close codes 5000 and 65535 are unassigned: answered with 1002")),
}
"""Cases that are acceptable but not OK with deflate on, the verdict each gets and why; every other case is OK."""


class EchoHandler(SessionHandler):
    """Sends every message back as it came (text as text, binary as binary)."""

    def on_message(self, session: Session, message: str | bytes) -> None:
        session.send_nowait(message)


def _route(request: HandshakeRequest, *, full: bool) -> Accept | Reject:
    return Accept(EchoHandler())


def echo_server(port: int = 0, *, compression: str | None = "deflate") -> SessionServer:
    """The echo app: a SessionServer on 127.0.0.1 with Autobahn-sized limits."""
    config = ServerConfig(host="127.0.0.1", port=port, max_message_size=MAX_MESSAGE_SIZE_BYTES, compression=compression)
    return SessionServer(_route, config, _session_config())


def _session_config() -> SessionConfig:
    return SessionConfig(
        ping_interval_s=None,  # kosoku measures pings it sends, not ours
        send_buffer_high_bytes=MAX_MESSAGE_SIZE_BYTES,
        send_buffer_max_bytes=SEND_BUFFER_MAX_BYTES,
        close_timeout_s=5.0,
    )


class TrioThread:
    """A Trio run in a thread of its own (see :func:`trio_thread`)."""

    def __init__(self) -> None:
        self.value: object = None
        """What the started function passed to ``task_status.started()``."""
        self.ended = threading.Event()
        """Set once the Trio run is over."""
        self.error: BaseException | None = None


@contextmanager
def trio_thread(async_fn: Callable[..., Awaitable[object]], *args: object, name: str) -> Iterator[TrioThread]:
    """Run ``await nursery.start(async_fn, *args)`` under ``trio.run`` in a thread; yield it once started.

    On exit the Trio run is cancelled (if it has not ended) and joined; its failure, if
    any, is raised here.
    """
    handle, started = TrioThread(), threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            handle.value = await nursery.start(async_fn, *args)
            box["token"], box["cancel"] = trio.lowlevel.current_trio_token(), nursery.cancel_scope.cancel
            started.set()

    def thread_main() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller's thread
            handle.error = exc
        finally:
            started.set()
            handle.ended.set()

    thread = threading.Thread(target=thread_main, name=name, daemon=True)
    thread.start()
    if not started.wait(THREAD_START_TIMEOUT_S) or "token" not in box:
        raise RuntimeError(f"{name} did not start: {handle.error!r}")
    try:
        yield handle
    finally:
        try:
            trio.from_thread.run_sync(box["cancel"], trio_token=box["token"])
        except trio.RunFinishedError:
            pass  # it ended by itself
        thread.join(THREAD_START_TIMEOUT_S)
        if handle.error is not None:
            raise RuntimeError(f"{name} failed") from handle.error


@contextmanager
def serve_echo(*, compression: str | None = "deflate") -> Iterator[str]:
    """Run the echo app in a thread of its own; yields its ``ws://`` URL, stops it on exit."""
    with trio_thread(echo_server(compression=compression).run, name="autobahn echo server") as thread:
        assert isinstance(thread.value, SessionServer)
        yield thread.value.url


class _CaseCount(SessionHandler):
    def __init__(self) -> None:
        self.count = 0

    def on_message(self, session: Session, message: str | bytes) -> None:
        self.count = int(message)


async def drive_echo_client(
    port: int, compression: str | None, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Play Autobahn's client side: every case kosoku's fuzzing server offers, through connect_websocket and an echo session."""
    task_status.started()
    base, config = f"ws://127.0.0.1:{port}", _session_config()
    count = _CaseCount()
    await Session(await connect_websocket(f"{base}/getCaseCount"), config).run(count)
    for case in range(1, count.count + 1):
        try:
            wire = await connect_websocket(
                f"{base}/runCase?case={case}&agent=antiphon", max_message_size=MAX_MESSAGE_SIZE_BYTES, compression=compression
            )
        except AntiphonError:
            continue  # kosoku records the case
        await Session(wire, config).run(EchoHandler())
    await Session(await connect_websocket(f"{base}/updateReports?agent=antiphon"), config).run(SessionHandler())


class SuiteResult:
    """kosoku's per-case results, with counts per section and verdict."""

    def __init__(self, results: Sequence[Any], *, seconds: float, timed_out: bool = False) -> None:
        self.results = list(results)
        self.seconds = seconds
        self.timed_out = timed_out

    def verdict(self, result: Any) -> str:
        """One word per case: the worse of kosoku's behaviour and close verdicts."""
        behavior = result.behavior.value
        close = result.behavior_close.value
        if behavior not in ACCEPTABLE:
            return str(behavior)
        if close not in ACCEPTABLE:
            return "FAILED"  # a wrong close code or an unclean close where a clean one is required
        return str(behavior)

    @property
    def by_section(self) -> dict[str, dict[str, int]]:
        """``{"1": {"OK": 16}, "12": {...}}``, sections in numeric order."""
        counts: dict[str, collections.Counter[str]] = {}
        for result in self.results:
            section = result.case_id.split(".")[0]
            counts.setdefault(section, collections.Counter())[self.verdict(result)] += 1
        return {s: dict(sorted(counts[s].items())) for s in sorted(counts, key=int)}

    @property
    def failed(self) -> list[Any]:
        """Cases whose verdict is neither acceptable nor UNIMPLEMENTED."""
        return [r for r in self.results if self.verdict(r) not in ACCEPTABLE | {"UNIMPLEMENTED"}]

    def describe(self, result: Any) -> str:
        """One line on a case, for a failure message."""
        return (
            f"{result.case_id}: {result.behavior.value}/{result.behavior_close.value}"
            f" ({result.result} {result.result_close}; close {result.remote_close_code})"
        )


def run_suite(
    cases: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    compression: str | None = "deflate",
    parallelism: int = 1,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> SuiteResult:
    """Serve the echo app and drive the selected cases (globs like ``"9.*"``) against it."""
    import kosoku

    async def drive(url: str) -> list[Any]:
        try:
            return list(await kosoku.run_fuzzingclient(url, cases, exclude, concurrency=parallelism))
        except kosoku.FailureError as failure:
            return failure.results

    t0 = time.monotonic()
    with serve_echo(compression=compression) as url:
        try:
            results = asyncio.run(asyncio.wait_for(drive(url), timeout_s))
        except TimeoutError:
            return SuiteResult([], seconds=time.monotonic() - t0, timed_out=True)
    return SuiteResult(results, seconds=time.monotonic() - t0)


def run_client_suite(
    cases: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    compression: str | None = "deflate",
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> SuiteResult:
    """The client side: kosoku's fuzzing server on 127.0.0.1, the engine's client (connect_websocket) echoing its cases."""
    import kosoku

    async def serve_cases() -> list[Any]:
        results: list[Any] = []
        async with kosoku.run_fuzzingserver(cases, exclude, host="127.0.0.1", port=0) as server:
            with trio_thread(drive_echo_client, server.port, compression, name="autobahn echo client") as client:
                try:
                    results = list(await server.get_result())
                except kosoku.FailureError as failure:
                    results = failure.results
                # Let the client finish its last connection before kosoku's server goes:
                # tearing it down under an open connection aborted the process now and then.
                await asyncio.to_thread(client.ended.wait, THREAD_START_TIMEOUT_S)
        return results

    t0 = time.monotonic()
    try:
        results = asyncio.run(asyncio.wait_for(serve_cases(), timeout_s))
    except TimeoutError:
        return SuiteResult([], seconds=time.monotonic() - t0, timed_out=True)
    return SuiteResult(results, seconds=time.monotonic() - t0)


def _markdown(suite: SuiteResult, compression: str | None, side: str) -> str:
    verdicts = sorted({v for counts in suite.by_section.values() for v in counts})
    lines = [
        f"# Autobahn TestSuite against antiphon's engine: the {side} side (echo app, compression={compression})",
        "",
        f"{len(suite.results)} cases in {suite.seconds:.0f} s; {len(suite.failed)} failed.",
        "",
        "| section | " + " | ".join(verdicts) + " |",
        "|---" * (len(verdicts) + 1) + "|",
    ]
    for section, counts in suite.by_section.items():
        lines.append(f"| {section} | " + " | ".join(str(counts.get(v, 0)) for v in verdicts) + " |")
    not_ok = [r for r in suite.results if suite.verdict(r) != "OK"]
    if not_ok:
        lines += ["", "Cases not OK:", ""]
        for r in not_ok:
            why = NOT_OK.get(r.case_id)
            lines.append(f"- {suite.describe(r)}" + (f" - why: {why[1]}" if why and why[0] == suite.verdict(r) else ""))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.autobahn", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cases", action="append", metavar="GLOB", help="case ids or globs (default: all)")
    parser.add_argument("--exclude", action="append", metavar="GLOB", help="case ids or globs to leave out")
    parser.add_argument("--side", choices=("server", "client"), default="server", help="test the engine's server (default) or its client")
    parser.add_argument("--compression", choices=("deflate", "none"), default="deflate")
    parser.add_argument("--parallelism", type=int, default=2, help="cases run at once (default: 2)")
    parser.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument("--out", type=Path, default=Path("reports/autobahn"), help="report folder (default: reports/autobahn)")
    args = parser.parse_args(argv)
    try:
        import kosoku._report as kosoku_report
    except ImportError:
        print("kosoku is not installed: pip install -e '.[test]'", file=sys.stderr)
        return 2
    compression = None if args.compression == "none" else args.compression
    if args.side == "server":
        suite = run_suite(args.cases, args.exclude, compression=compression, parallelism=args.parallelism, timeout_s=args.timeout_s)
    else:
        suite = run_client_suite(args.cases, args.exclude, compression=compression, timeout_s=args.timeout_s)
    if suite.timed_out:
        print(f"the run did not finish within {args.timeout_s:g} s", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    kosoku_report.write_reports(suite.results, str(args.out))
    summary = {
        "side": args.side,
        "compression": compression,
        "cases": len(suite.results),
        "seconds": round(suite.seconds, 1),
        "by_section": suite.by_section,
        "failed": [suite.describe(r) for r in suite.failed],
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = _markdown(suite, compression, args.side)
    (args.out / "summary.md").write_text(text)
    print(text)
    return 1 if suite.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
