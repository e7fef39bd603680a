"""A real browser (headless Chromium) runs the Connic docs' JavaScript against the gateway.

Skipped when no Chromium is installed (Debian: ``apt-get install chromium``; ``.ci/run``
installs it when it can). The page is served over HTTP by the test; it posts what it
received back to the test, so no browser automation protocol is involved.
"""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.chat.conftest import SECRET, tcp_gateway

CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium"), shutil.which("chromium-browser")) if p and Path(p).exists()), None)

# The docs' "Connecting" and "Sending Messages" snippets, verbatim but for the
# placeholders, plus collecting what arrives and posting it back to the test.
PAGE = """<!doctype html><html><body><script>
const received = [];
// Connect to WebSocket
const ws = new WebSocket('WS_URL');
// Authenticate (required by default)
ws.onopen = () => {
ws.send(JSON.stringify({ secret: 'SECRET' }));
};
// Handle connection confirmation
ws.onmessage = (event) => {
const data = JSON.parse(event.data);
received.push(data);
if (data.type === 'connected') {
console.log('Connector run ID:', data.connector_run_id);
console.log('Agents:', data.agents);
// Send a message
ws.send(JSON.stringify({
type: 'message',
id: 'msg-001',
payload: {
message: 'What is the weather like today?',
context: { location: 'New York' }
}
}));
}
if (data.type === 'stream_end') {
ws.send(JSON.stringify({ type: 'ping' }));
}
if (data.type === 'pong') {
fetch('/result', { method: 'POST', body: JSON.stringify(received) }).then(() => ws.close());
}
};
ws.onerror = () => fetch('/result', { method: 'POST', body: JSON.stringify([{ type: 'browser-error' }]) });
</script></body></html>
"""


class _Site(http.server.BaseHTTPRequestHandler):
    page = b""
    result: list[Any] = []
    done = threading.Event()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).result = json.loads(body)
        self.send_response(204)
        self.end_headers()
        type(self).done.set()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
async def test_docs_javascript_runs_in_a_real_browser() -> None:
    """Chromium runs the docs' JS: first-message secret, `connected`, a streamed reply, app-level ping/pong."""
    async with tcp_gateway() as gateway:
        site = type("Site", (_Site,), {"page": PAGE.replace("WS_URL", gateway.url).replace("SECRET", SECRET).encode(), "done": threading.Event()})
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), site)
        server_thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        server_thread.start()
        profile = tempfile.mkdtemp(prefix="antiphon-chromium-")
        assert CHROMIUM is not None
        browser = subprocess.Popen(
            [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", f"http://127.0.0.1:{httpd.server_address[1]}/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            finished = await trio.to_thread.run_sync(site.done.wait, 60)
        finally:
            browser.kill()
            browser.wait()
            httpd.shutdown()
            httpd.server_close()
            shutil.rmtree(profile, ignore_errors=True)
    assert finished, "the page never reported back"
    events = site.result
    kinds = [e["type"] for e in events]
    assert kinds[0] == "connected" and events[0]["agents"] == ["assistant"]
    assert kinds[1:3] == ["ack", "stream_start"] and events[1]["message_number"] == 1
    assert kinds[-2:] == ["stream_end", "pong"]
    end = events[-2]
    assert end["full_response"] == "".join(e["chunk"] for e in events if e["type"] == "stream_chunk")
    assert end["full_response"].startswith("Turn 1. You said: 'What is the weather like today?'.")
    assert set(end["token_usage"]) == {"prompt_tokens", "candidates_tokens"}
