"""Outgoing audio pacing: cut PCM into fixed chunks and say when each one should be sent.

Theory of operation
-------------------
A media peer plays audio as it arrives, so the sender must not dump a 10 s TTS reply in
one go (the peer could not interrupt it) nor fall behind (the peer would stutter). The
Trio output task is a thin loop around an :class:`AudioPacer`::

    pacer.push(pcm, trio.current_time())           # producers: any amount of PCM
    ...
    while (deadline := pacer.next_deadline) is not None:
        await trio.sleep_until(deadline)
        for chunk in pacer.pop_due(trio.current_time()):
            await send(AudioRawFrame(chunk, sample_rate, num_channels))

Nothing here reads a clock: every call that can start or move the schedule takes
``now``, so tests assert exact send times.

**Chunking.** :class:`AudioChunker` cuts the byte stream into chunks of ``chunk_ms``
(default 40 ms, Pipecat's ``audio_out_10ms_chunks=4``), sized ``sample_rate * chunk_ms
// 1000`` sample frames of ``num_channels * sample_width`` bytes. Bytes short of a chunk
wait for more audio. A *flush* (the producer says the utterance is over) pads them with
silence to a full chunk, as Pipecat does: every chunk then has the same size, which
keeps the receiver's jitter buffer simple, at the cost of at most one chunk of silence.
Pipecat drops that remainder at end of stream instead of padding it (a bug); we pad.

**Pacing policies** (:class:`Pacing`, ``PacerConfig.pacing``):

* ``realtime`` (the default): one chunk of lead. Chunks 1 and 2 leave back to back,
  then one every ``chunk_ms``: exactly Pipecat's observed timing.
* ``lead``: stay up to ``lead_ms`` ahead of real time (default 200 ms), so the
  receiver's buffer absorbs that much network jitter. An interruption drops what is
  queued here at once, but what was already sent ahead is in the listener's buffer:
  a receiver should drop its buffer when it receives the interruption frame.
* ``none``: every chunk is due at once; the socket's backpressure is the only pace
  (files, tests, offline synthesis). ``playout_end`` still says when a real-time
  listener would have played it all.

**Deadlines.** Chunk *k* after the anchor is due at ``anchor + max(0, sent - lead)``,
where ``sent`` is the playing time of the chunks already sent since the anchor, counted
in sample frames and divided once (so rounding never accumulates: no drift however long
the stream). Durations come from the chunk's bytes and the channel count, so stereo is
paced at the right speed; Pipecat divides by 2 bytes per sample only, which paces stereo
at half speed (a bug).

**Underruns.** The anchor is where the schedule starts: the first push, or the first
push after an interruption. When a chunk would go out more than ``max_late_ms``
(default 40) after its deadline, the receiver has run dry, so the schedule is
re-anchored at ``now``: the chunk goes out at once, the lead is rebuilt, and there is
no catch-up burst. If audio was waiting (the output loop or the network stalled) that
counts in :attr:`AudioPacer.underruns`; if the producer was late, in
:attr:`AudioPacer.starved`. A chunk late by less than ``max_late_ms`` goes out at once
and the schedule holds, so scheduler jitter never shifts the stream (Pipecat
re-anchors on any lateness, so its pacing drifts by every late wake-up).

**Streams and interruption.** A *stream* (one utterance, as the listener hears it)
starts with the first audio after an interruption, or after everything sent before had
played out. :meth:`AudioPacer.interrupt` drops every queued chunk and the partial
remainder at once, forgets the anchor, and returns an :class:`InterruptReport`: how much
of the interrupted stream had been sent to the listener, how much of that the listener
should have played by ``now`` (sent minus what is still in its buffer, from the pacing),
and how much was dropped unsent. An agent truncates its transcript to ``heard_ms``
(OpenAI's ``conversation.item.truncate`` takes ``audio_end_ms``). (Pipecat's client
transport does not reset its pacing on interruption; antiphon always does.)

**End of stream.** :meth:`AudioPacer.end_stream` flushes and then queues
``end_silence_ms`` of silence (rounded up to whole chunks), paced like any audio and in
the stream's channel count. Pipecat sends its 2 s of end silence as one mono message
whatever the channel count (a bug). ``playout_end`` says when the receiver will have
played everything sent: a transport that wants the peer to hear the end should not
close before then.

Each pacer handles one PCM format; :mod:`antiphon.proto.media.resample` converts others.
Its memory is what is queued (``queued_bytes``; the transport bounds it) plus less than
one chunk of remainder.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from typing import Final

import attrs
from attrs import field, frozen

from antiphon.errors import ConfigError

__all__ = [
    "CHUNK_MS",
    "LEAD_MS",
    "MAX_LATE_MS",
    "AudioChunker",
    "AudioPacer",
    "InterruptReport",
    "PacerConfig",
    "Pacing",
    "as_pacing",
]

CHUNK_MS: Final = 40
"""Default chunk length: Pipecat's 4 x 10 ms; short enough to interrupt, long enough to be cheap."""
LEAD_MS: Final = 200
"""Default send-ahead of the ``lead`` policy: covers typical Wi-Fi/mobile jitter, still interruptible."""


