"""The tool server: a :class:`~antiphon.tools.ToolApp` served as UTCP WebSocket tools on the session engine.

::

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_tools, app, ServerConfig(port=8765))

Theory of operation
-------------------
UTCP sends a call as a bare frame of arguments - no tool name, no id - so the tool is
chosen by **path**, one per tool: ``ws://host:port/tools/<name>``. That is how go-utcp
dials tools, and it fits how UTCP clients pool (by template, and every tool has its own
template). ``/`` and ``/utcp`` are the **manual** endpoint: a ``{"type": "utcp"}`` frame
there is answered with the manual. On a tool path every frame is arguments, even
``{"type": "utcp"}``: a tool may well take a ``type`` argument. Any other path is refused
at the handshake with 404, an unknown tool included.

Where the manual points. Its templates need a URL the client will dial, and UTCP clients
(antiphon's too) dial ``ws://`` only to loopback. In order: ``public_url`` when set; else
the request's ``Host`` header (``ws://`` + Host, when it is well formed and loopback, or
``wss://`` + Host when this server itself speaks TLS); else the listener's address, when
the client is on this machine (its address is loopback, or unknown). A wildcard address
(``0.0.0.0``, ``::``) is never advertised: it becomes ``127.0.0.1`` / ``::1``. A plain
``ws://`` client reaching the server from another machine gets a ``tool_error`` saying that
``public_url`` must be set (a ``ws://`` URL to a remote host is one no UTCP client
accepts), and a server bound beyond loopback without ``public_url`` logs a warning at
start.

Each connection is a :class:`~antiphon.engine.Session`. Frames are queued (``on_message``
must return at once) and a per-connection worker runs the calls **one at a time, in
order**: replies carry no id, so they must come back in the order the calls came in.
More than ``max_queued_calls`` waiting closes the connection with 1008. A sync tool runs
in a worker thread from the server's own limiter (see :mod:`antiphon.tools.app` for the
thread and timeout bounds), so it never blocks the event loop; an async tool runs in the
session's nursery and is cancelled when the session closes or its call times out.

Replies: a plain tool's result is sent as one JSON TEXT frame. An async generator
tool streams ``{"type": "tool_response", "result": ...}`` frames, then
``{"type": "stream_end"}``. Every failure is one ``{"type": "tool_error", "error": ...}``
frame with a message fit for the peer. Whatever goes wrong inside one call (a tool, a
value that will not serialise, a bug here) ends that call with a ``tool_error``: the
connection takes the next call, and the other connections never notice. The traceback
goes to the server's log, never to the peer.

Auth (``auth``): an :class:`~antiphon.proto.utcp.ApiKeyAuth` (header, query parameter or
cookie named ``var_name``) or a :class:`~antiphon.proto.utcp.BasicAuth`, checked on every
handshake, manual endpoint included, in constant time; a failure is a 401 (with a
``WWW-Authenticate`` challenge for basic).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from typing import Any, Final, cast
from urllib.parse import unquote

import trio

from antiphon.engine.server import (
    Accept,
    HandshakeRequest,
    Reject,
    ServerConfig,
    SessionServer,
)
from antiphon.engine.session import (
    Session,
    SessionConfig,
    SessionHandler,
)
from antiphon.errors import TemplateError, ToolError
from antiphon.proto.close import CloseCode
from antiphon.proto.utcp.message import is_discovery_request
from antiphon.proto.utcp.templates import BasicAuth, encode_manual
from antiphon.proto.utcp.urls import check_ws_url, is_loopback_host
from antiphon.tools.app import MANUAL_PATHS, TOOLS_PATH, ToolApp
from antiphon.tools.schema import ArgumentError, ToolSpec, bind_arguments

__all__ = [
    "MANUAL_PATHS",
    "MAX_ERROR_CHARS",
    "STREAM_END",
    "TOOLS_PATH",
    "ToolServer",
    "serve_tools",
]

log = logging.getLogger("antiphon.tools.server")

STREAM_END: Final = '{"type": "stream_end"}'

MAX_ERROR_CHARS: Final = 16_384
"""A tool_error's text is cut here: error messages are for people, and pages of text are plenty."""

_HOST: Final = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::[0-9]{1,5})?$")
"""A ``Host`` header we are willing to put in a URL: a name or an address, and a port."""

_WILDCARDS: Final = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}
"""Addresses that mean "every interface" when bound: never advertised, loopback instead."""


