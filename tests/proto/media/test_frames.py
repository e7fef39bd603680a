"""Media frames: field validation and per-session id/name stamping."""

from __future__ import annotations

import attrs
import pytest

from antiphon.proto.media.frames import (
    AudioRawFrame,
    FrameStamper,
    InterruptionFrame,
    MessageFrame,
    TextFrame,
    TranscriptionFrame,
)


def test_defaults_mean_unset() -> None:
    """A frame built without id or name has id=0 and name="" (Pipecat's "not sent")."""
    frame = TextFrame("hi")
    assert (frame.id, frame.name, frame.text) == (0, "", "hi")
    assert InterruptionFrame() == InterruptionFrame(id=0, name="")


def test_kinds_are_the_protobuf_oneof_names() -> None:
    """Each frame class names its protobuf oneof field / JSON tag."""
    kinds = [cls.kind for cls in (TextFrame, AudioRawFrame, TranscriptionFrame, MessageFrame, InterruptionFrame)]
    assert kinds == ["text", "audio", "transcription", "message", "interruption"]


def test_frames_are_immutable() -> None:
    """Frames are frozen: fields cannot be reassigned."""
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        TextFrame("hi").text = "bye"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("audio", "sample_rate", "num_channels", "message"),
    [
        (b"\x00\x00", 0, 1, "sample_rate must be between 8000 and 384000"),
        (b"\x00\x00", -16000, 1, "sample_rate must be between 8000 and 384000"),
        (b"\x00\x00", 16000, 0, "num_channels must be between 1 and 8"),
        (b"\x00\x00", 24, 1, "sample_rate must be between 8000 and 384000"),  # issue 10 #1: killed the server
        (b"\x00\x00", 7999, 1, "sample_rate must be between 8000 and 384000"),
        (b"\x00\x00", 384001, 1, "sample_rate must be between 8000 and 384000"),
        (b"\x00" * 18, 16000, 9, "num_channels must be between 1 and 8"),
        (b"\x00", 16000, 1, "not a whole number of 2-byte sample frames"),
        (b"\x00\x00", 48000, 2, "not a whole number of 4-byte sample frames"),
        (b"\x00" * 10, 16000, 3, "not a whole number of 6-byte sample frames"),
        (b"\x00\x00", 2**32 - 1, 1, "sample_rate must be between 8000 and 384000"),  # issue 10 #2: 343 MB pad
    ],
)
def test_invalid_audio_is_refused(audio: bytes, sample_rate: int, num_channels: int, message: str) -> None:
    """Audio outside 8-384 kHz or 1-8 channels, or with a partial sample frame, cannot be built."""
    with pytest.raises(ValueError, match=message):
        AudioRawFrame(audio, sample_rate, num_channels)


def test_audio_accepts_buffers_and_measures_itself() -> None:
    """A bytearray becomes bytes; num_frames and duration_s count sample frames, not bytes."""
    frame = AudioRawFrame(bytearray(7680), 48000, 2)
    assert type(frame.audio) is bytes
    assert frame.num_frames == 1920
    assert frame.duration_s == 0.04


@pytest.mark.parametrize(
    "build",
    [
        lambda: TextFrame("x", id=-1),
        lambda: TextFrame("x", id=2**64),
        lambda: TextFrame("x", id=True),
        lambda: AudioRawFrame(b"", 16000, 1, pts=-5),
        lambda: TextFrame(3),  # type: ignore[arg-type]
        lambda: TranscriptionFrame("t", None, "ts"),  # type: ignore[arg-type]
        lambda: InterruptionFrame(name=None),  # type: ignore[arg-type]
    ],
)
def test_out_of_range_or_mistyped_fields_are_refused(build: object) -> None:
    """ids and pts must fit uint64 and be real ints; text fields must be str."""
    with pytest.raises((ValueError, TypeError)):
        build()  # type: ignore[operator]


def test_stamper_numbers_like_pipecat() -> None:
    """Ids count from 1 per stamper; names are <Class>#n with n from 0 per class."""
    stamper = FrameStamper()
    got = [
        stamper.stamp(TextFrame("a")),
        stamper.stamp(InterruptionFrame()),
        stamper.stamp(TextFrame("b")),
    ]
    assert [(f.id, f.name) for f in got] == [(1, "TextFrame#0"), (2, "InterruptionFrame#0"), (3, "TextFrame#1")]


def test_stamper_keeps_given_ids_and_names() -> None:
    """A frame's own id or name is never overwritten; only unset ones are filled."""
    stamper = FrameStamper()
    assert stamper.stamp(TextFrame("a", id=9, name="mine")) == TextFrame("a", id=9, name="mine")
    assert stamper.stamp(TextFrame("b", name="mine")) == TextFrame("b", id=1, name="mine")
    assert stamper.stamp(TextFrame("c", id=7)) == TextFrame("c", id=7, name="TextFrame#0")


def test_stampers_share_no_state() -> None:
    """Two stampers (two sessions) each start from id 1: there is no global counter."""
    first, second = FrameStamper(), FrameStamper()
    first.stamp(TextFrame("a"))
    assert second.stamp(TextFrame("a")) == TextFrame("a", id=1, name="TextFrame#0")
