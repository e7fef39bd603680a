"""Audio chunking and pacing: exact send times, no drift, underruns, interruption, end silence."""

from __future__ import annotations

import random

import pytest

from antiphon.errors import ConfigError
from antiphon.proto.media.pacing import (
    AudioChunker,
    AudioPacer,
    InterruptReport,
    PacerConfig,
    Pacing,
)

MONO_16K_CHUNK = 1280  # 40 ms * 16000 Hz * 1 channel * 2 bytes
STEREO_48K_CHUNK = 7680  # 40 ms * 48000 Hz * 2 channels * 2 bytes


def _drain(pacer: AudioPacer, clock: float = 0.0, jitter: float = 0.0, seed: int = 0) -> list[tuple[float, bytes]]:
    """Run the Trio output loop from time `clock`, waking up to `jitter` s late. Returns (time, chunk)."""
    rng = random.Random(seed)
    sent: list[tuple[float, bytes]] = []
    while (deadline := pacer.next_deadline) is not None:
        clock = max(clock, deadline) + rng.uniform(0, jitter)  # sleep_until(deadline), then wake
        sent += [(clock, chunk) for chunk in pacer.pop_due(clock)]
    return sent


def _pcm(n_chunks: int, chunk_bytes: int) -> bytes:
    """Distinct, recognisable PCM: chunk k is filled with byte k."""
    return b"".join(bytes([k % 256]) * chunk_bytes for k in range(n_chunks))


# ---------------------------------------------------------------- chunker


@pytest.mark.parametrize(
    ("sample_rate", "num_channels", "chunk_bytes"),
    [(16000, 1, MONO_16K_CHUNK), (24000, 1, 1920), (48000, 2, STEREO_48K_CHUNK), (44100, 1, 3528)],
)
def test_chunk_size_follows_the_format(sample_rate: int, num_channels: int, chunk_bytes: int) -> None:
    """A 40 ms chunk is sample_rate * 40 / 1000 frames of num_channels * 2 bytes."""
    assert AudioChunker(sample_rate, num_channels).chunk_bytes == chunk_bytes


def test_remainder_carries_over_even_mid_sample() -> None:
    """Bytes short of a chunk wait for the next push, even when a push splits a sample."""
    chunker = AudioChunker(16000)
    pcm = _pcm(3, MONO_16K_CHUNK)
    assert chunker.push(pcm[:1001]) == []
    assert chunker.pending_bytes == 1001
    assert chunker.push(pcm[1001:2561]) == [pcm[:1280], pcm[1280:2560]]
    assert chunker.pending_bytes == 1
    assert chunker.push(pcm[2561:]) == [pcm[2560:]]
    assert chunker.pending_bytes == 0


def test_flush_pads_with_silence_to_a_full_chunk() -> None:
    """flush returns the remainder plus zero samples up to chunk size; then nothing is left."""
    chunker = AudioChunker(16000)
    chunker.push(b"\x07" * 300)
    assert chunker.flush() == b"\x07" * 300 + b"\x00" * 980
    assert chunker.flush() is None


def test_clear_drops_the_remainder() -> None:
    """clear discards pending bytes and says how many."""
    chunker = AudioChunker(16000)
    chunker.push(b"\x01" * 100)
    assert chunker.clear() == 100
    assert chunker.flush() is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sample_rate": 0},
        {"sample_rate": 16000, "num_channels": 0},
        {"sample_rate": 16000, "chunk_ms": 0},
        {"sample_rate": 10, "chunk_ms": 40},  # a chunk would hold no sample
        {"sample_rate": 16000, "sample_width": 5},
    ],
)
def test_bad_chunker_settings_are_config_errors(kwargs: dict[str, int]) -> None:
    """Impossible formats raise ConfigError when the chunker is built."""
    with pytest.raises(ConfigError):
        AudioChunker(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"sample_rate": 0}, {"sample_rate": 16000, "lead_ms": -1}, {"sample_rate": 16000, "end_silence_ms": -40},
     {"sample_rate": 16000, "max_late_ms": -1}, {"sample_rate": 16000, "chunk_ms": True},
     {"sample_rate": 16000, "pacing": "fast"}],
)  # fmt: skip
def test_bad_pacer_settings_are_config_errors(kwargs: dict[str, int]) -> None:
    """PacerConfig refuses non-positive formats and negative lead, lateness or silence."""
    with pytest.raises(ConfigError):
        PacerConfig(**kwargs)


# ---------------------------------------------------------------- exact send times