class Pacing(enum.StrEnum):
    """How far ahead of real time outgoing audio may be sent (see the module docstring)."""

    REALTIME = "realtime"
    """One chunk of lead, then one chunk per chunk duration: Pipecat's timing (the default)."""
    LEAD = "lead"
    """Up to ``lead_ms`` ahead of real time."""
    NONE = "none"
    """As fast as the socket takes it."""
MAX_LATE_MS: Final = 40
"""Default lateness that counts as an underrun: one chunk; less is jitter and keeps the schedule."""
_MS_PER_S: Final = 1000


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{attribute.name} must be a positive integer, got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{attribute.name} must be a non-negative integer, got {value!r}")


def as_pacing(value: object) -> Pacing:
    """``value`` as a :class:`Pacing` (a member or its name); :class:`ConfigError` otherwise."""
    if isinstance(value, Pacing):
        return value
    if isinstance(value, str) and value in Pacing._value2member_map_:
        return Pacing(value)
    raise ConfigError(f"pacing must be one of {', '.join(Pacing)}, got {value!r}")


@frozen
class InterruptReport:
    """What an interruption cut short, in milliseconds of audio (see the module docstring).

    ``sent_ms``: of the interrupted stream, written to the listener. ``heard_ms``: of
    that, what the listener should have played by the interruption (``sent_ms`` minus
    what the pacing says is still in its buffer). ``dropped_ms`` / ``dropped_bytes``:
    queued here and never sent. Milliseconds are rounded to the microsecond.
    """

    sent_ms: float
    heard_ms: float
    dropped_ms: float
    dropped_bytes: int


def _silence(sample_width: int, n_bytes: int) -> bytes:
    # 8-bit WAV PCM is unsigned (silence is 0x80); wider samples are signed (silence is 0).
    return (b"\x80" if sample_width == 1 else b"\x00") * n_bytes


