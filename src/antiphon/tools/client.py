"""The UTCP WebSocket tool client on Trio: call, stream, discover.

::

    async with open_tool_client(variables={"API_KEY": "..."}) as tools:
        result = await tools.call(template, {"text": "hi"})
        async with tools.call_streaming(template, {"n": 3}) as results:
            async for item in results:
                ...
        async with tools.call_results(template, {"n": 3}) as results:   # plain or streaming
            async for item in results:
                ...
        manual = await tools.register_manual(manual_template)     # {"type": "utcp"}
        await tools.call("my_manual.echo", {"text": "hi"})       # a discovered tool by name

:class:`ToolClient` owns a nursery and the connection pool (see :mod:`antiphon.tools.pool`
for the rules that keep replies with their calls). The module-level :func:`call_tool`,
:func:`call_tool_streaming` and :func:`register_manual` open a client for one operation:
handy in scripts, but they never reuse a connection.

What one call does: ``${VAR}`` substitution in the template (``variables``, then the
environment; the ``message`` is left alone), the frame text from
:func:`~antiphon.proto.utcp.message.format_message` (errors surface before anything is
dialled), an OAuth2 token if the template needs one (cached until it expires), the
handshake (headers, auth, ``header_fields``, subprotocol; the URL re-checked just before
dialling; a redirect is never followed), then the frame and the reply.

Timeouts: the template's ``timeout`` bounds the token fetch, the WebSocket handshake, and
the wait for the reply - for a streaming call, the wait for *each* frame. Waiting for a
pooled connection that another call is using is not bounded (calls on one connection
run one after another, in order); wrap the call in ``trio.fail_after`` to bound it too.

Errors, all antiphon's (:mod:`antiphon.errors`):

* :class:`OperationTimeout` - no reply (or next stream frame, token, handshake) in time;
* :class:`ClosedWithoutReply` - the server closed before replying (``code``, ``reason``);
* :class:`ConnectionClosed` - a stream was cut by a close other than 1000/1001;
* :class:`ReplyTooLarge` - a reply frame (or everything :meth:`ToolClient.call` collected
  of a stream) was over the client's ``max_message_size``;
* :class:`HandshakeRejected` - the upgrade got an HTTP status (``status_code``), 3xx included;
* :class:`HandshakeError` - cannot connect, or the OAuth2 token endpoint failed;
* :class:`ToolCallError` - the server answered ``{"type": "tool_error", "error": ...}``;
* :class:`ResponseFormatError` - the reply does not parse as ``response_format`` says;
* :class:`TemplateError` (and its :class:`VariableNotFound`, :class:`PlaceholderError`),
  :class:`LocalProtocolError` - the call cannot be made as given;
* :class:`RemoteProtocolError` / :class:`DecodeError` - a discovered manual is unusable.

A plain call's reply that is a ``tool_error`` object raises :class:`ToolCallError` when the
template's ``response_format`` is ``json`` or unset; the released plugin returns it as a
result. With ``text``/``raw`` the caller asked for the frame as it is, and gets it.

A plain :meth:`ToolClient.call` on a tool that streams reads the *whole* stream and
returns its results as a list (the released plugin returns the first raw
``tool_response`` frame and leaves the rest on the socket for the next call to read).
Every call therefore leaves its connection with nothing unread, in any order of calls.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from typing import Any, Final

import trio

from antiphon.engine._util import open_nursery_unwrapped
from antiphon.engine.session import SessionConfig
from antiphon.errors import (
    LocalProtocolError,
    ReplyTooLarge,
    ToolCallError,
)
from antiphon.proto.close import CloseCode
from antiphon.proto.utcp.message import (
    DISCOVERY_REQUEST,
    Handshake,
    StreamEnd,
    StreamError,
    StreamRaw,
    StreamResult,
    check_discovered_manual,
    format_message,
    handshake_headers,
    interpret_stream_frame,
    parse_discovery_reply,
    parse_response,
)
from antiphon.proto.utcp.templates import (
    OAuth2Auth,
    Tool,
    UtcpManual,
    WebSocketCallTemplate,
)
from antiphon.proto.utcp.urls import check_ws_url
from antiphon.proto.utcp.variables import substitute_variables
from antiphon.tools.oauth import TokenCache
from antiphon.tools.pool import (
    Opener,
    ToolConnection,
    ToolPool,
    closed_error,
    open_handshake,
    run_connection,
)

__all__ = [
    "MAX_MESSAGE_SIZE",
    "ToolClient",
    "ToolRef",
    "call_tool",
    "call_tool_streaming",
    "open_tool_client",
    "register_manual",
]

log = logging.getLogger("antiphon.tools")

MAX_MESSAGE_SIZE: Final = 4 * 1024 * 1024
"""Largest reply frame accepted: aiohttp's default, which utcp-websocket servers are used to."""

