"""Streaming resampling and remixing, checked numerically: a sine keeps its frequency and level, no clicks at chunk edges."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
import soxr

from antiphon.errors import ConfigError
from antiphon.proto.media.resample import AudioConverter, AudioFormat

AMPLITUDE = 10000.0
FREQUENCY_TOLERANCE = 0.0005  # 0.05 %
LEVEL_TOLERANCE_DB = 0.05
RESIDUAL_MAX_DB = -60.0  # error against the ideal sine at the output rate, relative to the sine's RMS
CLICK_MAX_LSB = 60  # no sample of the steady state strays further from the ideal sine (a click is thousands)


def sine(rate: int, seconds: float, frequency: float, channels: int = 1) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    mono = np.round(AMPLITUDE * np.sin(2 * math.pi * frequency * t)).astype("<i2")
    return np.repeat(mono[:, None], channels, axis=1).tobytes()


def in_chunks(conv: AudioConverter, pcm: bytes, chunk_ms: int) -> bytes:
    step = conv.source.bytes_for_ms(chunk_ms)
    return b"".join(conv.convert(pcm[i : i + step]) for i in range(0, len(pcm), step)) + conv.flush()


def channel(pcm: bytes, channels: int, index: int = 0) -> npt.NDArray[np.float64]:
    return np.frombuffer(pcm, dtype="<i2").reshape(-1, channels)[:, index].astype(np.float64)


def zero_crossing_frequency(y: npt.NDArray[np.float64], rate: int) -> float:
    """Frequency from the first and last rising zero crossings, interpolated between samples."""
    rising = np.nonzero((y[:-1] < 0) & (y[1:] >= 0))[0]
    exact = rising + (-y[rising]) / (y[rising + 1] - y[rising])
    return float((len(exact) - 1) / ((exact[-1] - exact[0]) / rate))


def db(ratio: float) -> float:
    return 20 * math.log10(max(ratio, 1e-12))  # exact silence counts as -240 dB


PAIRS = [(24000, 16000), (16000, 24000), (16000, 48000), (48000, 16000), (8000, 16000), (16000, 8000), (44100, 16000)]


@pytest.mark.parametrize(("source_rate", "target_rate"), PAIRS)
def test_a_sine_keeps_its_frequency_and_level(source_rate: int, target_rate: int) -> None:
    """1 s of 440 Hz fed in 20 ms chunks comes out at the other rate within 0.05 % and 0.05 dB, residual under -60 dB."""
    conv = AudioConverter(AudioFormat(source_rate), AudioFormat(target_rate))
    out = channel(in_chunks(conv, sine(source_rate, 1.0, 440.0), 20), 1)
    assert len(out) == target_rate  # nothing lost or added: the filter's tail was flushed
    steady = slice(target_rate // 20, len(out) - target_rate // 20)  # skip the filter's ramp at both ends
    y = out[steady]
    assert abs(zero_crossing_frequency(y, target_rate) / 440.0 - 1) < FREQUENCY_TOLERANCE
    assert abs(db(float(np.sqrt(np.mean(y**2))) / (AMPLITUDE / math.sqrt(2)))) < LEVEL_TOLERANCE_DB
    ideal = AMPLITUDE * np.sin(2 * math.pi * 440.0 * np.arange(len(out)) / target_rate)[steady]
    residual = y - ideal
    assert db(float(np.sqrt(np.mean(residual**2))) / (AMPLITUDE / math.sqrt(2))) < RESIDUAL_MAX_DB
    assert float(np.max(np.abs(residual))) < CLICK_MAX_LSB


@pytest.mark.parametrize("chunk_ms", [5, 20, 40, 130])
def test_chunking_does_not_change_the_output(chunk_ms: int) -> None:
    """The stream fed in chunks of any size is bit for bit the stream fed whole: state carries across edges."""
    pcm = sine(24000, 0.5, 1000.0)
    whole_conv = AudioConverter(AudioFormat(24000), AudioFormat(16000))
    whole = channel(whole_conv.convert(pcm) + whole_conv.flush(), 1)
    chunked = channel(in_chunks(AudioConverter(AudioFormat(24000), AudioFormat(16000)), pcm, chunk_ms), 1)
    assert len(chunked) == len(whole) == 8000
    assert np.array_equal(chunked, whole)


def test_silence_stays_silent() -> None:
    """No dither: zeros in, exact zeros out (soxr's own int16 output dithers by +-1)."""
    conv = AudioConverter(AudioFormat(16000), AudioFormat(8000))
    assert set(conv.convert(bytes(6400)) + conv.flush()) == {0}


def test_full_scale_clips_instead_of_wrapping() -> None:
    """A full-scale square wave overshoots in the filter (Gibbs); the overshoot is clipped to int16, never wrapped."""
    square = np.tile(np.repeat(np.array([32767, -32768], dtype="<i2"), 20), 400)
    stream = soxr.ResampleStream(48000, 16000, 1, dtype="float32", quality="HQ")
    unclipped = np.concatenate([stream.resample_chunk(square.astype(np.float32)), stream.resample_chunk(np.zeros(0, np.float32), last=True)])
    assert unclipped.max() > 32767 and unclipped.min() < -32768  # the case this test is about
    conv = AudioConverter(AudioFormat(48000), AudioFormat(16000))
    y = np.frombuffer(conv.convert(square.tobytes()) + conv.flush(), dtype="<i2")
    assert np.array_equal(y, np.clip(np.rint(unclipped), -32768, 32767).astype(np.int16))


def test_higher_frequencies_than_the_target_can_carry_are_filtered_not_aliased() -> None:
    """10 kHz at 48 kHz cannot exist at 16 kHz: it comes out more than 80 dB down instead of folding to 6 kHz."""
    conv = AudioConverter(AudioFormat(48000), AudioFormat(16000))
    y = channel(in_chunks(conv, sine(48000, 0.5, 10000.0), 20), 1)[800:-800]
    assert db(float(np.sqrt(np.mean(y**2))) / (AMPLITUDE / math.sqrt(2))) < -80


@pytest.mark.parametrize(
    ("quality", "source_rate", "target_rate", "max_held_ms"),
    [("HQ", 48000, 16000, 40), ("HQ", 24000, 16000, 40), ("HQ", 8000, 16000, 120), ("QQ", 8000, 16000, 1)],
)
def test_documented_latency(quality: str, source_rate: int, target_rate: int, max_held_ms: float) -> None:
    """The filter holds back at most what the module docstring says (HQ ~36 ms / ~115 ms at 2:1, QQ < 1 ms)."""
    conv = AudioConverter(AudioFormat(source_rate), AudioFormat(target_rate), quality)  # type: ignore[arg-type]
    step = AudioFormat(source_rate).bytes_for_ms(20)
    fed_ms = out_ms = held = 0.0
    for _ in range(50):
        out_ms += AudioFormat(target_rate).ms_of(len(conv.convert(bytes(step))))
        fed_ms += 20
        held = max(held, fed_ms - out_ms)
    assert held <= max_held_ms


def test_stereo_to_mono_averages_the_channels() -> None:
    """Left = sine, right = silence, to mono: the sine at half level, same rate."""
    left = np.frombuffer(sine(16000, 0.1, 500.0), dtype="<i2")
    stereo = np.stack([left, np.zeros_like(left)], axis=1).astype("<i2").tobytes()
    out = channel(AudioConverter(AudioFormat(16000, 2), AudioFormat(16000, 1)).convert(stereo), 1)
    assert np.array_equal(out, np.floor_divide(left.astype(np.int32), 2).astype(np.float64))


def test_mono_to_stereo_copies_and_wider_layouts_repeat_channels() -> None:
    """Mono to stereo duplicates; stereo to 6 channels repeats L/R; 6 to stereo keeps the first two."""
    mono = sine(16000, 0.05, 500.0)
    stereo = AudioConverter(AudioFormat(16000, 1), AudioFormat(16000, 2)).convert(mono)
    assert np.array_equal(channel(stereo, 2, 0), channel(mono, 1)) and np.array_equal(channel(stereo, 2, 1), channel(mono, 1))
    six = np.arange(6 * 100, dtype="<i2").reshape(100, 6)
    two = np.frombuffer(AudioConverter(AudioFormat(16000, 6), AudioFormat(16000, 2)).convert(six.tobytes()), "<i2")
    assert np.array_equal(two.reshape(100, 2), six[:, :2])
    wide = np.frombuffer(AudioConverter(AudioFormat(16000, 2), AudioFormat(16000, 6)).convert(six[:, :2].tobytes()), "<i2")
    assert np.array_equal(wide.reshape(100, 6), six[:, [0, 1, 0, 1, 0, 1]])


def test_resample_and_remix_together() -> None:
    """48 kHz stereo to 16 kHz mono: one channel out, the sine's frequency and level kept."""
    conv = AudioConverter(AudioFormat(48000, 2), AudioFormat(16000, 1))
    y = channel(in_chunks(conv, sine(48000, 0.5, 440.0, channels=2), 40), 1)
    assert len(y) == 8000
    assert abs(zero_crossing_frequency(y[800:-800], 16000) / 440.0 - 1) < FREQUENCY_TOLERANCE


def test_reset_drops_what_the_filter_held() -> None:
    """After reset, flush has nothing: the interrupted stream's tail is gone, and a new stream starts clean."""
    conv = AudioConverter(AudioFormat(8000), AudioFormat(16000))
    conv.convert(sine(8000, 0.1, 440.0))
    assert conv.pending
    conv.reset()
    assert not conv.pending and conv.flush() == b""
    out = conv.convert(sine(8000, 0.2, 440.0)) + conv.flush()
    assert len(out) == 2 * 3200


def test_same_format_passes_through() -> None:
    """Source == target is the identity: the same bytes, nothing held."""
    conv = AudioConverter(AudioFormat(16000, 2), AudioFormat(16000, 2))
    pcm = sine(16000, 0.01, 440.0, channels=2)
    assert conv.identity and conv.convert(pcm) == pcm and conv.flush() == b""


@pytest.mark.parametrize(("rate", "channels"), [(7999, 1), (384001, 1), (16000, 0), (16000, 9), (16000.0, 1)])
def test_formats_outside_the_bounds_are_config_errors(rate: int, channels: int) -> None:
    """AudioFormat enforces 8-384 kHz and 1-8 channels."""
    with pytest.raises(ConfigError):
        AudioFormat(rate, channels)


def test_unknown_quality_is_a_config_error() -> None:
    """Only soxr's five presets are accepted."""
    with pytest.raises(ConfigError, match="quality"):
        AudioConverter(AudioFormat(16000), AudioFormat(8000), "best")  # type: ignore[arg-type]
