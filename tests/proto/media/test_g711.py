"""G.711 mu-law: every code against the standard's decoding formula, the encoder against G.191 and audioop."""

from __future__ import annotations

import importlib
import struct
import warnings
from typing import Any

import numpy as np
import pytest

from antiphon.proto.media.g711 import SILENCE_ULAW, pcm16_to_ulaw, ulaw_to_pcm16

ALL_SAMPLES = np.arange(-32768, 32768, dtype="<i2").tobytes()


def g711_decoded(code: int) -> int:
    """The standard's reconstruction value for a code, written out independently (ITU-T G.711 Table 2a)."""
    inverted = ~code & 0xFF
    segment, step = (inverted >> 4) & 7, inverted & 0xF
    magnitude = ((2 * step + 33) << segment) - 33  # 14-bit magnitude
    return 4 * magnitude * (1 if code & 0x80 else -1)


def test_every_code_decodes_to_the_standards_value() -> None:
    """All 256 codes decode to G.711's reconstruction values (0x00 -> -32124, 0x80 -> 32124, 0xFF/0x7F -> 0)."""
    decoded = struct.unpack("<256h", ulaw_to_pcm16(bytes(range(256))))
    assert list(decoded) == [g711_decoded(c) for c in range(256)]
    assert (decoded[0x00], decoded[0x80], decoded[0xFF], decoded[0x7F]) == (-32124, 32124, 0, 0)


@pytest.mark.parametrize(
    ("sample", "code"),
    [(0, 0xFF), (-1, 0x7F), (1, 0xFF), (4, 0xFE), (100, 0xF2), (-100, 0x73), (32767, 0x80), (-32768, 0x00), (32124, 0x80)],
)
def test_encoder_matches_the_g191_reference(sample: int, code: int) -> None:
    """Known input/output pairs of ITU-T G.191's ulaw_compress (silence is 0xFF; full scale clips to 0x80/0x00)."""
    assert pcm16_to_ulaw(struct.pack("<h", sample)) == bytes([code])
    assert SILENCE_ULAW == pcm16_to_ulaw(b"\x00\x00")[0]


def test_encoding_is_nearest_within_the_segment_and_monotonic() -> None:
    """Every 16-bit sample encodes to a code whose value is within half a step of it (or clips), in order."""
    samples = np.frombuffer(ALL_SAMPLES, dtype="<i2").astype(np.int64)
    codes = np.frombuffer(pcm16_to_ulaw(ALL_SAMPLES), dtype=np.uint8)
    values = np.frombuffer(ulaw_to_pcm16(codes.tobytes()), dtype="<i2").astype(np.int64)
    segment = (~codes.astype(np.int64) >> 4) & 7
    half_step = 4 << segment  # steps are 8 << segment in 16-bit units
    clipped = np.abs(samples) > 32124
    assert np.all((np.abs(values - samples) <= half_step + 4) | clipped)  # +4: the 14-bit truncation
    assert np.all(np.diff(values) >= 0)  # a larger sample never gets a smaller value


def test_codes_survive_a_round_trip() -> None:
    """decode then encode gives every code back, except negative zero (0x7F), which is zero (0xFF)."""
    again = pcm16_to_ulaw(ulaw_to_pcm16(bytes(range(256))))
    assert [c for c in range(256) if again[c] != c] == [0x7F] and again[0x7F] == 0xFF


def test_odd_trailing_byte_is_ignored() -> None:
    """A trailing half sample encodes to nothing."""
    assert pcm16_to_ulaw(b"\x00\x00\x01") == b"\xff"


def _audioop() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated in 3.11, removed in 3.13
        try:
            return importlib.import_module("audioop")
        except ImportError:
            pytest.skip("audioop is not available (Python >= 3.13 without audioop-lts): no cross-check with it")


def test_agrees_with_audioop() -> None:
    """audioop decodes identically; encodes identically for samples >= 0 and at most one code off below (its rounding)."""
    audioop = _audioop()
    assert ulaw_to_pcm16(bytes(range(256))) == audioop.ulaw2lin(bytes(range(256)), 2)
    ours = np.frombuffer(pcm16_to_ulaw(ALL_SAMPLES), dtype=np.uint8).astype(int)
    theirs = np.frombuffer(audioop.lin2ulaw(ALL_SAMPLES, 2), dtype=np.uint8).astype(int)
    samples = np.frombuffer(ALL_SAMPLES, dtype="<i2")
    assert np.array_equal(ours[samples >= 0], theirs[samples >= 0])
    assert np.max(np.abs(ours - theirs)) <= 1
