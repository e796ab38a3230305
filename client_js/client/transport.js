// The one websocket a client shares among its runs: lazy open, heartbeat, backoff, idle close
// and close codes. It knows nothing of runs: its owner (the client) hears each open, message
// and loss through hooks, and tells it whether any run still needs the socket.

import { PGFlowError } from "./errors.js";

const HEARTBEAT_INTERVAL = 5_000; // ms between pings
const HEARTBEAT_TIMEOUT = 10_000; // ms of silence after which the socket is presumed dead
const RECONNECT_MIN_DELAY = 100; // ms
const RECONNECT_MAX_DELAY = 5_000; // ms
const IDLE_TIMEOUT = 1_000; // ms an unused socket stays open, so bursts of runs share it

const WS_OPEN = 1; // WebSocket.OPEN, spelled out so any WebSocket implementation works
const CLOSE_NORMAL = 1000;
const CLOSE_POLICY = 1008; // foreign Origin or bad token: retrying with the same credentials is futile
export const CLOSE_RESYNC = 4000; // ours: heartbeat lost or a seq gap; reconnect and resume with `since`

/** @typedef {import("../client.js").ConnectionState} ConnectionState */
/** @typedef {import("../client.js").WebSocketConstructor} WebSocketConstructor */
/** @typedef {"reconnect" | "heartbeat" | "deadline" | "idle"} TimerKey */

/**
 * What the transport tells its owner, and asks it.
 * @typedef {object} TransportHooks
 * @property {() => boolean} busy whether any run still needs the socket
 * @property {() => void} onOpen a new socket is open: subscribe every run
 * @property {(message: Record<string, any>) => void} onMessage one JSON object from the gateway
 * @property {(code: number, reason: string) => void} onRefused closed with 1008; no reconnect follows
 * @property {(code: number, reason: string) => void} onLost lost for any other reason; a reconnect follows while busy
 * @property {(error: PGFlowError) => void} onUnsupported no WebSocket in this runtime
 */

/**
 * @typedef {object} TransportOptions
 * @property {string} url the gateway's base URL; the socket is `{url}/realtime`
 * @property {() => Promise<string | null | undefined>} token asked at every (re)connection
 * @property {WebSocketConstructor | undefined} [WebSocket]
 * @property {number | undefined} [heartbeatInterval] ms
 * @property {number | undefined} [heartbeatTimeout] ms
 * @property {{minDelay?: number, maxDelay?: number} | undefined} [reconnect] ms
 * @property {number | undefined} [idleTimeout] ms
 */

/**
 * The WebSocket class to use. Checked before a run is started, so that a runtime without
 * WebSocket creates no run it could not follow.
 * @param {WebSocketConstructor | undefined} given
 * @returns {WebSocketConstructor}
 */
export function webSocketClass(given) {
  const WS = given ?? globalThis.WebSocket;
  if (typeof WS !== "function") {
    throw new PGFlowError("pgflow client: this runtime has no WebSocket, so it cannot follow runs: "
      + "use Node 22 or later, or Node 20 with --experimental-websocket, "
      + "or pass an implementation: createClient({ WebSocket })", { code: "unsupported" });
  }
  return WS;
}

export class Transport {
  /**
   * @param {TransportOptions} options
   * @param {TransportHooks} hooks
   */
  constructor(options, hooks) {
    const reconnect = options.reconnect ?? {};
    this._url = options.url;
    this._token = options.token;
    this._WebSocket = options.WebSocket;
    this._heartbeatInterval = options.heartbeatInterval ?? HEARTBEAT_INTERVAL;
    this._heartbeatTimeout = options.heartbeatTimeout ?? HEARTBEAT_TIMEOUT;
    this._minDelay = reconnect.minDelay ?? RECONNECT_MIN_DELAY;
    this._maxDelay = Math.max(reconnect.maxDelay ?? RECONNECT_MAX_DELAY, this._minDelay);
    this._idleTimeout = options.idleTimeout ?? IDLE_TIMEOUT;
    this._hooks = hooks;
    /** @type {WebSocket | null} */
    this._ws = null;
    /** @type {ConnectionState} */
    this._state = "idle";
    this._attempt = 0; // consecutive failed connections, for the backoff
    this._pingId = 0;
    this._lastMessageAt = 0;
    /** @type {Record<TimerKey, ReturnType<typeof setTimeout> | null>} */
    this._timers = { reconnect: null, heartbeat: null, deadline: null, idle: null };
  }

