"""The wire: one WebSocket connection's frames, driven from the session's own tasks.

Theory of operation
-------------------
A :class:`Wire` is what a :class:`~antiphon.engine.session.Session` talks to. It owns no
task. The session's receive task calls :meth:`Wire.receive`, which reads once from the
transport and returns the whole messages (and pongs) that arrived; whatever task
produced an outgoing message calls :meth:`Wire.send_message`, which frames it and, when
the transport can write without waiting and nothing is queued before it, writes it at
once (:meth:`Wire.flush`). Only bytes the kernel would not take stay buffered, and then
the session's writer task empties the buffer with :meth:`Wire.drain`. So the hot path -
a message in, its answer out - runs in one task with no hand-off and no wake-up.

:class:`WebSocketWire` drives websockets' sans-I/O ``Protocol`` (``ServerProtocol`` /
``ClientProtocol``): framing and C-accelerated masking, size limits, permessage-deflate
with inflation bounded by ``max_size``, control frames answered per RFC 6455 (pings get
pongs, close frames an echo), protocol violations failed with 1002, an oversized
message with 1009. One answer is the wire's own: a close frame that interrupts a
fragmented message is echoed like any other, where websockets would answer 1002.
websockets leaves message assembly and UTF-8 checks to its I/O layers, so this one
does them: fragments join up to ``max_message_size``, each fragment also counting
:data:`FRAGMENT_OVERHEAD_BYTES` so a flood of empty continuations is bounded too, and
text is decoded as it arrives, so invalid UTF-8 fails the connection with 1007 at the
first bad fragment.

Every byte the protocol writes - our messages, its pongs and close frames - goes
through one buffer, so the session's bound on buffered bytes covers a peer that floods
pings and never reads the pongs, too.
"""

from __future__ import annotations

import codecs
import logging
from collections import deque
from typing import Final

import trio
from websockets.exceptions import InvalidState, ProtocolError
from websockets.frames import Frame, Opcode
from websockets.protocol import CLIENT, CLOSED, OPEN, Protocol

from antiphon.engine.transport import Transport, TransportBroken
from antiphon.proto.close import CloseCode

__all__ = [
    "FRAGMENT_OVERHEAD_BYTES",
    "PROTOCOL_LOGGER",
    "Incoming",
    "Pong",
    "WebSocketWire",
    "Wire",
    "WireClosed",
]

FRAGMENT_OVERHEAD_BYTES: Final = 64
"""What each fragment of a message counts against ``max_message_size`` beyond its payload."""

_TEXT: Final = Opcode.TEXT
_BINARY: Final = Opcode.BINARY
_CONT: Final = Opcode.CONT
_PONG: Final = Opcode.PONG
_CLOSE: Final = Opcode.CLOSE
_UTF8Decoder = codecs.getincrementaldecoder("utf-8")


class _QuietLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Passes on warnings and errors only.

    websockets logs every handshake line at DEBUG (headers and query string, where a
    secret may travel) and "connection open" / "connection rejected" at INFO for every
    connection; antiphon logs its own connection lines, without secrets.
    """

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.WARNING and self.logger.isEnabledFor(level)


PROTOCOL_LOGGER: Final = _QuietLogger(logging.getLogger("antiphon.wire"), {})
"""The logger every websockets ``Protocol`` the engine makes gets (with ``debug`` off)."""


class Pong:
    """A pong arrived (the answer to our heartbeat ping)."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


Incoming = str | bytes | Pong


class WireClosed(Exception):
    """The connection is over: ``code`` and ``reason`` as the closing side gave them."""

    def __init__(self, code: int, reason: str, *, by_peer: bool) -> None:
        super().__init__(f"closed with {code} ({reason})" if reason else f"closed with {code}")
        self.code = code
        self.reason = reason
        self.by_peer = by_peer


