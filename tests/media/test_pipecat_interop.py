"""Interop with stock Pipecat (``pipecat-ai[websocket]`` 1.14) in both directions, audio bytes exact.

Pipecat runs in a venv of its own (``.ci/run`` installs it; see :mod:`tests.media.peers` for
where it is looked for and why a test skips), as a subprocess running one of the peer
scripts in ``tests/media/peers/``: Pipecat is asyncio, the transports under test are Trio.

Nothing here sleeps or waits for time to pass. Each side acts only on a message from the
other that proves the step before is done: Pipecat's client says ``pipecat-ready`` once its
pipeline has started (sending to it before that races its input transport's start: the
``_audio_in_queue`` AttributeError that made the old test fail 5 runs in 8), Pipecat's server
says ``LISTENING`` once it accepts, and counts are read at barriers that follow all the audio
on the wire (see the scripts' docstrings). Audio is a ramp of distinct samples, so a byte
lost, added or moved changes the SHA-256 that both sides compare.
"""

from __future__ import annotations

import array
import functools
import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Final

import pytest
import trio

from antiphon.media import (
    AudioRawFrame,
    MediaFrame,
    MessageFrame,
    TextFrame,
    WebsocketClientParams,
    WebsocketClientTransport,
    WebsocketServerParams,
)
from tests.media.conftest import tcp_server
from tests.media.peers import PEERS_DIR, pipecat_python

pytestmark = [pytest.mark.pipecat, pytest.mark.slow]

RATE_HZ: Final = 16000
CHUNK_BYTES: Final = RATE_HZ * 2 * 40 // 1000
"""One 40 ms chunk of 16 kHz mono PCM16, both sides' default; whole chunks keep counts exact
(Pipecat holds a partial last chunk back until a TTS-stopped frame)."""
PEER_TIMEOUT_S: Final = 90
"""A Pipecat run takes ~1.5 s (1 s of it importing Pipecat); generous for a loaded CI machine."""


@pytest.fixture(scope="module")
def pipecat() -> str:
    """A Python with stock Pipecat (skips, loudly, without one; see tests.media.peers)."""
    return pipecat_python()