def test_mono_16k_send_times_match_pipecat() -> None:
    """Defaults: chunks 1 and 2 leave at once, then one every 40 ms (Pipecat's observed timing)."""
    pacer = AudioPacer(PacerConfig(16000))
    pcm = _pcm(6, MONO_16K_CHUNK)
    pacer.push(pcm, now=1.0)
    sent = _drain(pacer, clock=1.0)
    assert [t for t, _ in sent] == [1.0, 1.0, 1.0 + 640 / 16000, 1.0 + 1280 / 16000, 1.0 + 1920 / 16000, 1.0 + 2560 / 16000]
    assert b"".join(c for _, c in sent) == pcm
    assert pacer.playout_end == 1.0 + 6 * 640 / 16000


def test_stereo_48k_is_paced_at_real_speed() -> None:
    """Stereo 48 kHz chunks go out every 40 ms, not 80 ms (Pipecat's half-speed stereo bug)."""
    pacer = AudioPacer(PacerConfig(48000, num_channels=2))
    pacer.push(_pcm(5, STEREO_48K_CHUNK), now=0.0)
    sent = _drain(pacer)
    assert [len(c) for _, c in sent] == [STEREO_48K_CHUNK] * 5
    assert [t for t, _ in sent] == [0.0, 0.0, 1920 / 48000, 3840 / 48000, 5760 / 48000]
    assert pacer.playout_end == 5 * 1920 / 48000


def test_zero_lead_sends_the_first_chunk_only() -> None:
    """With pacing="lead" and lead_ms=0 chunk k goes out exactly k * 40 ms after the first push."""
    pacer = AudioPacer(PacerConfig(16000, pacing="lead", lead_ms=0))
    pacer.push(_pcm(4, MONO_16K_CHUNK), now=5.0)
    assert [t for t, _ in _drain(pacer, clock=5.0)] == [5.0 + k * 640 / 16000 for k in range(4)]


def test_longer_lead_sends_that_much_at_once() -> None:
    """A 120 ms lead lets four 40 ms chunks leave at the anchor, then one per 40 ms."""
    pacer = AudioPacer(PacerConfig(16000, pacing=Pacing.LEAD, lead_ms=120))
    pacer.push(_pcm(6, MONO_16K_CHUNK), now=0.0)
    assert [t for t, _ in _drain(pacer)] == [0.0, 0.0, 0.0, 0.0, 0.04, 0.08]


def test_next_deadline_is_none_when_idle() -> None:
    """Nothing queued (or only a partial chunk) means no deadline; pop_due then returns nothing."""
    pacer = AudioPacer(PacerConfig(16000))
    assert pacer.next_deadline is None and pacer.playout_end is None
    pacer.push(b"\x00" * 100, now=0.0)
    assert pacer.next_deadline is None
    assert pacer.pop_due(10.0) == []


def test_pop_before_the_deadline_returns_nothing() -> None:
    """Calling pop_due early never releases a chunk ahead of its time."""
    pacer = AudioPacer(PacerConfig(16000))
    pacer.push(_pcm(3, MONO_16K_CHUNK), now=0.0)
    assert len(pacer.pop_due(0.0)) == 2
    assert pacer.pop_due(0.039) == []
    assert pacer.queued_chunks == 1 and pacer.queued_s == 0.04
    assert len(pacer.pop_due(0.04)) == 1


def test_no_drift_over_1000_chunks() -> None:
    """Deadlines come from the start time plus audio sent: chunk 1000 is due exactly 39.92 s in (one chunk of lead)."""
    pacer = AudioPacer(PacerConfig(16000))
    pacer.push(_pcm(1000, MONO_16K_CHUNK), now=10.0)
    times = [t for t, _ in _drain(pacer, clock=10.0)]
    assert len(times) == 1000
    assert times == [10.0] + [10.0 + k * 640 / 16000 for k in range(999)]
    assert times[-1] == pytest.approx(10.0 + 39.92, abs=1e-12)
    assert pacer.playout_end == pytest.approx(50.0, abs=1e-12)


def test_late_wakeups_do_not_shift_the_schedule() -> None:
    """A loop that wakes up to 30 ms late every time still sends chunk k at its own deadline or later, never drifting."""
    pacer = AudioPacer(PacerConfig(16000))
    pacer.push(_pcm(1000, MONO_16K_CHUNK), now=0.0)
    sent = _drain(pacer, jitter=0.030, seed=1)
    assert len(sent) == 1000
    # The last chunk is due at 39.92 s: jitter delays single sends but never accumulates.
    assert 39.92 <= sent[-1][0] <= 39.92 + 0.030
    assert pacer.playout_end == pytest.approx(40.0, abs=1e-12)


# ---------------------------------------------------------------- underruns


