// An HTTP step's function in plain Node.js (18 or later), without dependencies.
//
//   PGFLOW_HTTP_SECRET=... PORT=8787 node examples/functions/render_node.mjs
//
// and in the flow: flow.http_step("render", url="http://127.0.0.1:8787/render", ...).
// It renders {"html": "<h1>…</h1>"} from the run input's "title". When the run input asks
// for {"sync": true} it answers at once (200 {"output": …}); otherwise it accepts the work
// (202) and calls the gateway back when done, with the token the request carried.
// The protocol: docs/reference/http-steps.md.

import crypto from "node:crypto";
import http from "node:http";
import { pathToFileURL } from "node:url";

const TOLERANCE = 300; // seconds a signature's timestamp may be off our clock
const MAX_BODY = 1024 * 1024;

// True when `header` (PGFlow-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…]) signs
// `rawBody` (a Buffer: the bytes as received, before any JSON parsing) with `secret`.
export function verify(secret, rawBody, header, now = Date.now() / 1000) {
  if (typeof header !== "string") return false;
  let t = null;
  const signatures = [];
  for (const item of header.split(",")) {
    const at = item.indexOf("=");
    const key = item.slice(0, at).trim();
    const value = item.slice(at + 1).trim();
    if (key === "t") t = value;
    else if (key === "v1") signatures.push(value);
  }
  if (t === null || !/^\d{1,12}$/.test(t) || Math.abs(now - Number(t)) > TOLERANCE) return false;
  const expected = crypto.createHmac("sha256", secret).update(`${t}.`).update(rawBody).digest();
  return signatures.some((s) => /^[0-9a-fA-F]{64}$/.test(s)
    && crypto.timingSafeEqual(Buffer.from(s, "hex"), expected));
}

async function callBack(url, body) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status} ${await response.text()}`);
  return (await response.json()).applied; // false: too late (the attempt was given up)
}

// Completes the step: `callbackUrl` is the request's callback.complete.
export function complete(callbackUrl, token, output) {
  return callBack(callbackUrl, { token, output });
}

// Fails this attempt (the step's retries apply): `callbackUrl` is the request's callback.fail.
export function fail(callbackUrl, token, error) {
  return callBack(callbackUrl, { token, error: String(error).slice(0, 4000) });
}

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;" };

function render(input) {
  const title = input?.run?.title;
  if (typeof title !== "string") throw new Error("input.run.title must be a string");
  const escaped = title.replace(/[&<>"']/g, (c) => ESCAPES[c]);
  return { html: `<h1>${escaped}</h1>` };
}

function answer(response, status, body) {
  response.writeHead(status, { "content-type": "application/json" });
  response.end(body === undefined ? "" : JSON.stringify(body));
}

export function createServer(secret) {
  return http.createServer((request, response) => {
    if (request.method !== "POST") return answer(response, 405, { error: "POST only" });
    const chunks = [];
    let size = 0;
    request.on("data", (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        answer(response, 413, { error: "body over 1 MiB" });
        request.destroy();
      } else chunks.push(chunk);
    });
    request.on("end", () => {
      const raw = Buffer.concat(chunks);
      if (!verify(secret, raw, request.headers["pgflow-signature"])) {
        return answer(response, 401, { error: "bad signature" });
      }
      let job;
      try {
        job = JSON.parse(raw);
      } catch {
        return answer(response, 400, { error: "the body is not JSON" });
      }
      if (job.input?.run?.sync || !job.callback) {
        try {
          return answer(response, 200, { output: render(job.input) });
        } catch (error) {
          return answer(response, 422, { error: error.message }); // fails the step for good
        }
      }
      answer(response, 202); // accepted: the result comes by callback
      setImmediate(async () => {
        try {
          let output;
          try {
            output = render(job.input);
          } catch (error) {
            await fail(job.callback.fail, job.token, error.message);
            return;
          }
          await complete(job.callback.complete, job.token, output);
        } catch (error) {
          console.error(`callback failed: ${error.message}`); // the lease runs out: retried
        }
      });
    });
  });
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const secret = process.env.PGFLOW_HTTP_SECRET;
  if (!secret) {
    console.error("set PGFLOW_HTTP_SECRET to the secret of pgflow's --http-secret");
    process.exit(2);
  }
  const host = process.env.HOST ?? "127.0.0.1";
  const server = createServer(secret);
  server.listen(Number(process.env.PORT ?? 8787), host, () => {
    console.log(`listening on http://${host}:${server.address().port}`);
  });
  process.on("SIGTERM", () => server.close(() => process.exit(0)));
}