def _ramp(samples: int, step: int = 1) -> bytes:
    """``samples`` distinct 16-bit samples (0, step, 2*step...), the same as the peer scripts make."""
    return array.array("h", (i * step for i in range(samples))).tobytes()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def _drain(channel: trio.MemoryReceiveChannel[MediaFrame]) -> list[MediaFrame]:
    frames = []
    while True:
        try:
            frames.append(channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return frames


async def test_stock_pipecat_client_pipeline_against_the_server_transport(pipecat: str, tmp_path: Path) -> None:
    """A stock Pipecat client pipeline and the server transport exchange text, a message and audio, every byte."""
    greeting = _ramp(10 * CHUNK_BYTES // 2, step=-1)
    client_audio = _ramp(4 * CHUNK_BYTES // 2)
    log = tmp_path / "pipecat.log"
    received: list[MediaFrame] = []
    async with tcp_server(WebsocketServerParams()) as (transport, rec):

        async def serve() -> None:
            async for frame in transport.input():
                received.append(frame)
                if frame == MessageFrame({"type": "pipecat-ready"}):
                    await transport.output().send(TextFrame("hello from antiphon"))
                    await transport.output().send(MessageFrame({"label": "rtvi-ai", "type": "bot-ready"}))
                    await transport.output().send(AudioRawFrame(greeting, RATE_HZ, 1))

        with trio.fail_after(PEER_TIMEOUT_S), log.open("wb") as stderr:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                args = [transport.url, str(len(client_audio) // 2), str(len(greeting))]
                script = [pipecat, str(PEERS_DIR / "pipecat_client.py"), *args]
                proc = await trio.run_process(script, capture_stdout=True, stderr=stderr, check=False)
                assert proc.returncode == 0, _tail(log)
                await rec.wait_for("on_client_disconnected")
                nursery.cancel_scope.cancel()
        received += _drain(transport.input())
    lines = proc.stdout.decode().splitlines()
    assert f"SENT {len(client_audio)} {_sha(client_audio)}" in lines
    assert f"RECEIVED {len(greeting)} {_sha(greeting)}" in lines, _tail(log)
    assert "TEXT hello from antiphon" in lines
    assert 'MESSAGE {"label": "rtvi-ai", "type": "bot-ready"}' in lines
    assert {line for line in lines if line.startswith("AUDIO ")} == {f"AUDIO {CHUNK_BYTES} {RATE_HZ} 1"}
    assert received[0] == MessageFrame({"type": "pipecat-ready"})
    audio = [f for f in received if isinstance(f, AudioRawFrame)]
    assert {(f.sample_rate, f.num_channels) for f in audio} == {(RATE_HZ, 1)}
    heard = b"".join(f.audio for f in audio)  # Pipecat's client wraps each chunk in WAV; stripped
    assert (len(heard), _sha(heard)) == (len(client_audio), _sha(client_audio))
    assert rec.names == ["on_websocket_ready", "on_client_connected", "on_client_disconnected"]
    assert transport.stats.skipped_in == {} and transport.stats.dropped_out == {}


class _Lines:
    """Lines of a byte stream, read one at a time."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def next(self) -> str:
        """The next line, without its newline; raises EOFError (with what was left) when the stream ends."""
        while b"\n" not in self._buffer:
            data = await self._stream.receive_some()
            if not data:
                raise EOFError(self._buffer.decode(errors="replace"))
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    async def rest(self) -> list[str]:
        lines = []
        try:
            while True:
                lines.append(await self.next())
        except EOFError:
            return lines


async def test_client_transport_against_a_stock_pipecat_server(pipecat: str, tmp_path: Path) -> None:
    """The client transport gets a stock Pipecat server's greeting and echo, every byte, and Pipecat gets ours."""
    greeting = _ramp(10 * CHUNK_BYTES // 2, step=-1)
    ours = _ramp(4 * CHUNK_BYTES // 2)
    log = tmp_path / "pipecat.log"
    with trio.fail_after(PEER_TIMEOUT_S), log.open("wb") as stderr:
        async with trio.open_nursery() as nursery:
            script = [pipecat, str(PEERS_DIR / "pipecat_server.py"), str(len(greeting) // 2)]
            run = functools.partial(trio.run_process, script, stdout=subprocess.PIPE, stderr=stderr, check=False)
            proc: trio.Process = await nursery.start(run)
            assert proc.stdout is not None
            lines = _Lines(proc.stdout)
            try:
                first = await lines.next()
            except EOFError as exc:
                raise AssertionError(f"Pipecat's server ended before listening: {exc}\n{_tail(log)}") from None
            assert first.startswith("LISTENING "), first
            # Pipecat's server does not strip WAV headers: send raw PCM (see the README).
            params = WebsocketClientParams(add_wav_header=False)
            async with WebsocketClientTransport(f"ws://127.0.0.1:{first.split()[1]}", params) as client:
                await client.connect()
                await client.send(MessageFrame({"type": "antiphon-ready"}))
                heard, _ = await _audio_until(client.input(), lambda f: f == MessageFrame({"type": "greeted"}))
                assert (len(heard), _sha(heard)) == (len(greeting), _sha(greeting))

                await client.output().send(AudioRawFrame(ours, RATE_HZ, 1))  # paced, 40 ms chunks
                echo = bytearray()
                async for frame in client.input():
                    assert isinstance(frame, AudioRawFrame), frame
                    assert (frame.sample_rate, frame.num_channels) == (RATE_HZ, 1)
                    echo += frame.audio
                    if len(echo) >= len(ours):
                        break
                # Pipecat keeps messages in order with audio: nothing more was echoed if "bye" comes next.
                await client.send(MessageFrame({"type": "bye?"}))
                more, bye = await _audio_until(client.input(), lambda f: isinstance(f, MessageFrame))
                assert more == b"" and bye == MessageFrame({"type": "bye", "echoed": len(ours)})
                assert (len(echo), _sha(bytes(echo))) == (len(ours), _sha(ours))
            assert client.stats.skipped_in == {} and client.stats.dropped_out == {}
            after = await lines.rest()
            assert await proc.wait() == 0, _tail(log)
    assert after == [
        f"GREETING {len(greeting)} {_sha(greeting)}",
        f"ECHOED {len(ours)} {_sha(ours)}",
    ], _tail(log)


async def _audio_until(
    channel: trio.MemoryReceiveChannel[MediaFrame], last: Callable[[MediaFrame], bool]
) -> tuple[bytes, MediaFrame]:
    """Audio bytes received before the first frame for which ``last(frame)`` holds, and that frame."""
    audio = bytearray()
    async for frame in channel:
        if last(frame):
            return bytes(audio), frame
        assert isinstance(frame, AudioRawFrame), frame
        audio += frame.audio
    raise AssertionError("the connection ended first")
