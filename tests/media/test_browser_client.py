"""Pipecat's official browser client, in headless Chromium, against the media server transport.

``@pipecat-ai/client-js`` + ``@pipecat-ai/websocket-transport`` from npm (``.ci/run`` installs
``tests/media/browser/package.json`` into a cache folder; see :mod:`tests.media.peers`),
bundled here with esbuild into one ES module and served with ``tests/media/browser/page.js``
by a local HTTP server. The page is a real client: it connects, sends RTVI ``client-ready``,
streams Chromium's fake microphone, and plays what antiphon sends. It records the samples its
player renders (a tap on every node wired to the speakers) and reports each stretch of sound
to antiphon over the same client, so the server moves one step at a time without sleeping.
Skipped, loudly, without Chromium or the npm packages.
"""

from __future__ import annotations

import array
import base64
import http.server
import json
import math
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import pytest
import trio

from antiphon.media import (
    AudioRawFrame,
    InterruptionFrame,
    MediaFrame,
    MessageFrame,
    ProtobufFrameSerializer,
)
from antiphon.media.browser import (
    BROWSER_CHUNK_MS,
    BROWSER_MIC_SAMPLE_RATE_HZ,
    BROWSER_PLAYER_SAMPLE_RATE_HZ,
    bot_ready,
    browser_client_params,
    is_client_ready,
    rtvi_message,
)
from tests.media.conftest import tcp_server
from tests.media.peers import BROWSER_DIR, chromium, pipecat_web_modules

pytestmark = [pytest.mark.slow]

RATE: Final = BROWSER_PLAYER_SAMPLE_RATE_HZ
CHUNK_SAMPLES: Final = RATE * BROWSER_CHUNK_MS // 1000
MIC_BYTES: Final = BROWSER_MIC_SAMPLE_RATE_HZ * 2 // 2
"""Half a second of microphone audio before antiphon speaks (Chromium's fake microphone beeps in it)."""
LEAD_MS: Final = 480
"""More than the preset's 96 ms: the player loses audio when it runs dry (antiphon.media.browser),
this test compares every sample, and a loaded 2-core CI machine can stall for longer than 96 ms."""
BROWSER_TIMEOUT_S: Final = 90
"""The whole exchange takes ~3 s of audio plus Chromium's start; generous for a loaded machine."""
CHROMIUM_FLAGS: Final = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",  # a real page calls connect() from a click instead
)


@pytest.fixture(scope="module")
def browser_peer(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes]:
    """Chromium and the bundled client (skips, loudly, without either; see tests.media.peers)."""
    binary = chromium()
    return binary, _bundle(pipecat_web_modules(), tmp_path_factory.mktemp("pipecat-client"))


def _tone(hz: int, samples: int) -> bytes:
    """A cosine (first sample loud, so the player's first render quantum is never all zero)."""
    return array.array("h", (round(8000 * math.cos(2 * math.pi * hz * i / RATE)) for i in range(samples))).tobytes()


class _Site(http.server.BaseHTTPRequestHandler):
    """Serves the page and the bundle; takes the page's one report."""

    files: dict[str, tuple[bytes, str]] = {}
    report: dict[str, Any] = {}
    reported = threading.Event()

    def do_GET(self) -> None:
        body, kind = self.files.get(self.path.split("?")[0], (b"", ""))
        self.send_response(200 if kind else 404)
        self.send_header("Content-Type", kind or "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if not self.reported.is_set():
            type(self).report = json.loads(body)
            self.reported.set()
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _bundle(modules: Path, out: Path) -> bytes:
    """Pipecat's browser client as one ES module, built by the npm install's own esbuild."""
    target = out / "pipecat-client.js"
    entry = BROWSER_DIR / "entry.js"
    done = subprocess.run(
        [str(modules / ".bin" / "esbuild"), str(entry), "--bundle", "--format=esm", f"--outfile={target}",
         "--log-level=warning"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "NODE_PATH": str(modules)},
    )
    assert done.returncode == 0, f"esbuild failed: {done.stderr}"
    return target.read_bytes()


class _Browser:
    """A served page in a headless Chromium, killed and cleaned up on exit."""

    def __init__(self, binary: str, bundle: bytes, ws_url: str) -> None:
        page = b'<!doctype html><html><body><script type="module" src="/page.js"></script></body></html>'

        class Site(_Site):
            files = {
                "/": (page, "text/html"),
                "/page.js": ((BROWSER_DIR / "page.js").read_bytes(), "text/javascript"),
                "/pipecat-client.js": (bundle, "text/javascript"),
            }
            reported = threading.Event()

        self.site = Site
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self.site)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.profile = tempfile.mkdtemp(prefix="antiphon-chromium-")
        url = f"http://127.0.0.1:{self.httpd.server_address[1]}/?ws={quote(ws_url)}"
        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    async def report(self) -> dict[str, Any]:
        """The page's report, once it sent it."""
        reported = self.site.reported
        while not await trio.to_thread.run_sync(reported.wait, 1.0, abandon_on_cancel=True):
            assert self.proc.poll() is None, "Chromium exited before the page reported"
        return self.site.report

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.httpd.shutdown()
        self.httpd.server_close()
        shutil.rmtree(self.profile, ignore_errors=True)


