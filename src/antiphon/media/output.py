"""The outgoing side of one media connection: paced audio, everything else at once.

Theory of operation
-------------------
:class:`MediaOutput` is fed synchronously (:meth:`MediaOutput.put` never blocks), so the
transport task that drains the application's output channel is never stuck behind audio
and an :class:`~antiphon.proto.media.frames.InterruptionFrame` takes effect the moment it is
read. One task per connection (:meth:`MediaOutput.run`, in the session's nursery) is a
thin loop around the sans-IO :class:`~antiphon.proto.media.pacing.AudioPacer`: sleep until the
next deadline or until new audio arrives, then send what is due.

* **Audio** goes into the pacer and out in ``chunk_ms`` chunks at real-time pace, each
  chunk one ``AudioRawFrame`` message in the stream's own rate and channel count (stereo
  is paced at the right speed). Sending a chunk waits for room in the session's send
  queue, so a peer that stops reading pauses the stream; the pacer then re-anchors
  instead of bursting.
* **The last partial chunk** is padded with silence and sent once no audio has arrived
  for one chunk duration *and* it is due (``playout_end - lead``): a producer that
  streams in small frames is never padded mid-utterance, and the tail of an utterance is
  not held back forever (Pipecat holds it until a TTS-stopped frame, and drops it at the
  end of the stream).
* **Audio format.** With ``sample_rate`` set, audio in another rate or channel count is
  dropped (logged, counted as ``audio_format``): antiphon does not resample. Without it,
  each stream takes the format of its first frame; a frame in another format while
  audio is still queued is dropped the same way.
* **Other frames** (text, transcription, message) are serialized and queued for sending
  at once, without waiting behind queued audio. A caption meant to line up with speech
  should be sent when its audio is.
* **Interruption** drops every queued chunk and the partial one, then the
  ``InterruptionFrame`` itself is sent; the next audio starts a new stream.
* **End of stream** (server shutdown): the remainder is flushed, ``end_silence_ms`` of
  silence is queued, and once everything has been sent and has played out
  (``playout_end``) the session closes with 1001.
"""

from __future__ import annotations

import logging
import math
from typing import Final

import trio
from attrs import frozen

from antiphon.engine.session import Session
from antiphon.errors import LocalProtocolError
from antiphon.media.connection import MediaStats
from antiphon.proto.close import CloseCode
from antiphon.proto.media.frames import AudioRawFrame, InterruptionFrame, MediaFrame
from antiphon.proto.media.pacing import AudioPacer, PacerConfig
from antiphon.proto.media.serializers import FrameSerializer

__all__ = ["MediaOutput", "OutputConfig"]

log = logging.getLogger("antiphon.media.output")

_MS_PER_S: Final = 1000


@frozen(kw_only=True)
class OutputConfig:
    """How one connection's audio is paced; built by the transports from their params."""

    sample_rate: int | None = None
    num_channels: int | None = None
    chunk_ms: int = 40
    lead_ms: int = 40
    max_late_ms: int = 40
    end_silence_ms: int = 0


