"""The incoming side of a media transport: how incoming audio is converted, and the bounded input channel.

Theory of operation
-------------------
Frames decoded from a peer go to the application through an :class:`InputChannel`,
one per transport (it spans consecutive connections). It is bounded twice: in frames
(``input_buffer_size``) and in bytes (``input_buffer_bytes``, counted by
:func:`frame_nbytes`), because a peer controls how big its frames are: 1024 frames of
1 MiB would otherwise pin a gigabyte behind an application that stopped reading. The
transport side never blocks (the engine's receive task must keep reading for
heartbeats to work); what does not fit is dropped and counted. :class:`InputConfig`
says which format incoming audio is converted to before it is queued.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import trio
from attrs import frozen

from antiphon.proto.media.frames import AnyFrame, AudioRawFrame
from antiphon.proto.media.resample import DEFAULT_QUALITY, AudioFormat, Quality

__all__ = ["INPUT_BUFFER_BYTES", "InputChannel", "InputConfig", "frame_nbytes"]

INPUT_BUFFER_BYTES: Final = 8 * 1024 * 1024
"""Bytes of decoded frames held for the application: 1024 chunks of 48 kHz stereo fit; more means nobody reads."""


@frozen(kw_only=True)
class InputConfig:
    """How incoming audio is converted before the application sees it (``None``: as the peer sent it)."""

    sample_rate: int | None = None
    num_channels: int | None = None
    resample_quality: Quality = DEFAULT_QUALITY

    def __attrs_post_init__(self) -> None:
        if self.sample_rate is not None:
            AudioFormat(self.sample_rate, self.num_channels or 1)  # validates
        elif self.num_channels is not None:
            AudioFormat(16000, self.num_channels)


def frame_nbytes(frame: AnyFrame, wire_bytes: int) -> int:
    """What a delivered frame costs the input buffer: its audio or its wire message, whichever is more."""
    return max(wire_bytes, len(frame.audio) if isinstance(frame, AudioRawFrame) else 0)


class InputChannel(trio.abc.ReceiveChannel[AnyFrame]):
    """The application's end of a transport's input: frames in order, bounded in count and bytes.

    ``async for frame in channel`` (or ``await channel.receive()``) as with a Trio memory
    channel; it ends when the transport stops. The transport's side (:meth:`put_nowait`)
    never blocks: past ``max_frames`` or ``max_bytes`` it raises ``trio.WouldBlock`` and
    the frame is dropped (counted in ``stats.dropped_in``), because the receive task
    must keep reading for the heartbeat to work, and media nobody consumes is stale.
    """

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self._queue: deque[tuple[AnyFrame, int]] = deque()
        self._bytes = 0
        self._closed = False  # no more frames will come
        self._receiver_closed = False
        self._lot = trio.lowlevel.ParkingLot()

    @property
    def queued_frames(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        """Bytes held for the application now (see :func:`frame_nbytes`)."""
        return self._bytes

    def put_nowait(self, frame: AnyFrame, nbytes: int) -> None:
        """Queue a frame; ``trio.WouldBlock`` when full, ``trio.ClosedResourceError`` once closed."""
        if self._closed or self._receiver_closed:
            raise trio.ClosedResourceError
        if len(self._queue) >= self.max_frames or self._bytes + nbytes > self.max_bytes:
            raise trio.WouldBlock
        self._queue.append((frame, nbytes))
        self._bytes += nbytes
        self._lot.unpark()

    def close_sender(self) -> None:
        """No more frames: receivers get what is queued, then ``EndOfChannel``."""
        self._closed = True
        self._lot.unpark_all()

    def receive_nowait(self) -> AnyFrame:
        if self._receiver_closed:
            raise trio.ClosedResourceError
        if not self._queue:
            raise trio.EndOfChannel if self._closed else trio.WouldBlock
        frame, nbytes = self._queue.popleft()
        self._bytes -= nbytes
        return frame

    async def receive(self) -> AnyFrame:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                frame = self.receive_nowait()
            except trio.WouldBlock:
                await self._lot.park()
                continue
            await trio.lowlevel.cancel_shielded_checkpoint()
            return frame

    def close(self) -> None:
        """Stop receiving: queued frames are dropped and the transport drops new ones."""
        self._receiver_closed = True
        self._queue.clear()
        self._bytes = 0
        self._lot.unpark_all()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()
