"""Streaming audio format conversion: resample with soxr and remix channels, chunk by chunk.

Theory of operation
-------------------
A media transport receives audio in whatever rate and channel count a peer or an
application produces, and must hand on one format (the output's, or ``audio_in_*``).
:class:`AudioConverter` turns 16-bit PCM of one format into another, one chunk at a
time, keeping the resampler's filter state between chunks so a stream cut into 20 ms
frames comes out exactly as if it had been resampled whole: no clicks at chunk edges.
It is pure computation (numpy and `soxr <https://github.com/dofuuz/python-soxr>`_, the
SoX resampler Pipecat also uses) and reads no clock.

**Resampling** uses ``soxr.ResampleStream`` on float32 samples, rounded and clipped back
to int16 here: no dither, so silence stays exactly silent and a stream's output does not
depend on how it was cut into chunks (bit for bit). Quality ``"HQ"`` (the default)
keeps the passband flat to 91% of the lower Nyquist frequency and rejects aliases by
more than 80 dB. The filter holds audio back: about 36 ms when converting between 16
kHz and 24/44.1/48 kHz, about 115 ms between 8 and 16 kHz (soxr's half-band stages are
long); ``"VHQ"`` (Pipecat's choice) holds about as much, ``"QQ"`` (cubic, no anti-alias
filter) under 1 ms. Cost at HQ is roughly 5-10 microseconds per 40 ms chunk of mono
speech (see ``BENCHMARKS.md``). What the filter holds comes out with later input, or at
once from :meth:`AudioConverter.flush` when a stream ends (the transport flushes when it
pads an utterance's last chunk). :meth:`AudioConverter.reset` drops it (interruption).

**Remixing** happens at the lower channel count, so resampling does the least work:
to mono, the channels are averaged; from mono, the one channel is copied to each; from
M to N channels otherwise, output channel ``c`` is input channel ``c % M`` (stereo to
5.1 repeats left/right; 5.1 to stereo keeps front left/right).

Input must be whole sample frames (an :class:`~antiphon.proto.media.frames.AudioRawFrame`
always is). Output is whole sample frames of the target format, possibly empty while the
filter fills. Memory is bounded: soxr's state is a few thousand samples per channel.
"""

from __future__ import annotations

from typing import Final, Literal, cast

import numpy as np
import numpy.typing as npt
import soxr  # type: ignore[import-untyped]  # no stubs or py.typed as of soxr 1.1
from attrs import frozen

from antiphon.errors import ConfigError
from antiphon.proto.media.frames import (
    MAX_CHANNELS,
    MAX_SAMPLE_RATE_HZ,
    MIN_SAMPLE_RATE_HZ,
)

__all__ = ["DEFAULT_QUALITY", "AudioConverter", "AudioFormat", "Quality"]

Quality = Literal["QQ", "LQ", "MQ", "HQ", "VHQ"]
"""soxr's quality presets, lowest to highest."""

DEFAULT_QUALITY: Final[Quality] = "HQ"
"""Flat passband, >80 dB alias rejection, ~36 ms held at 16<->48 kHz: right for speech."""

_QUALITIES: Final = ("QQ", "LQ", "MQ", "HQ", "VHQ")
_INT16_MIN: Final = -32768
_INT16_MAX: Final = 32767


