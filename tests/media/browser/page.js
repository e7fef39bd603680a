// Drives Pipecat's browser client against antiphon for tests/media/test_browser_client.py.
//
// The page connects with PipecatClient + WebSocketTransport (the URL's ?ws=), lets the fake
// microphone stream, and records what the client's player actually renders: every audio node
// that connects to the speakers gets a tap (an AudioWorklet of our own) that copies its output.
// Playback comes in "segments" (sound after at least IDLE_MS of none); the page tells the server
// over the client under test (RTVI client-message "hearing" / "played", with the segment number)
// so the server can go step by step, and posts everything it saw to /result when the server
// says {"done": true} in an RTVI server-message.
const IDLE_MS = 200;
const params = new URLSearchParams(location.search);

const TAP = URL.createObjectURL(new Blob([`
registerProcessor("antiphon-tap", class extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel && channel.some((x) => x !== 0)) this.port.postMessage(channel.slice(0));
    return true;
  }
});`], { type: "application/javascript" }));

const played = [];        // Int16 samples rendered (all-zero render quanta left out)
const segments = [];      // [start, end) indices into `played`
const events = [];        // what the page's callbacks saw, in order
const errors = [];        // console.error calls (the client logs there)
let rate = null;
let client = null;
let open = null;          // the segment being heard: {start, lastSoundAt}

const addModule = AudioWorklet.prototype.addModule;
AudioWorklet.prototype.addModule = async function (url, options) {
  await addModule.call(this, TAP);
  return addModule.call(this, url, options);
};
const connect = AudioNode.prototype.connect;
AudioNode.prototype.connect = function (destination, ...rest) {
  const result = connect.call(this, destination, ...rest);
  if (destination instanceof AudioDestinationNode && !this.antiphonTap) {
    const tap = new AudioWorkletNode(this.context, "antiphon-tap");
    tap.antiphonTap = true;
    rate = this.context.sampleRate;
    tap.port.onmessage = (event) => hear(event.data);
    connect.call(this, tap);
  }
  return result;
};

function hear(block) {
  for (const x of block) played.push(Math.max(-32768, Math.min(32767, Math.round(x * 32768))));
  if (open === null) {
    open = { start: played.length - block.length };
    client.sendClientMessage("hearing", { segment: segments.length });
  }
  open.lastSoundAt = performance.now();
}

setInterval(() => {
  if (open !== null && performance.now() - open.lastSoundAt > IDLE_MS) {
    segments.push([open.start, played.length]);
    open = null;
    client.sendClientMessage("played", { segment: segments.length - 1 });
  }
}, 20);

const consoleError = console.error;
console.error = (...args) => {
  errors.push(args.map(String).join(" "));
  consoleError.apply(console, args);
};

function report(extra) {
  const bytes = new Uint8Array(new Int16Array(played).buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  fetch("/result", {
    method: "POST",
    body: JSON.stringify({ ...extra, rate, segments, events, errors, played: btoa(binary) }),
  });
}

try {
  const { PipecatClient, WavMediaManager, WebSocketTransport } = await import("/pipecat-client.js");
  // WavMediaManager: plain getUserMedia. The default (Daily's media manager) loads Daily's
  // call-machine bundle from c.daily.co at run time, which an offline test cannot.
  const transport = new WebSocketTransport({ mediaManager: new WavMediaManager(512, 16000) });
  client = new PipecatClient({
    transport,
    enableMic: true,
    enableCam: false,
    callbacks: {
      onBotReady: (data) => events.push(["bot-ready", data]),
      onBotStoppedSpeaking: () => events.push(["bot-stopped-speaking", segments.length, open !== null]),
      onServerMessage: (data) => {
        events.push(["server-message", data]);
        if (data && data.done) report({});
      },
    },
  });
  await client.connect({ wsUrl: params.get("ws") });
  events.push(["connected"]);
} catch (error) {
  report({ failed: String(error && error.stack || error) });
}