  /** idle | connecting | open | reconnecting | closed */
  get state() {
    return this._state;
  }

  /** The current socket: a delayed send checks it is still the one it was meant for. */
  get socket() {
    return this._ws;
  }

  /** Throws PGFlowError `unsupported` when this runtime cannot open a socket. */
  checkSupported() {
    webSocketClass(this._WebSocket);
  }

  /**
   * A run needs the socket: keep it, or open one. True when it is open now (subscribe at
   * once); otherwise the owner's onOpen subscribes.
   */
  wake() {
    this._clearTimer("idle");
    if (this._state === "idle") this._connect();
    return this._state === "open";
  }

  /**
   * Send one JSON message on the open socket (dropped otherwise: the next open resubscribes).
   * @param {object} message
   * @param {WebSocket | null} [ws] only on this socket
   */
  send(message, ws = this._ws) {
    if (ws === this._ws && ws?.readyState === WS_OPEN) ws.send(JSON.stringify(message));
  }

  /**
   * Drop the socket and reconnect, resuming every run from what it applied.
   * @param {string} reason
   */
  resync(reason) {
    if (this._ws) this._onGone(this._ws, CLOSE_RESYNC, reason);
  }

  /** Close the socket for good. Idempotent. */
  close() {
    if (this._state === "closed") return;
    this._state = "closed";
    for (const key of /** @type {TimerKey[]} */ (Object.keys(this._timers))) this._clearTimer(key);
    if (this._ws) this._discard(this._ws, CLOSE_NORMAL, "client closed");
  }

  /**
   * Full jitter between minDelay and a cap that doubles per failed attempt up to maxDelay,
   * so a restarted gateway is not hit by all its clients at the same instant.
   * @param {number} attempt
   */
  backoff(attempt) {
    const cap = Math.min(this._maxDelay, this._minDelay * 2 ** Math.min(attempt, 30));
    return this._minDelay + Math.random() * (cap - this._minDelay);
  }

  /**
   * An open socket without runs would keep pinging forever (and keep a Node process
   * alive): close it after a grace period that lets a burst of runs share it.
   */
  idleIfUnused() {
    if (this._hooks.busy() || !this._ws) return;
    this._setTimer("idle", () => {
      if (this._hooks.busy() || !this._ws) return;
      this._discard(this._ws, CLOSE_NORMAL, "idle");
      this._state = "idle";
    }, this._idleTimeout);
  }

