"""The outgoing side of one media connection: audio converted and paced, everything else at once.

Theory of operation
-------------------
:class:`MediaOutput` is fed synchronously (:meth:`MediaOutput.put` never blocks), so the
transport task that drains the application's output channel is never stuck behind audio
and an :class:`~antiphon.proto.media.frames.InterruptionFrame` takes effect the moment it is
read. One task per connection (:meth:`MediaOutput.run`, in the session's nursery) is a
thin loop around the sans-IO :class:`~antiphon.proto.media.pacing.AudioPacer`: sleep until the
next deadline or until new audio arrives, then send what is due.

* **Audio format.** The output format is, in order: what the serializer's wire needs
  (``wire_audio_format``: Twilio's 8 kHz mono), ``sample_rate``/``num_channels`` of the
  config, or else the format of the first frame of each stream. Audio in another format
  is converted (resampled with soxr and remixed, state kept between frames: see
  :mod:`antiphon.proto.media.resample`), never dropped. Each chunk goes out as one
  ``AudioRawFrame`` message in the output format.
* **Pacing** follows the config's policy (``realtime``, ``lead``, ``none``: see
  :mod:`antiphon.proto.media.pacing`). Sending a chunk waits for room in the session's
  send queue, so a peer that stops reading pauses the stream; the pacer then re-anchors
  instead of bursting, and counts an underrun.
* **The last partial chunk** is padded with silence (at the output rate) and sent once no
  audio has arrived for one chunk duration *and* it is due (``playout_end - lead``), after
  the resampler has released what it held: a producer that streams small frames is never
  padded mid-utterance, and the tail of an utterance is not held back forever (Pipecat
  holds it until a TTS-stopped frame, and drops it at the end of the stream).
* **Bounded.** At most ``max_queued_audio_bytes`` of audio wait here (default 8 MiB: 4
  minutes of 16 kHz mono); a frame that would pass that is dropped and counted
  (``audio_buffer_full``). A producer may run ahead of real time (TTS does) up to there.
* **Marks.** A ``MarkFrame`` on the output goes out after the audio queued before it. A
  serializer that sets ``sends_marks`` (Twilio) also gets a mark after each audio frame
  the application sent, named after the frame's ``name`` or ``audio-<n>`` (n counts the
  connection's audio frames from 1), so the peer's echo says what was heard.
* **Not ready.** While the serializer says it cannot address the peer yet (``ready``
  False: Twilio before ``start``), frames wait in a line of at most
  ``HELD_FRAMES`` and ``max_queued_audio_bytes``; :meth:`wake` replays them.
* **Other frames** (text, transcription, message) are serialized and queued for sending
  at once, without waiting behind queued audio. A caption meant to line up with speech
  should be sent when its audio is.
* **Interruption** (the application's ``InterruptionFrame``, or the peer's) drops every
  queued chunk, the partial one and the resampler's state at once, reports what was cut
  short (:class:`Interruption`) and, for the application's, sends the frame itself; a
  chunk waiting for room in the send queue is not sent after it. The next audio starts a
  new stream.
* **End of stream** (server shutdown): the remainder is flushed, ``end_silence_ms`` of
  silence is queued, and once everything has been sent and has played out
  (``playout_end``) the session closes with 1001.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import trio
from attrs import frozen

from antiphon.engine.session import Session
from antiphon.errors import LocalProtocolError
from antiphon.media.connection import Interruption, InterruptionSource, MediaStats
from antiphon.media.log_limit import LogLimiter
from antiphon.proto.close import CloseCode
from antiphon.proto.media.frames import (
    AnyFrame,
    AudioRawFrame,
    InterruptionFrame,
    MarkFrame,
)
from antiphon.proto.media.pacing import (
    CHUNK_MS,
    LEAD_MS,
    MAX_LATE_MS,
    AudioPacer,
    PacerConfig,
    Pacing,
)
from antiphon.proto.media.resample import (
    DEFAULT_QUALITY,
    AudioConverter,
    AudioFormat,
    Quality,
)
from antiphon.proto.media.serializers import FrameSerializer

__all__ = ["HELD_FRAMES", "MAX_QUEUED_AUDIO_BYTES", "Interruption", "InterruptionSource", "MediaOutput", "OutputConfig"]

log = logging.getLogger("antiphon.media.output")

_MS_PER_S: Final = 1000
MAX_QUEUED_AUDIO_BYTES: Final = 8 * 1024 * 1024
"""Audio waiting to be paced out, per connection: 4 min of 16 kHz mono, 44 s of 48 kHz stereo."""
HELD_FRAMES: Final = 256
"""Frames held while the serializer is not ready (Twilio before ``start``): a greeting fits."""


@frozen(kw_only=True)
class OutputConfig:
    """How one connection's output audio is converted and paced; built by the transports from their params."""

    sample_rate: int | None = None
    num_channels: int | None = None
    chunk_ms: int = CHUNK_MS
    pacing: Pacing = Pacing.REALTIME
    lead_ms: int = LEAD_MS
    max_late_ms: int = MAX_LATE_MS
    end_silence_ms: int = 0
    max_queued_audio_bytes: int = MAX_QUEUED_AUDIO_BYTES
    resample_quality: Quality = DEFAULT_QUALITY