def test_underrun_re_anchors_without_a_burst() -> None:
    """Audio arriving after the receiver ran dry restarts the schedule at its arrival: no catch-up."""
    pacer = AudioPacer(PacerConfig(16000))
    pacer.push(_pcm(3, MONO_16K_CHUNK), now=0.0)
    _drain(pacer)  # sent at 0, 0, 0.04; played out by 0.12
    pacer.push(_pcm(4, MONO_16K_CHUNK), now=2.0)
    assert pacer.next_deadline == 2.0
    assert [t for t, _ in _drain(pacer, clock=2.0)] == [2.0, 2.0, 2.04, 2.08]


def test_slightly_late_audio_keeps_the_schedule() -> None:
    """Audio late by less than max_late_ms goes out at once and later chunks keep the old deadlines."""
    pacer = AudioPacer(PacerConfig(16000))
    pacer.push(_pcm(3, MONO_16K_CHUNK), now=0.0)
    _drain(pacer)  # next chunk would have been due at 0.08
    pacer.push(_pcm(3, MONO_16K_CHUNK), now=0.10)  # 20 ms late: the lead absorbs it
    assert pacer.next_deadline == 0.08  # in the past: the loop pops at once
    sent = [t for t, _ in _drain(pacer, clock=0.10)]
    assert sent[0] == 0.10
    assert sent[1:] == [0.12, 0.16]


def test_stalled_output_loop_re_anchors_instead_of_bursting() -> None:
    """If pop_due runs long after the deadlines (network stall), only the lead goes out, not the backlog."""
    pacer = AudioPacer(PacerConfig(16000))
    pacer.push(_pcm(20, MONO_16K_CHUNK), now=0.0)
    assert len(pacer.pop_due(0.0)) == 2
    assert len(pacer.pop_due(0.5)) == 2  # 12 chunks were due; the receiver ran dry long ago
    assert pacer.next_deadline == 0.54


# ---------------------------------------------------------------- interruption and end of stream


def test_interrupt_drops_everything_and_resets_the_anchor() -> None:
    """interrupt empties the queue and the remainder at once; the next push starts a new stream."""
    pacer = AudioPacer(PacerConfig(16000))
    pacer.push(_pcm(10, MONO_16K_CHUNK) + b"\x01" * 10, now=0.0)
    pacer.pop_due(0.0)
    assert pacer.interrupt(0.0).dropped_bytes == 8 * MONO_16K_CHUNK + 10
    assert pacer.next_deadline is None and pacer.queued_chunks == 0 and pacer.playout_end is None
    pacer.flush(now=0.05)
    assert pacer.next_deadline is None  # the remainder went with the interruption
    pacer.push(_pcm(3, MONO_16K_CHUNK), now=0.05)
    assert [t for t, _ in _drain(pacer, clock=0.05)] == [0.05, 0.05, 0.05 + 640 / 16000]


def test_end_stream_pads_then_adds_trailing_silence() -> None:
    """end_stream pads the remainder, then queues end_silence_ms rounded up to chunks, all paced."""
    pacer = AudioPacer(PacerConfig(48000, num_channels=2, end_silence_ms=100))
    pacer.push(b"\x05" * (STEREO_48K_CHUNK + 400), now=0.0)
    pacer.end_stream(now=0.0)
    sent = _drain(pacer)
    chunks = [c for _, c in sent]
    assert chunks[0] == b"\x05" * STEREO_48K_CHUNK
    assert chunks[1] == b"\x05" * 400 + b"\x00" * (STEREO_48K_CHUNK - 400)
    assert chunks[2:] == [b"\x00" * STEREO_48K_CHUNK] * 3  # 100 ms -> three 40 ms chunks, stereo
    assert [t for t, _ in sent] == [0.0, 0.0, 0.04, 0.08, 0.12]


def test_end_stream_without_silence_only_flushes() -> None:
    """With the default end_silence_ms=0, end_stream queues just the padded remainder."""
    pacer = AudioPacer(PacerConfig(16000))
    pacer.push(b"\x03" * 2, now=0.0)
    pacer.end_stream(now=0.0)
    assert [c for _, c in _drain(pacer)] == [b"\x03\x03" + b"\x00" * (MONO_16K_CHUNK - 2)]


# ---------------------------------------------------------------- policies


def test_lead_policy_defaults_to_200ms_ahead() -> None:
    """pacing="lead" with the default lead_ms: six chunks (0-200 ms ahead) at once, then one per 40 ms."""
    pacer = AudioPacer(PacerConfig(16000, pacing="lead"))
    pacer.push(_pcm(8, MONO_16K_CHUNK), now=1.0)
    assert [round(t - 1.0, 9) for t, _ in _drain(pacer, clock=1.0)] == [0.0] * 6 + [0.04, 0.08]


