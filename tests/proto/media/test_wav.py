"""WAV headers: byte-identical to the stdlib's, and stripped robustly."""

from __future__ import annotations

import io
import struct
import wave

import pytest
from hypothesis import given
from hypothesis import strategies as st

from antiphon.errors import LocalProtocolError
from antiphon.proto.media.wav import (
    WAV_HEADER_BYTES,
    WavAudio,
    add_wav_header,
    strip_wav_header,
)


def _stdlib_wav(pcm: bytes, sample_rate: int, num_channels: int, sample_width: int = 2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(num_channels)
        w.setsampwidth(sample_width)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return buf.getvalue()


def _chunk(chunk_id: bytes, body: bytes) -> bytes:
    return chunk_id + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) % 2 else b"")


@pytest.mark.parametrize(
    ("n_bytes", "sample_rate", "num_channels", "sample_width"),
    [(1280, 16000, 1, 2), (7680, 48000, 2, 2), (0, 24000, 1, 2), (441, 44100, 1, 1), (9, 8000, 1, 3)],
)
def test_header_matches_stdlib_wave(n_bytes: int, sample_rate: int, num_channels: int, sample_width: int) -> None:
    """add_wav_header writes exactly what Python's wave module writes for the same PCM."""
    pcm = bytes(range(256)) * (n_bytes // 256) + bytes(n_bytes % 256)
    expected = _stdlib_wav(pcm, sample_rate, num_channels, sample_width)
    got = add_wav_header(pcm, sample_rate, num_channels, sample_width)
    assert got == expected
    assert len(got) == WAV_HEADER_BYTES + n_bytes


@pytest.mark.parametrize(
    ("pcm", "sample_rate", "num_channels"),
    [
        (b"\x00", 16000, 1), (b"\x00\x00", 48000, 2), (b"", 0, 1), (b"", 16000, 0),
        # issue 10 #2: these raised struct.error (byte rate, rate or channels past their fields).
        (b"", 2**31, 2), (b"", 2**32, 1), (b"", 16000, 2**16),
    ],
)  # fmt: skip
def test_impossible_headers_are_refused(pcm: bytes, sample_rate: int, num_channels: int) -> None:
    """A partial sample frame, a non-positive format or one the header's fields cannot hold is a LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        add_wav_header(pcm, sample_rate, num_channels)


def test_strip_round_trips_stdlib_output() -> None:
    """A file from the wave module strips back to its PCM and format."""
    pcm = b"\x01\x02" * 960
    assert strip_wav_header(_stdlib_wav(pcm, 48000, 2)) == WavAudio(pcm, 48000, 2)


def test_strip_skips_chunks_before_data() -> None:
    """LIST and odd-sized chunks (with their pad byte) between fmt and data are skipped."""
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    pcm = b"\x10\x00" * 8
    body = b"WAVE" + _chunk(b"fmt ", fmt) + _chunk(b"LIST", b"INFOabc") + _chunk(b"fact", b"\x08\x00\x00\x00")
    body += _chunk(b"data", pcm)
    data = b"RIFF" + struct.pack("<I", len(body)) + body
    assert strip_wav_header(data) == WavAudio(pcm, 16000, 1)


def test_strip_accepts_extensible_pcm() -> None:
    """WAVE_FORMAT_EXTENSIBLE whose SubFormat is PCM is accepted."""
    guid_pcm = struct.pack("<H", 1) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 2, 48000, 192000, 4, 16, 22, 16, 3) + guid_pcm
    body = b"WAVE" + _chunk(b"fmt ", fmt) + _chunk(b"data", b"\x00" * 8)
    assert strip_wav_header(b"RIFF" + struct.pack("<I", len(body)) + body) == WavAudio(b"\x00" * 8, 48000, 2)


def test_streaming_placeholder_size_is_clipped() -> None:
    """A data size of 0xFFFFFFFF (writer did not know the length) yields the bytes present."""
    data = bytearray(add_wav_header(b"\x05\x00" * 4, 16000, 1))
    data[40:44] = b"\xff\xff\xff\xff"
    assert strip_wav_header(bytes(data)) == WavAudio(b"\x05\x00" * 4, 16000, 1)


def test_every_truncated_header_is_rejected() -> None:
    """Cutting a header anywhere before the data chunk's size field gives None, never an error."""
    full = add_wav_header(b"\x00\x00" * 4, 16000, 1)
    assert [n for n in range(WAV_HEADER_BYTES) if strip_wav_header(full[:n]) is not None] == []
    assert strip_wav_header(full[:WAV_HEADER_BYTES]) == WavAudio(b"", 16000, 1)


def _with_fmt(tag: int = 1, channels: int = 1, rate: int = 16000, bits: int = 16, fmt_size: int = 16) -> bytes:
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", fmt_size) + fmt[:fmt_size] + _chunk(b"data", b"\x00\x00")
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize(
    "data",
    [
        b"RIFX" + bytes(40),
        b"RIFF\x00\x00\x00\x00WAVX" + bytes(32),
        _with_fmt(tag=3),  # IEEE float
        _with_fmt(bits=8),  # not 16-bit
        _with_fmt(channels=0),
        _with_fmt(rate=0),
        _with_fmt(fmt_size=14),  # fmt chunk too short
        b"RIFF\x0c\x00\x00\x00WAVEdata\x02\x00\x00\x00\x00\x00",  # data before fmt
        b"RIFF\x10\x00\x00\x00WAVEJUNK\xff\xff\xff\x7f",  # chunk size runs off the end
    ],
)
def test_garbage_headers_are_rejected(data: bytes) -> None:
    """Wrong magic, non-PCM or non-16-bit formats, and missing fmt give None."""
    assert strip_wav_header(data) is None


@given(st.binary(max_size=200))
def test_strip_never_raises(data: bytes) -> None:
    """Arbitrary bytes, with or without WAV magic, give a WavAudio or None."""
    for candidate in (data, b"RIFF" + data[:4] + b"WAVE" + data[4:]):
        got = strip_wav_header(candidate)
        assert got is None or isinstance(got, WavAudio)


@given(st.binary(max_size=400).map(lambda b: b[: len(b) // 4 * 4]), st.sampled_from([8000, 16000, 48000]))
def test_add_then_strip_round_trips(pcm: bytes, sample_rate: int) -> None:
    """Stripping what add_wav_header wrote gives back the PCM and format."""
    assert strip_wav_header(add_wav_header(pcm, sample_rate, 2)) == WavAudio(pcm, sample_rate, 2)
