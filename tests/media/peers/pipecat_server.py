"""A stock Pipecat server pipeline, for tests/media/test_pipecat_interop.py (runs in Pipecat's own venv).

    python pipecat_server.py GREETING_SAMPLES

``SingleClientWebsocketServerTransport`` (Pipecat >= 1.4's name) on 127.0.0.1, port 0, with
Pipecat's ``ProtobufFrameSerializer``. Pipecat does not say which port it bound, so this peer
reads it off the ``websockets.server`` logger ("server listening on 127.0.0.1:PORT") and,
once ``on_websocket_ready`` fired, prints ``LISTENING <port>``: from then on the server
accepts, and its input transport has started (Pipecat starts listening from the input
transport's ``start``).

The pipeline is an echo bot with a little protocol, each step only after the previous one,
so every count is exact:

* ``{"type": "antiphon-ready"}`` from the client: send GREETING_SAMPLES samples of 16 kHz
  audio (a descending ramp), then ``{"type": "greeted"}`` (Pipecat keeps messages in order
  with audio, so the client has all of the greeting once it sees this);
* audio from the client: echoed back as it is;
* ``{"type": "bye?"}``: answered with ``{"type": "bye", "echoed": <bytes echoed so far>}``.

When the client disconnects it prints ``ECHOED <bytes> <sha256>`` and ends.
"""

from __future__ import annotations

import array
import asyncio
import hashlib
import logging
import sys

from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InputTransportMessageFrame,
    OutputAudioRawFrame,
    OutputTransportMessageFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.serializers.protobuf import ProtobufFrameSerializer
from pipecat.transports.websocket.server import (
    SingleClientWebsocketServerParams,
    SingleClientWebsocketServerTransport,
)
from pipecat.workers.runner import WorkerRunner

RATE_HZ = 16000


class PortFromLog(logging.Handler):
    """Catches websockets' "server listening on HOST:PORT" record (Pipecat binds port 0 for us, but does not tell)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.port: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "server listening on %s" and record.args:
            self.port = int(str(record.args[0]).rsplit(":", 1)[1])


class Echo(FrameProcessor):
    """Echoes the client's audio and answers its messages (see the module docstring)."""

    def __init__(self, greeting_samples: int) -> None:
        super().__init__()
        self.greeting = array.array("h", (-i for i in range(greeting_samples))).tobytes()
        self.echoed = bytearray()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self.echoed += frame.audio
            await self.push_frame(OutputAudioRawFrame(frame.audio, frame.sample_rate, frame.num_channels))
        elif isinstance(frame, InputTransportMessageFrame) and direction == FrameDirection.DOWNSTREAM:
            kind = frame.message.get("type") if isinstance(frame.message, dict) else None
            if kind == "antiphon-ready":
                print("GREETING", len(self.greeting), hashlib.sha256(self.greeting).hexdigest(), flush=True)
                await self.push_frame(OutputAudioRawFrame(self.greeting, RATE_HZ, 1))
                await self.push_frame(OutputTransportMessageFrame(message={"type": "greeted"}))
            elif kind == "bye?":
                await self.push_frame(OutputTransportMessageFrame(message={"type": "bye", "echoed": len(self.echoed)}))
        else:
            await self.push_frame(frame, direction)


async def main(greeting_samples: int) -> None:
    port_log = PortFromLog()
    logging.getLogger("websockets.server").addHandler(port_log)
    logging.getLogger("websockets.server").setLevel(logging.INFO)
    transport = SingleClientWebsocketServerTransport(
        SingleClientWebsocketServerParams(
            serializer=ProtobufFrameSerializer(),
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_out_end_silence_secs=0,
        ),
        host="127.0.0.1",
        port=0,
    )
    echo = Echo(greeting_samples)
    worker = PipelineWorker(
        Pipeline([transport.input(), echo, transport.output()]),
        params=PipelineParams(audio_in_sample_rate=RATE_HZ, audio_out_sample_rate=RATE_HZ),
        enable_rtvi=False,
        idle_timeout_secs=None,
    )

    @transport.event_handler("on_websocket_ready")
    async def listening(transport: SingleClientWebsocketServerTransport) -> None:
        if port_log.port is None:
            print("NOPORT websockets did not log the port it listens on", flush=True)
            await worker.queue_frame(EndFrame())
            return
        print("LISTENING", port_log.port, flush=True)

    @transport.event_handler("on_client_disconnected")
    async def gone(transport: SingleClientWebsocketServerTransport, websocket: object) -> None:
        print("ECHOED", len(echo.echoed), hashlib.sha256(echo.echoed).hexdigest(), flush=True)
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