def test_realtime_lead_is_one_chunk_whatever_lead_ms_says() -> None:
    """pacing="realtime" leads by exactly one chunk (here 20 ms) and ignores lead_ms."""
    pacer = AudioPacer(PacerConfig(16000, chunk_ms=20, lead_ms=500))
    pacer.push(_pcm(4, 640), now=0.0)
    assert [t for t, _ in _drain(pacer)] == [0.0, 0.0, 0.02, 0.04]


def test_none_policy_sends_everything_at_once_and_tracks_playout() -> None:
    """pacing="none": ten seconds leave at the push; playout_end still says when a listener finishes."""
    pacer = AudioPacer(PacerConfig(16000, pacing="none"))
    pacer.push(_pcm(250, MONO_16K_CHUNK), now=3.0)
    assert pacer.next_deadline == 3.0
    assert len(pacer.pop_due(3.0)) == 250 and pacer.next_deadline is None
    assert pacer.playout_end == 13.0
    pacer.push(_pcm(1, MONO_16K_CHUNK), now=5.0)  # the listener is still playing: the schedule holds
    assert len(pacer.pop_due(5.0)) == 1 and pacer.playout_end == 13.04
    pacer.push(_pcm(1, MONO_16K_CHUNK), now=20.0)  # it ran dry: playout restarts at the new audio
    assert len(pacer.pop_due(20.0)) == 1 and pacer.playout_end == 20.04


# ---------------------------------------------------------------- interruption reports and underrun counts


def test_interrupt_reports_sent_heard_and_dropped_ms() -> None:
    """Interrupted 100 ms into a 400 ms stream: 160 ms sent, 100 ms heard, 240 ms dropped."""
    pacer = AudioPacer(PacerConfig(16000))
    pacer.push(_pcm(10, MONO_16K_CHUNK), now=0.0)
    sent = [t for t, _ in _drain_until(pacer, 0.1)]
    assert sent == [0.0, 0.0, 0.04, 0.08]
    assert pacer.interrupt(0.1) == InterruptReport(sent_ms=160.0, heard_ms=100.0, dropped_ms=240.0, dropped_bytes=6 * MONO_16K_CHUNK)
    assert pacer.stream_sent_ms == 0.0


def test_a_stream_restarts_after_everything_played_out() -> None:
    """Audio pushed after the last stream played out starts a new stream: sent_ms counts it alone."""
    pacer = AudioPacer(PacerConfig(16000))
    pacer.push(_pcm(5, MONO_16K_CHUNK), now=0.0)
    _drain(pacer)  # 200 ms, played out at 0.2
    pacer.push(_pcm(1, MONO_16K_CHUNK), now=0.19)  # still playing: the same stream goes on
    _drain(pacer, clock=0.19)
    assert pacer.stream_sent_ms == 240.0
    pacer.push(_pcm(3, MONO_16K_CHUNK), now=1.0)
    _drain(pacer, clock=1.0)
    assert pacer.stream_sent_ms == 120.0
    assert pacer.interrupt(1.05).heard_ms == 50.0


def test_underruns_and_starvation_are_counted_apart() -> None:
    """A stalled output loop counts an underrun; audio arriving after the listener ran dry counts as starved."""
    pacer = AudioPacer(PacerConfig(16000))
    pacer.push(_pcm(20, MONO_16K_CHUNK), now=0.0)
    pacer.pop_due(0.0)
    pacer.pop_due(0.5)  # the loop woke up 420 ms late with audio waiting
    assert (pacer.underruns, pacer.starved) == (1, 0)
    _drain(pacer, clock=0.5)
    pacer.push(_pcm(2, MONO_16K_CHUNK), now=9.0)
    assert (pacer.underruns, pacer.starved) == (1, 1)


def test_queued_bytes_counts_chunks_and_remainder() -> None:
    """queued_bytes is every byte not yet sent, whole chunks and the partial remainder."""
    pacer = AudioPacer(PacerConfig(16000))
    pacer.push(_pcm(3, MONO_16K_CHUNK) + b"\x00" * 6, now=0.0)
    assert pacer.queued_bytes == 3 * MONO_16K_CHUNK + 6 and pacer.pending_bytes == 6
    pacer.pop_due(0.0)
    assert pacer.queued_bytes == MONO_16K_CHUNK + 6


def _drain_until(pacer: AudioPacer, until: float) -> list[tuple[float, bytes]]:
    """Like _drain, but stop at ``until`` (absolute time)."""
    sent: list[tuple[float, bytes]] = []
    clock = 0.0
    while (deadline := pacer.next_deadline) is not None and deadline <= until:
        clock = max(clock, deadline)
        sent += [(clock, chunk) for chunk in pacer.pop_due(clock)]
    return sent
