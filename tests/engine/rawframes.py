"""A WebSocket client for engine tests that can send any bytes, valid frames or not.

The handshake and the parsing of what the server sends are websockets' ``ClientProtocol``
(the server's frames are valid); what the test sends is framed by :func:`frame`, which
builds any header a test asks for - reserved bits, no mask, oversized control frames -
because a conforming library refuses to.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import trio
from websockets.client import ClientProtocol
from websockets.extensions.base import ClientExtensionFactory
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

__all__ = ["FrameClient", "frame"]

NO_MASK = None
ZERO_MASK = b"\x00\x00\x00\x00"


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, mask: bytes | None = b"\x37\xfa\x21\x3d") -> bytes:
    """One frame's bytes: ``rsv`` is the three reserved bits (0-7), ``mask=None`` sends it unmasked."""
    head1 = (0x80 if fin else 0) | (rsv & 0b111) << 4 | opcode
    length = len(payload)
    mask_bit = 0x80 if mask is not None else 0
    if length < 126:
        header = struct.pack("!BB", head1, mask_bit | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", head1, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", head1, mask_bit | 127, length)
    if mask is None:
        return header + payload
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


class FrameClient:
    """A test's end of one WebSocket connection over any Trio stream."""

    def __init__(self, stream: trio.abc.Stream, *, extensions: Sequence[ClientExtensionFactory] = ()) -> None:
        self.stream = stream
        self.protocol = ClientProtocol(parse_uri("ws://localhost/"), extensions=list(extensions) or None, max_size=None)
        self.response: Response | None = None
        self._frames: list[Frame] = []

    async def handshake(self) -> Response:
        """Send the upgrade request and read the answer."""
        self.protocol.send_request(self.protocol.connect())
        await self._flush()
        while self.response is None:
            await self._read()
        return self.response

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send_text(self, text: str) -> None:
        """A valid text message, through the protocol (compressed when negotiated)."""
        self.protocol.send_text(text.encode())
        await self._flush()

    async def next_frame(self) -> Frame:
        """The next frame from the server (pongs and close frames included); EOFError at the end."""
        while not self._frames:
            await self._read()
        return self._frames.pop(0)

    async def expect_close(self) -> Close:
        """Read until the server's close frame; return its code and reason (data frames before it are skipped)."""
        while True:
            f = await self.next_frame()
            if f.opcode is Opcode.CLOSE:
                return Close.parse(f.data)

    async def _read(self) -> None:
        data = await self.stream.receive_some(65536)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                self.response = event
            elif isinstance(event, Frame):
                self._frames.append(event)
        await self._flush()
        if not data and not self._frames and self.response is not None:
            raise EOFError("the server closed the connection")

    async def _flush(self) -> None:
        out = b"".join(self.protocol.data_to_send())
        if out:
            try:
                await self.stream.send_all(out)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