class Wire:
    """What a session needs of a connection; see the module docstring."""

    subprotocol: str | None = None
    remote: str = "?"
    can_try_write: bool = False
    """True when :meth:`flush` can write without waiting; else the writer task does every write."""

    def __init__(self) -> None:
        self.buffered = 0
        """Outgoing bytes not yet handed to the network."""

    @property
    def bytes_in(self) -> int:
        """Bytes read from the network so far, the opening handshake included (for metrics)."""
        return 0

    @property
    def bytes_out(self) -> int:
        """Bytes handed to the network so far, the opening handshake included (for metrics)."""
        return 0

    def send_message(self, data: str | bytes, *, flush: bool = True) -> None:
        """Frame ``data``; with ``flush``, write it now if the transport takes it (see :meth:`flush`)."""
        raise NotImplementedError

    def send_ping(self, payload: bytes) -> None:
        """Send a ping now; its pong comes back from :meth:`receive`."""
        raise NotImplementedError

    def flush(self) -> bool:
        """Write buffered bytes without waiting, as far as the transport takes them; True when none are left."""
        raise NotImplementedError

    async def drain(self) -> None:
        """Write every buffered byte, waiting for the network as needed (the writer task's job)."""
        raise NotImplementedError

    async def receive(self) -> list[Incoming]:
        """Read once; the messages and pongs that arrived. Raises :class:`WireClosed` when it is over."""
        raise NotImplementedError

    def start_close(self, code: int, reason: str) -> None:
        """Queue our close frame after whatever is buffered; :meth:`receive` then runs to the end."""
        raise NotImplementedError

    def discard_buffer(self) -> None:
        """Forget buffered messages (a close without flush), except the rest of one already partly written."""

    async def finish(self) -> None:
        """Write what is buffered (the close frame), then wait for the peer's end of the closing handshake."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close the transport; idempotent."""
        raise NotImplementedError

    @property
    def closed(self) -> WireClosed | None:
        """How the connection ended, once it has."""
        raise NotImplementedError