class MediaOutput:
    """Sends one connection's outgoing frames; audio converted and paced (see the module docstring)."""

    def __init__(
        self,
        session: Session,
        serializer: FrameSerializer,
        stats: MediaStats,
        config: OutputConfig,
        on_interrupt: Callable[[Interruption], None] | None = None,
    ) -> None:
        self._session = session
        self._serializer = serializer
        self._stats = stats
        self._config = config
        self._on_interrupt = on_interrupt
        wire: AudioFormat | None = getattr(serializer, "wire_audio_format", None)
        if wire is None and config.sample_rate is not None:
            wire = AudioFormat(config.sample_rate, config.num_channels or 1)
        self._fixed = wire
        self._marks_each_frame = bool(getattr(serializer, "sends_marks", False))
        self._pacer: AudioPacer | None = None
        self._format: AudioFormat | None = None
        self._converter: AudioConverter | None = None
        self._conv_in_frames = 0  # source frames fed to the converter since it started
        self._conv_base = 0  # stream byte position where the converter's output starts
        self._pushed = 0  # bytes pushed into the current pacer (its byte positions)
        self._sent = 0  # bytes of the current pacer sent
        self._marks: deque[tuple[int, str]] = deque()  # (byte position, name), in order
        self._audio_frames = 0
        self._underruns_seen = 0
        self._held: deque[AnyFrame] = deque()
        self._held_bytes = 0
        self._last_push = -math.inf
        self._generation = 0  # bumped by interrupt(): chunks popped before it are not sent
        self._ending = False
        self._wake = trio.lowlevel.ParkingLot()
        self._drop_log = LogLimiter(
            log, f"session {session.id[:8]}: frames not sent", on_suppressed=lambda n: stats.add("logs_suppressed", n)
        )

    # ------------------------------------------------------------------ feeding (sync)

    def put(self, frame: AnyFrame) -> None:
        """Take one outgoing frame; never blocks (see the module docstring)."""
        if self._ending:
            self._drop(frame, "closing")
        elif not self._ready():
            self._hold(frame)
        elif isinstance(frame, AudioRawFrame):
            self._push_audio(frame)
        elif isinstance(frame, InterruptionFrame):
            self.interrupt(InterruptionSource.APPLICATION)
            self._send_now(frame)
        elif isinstance(frame, MarkFrame):
            self._queue_mark(frame.mark)
        else:
            self._send_now(frame)

    def interrupt(self, source: InterruptionSource) -> Interruption:
        """Drop all queued audio now (the caller sends the frame, if any); report and announce it."""
        now = trio.current_time()
        self._generation += 1
        report = self._pacer.interrupt(now) if self._pacer is not None else None
        if self._converter is not None:
            self._converter.reset()
            self._conv_base, self._conv_in_frames = 0, 0
        self._pushed = self._sent = 0
        self._marks.clear()
        held_audio = [f for f in self._held if isinstance(f, AudioRawFrame)]
        self._held = deque(f for f in self._held if not isinstance(f, AudioRawFrame))
        self._held_bytes = 0
        dropped_ms = (report.dropped_ms if report else 0.0) + sum(f.duration_s * _MS_PER_S for f in held_audio)
        interruption = Interruption(
            source=source,
            at=now,
            sent_ms=report.sent_ms if report else 0.0,
            heard_ms=report.heard_ms if report else 0.0,
            dropped_ms=round(dropped_ms, 3),
        )
        self._stats.add("interruptions")
        if report is not None and report.dropped_bytes:
            self._stats.add("interrupted_audio_bytes", report.dropped_bytes)
        log.debug("session %s: %s interruption: %s", self._session.id[:8], source, interruption)
        if self._on_interrupt is not None:
            self._on_interrupt(interruption)
        self._wake.unpark_all()
        return interruption

    def wake(self) -> None:
        """The serializer may have become ready: send what was held, in order."""
        if not self._ready() or not self._held:
            return
        held, self._held = self._held, deque()
        self._held_bytes = 0
        for frame in held:
            self.put(frame)
        self._wake.unpark_all()

    def end_stream(self) -> None:
        """Flush, queue the end silence, and close with 1001 once it has all played out."""
        if self._ending:
            return
        self._ending = True
        if self._pacer is None and self._fixed is not None and self._config.end_silence_ms:
            self._new_pacer(self._fixed)
        if self._pacer is not None:
            self._flush_tail(trio.current_time())
            self._pacer.end_stream(trio.current_time())
        self._wake.unpark_all()

    def discard(self) -> None:
        """The connection is gone: count what was never sent, write the pending log summary."""
        if self._pacer is not None and self._pacer.queued_chunks:
            self._stats.count("dropped_out", "disconnected")
            log.debug("session %s: %d queued audio chunks not sent", self._session.id[:8], self._pacer.queued_chunks)
        self._drop_log.close()

    @property
    def queued_audio_bytes(self) -> int:
        """Audio bytes waiting here (paced queue, remainder and held frames)."""
        return (self._pacer.queued_bytes if self._pacer is not None else 0) + self._held_bytes

    # ------------------------------------------------------------------ the task

    async def run(self) -> None:
        """Send paced audio until the session ends (run it in the session's nursery)."""
        while True:
            with trio.move_on_at(self._wake_at()):
                await self._wake.park()
            now = trio.current_time()
            pacer = self._pacer
            if pacer is not None and self._ready():
                if pacer.next_deadline is None and self._has_tail() and now >= self._flush_at(pacer):
                    self._flush_tail(now)
                    pacer.flush(now)
                generation = self._generation
                fmt = self._format
                assert fmt is not None
                for chunk in pacer.pop_due(now):
                    if self._generation != generation or self._pacer is not pacer:
                        break
                    await self._send_audio(chunk, fmt, generation, pacer)
                self._count_underruns(pacer)
            if self._ending and self._drained() and now >= self._playout_end():
                self._session.close(CloseCode.GOING_AWAY, "server shutdown")
                return

    def _wake_at(self) -> float:
        pacer = self._pacer
        if pacer is None or not self._ready():
            return -math.inf if self._ending else math.inf
        if (deadline := pacer.next_deadline) is not None:
            return deadline
        if self._has_tail():
            return self._flush_at(pacer)
        return self._playout_end() if self._ending else math.inf

    def _flush_at(self, pacer: AudioPacer) -> float:
        # No audio for one chunk duration, and the partial chunk's slot has come.
        at = self._last_push + self._config.chunk_ms / _MS_PER_S
        if (end := pacer.playout_end) is not None and pacer.config.pacing is not Pacing.NONE:
            lead_ms = pacer.config.lead_ms if pacer.config.pacing is Pacing.LEAD else pacer.config.chunk_ms
            at = max(at, end - lead_ms / _MS_PER_S)
        return at

    def _has_tail(self) -> bool:
        """Audio short of a chunk: the pacer's remainder or what the resampler holds."""
        pacer = self._pacer
        return pacer is not None and (
            pacer.pending_bytes > 0 or (self._converter is not None and self._converter.pending)
        )

    def _drained(self) -> bool:
        return self._pacer is None or (self._pacer.queued_chunks == 0 and not self._has_tail())

    def _playout_end(self) -> float:
        end = self._pacer.playout_end if self._pacer is not None else None
        return -math.inf if end is None else end

    def _ready(self) -> bool:
        return bool(getattr(self._serializer, "ready", True))

    # ------------------------------------------------------------------ audio in

    def _push_audio(self, frame: AudioRawFrame) -> None:
        source = AudioFormat(frame.sample_rate, frame.num_channels)
        target = self._fixed
        if target is None:
            target = self._format if self._format is not None and not self._drained() else source
        if self._pacer is None or target != self._format:
            self._new_pacer(target)
        assert self._pacer is not None
        now = trio.current_time()
        if source == target:
            self._flush_tail(now)  # a converted stream before this one must come out first
            pcm = frame.audio
        else:
            pcm = self._convert(source, target, frame.audio, now)
        if self._pacer.queued_bytes + len(pcm) > self._config.max_queued_audio_bytes:
            self._drop(frame, "audio_buffer_full", f"{self._pacer.queued_bytes} bytes already queued")
            return
        self._pacer.push(pcm, now)
        self._pushed += len(pcm)
        self._last_push = now
        self._audio_frames += 1
        if self._marks_each_frame:
            self._queue_mark(frame.name or f"audio-{self._audio_frames}")
        self._wake.unpark_all()

    def _convert(self, source: AudioFormat, target: AudioFormat, pcm: bytes, now: float) -> bytes:
        conv = self._converter
        if conv is None or conv.source != source or conv.target != target:
            self._flush_tail(now)
            conv = self._converter = AudioConverter(source, target, self._config.resample_quality)
            self._conv_base, self._conv_in_frames = self._pushed, 0
        self._conv_in_frames += len(pcm) // source.frame_bytes
        self._stats.add("audio_frames_converted")
        return conv.convert(pcm)

    def _flush_tail(self, now: float) -> None:
        """Push what the resampler holds into the pacer (end of a converted stream)."""
        conv = self._converter
        if conv is None or not conv.pending or self._pacer is None:
            return
        tail = conv.flush()
        self._pacer.push(tail, now)
        self._pushed += len(tail)
        self._conv_base, self._conv_in_frames = self._pushed, 0

    def _expected_end(self) -> int:
        """Byte position where the audio pushed so far ends, counting what the resampler still holds."""
        conv = self._converter
        if conv is None or not conv.pending:
            return self._pushed
        out_frames = self._conv_in_frames * conv.target.sample_rate // conv.source.sample_rate
        return max(self._pushed, self._conv_base + out_frames * conv.target.frame_bytes)

    def _new_pacer(self, fmt: AudioFormat) -> None:
        if self._pacer is not None:
            self._count_underruns(self._pacer)
        while self._marks:  # the old stream is all sent (or in flight): its marks are due
            self._send_now(MarkFrame(self._marks.popleft()[1]))
        c = self._config
        self._pacer = AudioPacer(
            PacerConfig(
                fmt.sample_rate,
                fmt.num_channels,
                chunk_ms=c.chunk_ms,
                pacing=c.pacing,
                lead_ms=c.lead_ms,
                max_late_ms=c.max_late_ms,
                end_silence_ms=c.end_silence_ms,
            )
        )
        self._format = fmt
        self._converter = None
        self._pushed = self._sent = 0
        self._underruns_seen = 0

    def _count_underruns(self, pacer: AudioPacer) -> None:
        if pacer.underruns > self._underruns_seen:
            self._stats.add("audio_underruns", pacer.underruns - self._underruns_seen)
            self._underruns_seen = pacer.underruns

    # ------------------------------------------------------------------ marks and holding

    def _queue_mark(self, name: str) -> None:
        position = self._expected_end()
        if position <= self._sent:
            self._send_now(MarkFrame(name))
        else:
            self._marks.append((position, name))

    def _send_due_marks(self) -> None:
        while self._marks and self._marks[0][0] <= self._sent:
            self._send_now(MarkFrame(self._marks.popleft()[1]))

    def _hold(self, frame: AnyFrame) -> None:
        size = len(frame.audio) if isinstance(frame, AudioRawFrame) else 0
        if len(self._held) >= HELD_FRAMES or self._held_bytes + size > self._config.max_queued_audio_bytes:
            self._drop(frame, "not_ready", "the peer cannot be addressed yet and the hold line is full")
            return
        self._held.append(frame)
        self._held_bytes += size

    # ------------------------------------------------------------------ out

    async def _send_audio(self, chunk: bytes, fmt: AudioFormat, generation: int, pacer: AudioPacer) -> None:
        data = self._serialize(AudioRawFrame(chunk, fmt.sample_rate, fmt.num_channels))
        if data is None:
            return
        await self._session.wait_for_room()
        if self._generation != generation:
            return  # interrupted while waiting: this chunk must not follow the interruption
        if not self._session.send_nowait(data):
            self._stats.count("dropped_out", "closed")
            return
        if self._pacer is pacer:
            self._sent += len(chunk)
        self._stats.add("frames_out")
        self._stats.add("audio_chunks_out")
        self._send_due_marks()

    def _send_now(self, frame: AnyFrame) -> None:
        data = self._serialize(frame)
        if data is None:
            return
        if self._session.send_nowait(data):
            self._stats.add("frames_out")
        else:
            self._stats.count("dropped_out", "closed")

    def _serialize(self, frame: AnyFrame) -> bytes | str | None:
        try:
            data = self._serializer.serialize(frame)
        except LocalProtocolError as exc:
            self._drop(frame, "unserializable", str(exc), level=logging.ERROR)
            return None
        if data is None:
            self._drop(frame, "serializer_returned_none", level=logging.DEBUG)
        return data

    def _drop(self, frame: Any, reason: str, detail: str = "", *, level: int = logging.WARNING) -> None:
        self._stats.count("dropped_out", reason)
        kind = getattr(frame, "kind", type(frame).__name__)
        self._drop_log.log(
            trio.current_time(), level, reason, "session %s: not sending a %s frame (%s)%s",
            self._session.id[:8], kind, reason, f": {detail}" if detail else "",
        )  # fmt: skip
