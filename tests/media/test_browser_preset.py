"""The browser-client preset and RTVI helpers of antiphon.media.browser, without a browser."""

from __future__ import annotations

import pytest

from antiphon import __version__
from antiphon.errors import ConfigError
from antiphon.media import (
    AudioRawFrame,
    InterruptionFrame,
    MessageFrame,
    ProtobufFrameSerializer,
    TextFrame,
    WebsocketServerTransport,
)
from antiphon.media.browser import (
    BROWSER_CHUNK_MS,
    BROWSER_PLAYER_SAMPLE_RATE_HZ,
    BrowserClientSerializer,
    bot_ready,
    browser_client_params,
    is_client_ready,
    rtvi_message,
)
from tests.media.pb_schema import Frame

CLIENT_READY = MessageFrame({
    "label": "rtvi-ai", "type": "client-ready", "id": "f8205cf5",
    "data": {"version": "2.1.0", "about": {"library": "@pipecat-ai/client-js", "library_version": "1.13.1"}},
})
"""What @pipecat-ai/client-js 1.13.1 sent in tests/media/test_browser_client.py (about trimmed)."""


def test_preset_fixes_24_khz_mono_raw_pcm_in_whole_render_quanta() -> None:
    """The preset: 24 kHz mono out, no WAV header, 32 ms chunks (768 samples = 6 x 128), a per-client serializer."""
    params = browser_client_params()
    assert (params.audio_out_sample_rate, params.audio_out_channels, params.add_wav_header) == (24000, 1, False)
    assert (params.chunk_ms, params.pacing, params.lead_ms) == (32, "lead", 96)
    assert BROWSER_PLAYER_SAMPLE_RATE_HZ * BROWSER_CHUNK_MS // 1000 % 128 == 0
    assert params.serializer is BrowserClientSerializer
    transport = WebsocketServerTransport(params, port=0)
    assert transport.params.output_config().sample_rate == 24000


def test_preset_fields_can_be_overridden_and_are_validated() -> None:
    """Any WebsocketServerParams field overrides the preset; a bad one raises ConfigError as the params do."""
    params = browser_client_params(session_timeout=180, lead_ms=200)
    assert (params.session_timeout, params.lead_ms, params.audio_out_sample_rate) == (180, 200, 24000)
    with pytest.raises(ConfigError):
        browser_client_params(session_timeout=0)
    with pytest.raises(TypeError):
        browser_client_params(no_such_field=1)


def test_interruption_goes_out_as_rtvi_bot_stopped_speaking() -> None:
    """BrowserClientSerializer writes an InterruptionFrame as the RTVI message the browser client understands."""
    wire = BrowserClientSerializer().serialize(InterruptionFrame())
    frame = Frame.FromString(wire)
    assert frame.WhichOneof("frame") == "message"
    stopped = MessageFrame({"label": "rtvi-ai", "type": "bot-stopped-speaking"})
    assert ProtobufFrameSerializer().deserialize(wire) == stopped


def test_other_frames_are_pipecat_protobuf_without_wav_headers() -> None:
    """Audio, text and messages are written exactly as the protobuf serializer writes them, audio raw."""
    ours, theirs = BrowserClientSerializer(), ProtobufFrameSerializer(add_wav_header=False)
    for frame in (AudioRawFrame(b"\x01\x00" * 768, 24000, 1), TextFrame("hi"), MessageFrame({"a": 1})):
        assert ours.serialize(frame) == theirs.serialize(frame)
    assert Frame.FromString(ours.serialize(AudioRawFrame(b"\x01\x00", 24000, 1))).audio.audio == b"\x01\x00"


def test_deserialize_is_the_protobuf_one_and_counts_skips() -> None:
    """Incoming messages decode as with the protobuf serializer; a bad one is skipped and counted in stats."""
    serializer = BrowserClientSerializer()
    wire = ProtobufFrameSerializer().serialize(CLIENT_READY)
    assert serializer.deserialize(wire) == CLIENT_READY
    assert serializer.deserialize(b"\xff\xff") is None
    assert serializer.stats.decoded == 1 and sum(serializer.stats.skipped.values()) == 1


def test_client_ready_is_recognised_and_nothing_else() -> None:
    """is_client_ready matches only an rtvi-ai client-ready message."""
    assert is_client_ready(CLIENT_READY)
    assert not is_client_ready(MessageFrame({"type": "client-ready"}))  # no RTVI label
    assert not is_client_ready(rtvi_message("client-message", {"t": "x"}))
    assert not is_client_ready(MessageFrame(["client-ready"]))
    assert not is_client_ready(TextFrame("client-ready"))


def test_bot_ready_answers_with_the_clients_id_and_version() -> None:
    """bot_ready echoes the client's message id and RTVI version and says it is antiphon."""
    assert bot_ready(CLIENT_READY) == MessageFrame({
        "label": "rtvi-ai", "type": "bot-ready", "id": "f8205cf5",
        "data": {"version": "2.1.0", "about": {"library": "antiphon", "library_version": __version__}},
    })
    bare = bot_ready(MessageFrame({"label": "rtvi-ai", "type": "client-ready"}), about={"name": "echo"})
    assert bare.message == {
        "label": "rtvi-ai", "type": "bot-ready", "data": {"version": "2.1.0", "about": {"name": "echo"}},
    }


def test_rtvi_message_leaves_out_what_is_not_given() -> None:
    """rtvi_message omits data and id when they are None."""
    assert rtvi_message("bot-stopped-speaking").message == {"label": "rtvi-ai", "type": "bot-stopped-speaking"}
    assert rtvi_message("server-message", {"done": True}, id="7").message == {
        "label": "rtvi-ai", "type": "server-message", "data": {"done": True}, "id": "7",
    }