class WebSocketWire(Wire):
    """A :class:`Wire` over a :class:`Transport`, driving websockets' sans-I/O protocol; see the module docstring."""

    def __init__(
        self,
        protocol: Protocol,
        transport: Transport,
        *,
        max_message_size: int | None,
        initial: list[Frame] | None = None,
    ) -> None:
        """``initial``: frames that arrived with the opening handshake (a client that did not wait)."""
        super().__init__()
        self._initial = initial or None
        protocol.logger = PROTOCOL_LOGGER
        protocol.debug = False
        self.protocol = protocol
        self.transport = transport
        self.remote = transport.remote
        self.subprotocol = protocol.subprotocol
        self.can_try_write = transport.can_try_write
        self.max_message_size = max_message_size
        self._out: deque[bytes] = deque()
        self._eof_queued = False
        self._writing = False  # the writer task is in transport.write: direct writes would reorder
        self._head_started = False  # part of _out[0] is on the wire (or being written): never drop the rest
        self._write_broken = False  # a write was cancelled part-way: the stream is unusable
        self._parts: list[str] | list[bytes] | None = None  # the fragmented message being assembled
        self._decoder: codecs.IncrementalDecoder | None = None
        self._budget = 0  # what the fragmented message may still grow by
        self._closed: WireClosed | None = None
        self._aclosed = False
        # Whatever the protocol wrote while the handshake's last read was parsed - the
        # frames a server sent with its 101: a pong, or the close frame failing them -
        # is buffered now, so the session writes it at once instead of after the next read.
        if (
            protocol.close_sent is not None
            and protocol.close_rcvd is not None
            and isinstance(protocol.parser_exc, ProtocolError)
        ):
            self._echo_interrupting_close()
        self._take_protocol_writes()

    @property
    def bytes_in(self) -> int:
        return self.transport.bytes_in

    @property
    def bytes_out(self) -> int:
        return self.transport.bytes_out

    # ------------------------------------------------------------------ sending

    def send_message(self, data: str | bytes, *, flush: bool = True) -> None:
        protocol = self.protocol
        try:
            if isinstance(data, str):
                protocol.send_text(data.encode())
            else:
                protocol.send_binary(data)
        except InvalidState:
            return  # closing: a message after our close frame is dropped, as RFC 6455 requires
        self._take_protocol_writes()
        if flush:
            self.flush()

    def send_ping(self, payload: bytes) -> None:
        try:
            self.protocol.send_ping(payload)
        except InvalidState:
            return
        self._take_protocol_writes()
        self.flush()

    def _take_protocol_writes(self, writes: list[bytes] | None = None) -> None:
        for data in self.protocol.data_to_send() if writes is None else writes:
            if data:
                self._out.append(data)
                self.buffered += len(data)
            else:
                self._eof_queued = True  # websockets' SEND_EOF: half-close once the rest is out

    def flush(self) -> bool:
        if self._writing or not self.can_try_write:
            return not self._out
        out, transport = self._out, self.transport
        try:
            while out:
                data = out[0] if len(out) == 1 else self._coalesce()
                sent = transport.try_write(data)
                if sent == len(data):
                    out.popleft()
                    self._head_started = False
                    self.buffered -= sent
                    continue
                if sent:
                    out[0] = data[sent:]
                    self._head_started = True
                    self.buffered -= sent
                return False
        except (TransportBroken, trio.ClosedResourceError):
            self._lost("the network connection broke while writing")
            out.clear()
            self.buffered = 0
            return True
        return True

    def _coalesce(self) -> bytes:
        # Several frames waiting (an ack and its reply): one write, one system call. The
        # rest of a write already begun goes out alone, so that a close without flush
        # (discard_buffer) can still drop every frame queued behind it.
        if self._head_started:
            return self._out[0]
        data = b"".join(self._out)
        self._out.clear()
        self._out.append(data)
        return data

    async def drain(self) -> None:
        out, transport = self._out, self.transport
        if self._write_broken:
            out.clear()
            self.buffered = 0
            return
        self._writing = True
        try:
            while out:
                data = out[0] if len(out) == 1 else self._coalesce()
                if transport.can_try_write:
                    # Resumable: what the kernel took is accounted for at once, so a
                    # cancelled drain (a close) never writes a byte twice.
                    sent = transport.try_write(data)
                    if sent:
                        self.buffered -= sent
                        if sent == len(data):
                            out.popleft()
                            self._head_started = False
                            continue
                        out[0] = data = data[sent:]
                        self._head_started = True
                    await transport.wait_writable()
                    continue
                await trio.lowlevel.checkpoint_if_cancelled()  # cancelled before a byte went out: still usable
                self._head_started = True
                try:
                    await transport.write(data)
                except trio.Cancelled:
                    self._write_broken = True  # part of `data` may be out: never write again
                    raise
                out.popleft()
                self._head_started = False
                self.buffered -= len(data)
            if self._eof_queued:
                self._eof_queued = False
                await transport.send_eof()
        except (TransportBroken, trio.ClosedResourceError):
            self._lost("the network connection broke while writing")
            out.clear()
            self.buffered = 0
        finally:
            self._writing = False

    @property
    def eof_pending(self) -> bool:
        """True when the protocol asked to half-close and the writer has not done it yet."""
        return self._eof_queued

    def discard_buffer(self) -> None:
        # Everything not yet begun is dropped; the rest of a write already begun is kept,
        # or the peer would read our close frame as the tail of a cut-off frame.
        out = self._out
        head = out[0] if out and self._head_started else None
        out.clear()
        self.buffered = 0
        if head is not None:
            out.append(head)
            self.buffered = len(head)

    # ------------------------------------------------------------------ receiving

    async def receive(self) -> list[Incoming]:
        if self._closed is not None:
            raise self._closed
        protocol = self.protocol
        if self._initial is not None:
            frames, self._initial = self._initial, None
        else:
            try:
                data = await self.transport.read()
            except (TransportBroken, trio.ClosedResourceError):
                self._lost("the network connection broke")
                raise self._closed_now() from None
            answered = protocol.close_sent is not None
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            if not answered and protocol.close_rcvd is not None and isinstance(protocol.parser_exc, ProtocolError):
                self._echo_interrupting_close()
            frames = protocol.events_received()  # type: ignore[assignment]
        out: list[Incoming] = []
        for frame in frames:
            opcode = frame.opcode
            if opcode is _TEXT or opcode is _BINARY or opcode is _CONT:
                message = self._assemble(opcode, frame.data, frame.fin)  # type: ignore[arg-type]  # the parser yields bytes
                if message is not None:
                    out.append(message)
                elif self._closed is not None:
                    break
            elif opcode is _PONG:
                out.append(Pong(bytes(frame.data)))
            # Pings are answered inside the protocol; a close frame shows in its state.
        self._take_protocol_writes()
        if protocol.state is not OPEN:
            self._note_close()
        self.flush()
        if not out and self._closed is not None:
            raise self._closed
        return out

    def _assemble(self, opcode: Opcode, data: bytes, fin: bool) -> str | bytes | None:
        if opcode is _CONT:
            parts = self._parts
            assert parts is not None  # the protocol refuses a continuation without a start
            self._budget -= len(data) + FRAGMENT_OVERHEAD_BYTES
            if self._budget < 0:
                self._fail(CloseCode.MESSAGE_TOO_BIG, "message too big (too many fragments)")
                return None
            decoder = self._decoder
            if decoder is not None:
                try:
                    parts.append(decoder.decode(data, fin))  # type: ignore[arg-type]
                except UnicodeDecodeError as exc:
                    self._fail(CloseCode.INVALID_DATA, f"invalid UTF-8 ({exc.reason})")
                    return None
            else:
                parts.append(data)  # type: ignore[arg-type]
            if not fin:
                return None
            self._parts, self._decoder = None, None
            return "".join(parts) if decoder is not None else b"".join(parts)  # type: ignore[arg-type]
        if fin:
            if opcode is _TEXT:
                try:
                    return data.decode()
                except UnicodeDecodeError as exc:
                    self._fail(CloseCode.INVALID_DATA, f"invalid UTF-8 ({exc.reason})")
                    return None
            return bytes(data)
        limit = self.max_message_size
        self._budget = (limit if limit is not None else 1 << 62) - len(data) - FRAGMENT_OVERHEAD_BYTES
        if opcode is _TEXT:
            self._decoder = _UTF8Decoder()
            try:
                self._parts = [self._decoder.decode(data)]
            except UnicodeDecodeError as exc:
                self._fail(CloseCode.INVALID_DATA, f"invalid UTF-8 ({exc.reason})")
                return None
        else:
            self._decoder = None
            self._parts = [data]
        return None

    def _echo_interrupting_close(self) -> None:
        # RFC 6455 lets a control frame interrupt a fragmented message (5.4) and asks that
        # a close frame be answered, typically with its own code (5.5.1). websockets fails
        # the connection with 1002 instead ("incomplete fragmented message": the one path
        # where a close frame was received and the parser still raised a ProtocolError;
        # its compliance notes list it as Autobahn 7.1.5). Answer it like any close: the
        # protocol's last write is its 1002 close frame; send the peer's code back in its
        # place. The unfinished message is dropped, as everything after a close frame is.
        protocol = self.protocol
        rcvd = protocol.close_rcvd
        assert rcvd is not None
        writes = protocol.data_to_send()
        payload = b"" if rcvd.code == CloseCode.NO_STATUS else rcvd.serialize()
        for i in range(len(writes) - 1, -1, -1):
            if writes[i]:  # not the half-close sentinel
                writes[i] = Frame(_CLOSE, payload).serialize(mask=protocol.side is CLIENT)
                break
        self._take_protocol_writes(writes)

    def _fail(self, code: CloseCode, reason: str) -> None:
        self.protocol.fail(code, reason)
        self._take_protocol_writes()
        if self._closed is None:
            self._closed = WireClosed(code, reason, by_peer=False)

    def _note_close(self) -> None:
        # The protocol left OPEN: once the closing handshake is done (or failed), say who closed.
        if self._closed is not None:
            return
        protocol = self.protocol
        rcvd, sent = protocol.close_rcvd, protocol.close_sent
        if rcvd is not None:
            if sent is not None and protocol.close_rcvd_then_sent is False:
                self._closed = WireClosed(int(sent.code), sent.reason, by_peer=False)  # the peer answered ours
            else:
                self._closed = WireClosed(int(rcvd.code), rcvd.reason, by_peer=True)
        elif protocol.state is CLOSED:
            if sent is not None:  # the peer hung up instead of answering our close frame
                self._closed = WireClosed(int(sent.code), sent.reason, by_peer=False)
            else:
                self._closed = WireClosed(CloseCode.ABNORMAL, "", by_peer=True)
        elif sent is not None and protocol.parser_exc is not None:
            # websockets failed the connection: a protocol violation (1002), too big (1009).
            self._closed = WireClosed(int(sent.code), sent.reason, by_peer=False)

    def _lost(self, reason: str) -> None:
        if self._closed is None:
            sent = self.protocol.close_sent
            if sent is not None and self.protocol.close_rcvd is None:
                self._closed = WireClosed(int(sent.code), sent.reason, by_peer=False)
            else:
                self._closed = WireClosed(CloseCode.ABNORMAL, reason, by_peer=True)

    def _closed_now(self) -> WireClosed:
        assert self._closed is not None
        return self._closed

    # ------------------------------------------------------------------ closing

    def start_close(self, code: int, reason: str) -> None:
        if self.protocol.state is OPEN:
            try:
                self.protocol.send_close(code, reason)
            except InvalidState:
                return
            self._take_protocol_writes()
            self.flush()

    @property
    def close_sent(self) -> bool:
        """True once our close frame (or our echo of the peer's) is queued or written."""
        return self.protocol.close_sent is not None

    @property
    def closed(self) -> WireClosed | None:
        return self._closed

    async def finish(self) -> None:
        """Write what is buffered (our close frame, the half-close), then wait for the peer's end.

        A client waits for the server to close the TCP connection, as RFC 6455 asks; a
        server closes it itself once the closing handshake is done. Bound it from outside.
        """
        await self.drain()
        protocol = self.protocol
        if protocol.side is CLIENT:
            while protocol.state is not CLOSED and not self._aclosed:
                try:
                    data = await self.transport.read()
                except (TransportBroken, trio.ClosedResourceError):
                    break
                if data:
                    protocol.receive_data(data)
                else:
                    protocol.receive_eof()
                protocol.events_received()
                self._take_protocol_writes()
                await self.drain()

    async def aclose(self) -> None:
        if not self._aclosed:
            self._aclosed = True
            if self._closed is None:
                self._lost("closed")
            await self.transport.aclose()
