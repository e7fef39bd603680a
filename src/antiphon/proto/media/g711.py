"""G.711 mu-law <-> 16-bit PCM, table-driven: the phone line's 8-bit audio.

Theory of operation
-------------------
Twilio Media Streams (and most telephony) carry 8 kHz mono G.711 mu-law: one byte per
sample. Python 3.13 removed :mod:`audioop`, which Pipecat's serializers use, so antiphon
codes it itself with two lookup tables built once at import from the ITU-T G.191
reference algorithm (the Software Tool Library's ``ulaw_compress`` / ``ulaw_expand``):

* decoding is a 256-entry table of int16 values (``0x00`` -> -32124, ``0x80`` -> 32124,
  ``0xFF`` and ``0x7F`` -> 0);
* encoding is a 65,536-entry table indexed by the sample's 16-bit pattern (64 KiB).

Both are exact and run at numpy speed (a 20 ms Twilio frame is a few microseconds).
:mod:`audioop` (Sun's ``g711.c``) rounds negative inputs the other way at the decision
levels (it negates after an arithmetic shift, G.191 takes the one's complement), so a
negative sample can land one code away from audioop's; every code decodes identically.
"""

from __future__ import annotations

from typing import Final, cast

import numpy as np
import numpy.typing as npt

__all__ = ["SILENCE_ULAW", "pcm16_to_ulaw", "ulaw_to_pcm16"]

SILENCE_ULAW: Final = 0xFF
"""The mu-law code of a zero sample ("positive zero")."""

_BIAS: Final = 33  # G.191's bias on the 14-bit magnitude (0x84 >> 2)
_MAX_MAGNITUDE: Final = 0x1FFF  # 13 bits of magnitude after the bias: the encoder clips here


def _expand_table() -> npt.NDArray[np.int16]:
    code = np.arange(256, dtype=np.int32)
    sign = np.where(code < 0x80, -1, 1)
    inverted = ~code & 0xFF
    exponent = (inverted >> 4) & 0x7
    mantissa = inverted & 0xF
    step = 4 << (exponent + 1)
    value = sign * ((0x80 << exponent) + step * mantissa + step // 2 - 4 * _BIAS)
    return cast("npt.NDArray[np.int16]", value.astype("<i2"))


def _compress_table() -> npt.NDArray[np.uint8]:
    pattern = np.arange(65536, dtype=np.uint32)
    x = pattern.astype(np.uint16).view(np.int16).astype(np.int32)  # the sample each pattern is
    magnitude = np.where(x < 0, (~x) >> 2, x >> 2) + _BIAS  # one's complement for negatives
    magnitude = np.minimum(magnitude, _MAX_MAGNITUDE)
    bit_length = np.array([int(i).bit_length() for i in range(128)], dtype=np.int32)
    segment = 1 + bit_length[magnitude >> 6]
    high = 8 - segment
    low = 0xF - ((magnitude >> segment) & 0xF)
    code = (high << 4) | low
    code = np.where(x >= 0, code | 0x80, code)
    return cast("npt.NDArray[np.uint8]", code.astype(np.uint8))


_EXPAND: Final = _expand_table()
_COMPRESS: Final = _compress_table()


def ulaw_to_pcm16(ulaw: bytes) -> bytes:
    """Decode mu-law bytes to signed 16-bit little-endian PCM (two bytes out per byte in)."""
    return bytes(_EXPAND[np.frombuffer(ulaw, dtype=np.uint8)].tobytes())


def pcm16_to_ulaw(pcm: bytes) -> bytes:
    """Encode signed 16-bit little-endian PCM to mu-law; a trailing odd byte is ignored."""
    usable = len(pcm) - len(pcm) % 2
    return bytes(_COMPRESS[np.frombuffer(pcm, dtype="<u2", count=usable // 2)].tobytes())