_NORMAL_CLOSES: Final = frozenset({CloseCode.NORMAL, CloseCode.GOING_AWAY})
"""Close codes that end a stream normally after it produced frames (go-utcp reads until close)."""

_NON_WORD: Final = re.compile(r"[^\w]")

ToolRef = WebSocketCallTemplate | Tool | str


def _starts_stream(frame: str | bytes) -> bool:
    """True when a reply's first frame is a stream envelope (``tool_response`` or ``stream_end``)."""
    return isinstance(interpret_stream_frame(frame), (StreamResult, StreamEnd))


def _call_error(template: WebSocketCallTemplate, frame: str | bytes) -> None:
    """Raise ToolCallError when ``frame`` is a ``tool_error`` object and the format is JSON-ish."""
    if template.response_format not in ("json", None) or not isinstance(frame, str):
        return
    try:
        doc = json.loads(frame)
    except (ValueError, RecursionError):
        return
    if isinstance(doc, dict) and doc.get("type") == "tool_error":
        raise ToolCallError(template.name, doc.get("error", "Unknown error"))


class ToolClient:
    """Calls UTCP WebSocket tools, pooling connections; made by :func:`open_tool_client`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        variables: Mapping[str, str] | None = None,
        environ: Mapping[str, str] | None = None,
        session_config: SessionConfig | None = None,
        max_message_size: int = MAX_MESSAGE_SIZE,
        tokens: TokenCache | None = None,
        opener: Opener | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if opener is None:
            opener = (
                functools.partial(open_handshake, ssl_context=ssl_context)
                if ssl_context is not None
                else open_handshake
            )
        elif ssl_context is not None:
            raise LocalProtocolError("give either opener or ssl_context: an opener makes its own TLS connections")
        self._nursery = nursery
        self._opener = opener
        self._variables = dict(variables or {})
        self._environ = os.environ if environ is None else environ
        self._max_message_size = max_message_size
        self.pool = ToolPool(nursery, session_config or SessionConfig(), max_message_size, opener)
        self.tokens = tokens or TokenCache()
        self.tools: dict[str, Tool] = {}
        """Tools found by :meth:`register_manual`, as ``"<manual>.<tool>"``."""
        self._closed = False

    # ------------------------------------------------------------------ public API

    async def call(self, tool: ToolRef, args: Mapping[str, Any] | None = None) -> Any:
        """Call ``tool`` (a template, a :class:`Tool`, or a registered ``"manual.tool"`` name) with ``args``.

        Returns the reply frame parsed per ``response_format``. When the reply is a stream
        (its first frame a ``tool_response`` or ``stream_end``), the results are collected
        up to ``stream_end`` and returned as a list, at most ``max_message_size`` bytes of
        frames in all (past that :class:`ReplyTooLarge`, naming :meth:`call_streaming`);
        the connection is then as clean as after any call. Raises what the module
        docstring lists.
        """
        async with self._sent(tool, args) as (conn, template, what):
            frame = await conn.receive(template.timeout, what)
            assert frame is not None
            if _starts_stream(frame):
                stream = self._stream(conn, template, what, first=frame, max_bytes=self._max_message_size)
                async with aclosing(stream) as results:
                    return [item async for item in results]
            conn.end()
        _call_error(template, frame)
        return parse_response(frame, template.response_format)

    @asynccontextmanager
    async def call_results(
        self, tool: ToolRef, args: Mapping[str, Any] | None = None
    ) -> AsyncIterator[AsyncIterator[Any]]:
        """Call ``tool`` and iterate over its results as they arrive, whether it streams or not.

        The first frame decides: a ``tool_response``/``stream_end`` envelope starts a stream,
        read as :meth:`call_streaming` reads it; anything else is a plain reply, the one
        result (as :meth:`call` parses it). This is how antiphon's tool server answers, and
        what ``antiphon tools call`` uses. For a server that streams bare frames without
        envelopes, use :meth:`call_streaming`. Leaving the block early discards a pooled
        connection.
        """
        async with self._sent(tool, args) as (conn, template, what):
            async with aclosing(self._results(conn, template, what)) as results:
                yield results

    @asynccontextmanager
    async def call_streaming(
        self, tool: ToolRef, args: Mapping[str, Any] | None = None
    ) -> AsyncIterator[AsyncIterator[Any]]:
        """Call a streaming tool; yields an iterator over its results.

        ``tool_response`` frames yield their ``result``; ``tool_error`` raises
        :class:`ToolCallError`; ``stream_end`` ends the iteration. Other frames yield as
        ``response_format`` says. The timeout applies to each frame. A close with 1000 or
        1001 after at least one frame ends the stream too; a close before any frame is
        :class:`ClosedWithoutReply`, any other close :class:`ConnectionClosed`. Leaving the
        block before the end discards a pooled connection (its remaining frames are unread).
        """
        async with self._sent(tool, args) as (conn, template, what):
            async with aclosing(self._stream(conn, template, what)) as results:
                yield results

    async def register_manual(self, manual_template: WebSocketCallTemplate) -> UtcpManual:
        """Discover a manual: send ``{"type": "utcp"}``, read the first ``{"tools": [...]}`` reply.

        Other frames are skipped while waiting; the template's timeout bounds the whole
        wait. The tools are kept in :attr:`tools` as ``"<manual name>.<tool>"`` (non-word
        characters of the manual name become ``_``, as in UTCP). A manual read from a remote
        URL may not point tools or token URLs at loopback (:class:`RemoteProtocolError`).
        The discovery connection is closed afterwards.
        """
        template = substitute_variables(manual_template, self._variables, self._environ)
        handshake = await self._handshake(template, {})
        what = f"manual {template.name!r}"
        async with self._fresh(template, handshake) as conn:
            conn.begin()
            await conn.send(DISCOVERY_REQUEST)
            deadline = trio.current_time() + template.timeout
            while True:
                # One deadline for the whole wait, however many frames are skipped.
                frame = await conn.receive(max(deadline - trio.current_time(), 0.0), what, budget_s=template.timeout)
                assert frame is not None
                manual = parse_discovery_reply(frame)
                if manual is not None:
                    break
            conn.end()
        check_discovered_manual(handshake.url, manual)
        prefix = _NON_WORD.sub("_", template.name)
        for t in manual.tools:
            self.tools[f"{prefix}.{t.name}"] = t
        return manual

    async def aclose(self) -> None:
        """Close every pooled connection (1000) and wait for them; the client is unusable after."""
        self._closed = True
        sessions = self.pool.close_all()
        with trio.CancelScope(shield=True):
            for session in sessions:
                await session.done.wait()
        self.tokens.clear()

    # ------------------------------------------------------------------ internals

    def _template(self, tool: ToolRef) -> WebSocketCallTemplate:
        if self._closed:
            raise LocalProtocolError("the tool client is closed")
        if isinstance(tool, str):
            found = self.tools.get(tool)
            if found is None:
                raise LocalProtocolError(f"no registered tool {tool!r}: call register_manual first")
            tool = found
        template = tool.tool_call_template if isinstance(tool, Tool) else tool
        return substitute_variables(template, self._variables, self._environ)

    async def _handshake(self, template: WebSocketCallTemplate, args: Mapping[str, Any]) -> Handshake:
        token = None
        if isinstance(template.auth, OAuth2Auth):
            token = await self.tokens.token(template.auth, timeout_s=template.timeout)
        handshake = handshake_headers(template, args, bearer_token=token)
        check_ws_url(handshake.url)  # again, on the URL really dialled
        return handshake

    @asynccontextmanager
    async def _sent(
        self, tool: ToolRef, args: Mapping[str, Any] | None
    ) -> AsyncIterator[tuple[ToolConnection, WebSocketCallTemplate, str]]:
        """The call's message sent on a leased connection; yields it, the template and the call's name for errors."""
        template = self._template(tool)
        args = dict(args or {})
        message = format_message(template, args)
        handshake = await self._handshake(template, args)
        async with self._lease(template, handshake) as conn:
            conn.begin()
            await conn.send(message)
            yield conn, template, f"tool {template.name!r}"

    @asynccontextmanager
    async def _lease(self, template: WebSocketCallTemplate, handshake: Handshake) -> AsyncIterator[ToolConnection]:
        if not template.keep_alive:
            async with self._fresh(template, handshake) as conn:
                yield conn
            return
        entry = self.pool.entry(handshake)
        async with entry.lock:
            conn = await self.pool.connection(entry, handshake, template.timeout)
            try:
                yield conn
            finally:
                if conn.in_call:
                    # Timeout, cancellation, an abandoned stream: a reply may still be on its way.
                    conn.discard("call did not complete")
                if entry.connection is conn and not conn.usable:
                    entry.connection = None

    @asynccontextmanager
    async def _fresh(self, template: WebSocketCallTemplate, handshake: Handshake) -> AsyncIterator[ToolConnection]:
        """A connection for one operation (no heartbeat), closed with 1000 afterwards."""
        conn = ToolConnection(handshake.url.partition("?")[0], self._max_message_size)
        async with open_nursery_unwrapped() as nursery:
            await nursery.start(
                lambda task_status: run_connection(
                    conn,
                    handshake,
                    connect_timeout_s=template.timeout,
                    session_config=SessionConfig(ping_interval_s=None, ping_timeout_s=None),
                    max_message_size=self._max_message_size,
                    opener=self._opener,
                    task_status=task_status,
                )
            )
            try:
                yield conn
            finally:
                conn.discard("call complete")

    async def _results(
        self, conn: ToolConnection, template: WebSocketCallTemplate, what: str
    ) -> AsyncGenerator[Any, None]:
        frame = await conn.receive(template.timeout, what)
        assert frame is not None
        if _starts_stream(frame):
            async with aclosing(self._stream(conn, template, what, first=frame)) as results:
                async for item in results:
                    yield item
            return
        conn.end()
        _call_error(template, frame)
        yield parse_response(frame, template.response_format)

    async def _stream(
        self,
        conn: ToolConnection,
        template: WebSocketCallTemplate,
        what: str,
        *,
        first: str | bytes | None = None,
        max_bytes: int | None = None,
    ) -> AsyncGenerator[Any, None]:
        """The results of a stream whose first frame may already have been read; ``max_bytes`` bounds them all."""
        got_frame = False
        total = 0
        while True:
            if first is not None:
                frame: str | bytes | None = first
                first = None
            else:
                frame = await conn.receive(template.timeout, what, replied=got_frame)
            if frame is None:
                session = conn.session
                code = (
                    session.close_code if session is not None and session.close_code is not None else CloseCode.ABNORMAL
                )
                conn.end()
                if code in _NORMAL_CLOSES:
                    return
                raise closed_error(session, what, limit=conn.max_message_size, replied=True)
            got_frame = True
            if max_bytes is not None:
                total += (
                    len(frame) if isinstance(frame, bytes) or frame.isascii() else len(frame.encode("utf-8", "replace"))
                )
                if total > max_bytes:
                    conn.discard("streamed reply too big", CloseCode.MESSAGE_TOO_BIG)
                    raise ReplyTooLarge(
                        CloseCode.MESSAGE_TOO_BIG,
                        "streamed reply too big",
                        f"{what}: the streamed reply exceeded this client's max_message_size ({max_bytes} bytes) "
                        f"before stream_end; use call_streaming to take it item by item",
                        limit=max_bytes,
                    )
            event = interpret_stream_frame(frame)
            if isinstance(event, StreamResult):
                yield event.value
            elif isinstance(event, StreamError):
                conn.end()  # the tool's stream is over; the connection stays usable
                raise ToolCallError(template.name, event.error)
            elif isinstance(event, StreamEnd):
                conn.end()
                return
            else:
                assert isinstance(event, StreamRaw)
                yield parse_response(event.frame, template.response_format)


@asynccontextmanager
async def open_tool_client(
    *,
    variables: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    session_config: SessionConfig | None = None,
    max_message_size: int = MAX_MESSAGE_SIZE,
    opener: Opener | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[ToolClient]:
    """Yield a :class:`ToolClient`; every connection it opened is closed (1000) on exit.

    ``variables`` fill ``${VAR}``/``$VAR`` in templates before the environment (``environ``,
    default ``os.environ``) does. ``session_config`` sets the pooled connections'
    heartbeat (default 20 s ping, 20 s pong timeout). ``ssl_context`` verifies ``wss://``
    servers (None: the system's CAs and ``SSL_CERT_FILE``). ``opener`` replaces how a
    socket is opened (tests: over memory streams). A lone exception escapes unwrapped.
    """
    async with open_nursery_unwrapped() as nursery:
        client = ToolClient(
            nursery,
            variables=variables,
            environ=environ,
            session_config=session_config,
            max_message_size=max_message_size,
            opener=opener,
            ssl_context=ssl_context,
        )
        try:
            yield client
        finally:
            await client.aclose()
            nursery.cancel_scope.cancel()


async def call_tool(
    template: WebSocketCallTemplate | Tool,
    args: Mapping[str, Any] | None = None,
    *,
    variables: Mapping[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Any:
    """Call one tool on a connection of its own (see :meth:`ToolClient.call`)."""
    async with open_tool_client(variables=variables, ssl_context=ssl_context) as tools:
        return await tools.call(template, args)


@asynccontextmanager
async def call_tool_streaming(
    template: WebSocketCallTemplate | Tool,
    args: Mapping[str, Any] | None = None,
    *,
    variables: Mapping[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[AsyncIterator[Any]]:
    """Stream one tool's results on a connection of its own (see :meth:`ToolClient.call_streaming`)."""
    async with open_tool_client(variables=variables, ssl_context=ssl_context) as tools:
        async with tools.call_streaming(template, args) as results:
            yield results


async def register_manual(
    manual_template: WebSocketCallTemplate,
    *,
    variables: Mapping[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> UtcpManual:
    """Discover a manual on a connection of its own (see :meth:`ToolClient.register_manual`)."""
    async with open_tool_client(variables=variables, ssl_context=ssl_context) as tools:
        return await tools.register_manual(manual_template)
