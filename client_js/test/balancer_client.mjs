// The JS client as a process, for tests/integration/test_balancer.py: starts one flow through
// a gateway URL (a load balancer in front of several gateways), follows it to its end, and
// prints what it saw on stdout as JSON lines, so the Python test can compare it with the log:
//
//   {"kind":"open","socket":N}                       a websocket opened (N counts from 1)
//   {"kind":"close","socket":N,"code":C}             it closed
//   {"kind":"subscribe","socket":N,"since":S}        a subscribe frame the client sent
//   {"kind":"frame","socket":N,"seq":Q,"event":E}    an event frame as it came off the wire
//   {"kind":"run","run_id":ID}                       the run started
//   {"kind":"event",...}                             an event the run applied (onEvent)
//   {"kind":"result","output":O} | {"kind":"error","message":M}   how it ended; then exit 0 / 1
//
// Not a test file (npm test does not pick it up): the Python test runs it with
//   node --experimental-websocket client_js/test/balancer_client.mjs URL FLOW INPUT_JSON TIMEOUT_MS
import { createClient } from "../client.js";

const [url, flow, inputJson = "{}", timeoutMs = "30000"] = process.argv.slice(2);
if (!url || !flow) {
  process.stderr.write("usage: balancer_client.mjs URL FLOW [INPUT_JSON] [TIMEOUT_MS]\n");
  process.exit(2);
}

function print(record) {
  process.stdout.write(JSON.stringify(record) + "\n");
}

let sockets = 0;

// Records every socket the client opens, the frames it receives and the subscribes it sends.
class RecordingWebSocket extends globalThis.WebSocket {
  constructor(address) {
    super(address);
    const socket = ++sockets;
    this._socket = socket;
    this.addEventListener("open", () => print({ kind: "open", socket }));
    this.addEventListener("close", (e) => print({ kind: "close", socket, code: e.code }));
    this.addEventListener("message", (e) => {
      const msg = JSON.parse(e.data);
      if (msg.type === "event") print({ kind: "frame", socket, seq: msg.seq, event: msg.event });
    });
  }

  send(data) {
    const msg = JSON.parse(data);
    if (msg.type === "subscribe") print({ kind: "subscribe", socket: this._socket, since: msg.since });
    super.send(data);
  }
}

const client = createClient({
  url,
  WebSocket: RecordingWebSocket,
  idleTimeout: 0,
  // Short backoffs keep the test quick; the reconnect logic is the defaults'.
  reconnect: { minDelay: 20, maxDelay: 250 },
});

try {
  const run = await client.startFlow(flow, JSON.parse(inputJson), {
    graph: false,
    onEvent: (event) => print({ kind: "event", ...event }),
  });
  print({ kind: "run", run_id: run.runId });
  const output = await run.result({ timeout: Number(timeoutMs) });
  print({ kind: "result", output });
  client.close();
  process.exit(0);
} catch (err) {
  print({ kind: "error", message: String(err?.stack ?? err) });
  client.close();
  process.exit(1);
}
