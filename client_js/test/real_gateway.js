// A real PGFlow gateway for the client's end-to-end tests: `python -m pgflow demo` (embedded
// PostgreSQL, migrations, the example flows of examples/flows.py, a worker and the gateway in
// one process) on 127.0.0.1, plus a TCP proxy that can cut or freeze the client's sockets.
//
// Nothing here sleeps for a fixed time: every wait is a condition or a promise under a timeout.
// Every process started here is stopped by its PID (SIGINT, so the demo also stops its
// PostgreSQL), and a process left running when the test process exits gets SIGINT then too.

import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (client_js/..), from this file's location. */
export const REPO = fileURLToPath(new URL("../../", import.meta.url));

/** `PGFLOW_PYTHON`, else the repository's virtualenv. */
export const PYTHON = process.env.PGFLOW_PYTHON || join(REPO, ".venv", "bin", "python");

const URL_LINE = /open (http:\/\/127\.0\.0\.1:(\d+))\//;
const START_TIMEOUT = 60_000; // ms: a cold initdb on a loaded machine
const STOP_TIMEOUT = 30_000; // ms: graceful shutdown (handlers' grace, PostgreSQL's stop)
export const WAIT_TIMEOUT = 15_000; // ms: default for a condition in a test

// Processes still running when this process exits get SIGINT: the demo then stops its
// PostgreSQL by itself, even after we are gone.
const running = new Set();
process.on("exit", () => {
  for (const child of running) {
    try {
      process.kill(child.pid, "SIGINT");
    } catch {
      // already gone
    }
  }
});

/** A fresh directory for a gateway's embedded PostgreSQL. */
export function freshDataDir() {
  return mkdtempSync(join(tmpdir(), "pgflow-client-e2e-"));
}

/** Removes a data directory made by freshDataDir (after its gateway stopped). */
export function removeDataDir(dir) {
  rmSync(dir, { recursive: true, force: true });
}

/**
 * Starts `python -m pgflow demo` on 127.0.0.1 and resolves once it printed its URL.
 * `port: 0` picks a free port; pass a previous gateway's port and data dir to restart "it".
 */
export async function startGateway({ dataDir, port = 0, delayScale = "0.2", extraArgs = [] } = {}) {
  const args = ["-m", "pgflow", "--log-level", "warning", "demo",
    "--host", "127.0.0.1", "--port", String(port), "--data-dir", dataDir, ...extraArgs];
  const child = spawn(PYTHON, args, {
    cwd: REPO,
    env: { ...process.env, PGFLOW_EXAMPLE_DELAY_SCALE: delayScale, PYTHONUNBUFFERED: "1" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  const gw = new RealGateway(child, dataDir);
  try {
    await gw._started;
  } catch (err) {
    await gw.stop();
    throw err;
  }
  return gw;
}

class RealGateway {
  constructor(child, dataDir) {
    this.process = child;
    this.pid = child.pid;
    this.dataDir = dataDir;
    this.output = []; // stdout and stderr, line by line, for failure messages
    this.url = null;
    this.port = null;
    this.exitCode = undefined; // set on exit (a signal name when killed by one)
    this.exited = new Promise((resolve) => {
      const gone = (code) => {
        running.delete(child);
        this.exitCode ??= code;
        resolve(this.exitCode);
      };
      child.on("exit", (code, sig) => gone(code ?? sig));
      // A process that could not even be spawned (no such interpreter) emits no "exit".
      child.on("error", (err) => {
        if (child.pid === undefined) gone(`not started: ${err.message}`);
      });
    });
    this._started = new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`gateway did not print its URL within ${START_TIMEOUT} ms:\n${this.log()}`)),
        START_TIMEOUT,
      );
      const onLine = (line) => {
        this.output.push(line);
        const m = URL_LINE.exec(line);
        if (m && !this.url) {
          this.url = m[1];
          this.port = Number(m[2]);
          clearTimeout(timer);
          resolve(this);
        }
      };
      lines(child.stdout, onLine);
      lines(child.stderr, (line) => this.output.push(line));
      child.on("error", (err) => {
        clearTimeout(timer);
        reject(new Error(`could not start ${PYTHON}: ${err.message}`));
      });
      this.exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`gateway exited (${code}) before printing its URL:\n${this.log()}`));
      });
    });
    this._started.catch(() => {});
  }

  /** The process's output so far, for assertion messages. */
  log() {
    return this.output.join("\n");
  }

  /** SIGINT (a graceful stop), and resolves with the exit code once the process is gone. */
  async stop() {
    if (this.exitCode !== undefined) return this.exitCode;
    this.process.kill("SIGINT");
    const gone = await Promise.race([this.exited, delay(STOP_TIMEOUT).then(() => false)]);
    if (gone !== false) return gone;
    // It hung: kill it, and the PostgreSQL it started (by the PID in its postmaster.pid).
    this.process.kill("SIGKILL");
    await this.exited;
    try {
      const pid = Number(readFileSync(join(this.dataDir, "pgdata", "postmaster.pid"), "utf8").split("\n")[0]);
      if (pid > 0) process.kill(pid, "SIGQUIT");
    } catch {
      // no server left running
    }
    throw new Error(`gateway ${this.pid} ignored SIGINT for ${STOP_TIMEOUT} ms:\n${this.log()}`);
  }
}

