"""RIFF/WAVE headers for PCM audio chunks: add one, or find and strip one.

Theory of operation
-------------------
Pipecat's WebSocket transports can wrap every outgoing audio chunk in a complete WAV file
(``add_wav_header``: off on the server, on in the client), so a stock Pipecat client
sends each 40 ms chunk as 44 header bytes plus 1280 bytes of PCM. antiphon writes the
same 44-byte header Python's :mod:`wave` module writes (checked byte for byte in the
tests) and strips headers from incoming audio.

Stripping must survive anything a peer sends: a truncated header, garbage sizes, extra
chunks (``LIST``, ``fact``...) before ``data``, the odd-size pad byte, and streaming
writers that put ``0`` or ``0xFFFFFFFF`` in the data size because they did not know it.
So :func:`strip_wav_header` walks the chunk list with bounds checks and returns ``None``
when it cannot find a PCM ``fmt `` followed by ``data``; a declared data size larger than
what is present is clipped to what is present. It never raises on bad input.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from antiphon.errors import LocalProtocolError

__all__ = ["WAV_HEADER_BYTES", "WavAudio", "add_wav_header", "has_wav_magic", "strip_wav_header"]

WAV_HEADER_BYTES: Final = 44
"""Size of the canonical header: RIFF (12) + ``fmt `` chunk (8 + 16) + ``data`` chunk header (8)."""

_WAVE_FORMAT_PCM: Final = 0x0001
_WAVE_FORMAT_EXTENSIBLE: Final = 0xFFFE  # carries the real format in its SubFormat GUID
_UINT32_MAX: Final = 2**32 - 1  # the sample rate, byte rate and sizes are uint32
_UINT16_MAX: Final = 2**16 - 1  # the channel count is uint16
_RIFF_OVERHEAD_BYTES: Final = 36  # RIFF size field counts everything after itself but the data


class WavAudio(NamedTuple):
    """PCM found inside a WAV file, with the format its header declared."""

    pcm: bytes
    sample_rate: int
    num_channels: int


def add_wav_header(pcm: bytes, sample_rate: int, num_channels: int, sample_width: int = 2) -> bytes:
    """Return ``pcm`` prefixed with a standard 44-byte PCM WAV header.

    The header is byte-identical to what :mod:`wave` writes for the same audio. Raises
    :class:`LocalProtocolError` (and nothing else) when the format is impossible or does
    not fit the header's fields (a block of 2**16 bytes or more, a byte rate of 2**32 or more), when ``pcm`` is not a
    whole number of sample frames, or when it is too large for a WAV file.
    """
    block_align = num_channels * sample_width
    if (
        not 0 < sample_rate <= _UINT32_MAX
        or not 0 < num_channels <= _UINT16_MAX
        or not 1 <= sample_width <= 4
        or block_align > _UINT16_MAX  # the block align field
        or sample_rate * block_align > _UINT32_MAX  # the byte rate field
    ):
        raise LocalProtocolError(
            f"cannot write a WAV header for sample_rate={sample_rate}, "
            f"num_channels={num_channels}, sample_width={sample_width}"
        )
    if len(pcm) % block_align:
        raise LocalProtocolError(f"{len(pcm)} bytes of PCM is not a whole number of {block_align}-byte sample frames")
    if len(pcm) > _UINT32_MAX - _RIFF_OVERHEAD_BYTES:
        raise LocalProtocolError(f"{len(pcm)} bytes of PCM is too large for one WAV file")
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        _RIFF_OVERHEAD_BYTES + len(pcm),
        b"WAVE",
        b"fmt ",
        16,
        _WAVE_FORMAT_PCM,
        num_channels,
        sample_rate,
        sample_rate * block_align,  # byte rate
        block_align,
        sample_width * 8,
        b"data",
        len(pcm),
    )
    return header + bytes(pcm)


def has_wav_magic(data: bytes) -> bool:
    """True when ``data`` starts like a WAV file (``RIFF`` .... ``WAVE``)."""
    return data[:4] == b"RIFF" and data[8:12] == b"WAVE"


def strip_wav_header(data: bytes, sample_width: int = 2) -> WavAudio | None:
    """Return the PCM inside a WAV file and its declared format, or ``None`` if it is not one.

    ``None`` also means the WAV is not integer PCM of ``sample_width`` bytes per sample,
    or declares a zero sample rate or channel count. The PCM is returned as found: it may
    end in a partial sample frame if the peer sent one. Never raises on bad input.
    """
    if len(data) < 12 or not has_wav_magic(data):
        return None
    fmt: tuple[int, int, int] | None = None  # (format tag, channels, sample rate)
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body = pos + 8
        if chunk_id == b"data":
            if fmt is None:
                return None
            tag, channels, rate = fmt
            # A size past the end is a streaming writer's placeholder or a truncation: clip.
            return WavAudio(bytes(data[body : body + size]), rate, channels)
        if chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(data):
                return None
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
            if tag == _WAVE_FORMAT_EXTENSIBLE and size >= 40 and body + 26 <= len(data):
                # SubFormat GUID at offset 24; its first two bytes are the real format tag.
                (tag,) = struct.unpack_from("<H", data, body + 24)
            if tag != _WAVE_FORMAT_PCM or bits != sample_width * 8 or channels == 0 or rate == 0:
                return None
            fmt = (tag, channels, rate)
        pos = body + size + (size & 1)  # chunks are padded to an even length
    return None