def _tool_error(error: str) -> str:
    if len(error) > MAX_ERROR_CHARS:
        error = error[: MAX_ERROR_CHARS - 3] + "..."
    return json.dumps({"type": "tool_error", "error": error})


def _text_of(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # an exception whose __str__ fails still fails only its call
        return f"<{type(exc).__name__} whose text cannot be shown>"


class _ThreadSlots:
    """A tool's own :class:`trio.CapacityLimiter` and the server's, held together for one thread.

    Trio takes any "CapacityLimiter-like object" as ``limiter`` and releases it only once
    the thread has really finished, which is what keeps an abandoned (timed-out) sync
    call counted against both its tool and the server for as long as it runs.
    """

    def __init__(self, tool: trio.CapacityLimiter, server: trio.CapacityLimiter) -> None:
        self.tool = tool
        self.server = server

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        await self.tool.acquire_on_behalf_of(borrower)
        try:
            await self.server.acquire_on_behalf_of(borrower)
        except BaseException:
            self.tool.release_on_behalf_of(borrower)
            raise

    def release_on_behalf_of(self, borrower: object) -> None:
        self.server.release_on_behalf_of(borrower)
        self.tool.release_on_behalf_of(borrower)


class _ToolSession(SessionHandler):
    """One connection to the manual endpoint (``spec`` None) or to one tool."""

    def __init__(self, server: ToolServer, spec: ToolSpec | None, base_url: str | None) -> None:
        self.server = server
        self.app = server.app
        self.spec = spec
        self.base_url = base_url
        self._calls_in, self._calls_out = trio.open_memory_channel[str | bytes](self.app.max_queued_calls)

    async def on_open(self, session: Session) -> None:
        session.nursery.start_soon(self._worker, session)

    def on_message(self, session: Session, message: str | bytes) -> None:
        try:
            self._calls_in.send_nowait(message)
        except trio.WouldBlock:
            log.warning("session %s: more than %d calls queued, closing", session.id, self.app.max_queued_calls)
            session.close(CloseCode.POLICY_VIOLATION, "too many calls queued")
        except trio.ClosedResourceError:
            pass

    def on_close(self, session: Session) -> None:
        self._calls_in.close()

    async def _worker(self, session: Session) -> None:
        async for frame in self._calls_out:
            if self.spec is None:
                await self._send(session, self._discovery(frame))
                continue
            try:
                await self._call(session, self.spec, frame)
            except Exception:
                # A bug on our side, or a value nothing above anticipated: this call only.
                log.exception("session %s: call to tool %r failed inside the server", session.id, self.spec.name)
                await self._send(session, _tool_error("the server failed while running the tool"))

    async def _send(self, session: Session, text: str) -> None:
        # json.dumps escapes to ASCII, so characters are bytes here.
        if len(text) > self.app.max_reply_bytes:
            log.warning(
                "session %s: a %d-byte reply is over max_reply_bytes, sent as tool_error", session.id, len(text)
            )
            text = _tool_error(
                f"the reply is {len(text)} bytes, over this server's max_reply_bytes ({self.app.max_reply_bytes})"
            )
        await session.send(text)

    def _discovery(self, frame: str | bytes) -> str:
        if not is_discovery_request(frame):
            return _tool_error(
                'this is the manual endpoint: send {"type": "utcp"} here, and call tools at ' + TOOLS_PATH + "<name>"
            )
        if self.base_url is None:
            return _tool_error(
                "this server has no URL your client may use: it was reached over plain ws:// from another "
                "machine, and UTCP clients dial ws:// only to loopback; its operator must set public_url "
                "(e.g. wss://tools.example.com behind TLS)"
            )
        try:
            return json.dumps(encode_manual(self.app.manual(self.base_url)))
        except TemplateError as exc:
            log.error("cannot build the manual for %s: %s (set public_url)", self.base_url, exc)
            return _tool_error("the server cannot describe its tools: its public URL is not configured")

    async def _call(self, session: Session, spec: ToolSpec, frame: str | bytes) -> None:
        try:
            text = frame if isinstance(frame, str) else frame.decode("utf-8")
            args = json.loads(text)
        except (UnicodeDecodeError, ValueError, RecursionError):
            await self._send(session, _tool_error("the arguments are not JSON text"))
            return
        try:
            kwargs = bind_arguments(spec, args)
        except ArgumentError as exc:
            await self._send(session, _tool_error(f"bad arguments: {exc}"))
            return
        timeout = self.app.call_timeout(spec)
        if spec.kind == "stream":
            await self._stream(session, spec, kwargs, timeout)
            return
        with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            try:
                if spec.kind == "async":
                    result = await spec.fn(**kwargs)
                else:
                    result = await trio.to_thread.run_sync(
                        functools.partial(spec.fn, **kwargs),
                        abandon_on_cancel=True,
                        # A "CapacityLimiter-like object", as trio.to_thread.run_sync documents.
                        limiter=cast(trio.CapacityLimiter, self.server.thread_slots(spec.name)),
                    )
            except (Exception, SystemExit) as exc:  # a tool calling sys.exit() fails its call, not the server
                await self._send(session, self._failure(session, spec, exc))
                return
        if scope.cancelled_caught:
            await self._send(session, self._timed_out(session, spec, timeout))
            return
        await self._send(session, _result_text(spec, result))

    async def _stream(self, session: Session, spec: ToolSpec, kwargs: dict[str, Any], timeout: float | None) -> None:
        results = spec.fn(**kwargs)
        try:
            last = await self._stream_items(session, spec, results, timeout)
        finally:
            try:
                await results.aclose()
            except Exception:  # the generator's own cleanup failed: log it, the reply is already decided
                log.exception("session %s: closing streaming tool %r failed", session.id, spec.name)
        await self._send(session, last)

    async def _stream_items(self, session: Session, spec: ToolSpec, results: Any, timeout: float | None) -> str:
        """Send each result of ``results``; return the frame that ends the stream."""
        while True:
            with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
                try:
                    item = await results.__anext__()
                except StopAsyncIteration:
                    return STREAM_END
                except (Exception, SystemExit) as exc:
                    return self._failure(session, spec, exc)
            if scope.cancelled_caught:
                return self._timed_out(session, spec, timeout, streaming=True)
            try:
                text = json.dumps({"type": "tool_response", "result": item}, allow_nan=False)
            except (TypeError, ValueError, RecursionError):
                return _tool_error("the tool produced a value that is not JSON")
            await self._send(session, text)
            if session.closing:
                return STREAM_END  # nobody to send to: stop the tool (the frame is dropped)
            # A generator that never awaits must not hold the event loop: send() does not
            # checkpoint while there is room.
            await trio.lowlevel.checkpoint()

    def _timed_out(self, session: Session, spec: ToolSpec, timeout: float | None, *, streaming: bool = False) -> str:
        what = "produced no result" if streaming else "did not answer"
        log.warning("session %s: tool %r %s within %g s", session.id, spec.name, what, timeout)
        return _tool_error(f"the tool {what} within {timeout:g} s")

    def _failure(self, session: Session, spec: ToolSpec, exc: BaseException) -> str:
        if isinstance(exc, ToolError):
            log.info("session %s: tool %r reported: %s", session.id, spec.name, _text_of(exc))
            return _tool_error(_text_of(exc))
        log.error("session %s: tool %r failed", session.id, spec.name, exc_info=exc)
        if self.app.expose_errors:
            return _tool_error(f"{type(exc).__name__}: {_text_of(exc)}")
        return _tool_error(f"the tool raised {type(exc).__name__}")


def _result_text(spec: ToolSpec, result: Any) -> str:
    try:
        return json.dumps(result, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        log.error("tool %r returned a %s, which is not JSON", spec.name, type(result).__name__)
        return _tool_error("the tool returned a value that is not JSON")


_REMOTE_ADDRESS: Final = re.compile(r"^\[?([0-9A-Fa-f:.]+?)\]?:[0-9]+$")
"""The peer's IP in ``HandshakeRequest.remote`` (``host:port``, ``[v6]:port``; ``?`` when unknown)."""


def _remote_address(remote: str) -> str | None:
    """The peer's IP address, or None when ``remote`` names none (a memory stream)."""
    match = _REMOTE_ADDRESS.match(remote)
    return match.group(1) if match else None


def _split_host(host: str) -> tuple[str, str]:
    """``("name", ":port")`` of a ``host[:port]`` (the port part may be empty)."""
    if host.startswith("["):
        end = host.find("]") + 1
        return host[:end], host[end:]
    name, colon, port = host.partition(":")
    return name, colon + port


def _binds_beyond_loopback(host: str) -> bool:
    return host in ("", "0.0.0.0", "::", "*") or not is_loopback_host(host)


class ToolServer(SessionServer):
    """A :class:`SessionServer` serving a :class:`ToolApp`; see the module docstring for the layout.

    Owns the thread limiter its sync tools share (``app.max_threads``; ``app.max_threads_per_tool``
    for each tool); :attr:`threads_in_use` counts the threads its tools hold right now.
    """

    def __init__(self, app: ToolApp, config: ServerConfig | None = None, session_config: SessionConfig | None = None):
        self.app = app
        super().__init__(self._route, config, session_config, face="tools")
        self._threads = trio.CapacityLimiter(app.max_threads)
        self._slots: dict[str, _ThreadSlots] = {}
        where = self.config.host or "every interface"
        if _binds_beyond_loopback(self.config.host):
            if app.public_url is None:
                log.warning(
                    "tool server bound to %s without public_url: its manual can point only local clients back "
                    "(UTCP clients dial ws:// only to loopback); set public_url (wss://...) for remote clients",
                    where,
                )
            if app.auth is None:
                log.warning("tool server bound to %s without auth: anyone who reaches it can call every tool", where)

    @property
    def threads_in_use(self) -> int:
        """Worker threads the sync tools hold now, abandoned (timed-out) ones included."""
        return int(self._threads.borrowed_tokens)

    def thread_slots(self, tool: str) -> _ThreadSlots:
        """The limiter a sync call of ``tool`` runs under (its share, then the server's pool)."""
        slots = self._slots.get(tool)
        if slots is None:
            slots = self._slots[tool] = _ThreadSlots(trio.CapacityLimiter(self.app.max_threads_per_tool), self._threads)
        return slots

    def manual_url(self, request: HandshakeRequest) -> str | None:
        """The base URL the manual's templates get for ``request``; None when no usable URL exists.

        ``public_url``; else ``Host`` (when well formed, and loopback unless this server
        speaks TLS); else the listener's address, for a client on this machine only;
        wildcards become loopback. See the module docstring.
        """
        if self.app.public_url is not None:
            return self.app.public_url
        try:
            own = self.url
        except RuntimeError:  # serving a stream, no listener
            own = "ws://127.0.0.1"
        scheme, _, own_host = own.partition("://")
        header = (request.header("Host") or "").strip()
        if _HOST.match(header):
            host = header
        else:
            # No usable Host: the listener's address, which only a client on this machine can dial.
            remote = _remote_address(request.remote)
            if scheme == "ws" and remote is not None and not is_loopback_host(remote):
                return None
            host = own_host
        name, port = _split_host(host)
        try:
            return check_ws_url(f"{scheme}://{_WILDCARDS.get(name, name)}{port}")
        except TemplateError:
            return None

    def _route(self, request: HandshakeRequest, *, full: bool) -> Accept | Reject:
        if not self.app.authorized(request):  # the engine logs the refusal (never the credentials)
            challenge = ((b"WWW-Authenticate", b'Basic realm="antiphon-tools"'),)
            headers = challenge if isinstance(self.app.auth, BasicAuth) else ()
            return Reject(401, b"missing or wrong credentials\n", headers)
        path = request.path
        spec: ToolSpec | None = None
        if path.startswith(TOOLS_PATH):
            name = unquote(path[len(TOOLS_PATH) :])
            spec = self.app.tools.get(name)
            if spec is None:
                return Reject(404, f"no tool named {name[:200]!r}\n".encode("utf-8", "replace"))
        elif path not in MANUAL_PATHS:
            return Reject(404, b"not a tool path: call tools at /tools/<name>, discover at /utcp\n")
        if full:
            return Reject(503, b"the server is at capacity; try again later\n")
        subprotocol = next((p for p in request.subprotocols if p in self.app.subprotocols), None)
        return Accept(_ToolSession(self, spec, self.manual_url(request)), subprotocol=subprotocol)


async def serve_tools(
    app: ToolApp,
    config: ServerConfig | None = None,
    session_config: SessionConfig | None = None,
    *,
    task_status: trio.TaskStatus[ToolServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until cancelled or shut down.

    ``server = await nursery.start(serve_tools, app)`` returns once listening;
    ``server.url`` says where, ``await server.shutdown()`` stops it gracefully.
    """
    server = ToolServer(app, config, session_config)
    # run() reports the server itself, which is this ToolServer.
    await server.run(task_status=cast("trio.TaskStatus[SessionServer]", task_status))