class AudioChunker:
    """Cuts a PCM byte stream into equal chunks of ``chunk_ms``, carrying the remainder.

    Raises :class:`ConfigError` if the format is invalid or a chunk would hold no sample.
    """

    def __init__(self, sample_rate: int, num_channels: int = 1, sample_width: int = 2, chunk_ms: int = CHUNK_MS):
        for name, value in (("sample_rate", sample_rate), ("num_channels", num_channels), ("chunk_ms", chunk_ms)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if sample_width not in (1, 2, 3, 4):
            raise ConfigError(f"sample_width must be 1 to 4 bytes, got {sample_width!r}")
        self.sample_rate = sample_rate
        self.num_channels = num_channels
        self.sample_width = sample_width
        self.frame_bytes = num_channels * sample_width
        """Bytes per sample frame (one sample for every channel)."""
        self.chunk_frames = sample_rate * chunk_ms // _MS_PER_S
        """Sample frames per chunk (rounded down when ``chunk_ms`` is not a whole number of them)."""
        if self.chunk_frames == 0:
            raise ConfigError(f"a {chunk_ms} ms chunk at {sample_rate} Hz holds no sample")
        self.chunk_bytes = self.chunk_frames * self.frame_bytes
        self._buffer = bytearray()

    @property
    def pending_bytes(self) -> int:
        """Bytes waiting for a full chunk or a flush."""
        return len(self._buffer)

    def push(self, pcm: bytes) -> list[bytes]:
        """Add PCM (any length, even mid-sample) and return every chunk now complete."""
        self._buffer += pcm
        n = len(self._buffer) // self.chunk_bytes * self.chunk_bytes
        if not n:
            return []
        whole = bytes(self._buffer[:n])
        del self._buffer[:n]
        return [whole[i : i + self.chunk_bytes] for i in range(0, n, self.chunk_bytes)]

    def flush(self) -> bytes | None:
        """Return the remainder padded with silence to a full chunk, or ``None`` if there is none."""
        if not self._buffer:
            return None
        chunk = bytes(self._buffer) + _silence(self.sample_width, self.chunk_bytes - len(self._buffer))
        self._buffer.clear()
        return chunk

    def clear(self) -> int:
        """Drop the remainder; return how many bytes were dropped."""
        n = len(self._buffer)
        self._buffer.clear()
        return n

    def silence(self, duration_ms: int) -> list[bytes]:
        """``duration_ms`` of silence as whole chunks (rounded up)."""
        frames = self.sample_rate * duration_ms // _MS_PER_S
        n_chunks = -(-frames // self.chunk_frames)
        return [_silence(self.sample_width, self.chunk_bytes)] * n_chunks


@frozen
class PacerConfig:
    """How an :class:`AudioPacer` chunks and paces one PCM stream; see the module docstring.

    Raises :class:`ConfigError` on a non-positive format or chunk length, an unknown
    pacing policy, or a negative lead, lateness or silence. ``lead_ms`` applies to
    ``pacing="lead"`` only (``realtime`` leads by one chunk, ``none`` is unpaced).
    """

    sample_rate: int = field(validator=_positive)
    num_channels: int = field(default=1, validator=_positive)
    sample_width: int = field(default=2, validator=_positive)
    chunk_ms: int = field(default=CHUNK_MS, validator=_positive)
    pacing: Pacing = field(default=Pacing.REALTIME, converter=as_pacing)
    lead_ms: int = field(default=LEAD_MS, validator=_non_negative)
    max_late_ms: int = field(default=MAX_LATE_MS, validator=_non_negative)
    end_silence_ms: int = field(default=0, validator=_non_negative)
    """Silence queued by ``end_stream``; Pipecat sends 2000 ms. 0 sends none."""


class AudioPacer:
    """Chunks outgoing PCM and releases each chunk at its deadline; sans-IO, driven by ``now``.

    ``now`` is any monotonic clock in seconds (the Trio layer passes
    ``trio.current_time()``); it must never go backwards. Not thread-safe.
    """

    def __init__(self, config: PacerConfig) -> None:
        self.config = config
        self._chunker = AudioChunker(config.sample_rate, config.num_channels, config.sample_width, config.chunk_ms)
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._anchor: float | None = None
        self._sent_frames = 0  # sample frames sent since the anchor
        self._stream_frames = 0  # sample frames sent since the stream started (survives re-anchors)
        # Compare and divide in integers scaled by 1000 so ms settings stay exact.
        if config.pacing is Pacing.REALTIME:
            self._lead_scaled: float = self._chunker.chunk_frames * _MS_PER_S
        elif config.pacing is Pacing.LEAD:
            self._lead_scaled = config.sample_rate * config.lead_ms
        else:
            self._lead_scaled = math.inf
        self._rate_scaled = config.sample_rate * _MS_PER_S
        self._max_late_s = config.max_late_ms / _MS_PER_S
        self.underruns = 0
        """Re-anchors while audio was waiting: the output loop or the network fell behind real time."""
        self.starved = 0
        """Re-anchors because the producer's audio came after the listener had run dry."""

    @property
    def chunk_bytes(self) -> int:
        """Bytes in every chunk ``pop_due`` returns."""
        return self._chunker.chunk_bytes

    @property
    def pending_bytes(self) -> int:
        """Bytes of the partial remainder (less than one chunk)."""
        return self._chunker.pending_bytes

    @property
    def queued_chunks(self) -> int:
        """Chunks waiting to be sent (not counting a partial remainder)."""
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting to be sent, the partial remainder included: bound memory with it."""
        return self._queued_bytes + self._chunker.pending_bytes

    @property
    def queued_s(self) -> float:
        """Playing time of the queued chunks, in seconds: use it for backpressure."""
        return len(self._queue) * self._chunker.chunk_frames / self.config.sample_rate

    @property
    def next_deadline(self) -> float | None:
        """When to call ``pop_due`` next (may be in the past: call it at once); ``None`` if nothing is queued."""
        if not self._queue or self._anchor is None:
            return None
        return self._deadline()

    @property
    def playout_end(self) -> float | None:
        """When the receiver will have played everything sent since the anchor; ``None`` before any."""
        if self._anchor is None:
            return None
        return self._anchor + self._sent_frames / self.config.sample_rate

    @property
    def stream_sent_ms(self) -> float:
        """Playing time sent since the current stream started, in milliseconds."""
        return self._stream_frames * _MS_PER_S / self.config.sample_rate

    def push(self, pcm: bytes, now: float) -> None:
        """Queue PCM in the configured format; whole chunks become sendable, the rest waits."""
        self._enqueue(self._chunker.push(pcm), now)

    def flush(self, now: float) -> None:
        """Queue the partial remainder padded with silence to a full chunk (end of an utterance)."""
        chunk = self._chunker.flush()
        self._enqueue([chunk] if chunk is not None else [], now)

    def end_stream(self, now: float) -> None:
        """Flush, then queue ``end_silence_ms`` of silence (rounded up to whole chunks)."""
        self.flush(now)
        self._enqueue(self._chunker.silence(self.config.end_silence_ms), now)

    def interrupt(self, now: float) -> InterruptReport:
        """Drop every queued chunk and the remainder now, forget the anchor; say what was cut short."""
        dropped = self._queued_bytes + self._chunker.clear()
        sent_ms = self.stream_sent_ms
        end = self.playout_end
        buffered_ms = max(0.0, (end - now) * _MS_PER_S) if end is not None else 0.0
        frame_bytes = self._chunker.frame_bytes
        report = InterruptReport(  # rounded to microseconds: float noise helps nobody
            sent_ms=round(sent_ms, 3),
            heard_ms=round(max(0.0, sent_ms - buffered_ms), 3),
            dropped_ms=round(dropped // frame_bytes * _MS_PER_S / self.config.sample_rate, 3),
            dropped_bytes=dropped,
        )
        self._queue.clear()
        self._queued_bytes = 0
        self._anchor = None
        self._sent_frames = 0
        self._stream_frames = 0
        return report

    def pop_due(self, now: float) -> list[bytes]:
        """Remove and return the chunks whose deadline is ``now`` or earlier, in order."""
        due: list[bytes] = []
        while self._queue:
            if self._reanchor_if_late(now):
                self.underruns += 1
            if self._deadline() > now:
                break
            chunk = self._queue.popleft()
            self._queued_bytes -= len(chunk)
            frames = len(chunk) // self._chunker.frame_bytes
            self._sent_frames += frames
            self._stream_frames += frames
            due.append(chunk)
        return due

    def _deadline(self) -> float:
        assert self._anchor is not None
        ahead = max(0.0, self._sent_frames * _MS_PER_S - self._lead_scaled)
        return self._anchor + ahead / self._rate_scaled

    def _reanchor_if_late(self, now: float) -> bool:
        """Re-anchor at ``now`` if the listener ran dry; True if it did so on a running schedule."""
        if self._anchor is None:
            self._anchor, self._sent_frames = now, 0
            return False
        if self.config.pacing is Pacing.NONE:
            late = now > self._anchor + self._sent_frames / self.config.sample_rate + self._max_late_s
        else:
            late = now - self._deadline() > self._max_late_s
        if late:
            self._anchor, self._sent_frames = now, 0
        return late

    def _enqueue(self, chunks: list[bytes], now: float) -> None:
        if not chunks:
            return
        was_idle = not self._queue
        if was_idle:
            end = self.playout_end
            if end is None or now >= end:
                self._stream_frames = 0  # everything sent before has played: a new stream starts
        self._queue.extend(chunks)
        self._queued_bytes += sum(map(len, chunks))
        if was_idle and self._reanchor_if_late(now):
            # The head chunk just arrived after the receiver ran dry waiting for it: restart here.
            self.starved += 1