  async _connect() {
    this._state = "connecting";
    let ws;
    try {
      const token = await this._token();
      if (this._state !== "connecting") return; // closed while the token was being fetched
      let WS;
      try {
        WS = webSocketClass(this._WebSocket);
      } catch (err) {
        this._state = "idle";
        this._hooks.onUnsupported(/** @type {PGFlowError} */ (err));
        return;
      }
      ws = new WS(this._realtimeUrl(token));
    } catch {
      // A token callback that threw, or a socket that could not even be created:
      // treat like a failed connection and retry after the backoff.
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    this._lastMessageAt = Date.now(); // the handshake itself is under the heartbeat deadline
    let error = ""; // why the socket failed, when the runtime says (Node does; browsers do not)
    ws.onopen = () => this._onOpen(ws);
    ws.onmessage = (ev) => this._onMessage(ws, ev);
    ws.onclose = (ev) => this._onGone(ws, ev.code, ev.reason || error);
    // A close event always follows, with the code that matters.
    ws.onerror = (/** @type {any} */ ev) => {
      error = String(ev?.message || ev?.error?.message || "");
    };
    this._armDeadline(ws);
  }

  /** @param {string | null | undefined} token */
  _realtimeUrl(token) {
    const url = new URL(this._url + "/realtime");
    if (url.protocol === "http:") url.protocol = "ws:";
    else if (url.protocol === "https:") url.protocol = "wss:";
    if (token) url.searchParams.set("token", token);
    return url.href;
  }

  /** @param {WebSocket} ws */
  _onOpen(ws) {
    this._state = "open";
    this._setTimer("heartbeat", () => this.send({ type: "ping", id: ++this._pingId }, ws),
      this._heartbeatInterval, true);
    this._hooks.onOpen();
    this.idleIfUnused(); // every run may have ended while the socket was connecting
  }

  /**
   * @param {WebSocket} ws
   * @param {MessageEvent} ev
   */
  _onMessage(ws, ev) {
    if (ws !== this._ws) return;
    this._lastMessageAt = Date.now();
    // Reset the backoff only once the gateway has spoken: a socket that opens and is
    // closed at once (say 1013, too many connections) must keep backing off.
    this._attempt = 0;
    if (typeof ev.data !== "string") return; // the protocol is text frames only
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (msg === null || typeof msg !== "object") return;
    this._hooks.onMessage(msg);
  }

  /**
   * Single exit for a socket: its close event, a lost heartbeat, or a seq gap.
   * @param {WebSocket} ws
   * @param {number} code
   * @param {string} reason
   */
  _onGone(ws, code, reason) {
    if (ws !== this._ws) return;
    this._discard(ws, CLOSE_RESYNC, reason);
    if (this._state === "closed") return;
    if (code === CLOSE_POLICY) {
      // docs/reference/websocket.md: do not reconnect with the same credentials. The owner
      // fails what is pending; a later run opens a new socket (perhaps with a fresh token).
      this._state = "idle";
      this._attempt = 0;
      this._hooks.onRefused(code, reason);
      return;
    }
    // Every other code (1001, 1006, 1011, 1013, 4001, ... and 1000 while runs are still
    // pending) resumes: a new socket resubscribes each followed run with `since`.
    this._hooks.onLost(code, reason);
    if (!this._hooks.busy()) this._state = "idle";
    else this._scheduleReconnect();
  }

  /**
   * Forget a socket for good: after this none of its events reach the owner, so a close
   * handshake that never completes (dead peer) cannot hold anything up.
   * @param {WebSocket} ws
   * @param {number} code
   * @param {string} reason
   */
  _discard(ws, code, reason) {
    ws.onopen = ws.onmessage = ws.onclose = null;
    this._clearTimer("heartbeat");
    this._clearTimer("deadline");
    this._clearTimer("idle");
    if (this._ws === ws) this._ws = null;
    try {
      ws.close(code, reason?.slice(0, 120)); // close reasons are limited to 123 bytes
    } catch {
      // already closing, or not yet connected in an implementation that throws
    }
  }

  _scheduleReconnect() {
    this._state = "reconnecting";
    this._attempt += 1;
    this._setTimer("reconnect", () => {
      this._state = "idle";
      if (this._hooks.busy()) this._connect();
    }, this.backoff(this._attempt));
  }

  /**
   * One timer, re-armed lazily, instead of one reset per message: messages only record a
   * timestamp, and the timer checks it when it fires.
   * @param {WebSocket} ws
   */
  _armDeadline(ws) {
    const remaining = this._lastMessageAt + this._heartbeatTimeout - Date.now();
    if (remaining <= 0) {
      this._onGone(ws, CLOSE_RESYNC, "heartbeat timeout");
      return;
    }
    this._setTimer("deadline", () => this._armDeadline(ws), remaining);
  }

  /**
   * @param {TimerKey} key
   * @param {() => void} fn
   * @param {number} ms
   * @param {boolean} [repeat]
   */
  _setTimer(key, fn, ms, repeat = false) {
    this._clearTimer(key);
    this._timers[key] = repeat ? setInterval(fn, ms) : setTimeout(() => {
      this._timers[key] = null;
      fn();
    }, ms);
  }

  /** @param {TimerKey} key */
  _clearTimer(key) {
    clearTimeout(this._timers[key] ?? undefined); // clears intervals too
    this._timers[key] = null;
  }
}
