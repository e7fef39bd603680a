"""Interop with the stock `pipecat-ai` WebsocketClientTransport (optional: skipped when pipecat is absent).

pipecat-ai is ~0.5 GB, so it is not a test dependency. To run this test, install it into a
separate Python >= 3.11 venv and point the suite at that interpreter:

    python3.11 -m venv /tmp/pipecat-venv
    /tmp/pipecat-venv/bin/pip install 'pipecat-ai[websocket]'
    ANTIPHON_PIPECAT_PYTHON=/tmp/pipecat-venv/bin/python /work/venv/bin/python -m pytest -m pipecat tests/media

(or install pipecat-ai into the test venv itself). The stock client runs in a subprocess:
pipecat is asyncio, the server under test is Trio.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import trio

from antiphon.media import AudioRawFrame, MessageFrame, TextFrame, WebsocketServerParams
from tests.media.conftest import tcp_server

PYTHON = os.environ.get("ANTIPHON_PIPECAT_PYTHON", sys.executable)


def _has_pipecat() -> bool:
    try:
        return subprocess.run([PYTHON, "-c", "import pipecat.transports.websocket.client"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = [
    pytest.mark.pipecat,
    pytest.mark.skipif(not _has_pipecat(), reason="pipecat-ai is not importable (set ANTIPHON_PIPECAT_PYTHON)"),
]

CLIENT = textwrap.dedent(
    """
    import asyncio, sys
    from pipecat.frames.frames import (EndFrame, InputAudioRawFrame, InputTransportMessageFrame,
        OutputAudioRawFrame, OutputTransportMessageFrame, TextFrame)
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.runner import PipelineRunner
    from pipecat.pipeline.task import PipelineParams, PipelineTask
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.transports.websocket.client import WebsocketClientParams, WebsocketClientTransport

    class Tap(FrameProcessor):
        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            if isinstance(frame, TextFrame):
                print("TEXT", frame.text, flush=True)
            elif isinstance(frame, InputTransportMessageFrame):
                print("MESSAGE", frame.message, flush=True)
            elif isinstance(frame, InputAudioRawFrame):
                print("AUDIO", len(frame.audio), frame.sample_rate, frame.num_channels, flush=True)
            await self.push_frame(frame, direction)

    async def main():
        t = WebsocketClientTransport(sys.argv[1], WebsocketClientParams(audio_out_enabled=True, audio_in_enabled=True))
        task = PipelineTask(Pipeline([t.input(), Tap(), t.output()]),
                            params=PipelineParams(audio_in_sample_rate=16000, audio_out_sample_rate=16000),
                            enable_rtvi=False, idle_timeout_secs=None)
        await task.queue_frames([
            OutputTransportMessageFrame(message={"hello": "antiphon"}),
            OutputAudioRawFrame(audio=b"\\x01\\x00" * 3200, sample_rate=16000, num_channels=1),
        ])
        async def finish():
            await asyncio.sleep(1.5)
            await task.queue_frame(EndFrame())
        asyncio.create_task(finish())
        await PipelineRunner(handle_sigint=False).run(task)

    asyncio.run(main())
    """
)


async def test_stock_pipecat_client_talks_to_the_server_transport() -> None:
    """A stock pipecat WebsocketClientTransport pipeline sends WAV-wrapped audio and a message, and gets our frames."""
    async with tcp_server(WebsocketServerParams()) as (transport, rec):

        @transport.event_handler("on_client_connected")
        async def greet(t: object, client: object) -> None:
            await transport.output().send(TextFrame("hello from antiphon"))
            await transport.output().send(MessageFrame({"label": "rtvi-ai", "type": "bot-ready"}))
            await transport.output().send(AudioRawFrame(b"\x02\x00" * 640, 16000, 1))

        with trio.fail_after(60):
            proc = await trio.run_process([PYTHON, "-c", CLIENT, transport.url], capture_stdout=True, capture_stderr=True, check=False)
        received = []
        while True:
            try:
                received.append(transport.input().receive_nowait())
            except trio.WouldBlock:
                break
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert "TEXT hello from antiphon" in out and "bot-ready" in out and "AUDIO 1280 16000 1" in out
    assert MessageFrame({"hello": "antiphon"}) in received
    audio = [f for f in received if isinstance(f, AudioRawFrame)]
    assert audio and audio[0].audio[:2] == b"\x01\x00"  # WAV header stripped