function lines(stream, onLine) {
  let buffer = "";
  stream.setEncoding("utf8");
  stream.on("data", (chunk) => {
    buffer += chunk;
    let i;
    while ((i = buffer.indexOf("\n")) >= 0) {
      onLine(buffer.slice(0, i));
      buffer = buffer.slice(i + 1);
    }
  });
  stream.on("end", () => {
    if (buffer) onLine(buffer);
  });
}

// An unref'd timer, for a stop's deadline only (the child process keeps the loop alive).
function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** `promise`, or a rejection naming `what` after `ms`. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Resolves with the first truthy value of `check()` (sync or async), re-checked every
 * `interval` ms, or rejects after `timeout` ms. For state that announces nothing, such as
 * a run's status in the gateway or a TCP connection count.
 */
export async function until(check, what, { timeout = WAIT_TIMEOUT, interval = 25 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? `: ${last.message}` : ""}`);
    }
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}

/** Resolves when `run` has applied an event matching `predicate` (checked now and on each event). */
export function eventSeen(run, predicate, what, timeout = WAIT_TIMEOUT) {
  return new Promise((resolve, reject) => {
    const found = run.events.find(predicate);
    if (found) return resolve(found);
    const timer = setTimeout(() => {
      off();
      reject(new Error(`run ${run.runId}: timed out waiting for ${what} (at seq ${run.lastSeq})`));
    }, timeout);
    const off = run.on("*", (event) => {
      if (!predicate(event)) return;
      off();
      clearTimeout(timer);
      resolve(event);
    });
  });
}

/** GET `url` as JSON; throws with the status and body on a non-2xx answer. */
export async function getJson(url) {
  const res = await fetch(url, { headers: { accept: "application/json" } });
  const text = await res.text();
  if (!res.ok) throw new Error(`GET ${url}: HTTP ${res.status}: ${text}`);
  return JSON.parse(text);
}

/**
 * A TCP proxy on 127.0.0.1 in front of `targetPort`. Each connection is classified by its
 * first request line, so `cut("realtime")` drops only the websockets (both directions, with
 * a reset, like a dead network path) while the gateway and plain HTTP carry on, and
 * `freeze("realtime")` silently stops forwarding (a half-open socket: no close, no data).
 */
export async function startProxy(targetPort) {
  const proxy = new Proxy(targetPort);
  await new Promise((resolve, reject) => {
    proxy.server.once("error", reject);
    proxy.server.listen(0, "127.0.0.1", resolve);
  });
  return proxy;
}

class Proxy {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.connections = []; // { client, upstream, kind: "realtime" | "http" | null, state }
    this.server = createServer((client) => this._accept(client));
  }

  get port() {
    return this.server.address().port;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Connections of one kind, optionally only those still forwarding. */
  list(kind, state) {
    return this.connections.filter((c) => c.kind === kind && (!state || c.state === state));
  }

  /** Resets every live connection of `kind`; returns how many were cut. */
  cut(kind) {
    const live = this.list(kind, "open");
    for (const c of live) {
      c.state = "cut";
      c.client.resetAndDestroy();
      c.upstream.resetAndDestroy();
    }
    return live.length;
  }

  /** Stops forwarding on every live connection of `kind`, closing nothing; returns how many. */
  freeze(kind) {
    const live = this.list(kind, "open");
    for (const c of live) {
      c.state = "frozen";
    }
    return live.length;
  }

  async close() {
    for (const c of this.connections) {
      c.client.destroy();
      c.upstream.destroy();
    }
    await new Promise((resolve) => this.server.close(resolve));
  }

  _accept(client) {
    const upstream = connect(this.targetPort, "127.0.0.1");
    const c = { client, upstream, kind: null, state: "open" };
    this.connections.push(c);
    // Forwarded chunk by chunk (not piped) so that every request on a kept-alive connection
    // is seen: the websocket upgrade may reuse a connection that carried HTTP before.
    client.on("data", (chunk) => {
      if (c.state !== "open") return; // frozen: swallowed, nothing goes through
      if (/^GET \/realtime[?\s]/.test(chunk.toString("latin1", 0, 20))) c.kind = "realtime";
      else c.kind ??= "http";
      upstream.write(chunk);
    });
    upstream.on("data", (chunk) => {
      if (c.state === "open") client.write(chunk);
    });
    const end = () => {
      if (c.state === "open") c.state = "closed";
      if (c.state === "frozen") return; // a frozen connection stays half-open, on purpose
      client.destroy();
      upstream.destroy();
    };
    for (const socket of [client, upstream]) {
      socket.on("error", end);
      socket.on("close", end);
    }
  }
}
