"""Byte transports under a WebSocket: a plain TCP socket driven with Trio's low-level waits, or any Trio stream.

Theory of operation
-------------------
A :class:`Transport` moves bytes and nothing else. The engine needs three things of it:
``read`` (wait for some bytes; ``b""`` at end of stream), ``write`` (wait until all of
some bytes are handed to the network) and, where it can be done without waiting,
``try_write`` (hand over as much as the kernel takes *now*, synchronously). The last one
is what lets a session write a reply from whatever task produced it, without waking a
writer task: on loopback and on any healthy network the socket's send buffer has room,
so the common case is one ``send()`` system call and no task switch.

* :class:`SocketTransport` owns a non-blocking stdlib socket and waits with
  ``trio.lowlevel.wait_readable`` / ``wait_writable``: no ``SocketStream`` layers, no
  conflict detectors, one wait per read. It is what the server accepts and the clients
  dial for ``ws://``.
* :class:`StreamTransport` wraps any ``trio.abc.Stream``: TLS (``trio.SSLStream``),
  memory streams in tests, a caller's tunnel. It cannot write without waiting, so every
  write goes through the session's writer task.

Failures of the network surface as :class:`TransportBroken`; a transport closed by our
own code raises ``trio.ClosedResourceError`` as Trio's streams do. Reads are cancel-safe
(cancellation only ever lands while waiting for readability, before a byte is taken),
which is what lets the session run its timers as a cancel scope around its reads.
"""

from __future__ import annotations

import socket
from typing import Final

import trio

__all__ = ["READ_SIZE_BYTES", "SocketTransport", "StreamTransport", "Transport", "TransportBroken"]

READ_SIZE_BYTES: Final = 64 * 1024
"""Bytes asked of the kernel per read: a whole burst of small frames, or a good slice of a large one."""


class TransportBroken(Exception):
    """The network broke the connection (reset, timeout, EOF while writing); internal to the engine."""


class Transport:
    """Bytes in and out of one connection; see the module docstring."""

    can_try_write: bool = False
    """True when :meth:`try_write` works (writes without waiting); False sends everything through :meth:`write`."""

    remote: str = "?"
    """The peer's address as ``host:port``, for logs."""

    bytes_in: int = 0
    """Bytes read so far (for metrics: one addition per read)."""

    bytes_out: int = 0
    """Bytes written so far (for metrics: one addition per write)."""

    def try_write(self, data: bytes | memoryview) -> int:
        """Write what the kernel takes now, without waiting; returns the byte count (maybe 0)."""
        raise NotImplementedError

    async def write(self, data: bytes | memoryview) -> None:
        """Write all of ``data``, waiting for room as needed.

        If cancelled part-way, an unknown part was written: the transport must not be
        written to again. (:class:`SocketTransport` callers that need to resume use
        :meth:`try_write` and :meth:`wait_writable` instead.)
        """
        raise NotImplementedError

    async def wait_writable(self) -> None:
        """Wait until :meth:`try_write` would take something (transports that can try-write)."""
        raise NotImplementedError

    async def read(self) -> bytes:
        """Wait for bytes from the peer; ``b""`` once it has closed its side."""
        raise NotImplementedError

    async def send_eof(self) -> None:
        """Half-close: tell the peer we will write no more (best effort)."""

    async def aclose(self) -> None:
        """Close the connection; idempotent."""
        raise NotImplementedError


class SocketTransport(Transport):
    """A connected TCP socket, non-blocking, waited on with Trio's low-level I/O primitives."""

    can_try_write = True

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # Small frames are the whole protocol (an ack, a chunk): never hold them back.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self._closed = False
        try:
            peer = sock.getpeername()
            self.remote = f"[{peer[0]}]:{peer[1]}" if sock.family == socket.AF_INET6 else f"{peer[0]}:{peer[1]}"
        except (OSError, IndexError, TypeError):
            self.remote = "?"

    def try_write(self, data: bytes | memoryview) -> int:
        if self._closed:
            raise trio.ClosedResourceError("the transport was closed")
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise TransportBroken(str(exc)) from exc
        self.bytes_out += sent
        return sent

    async def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            sent = self.try_write(view)
            if sent:
                view = view[sent:]
            if view:
                await self.wait_writable()
        await trio.lowlevel.checkpoint_if_cancelled()

    async def wait_writable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the transport was closed")
        await trio.lowlevel.wait_writable(self.sock)

    async def read(self) -> bytes:
        # Wait first: in a request/response protocol the next bytes are rarely there
        # yet, so a speculative recv() would mostly fail. The wait is also the
        # checkpoint that keeps one busy peer from holding the loop.
        while True:
            if self._closed:
                raise trio.ClosedResourceError("the transport was closed")
            await trio.lowlevel.wait_readable(self.sock)
            try:
                data = self.sock.recv(READ_SIZE_BYTES)
            except BlockingIOError:
                continue  # a spurious wake-up
            except OSError as exc:
                raise TransportBroken(str(exc)) from exc
            self.bytes_in += len(data)
            return data

    async def send_eof(self) -> None:
        if not self._closed:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Close the socket now (synchronous; wakes any task waiting on it)."""
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()


class StreamTransport(Transport):
    """Any Trio byte stream (TLS, memory streams, tunnels); writes always wait."""

    def __init__(self, stream: trio.abc.Stream, remote: str = "?") -> None:
        self.stream = stream
        self.remote = remote

    def try_write(self, data: bytes | memoryview) -> int:
        return 0

    async def write(self, data: bytes | memoryview) -> None:
        try:
            await self.stream.send_all(data)
        except trio.BrokenResourceError as exc:
            raise TransportBroken(str(exc)) from exc
        self.bytes_out += len(data)

    async def read(self) -> bytes:
        try:
            data = bytes(await self.stream.receive_some(READ_SIZE_BYTES))
        except trio.BrokenResourceError as exc:
            raise TransportBroken(str(exc)) from exc
        self.bytes_in += len(data)
        return data

    async def send_eof(self) -> None:
        if isinstance(self.stream, trio.abc.HalfCloseableStream):
            try:
                await self.stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        else:
            await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)
