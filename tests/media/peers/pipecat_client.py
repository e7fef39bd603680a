"""A stock Pipecat client pipeline, for tests/media/test_pipecat_interop.py (runs in Pipecat's own venv).

    python pipecat_client.py WS_URL SEND_SAMPLES EXPECT_BYTES

Pipecat's ``WebsocketClientTransport`` dials while its pipeline is being *set up*, before its
input transport has started, so a server that sends audio as soon as the socket opens races
Pipecat (``'WebsocketClientInputTransport' object has no attribute '_audio_in_queue'``). This
peer therefore says when it is ready: once ``on_pipeline_started`` fired it queues a
``{"type": "pipecat-ready"}`` message. That message enters the pipeline after the StartFrame,
and a Pipecat processor handles its frames one at a time, so by the time the message has
passed the input transport (and reached the wire), the input transport has started.

After the message it sends SEND_SAMPLES samples of 16 kHz mono audio (a ramp: every sample is
distinct, so loss or reordering changes the digest). It prints one line per frame it
receives (``TEXT``, ``MESSAGE``, ``AUDIO``), and once it has received EXPECT_BYTES of audio
it prints ``RECEIVED <bytes> <sha256>`` and ends its pipeline (EndFrame: queued audio is sent
first, then the socket closes with 1000).
"""

from __future__ import annotations

import array
import asyncio
import hashlib
import json
import sys

from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InputTransportMessageFrame,
    OutputAudioRawFrame,
    OutputTransportMessageFrame,
    TextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.websocket.client import (
    WebsocketClientParams,
    WebsocketClientTransport,
)
from pipecat.workers.runner import WorkerRunner

RATE_HZ = 16000


class Tap(FrameProcessor):
    """Prints what arrives from the server and ends the pipeline once all the expected audio came."""

    def __init__(self, expect_bytes: int) -> None:
        super().__init__()
        self.expect_bytes = expect_bytes
        self.audio = bytearray()
        self.worker: PipelineWorker | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TextFrame):
            print("TEXT", frame.text, flush=True)
        elif isinstance(frame, InputTransportMessageFrame):
            print("MESSAGE", json.dumps(frame.message), flush=True)
        elif isinstance(frame, InputAudioRawFrame):
            print("AUDIO", len(frame.audio), frame.sample_rate, frame.num_channels, flush=True)
            done = len(self.audio) >= self.expect_bytes
            self.audio += frame.audio
            if not done and len(self.audio) >= self.expect_bytes and self.worker is not None:
                print("RECEIVED", len(self.audio), hashlib.sha256(self.audio).hexdigest(), flush=True)
                await self.worker.queue_frame(EndFrame())
        await self.push_frame(frame, direction)


async def main(url: str, send_samples: int, expect_bytes: int) -> None:
    transport = WebsocketClientTransport(
        url,
        WebsocketClientParams(audio_in_enabled=True, audio_out_enabled=True, audio_out_end_silence_secs=0),
    )
    tap = Tap(expect_bytes)
    worker = PipelineWorker(
        Pipeline([transport.input(), tap, transport.output()]),
        params=PipelineParams(audio_in_sample_rate=RATE_HZ, audio_out_sample_rate=RATE_HZ),
        enable_rtvi=False,
        idle_timeout_secs=None,
    )
    tap.worker = worker
    audio = array.array("h", range(send_samples)).tobytes()

    @worker.event_handler("on_pipeline_started")
    async def ready(worker: PipelineWorker, frame: Frame) -> None:
        print("SENT", len(audio), hashlib.sha256(audio).hexdigest(), flush=True)
        await worker.queue_frames([
            OutputTransportMessageFrame(message={"type": "pipecat-ready"}),
            OutputAudioRawFrame(audio=audio, sample_rate=RATE_HZ, num_channels=1),
        ])

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