async def _until(frames: trio.MemoryReceiveChannel[MediaFrame], seen: list[MediaFrame],
                 want: Callable[[MediaFrame], bool]) -> MediaFrame:
    """Read frames (keeping them all in ``seen``) until one is wanted; return it."""
    async for frame in frames:
        seen.append(frame)
        if want(frame):
            return frame
    raise AssertionError("the transport stopped first")


def _page_says(kind: str, segment: int) -> Callable[[MediaFrame], bool]:
    """Matches the page's RTVI client-message ``kind`` about playback segment ``segment``."""
    expected = {"t": kind, "d": {"segment": segment}}
    return lambda f: isinstance(f, MessageFrame) and isinstance(f.message, dict) and f.message.get("data") == expected


async def test_pipecat_browser_client_talks_to_the_server_transport(browser_peer: tuple[str, bytes]) -> None:
    """Chromium's Pipecat client: client-ready/bot-ready, 16 kHz mic in, 24 kHz audio played exactly, interruptions."""
    binary, bundle = browser_peer
    tone_a = _tone(440, 15 * CHUNK_SAMPLES)  # 480 ms
    tone_b = _tone(880, 125 * CHUNK_SAMPLES)  # 4 s, interrupted once the page hears it
    tone_c = _tone(660, 15 * CHUNK_SAMPLES)
    seen: list[MediaFrame] = []
    async with tcp_server(browser_client_params(lead_ms=LEAD_MS)) as (transport, rec):
        browser = _Browser(binary, bundle, transport.url)
        try:
            with trio.fail_after(BROWSER_TIMEOUT_S):
                frames, send = transport.input(), transport.output().send
                ready = await _until(frames, seen, is_client_ready)
                assert isinstance(ready, MessageFrame)
                await send(bot_ready(ready))
                mic: list[AudioRawFrame] = []
                while sum(len(f.audio) for f in mic) < MIC_BYTES:
                    frame = await _until(frames, seen, lambda f: isinstance(f, AudioRawFrame))
                    assert isinstance(frame, AudioRawFrame)
                    mic.append(frame)
                await send(AudioRawFrame(tone_a, RATE, 1))
                await _until(frames, seen, _page_says("played", 0))
                await send(AudioRawFrame(tone_b, RATE, 1))
                await _until(frames, seen, _page_says("hearing", 1))
                await send(InterruptionFrame())  # the preset writes it as RTVI bot-stopped-speaking
                await _until(frames, seen, _page_says("played", 1))
                # What the client does with a real InterruptionFrame (which the preset never sends):
                raw = ProtobufFrameSerializer().serialize(InterruptionFrame())
                assert transport.client is not None and transport.client.session.send_nowait(raw)
                await send(AudioRawFrame(tone_c, RATE, 1))
                await _until(frames, seen, _page_says("played", 2))
                await send(rtvi_message("server-message", {"done": True}))
                report = await browser.report()
        finally:
            browser.close()
    assert "failed" not in report, report["failed"]
    hello = ready.message["data"]["about"]
    assert (hello["library"], hello["library_version"]) == ("@pipecat-ai/client-js", "1.13.1")
    assert [e[0] for e in report["events"]] == ["bot-ready", "connected", "bot-stopped-speaking", "server-message"]
    assert report["events"][0][1]["version"] == ready.message["data"]["version"]
    assert report["events"][2][1:] == [1, True]  # fired while the interrupted tone B was playing
    assert {(f.sample_rate, f.num_channels) for f in mic} == {(BROWSER_MIC_SAMPLE_RATE_HZ, 1)}
    assert max(abs(x) for x in array.array("h", b"".join(f.audio for f in mic))) > 1000  # the beep, not silence
    assert report["rate"] == RATE  # the player's AudioContext: 24 kHz whatever the frames say
    played = base64.b64decode(report["played"])
    heard = [played[2 * start:2 * end] for start, end in report["segments"]]
    assert len(heard) == 3, report["segments"]
    assert heard[0] == tone_a and heard[2] == tone_c  # every sample, in order, nothing else
    chunk = 2 * CHUNK_SAMPLES
    assert 0 < len(heard[1]) < len(tone_b) and len(heard[1]) % chunk == 0
    assert heard[1] == tone_b[: len(heard[1])]  # whole chunks of B, up to the interruption and the lead
    # The real InterruptionFrame: an error in the console and nothing else (tone C played).
    assert report["errors"] == ["Failed to deserialize incoming message Error: Unknown frame kind"]
    assert transport.stats.interrupted_audio_bytes > 0 and transport.stats.dropped_out == {}
    assert transport.stats.skipped_in == {}
    assert not [f for f in seen if isinstance(f, MessageFrame) and f.message.get("label") != "rtvi-ai"]