class MediaOutput:
    """Sends one connection's outgoing frames; audio paced by an :class:`AudioPacer`."""

    def __init__(self, session: Session, serializer: FrameSerializer, stats: MediaStats, config: OutputConfig) -> None:
        self._session = session
        self._serializer = serializer
        self._stats = stats
        self._config = config
        self._fixed = (config.sample_rate, config.num_channels or 1) if config.sample_rate is not None else None
        self._pacer: AudioPacer | None = None
        self._format: tuple[int, int] | None = None
        self._pending_bytes = 0  # PCM pushed but not yet a whole chunk
        self._last_push = -math.inf
        self._generation = 0  # bumped by interrupt(): chunks popped before it are not sent
        self._ending = False
        self._wake = trio.lowlevel.ParkingLot()

    # ------------------------------------------------------------------ feeding (sync)

    def put(self, frame: MediaFrame) -> None:
        """Take one outgoing frame; never blocks (see the module docstring)."""
        if self._ending:
            self._drop(frame, "closing")
        elif isinstance(frame, AudioRawFrame):
            self._push_audio(frame)
        elif isinstance(frame, InterruptionFrame):
            self.interrupt()
            self._send_now(frame)
        else:
            self._send_now(frame)

    def interrupt(self) -> int:
        """Drop all queued audio now; return the bytes dropped."""
        self._generation += 1
        dropped = self._pacer.interrupt(trio.current_time()).dropped_bytes if self._pacer is not None else 0
        self._pending_bytes = 0
        if dropped:
            self._stats.add("interrupted_audio_bytes", dropped)
            log.debug("session %s: interruption dropped %d bytes of queued audio", self._session.id[:8], dropped)
        self._wake.unpark_all()
        return dropped

    def end_stream(self) -> None:
        """Flush, queue the end silence, and close with 1001 once it has all played out."""
        if self._ending:
            return
        self._ending = True
        if self._pacer is None and self._fixed is not None and self._config.end_silence_ms:
            self._new_pacer(self._fixed)
        if self._pacer is not None:
            self._pacer.end_stream(trio.current_time())
            self._pending_bytes = 0
        self._wake.unpark_all()

    def discard(self) -> None:
        """The connection is gone: count what was never sent."""
        if self._pacer is not None and self._pacer.queued_chunks:
            self._stats.count("dropped_out", "disconnected")
            log.debug("session %s: %d queued audio chunks not sent", self._session.id[:8], self._pacer.queued_chunks)

    # ------------------------------------------------------------------ the task

    async def run(self) -> None:
        """Send paced audio until the session ends (run it in the session's nursery)."""
        while True:
            with trio.move_on_at(self._wake_at()):
                await self._wake.park()
            now = trio.current_time()
            pacer = self._pacer
            if pacer is not None:
                if pacer.next_deadline is None and self._pending_bytes and now >= self._flush_at(pacer):
                    pacer.flush(now)
                    self._pending_bytes = 0
                generation = self._generation
                fmt = self._format
                assert fmt is not None
                for chunk in pacer.pop_due(now):
                    if self._generation != generation or self._pacer is not pacer:
                        break
                    await self._send_audio(chunk, fmt)
            if self._ending and self._drained() and now >= self._playout_end():
                self._session.close(CloseCode.GOING_AWAY, "server shutdown")
                return

    def _wake_at(self) -> float:
        pacer = self._pacer
        if pacer is None:
            return -math.inf if self._ending else math.inf
        if (deadline := pacer.next_deadline) is not None:
            return deadline
        if self._pending_bytes:
            return self._flush_at(pacer)
        return self._playout_end() if self._ending else math.inf

    def _flush_at(self, pacer: AudioPacer) -> float:
        # No audio for one chunk duration, and the partial chunk's slot has come.
        at = self._last_push + self._config.chunk_ms / _MS_PER_S
        if (end := pacer.playout_end) is not None:
            at = max(at, end - pacer.config.lead_ms / _MS_PER_S)
        return at

    def _drained(self) -> bool:
        return self._pacer is None or (self._pacer.queued_chunks == 0 and not self._pending_bytes)

    def _playout_end(self) -> float:
        end = self._pacer.playout_end if self._pacer is not None else None
        return -math.inf if end is None else end

    # ------------------------------------------------------------------ internals

    def _push_audio(self, frame: AudioRawFrame) -> None:
        fmt = (frame.sample_rate, frame.num_channels)
        if self._fixed is not None and fmt != self._fixed:
            self._drop(frame, "audio_format", f"{fmt[0]} Hz x {fmt[1]}, the output is {self._fixed[0]} Hz x {self._fixed[1]}")
            return
        if self._pacer is None or (fmt != self._format and self._drained()):
            self._new_pacer(fmt)
        elif fmt != self._format:
            assert self._format is not None
            self._drop(frame, "audio_format", f"{fmt[0]} Hz x {fmt[1]} while {self._format[0]} Hz x {self._format[1]} is queued")
            return
        assert self._pacer is not None
        now = trio.current_time()
        self._pacer.push(frame.audio, now)
        self._pending_bytes = (self._pending_bytes + len(frame.audio)) % self._pacer.chunk_bytes
        self._last_push = now
        self._wake.unpark_all()

    def _new_pacer(self, fmt: tuple[int, int]) -> None:
        c = self._config
        self._pacer = AudioPacer(
            PacerConfig(
                fmt[0],
                fmt[1],
                chunk_ms=c.chunk_ms,
                lead_ms=c.lead_ms,
                max_late_ms=c.max_late_ms,
                end_silence_ms=c.end_silence_ms,
            )
        )
        self._format = fmt
        self._pending_bytes = 0

    async def _send_audio(self, chunk: bytes, fmt: tuple[int, int]) -> None:
        data = self._serialize(AudioRawFrame(chunk, fmt[0], fmt[1]))
        if data is None:
            return
        if self._session.closing:
            self._stats.count("dropped_out", "closed")
            return
        await self._session.send(data)
        self._stats.add("frames_out")
        self._stats.add("audio_chunks_out")

    def _send_now(self, frame: MediaFrame) -> None:
        data = self._serialize(frame)
        if data is None:
            return
        if self._session.send_nowait(data):
            self._stats.add("frames_out")
        else:
            self._stats.count("dropped_out", "closed")

    def _serialize(self, frame: MediaFrame) -> bytes | str | None:
        try:
            data = self._serializer.serialize(frame)
        except LocalProtocolError as exc:
            self._drop(frame, "unserializable", str(exc), level=logging.ERROR)
            return None
        if data is None:
            self._drop(frame, "serializer_returned_none")
        return data

    def _drop(self, frame: object, reason: str, detail: str = "", *, level: int = logging.WARNING) -> None:
        self._stats.count("dropped_out", reason)
        kind = getattr(frame, "kind", type(frame).__name__)
        log.log(level, "session %s: not sending a %s frame (%s)%s", self._session.id[:8], kind, reason,
                f": {detail}" if detail else "")
