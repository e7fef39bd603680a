"""Listening sockets: every address a host resolves to, bound non-blocking, with errors an operator can read."""

from __future__ import annotations

import errno
import socket
from typing import Final

import trio

from antiphon.errors import ListenError

__all__ = ["LISTEN_BACKLOG", "open_tcp_listeners"]

LISTEN_BACKLOG: Final = 4096
"""Pending connections the kernel queues per listener (capped by net.core.somaxconn)."""


async def open_tcp_listeners(host: str | None, port: int, *, reuse_port: bool = False) -> list[socket.socket]:
    """Bind non-blocking listening sockets for ``host`` (every address it resolves to) and ``port``.

    ``reuse_port`` sets SO_REUSEPORT, so other processes (of the same user) may listen on
    the same port. Raises :class:`~antiphon.errors.ListenError` naming the address, e.g.
    when it is in use.
    """
    shown = f"[{host}]:{port}" if host and ":" in host else f"{host or '*'}:{port}"
    try:
        infos = await trio.socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ListenError(f"cannot listen on {shown}: {exc.strerror or exc}", errno=exc.errno) from None
    listeners: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, type_, proto, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            sock = socket.socket(family, type_, proto)
            listeners.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in listeners:
            sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc)).lower()
        raise ListenError(f"cannot listen on {shown}: {reason}", errno=exc.errno) from None
    if not listeners:
        raise ListenError(f"cannot listen on {shown}: no address to bind")
    return listeners
