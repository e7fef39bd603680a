// Bundled by tests/media/test_browser_client.py with esbuild (ESM, one file): Pipecat's browser client, as published.
export { PipecatClient } from "@pipecat-ai/client-js";
export { WavMediaManager, WebSocketTransport } from "@pipecat-ai/websocket-transport";