@frozen
class AudioFormat:
    """A PCM16 format: sample rate and channel count, within the frames' bounds.

    Raises :class:`ConfigError` outside 8 kHz - 384 kHz or 1 - 8 channels.
    """

    sample_rate: int
    num_channels: int = 1

    def __attrs_post_init__(self) -> None:
        if not (
            isinstance(self.sample_rate, int)
            and MIN_SAMPLE_RATE_HZ <= self.sample_rate <= MAX_SAMPLE_RATE_HZ
            and isinstance(self.num_channels, int)
            and 1 <= self.num_channels <= MAX_CHANNELS
        ):
            raise ConfigError(
                f"audio format {self.sample_rate!r} Hz x {self.num_channels!r}: the sample rate must be "
                f"{MIN_SAMPLE_RATE_HZ}-{MAX_SAMPLE_RATE_HZ} Hz and the channels 1-{MAX_CHANNELS}"
            )

    @property
    def frame_bytes(self) -> int:
        """Bytes per sample frame (one 16-bit sample per channel)."""
        return 2 * self.num_channels

    def bytes_for_ms(self, ms: float) -> int:
        """Bytes of ``ms`` milliseconds of audio, rounded down to whole sample frames."""
        return int(self.sample_rate * ms // 1000) * self.frame_bytes

    def ms_of(self, n_bytes: int) -> float:
        """Playing time of ``n_bytes`` of this format, in milliseconds."""
        return n_bytes / self.frame_bytes * 1000 / self.sample_rate

    def __str__(self) -> str:
        return f"{self.sample_rate} Hz x {self.num_channels}"


def _to_int16(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
    return cast("npt.NDArray[np.int16]", np.clip(np.rint(samples), _INT16_MIN, _INT16_MAX).astype(np.int16))


def _remix(samples: npt.NDArray[np.int16], out_channels: int) -> npt.NDArray[np.int16]:
    """Remix ``(frames, M)`` int16 samples to ``(frames, out_channels)`` (see the module docstring)."""
    in_channels = samples.shape[1]
    if in_channels == out_channels:
        return samples
    if out_channels == 1:
        mean = samples.astype(np.int32).sum(axis=1, keepdims=True) // in_channels
        return cast("npt.NDArray[np.int16]", mean.astype(np.int16))
    index = np.arange(out_channels) % in_channels
    return samples[:, index]


class AudioConverter:
    """Converts one stream of PCM16 from ``source`` to ``target`` format, keeping state between chunks.

    Raises :class:`ConfigError` for an unknown ``quality``. Not thread-safe; one per stream.
    """

    def __init__(self, source: AudioFormat, target: AudioFormat, quality: Quality = DEFAULT_QUALITY) -> None:
        if quality not in _QUALITIES:
            raise ConfigError(f"resample quality must be one of {', '.join(_QUALITIES)}, got {quality!r}")
        self.source = source
        self.target = target
        self.quality = quality
        self._mid_channels = min(source.num_channels, target.num_channels)
        self._stream: soxr.ResampleStream | None = None
        if source.sample_rate != target.sample_rate:
            self._stream = soxr.ResampleStream(
                source.sample_rate, target.sample_rate, self._mid_channels, dtype="float32", quality=quality
            )
        self._pending = False  # the filter may hold samples of the current stream

    @property
    def pending(self) -> bool:
        """True when the filter may hold samples that :meth:`flush` would release."""
        return self._pending

    @property
    def identity(self) -> bool:
        """True when source and target are the same format (``convert`` returns its input)."""
        return self.source == self.target

    def convert(self, pcm: bytes) -> bytes:
        """Convert whole sample frames of the source format; returns what the filter releases."""
        if self.identity:
            return pcm
        samples = np.frombuffer(pcm, dtype="<i2").reshape(-1, self.source.num_channels)
        if self.target.num_channels < self.source.num_channels:
            samples = _remix(samples, self.target.num_channels)
        if self._stream is not None:
            samples = _to_int16(self._stream.resample_chunk(samples.astype(np.float32)))
            self._pending = True
        samples = _remix(samples, self.target.num_channels)
        return np.ascontiguousarray(samples, dtype="<i2").tobytes()

    def flush(self) -> bytes:
        """End the stream: return what the filter still holds, and start afresh."""
        if self._stream is None or not self._pending:
            return b""
        empty = np.zeros((0, self._mid_channels), dtype=np.float32)
        tail = _to_int16(self._stream.resample_chunk(empty, last=True))
        self._stream.clear()
        self._pending = False
        return np.ascontiguousarray(_remix(tail, self.target.num_channels), dtype="<i2").tobytes()

    def reset(self) -> None:
        """Drop what the filter holds (an interruption): the next chunk starts a new stream."""
        if self._stream is not None and self._pending:
            self._stream.clear()
        self._pending = False
