"""Chaos soak: runs flows through real processes while faults are injected, then checks the
guarantees of docs/guarantees.md end to end.

    python bench/chaos.py --seconds 120

Everything runs on 127.0.0.1: a private PostgreSQL (durable defaults) in a temp dir, several
``python -m pgflow worker --flows examples.flows`` processes with a short lease, two
``python -m pgflow serve`` gateways, a steady stream of runs started over HTTP, and many
websocket subscribers (a plain ``websockets`` client following docs/reference/: subscribe with
``since``, record every event, on any disconnect reconnect and resubscribe with the last seq
seen). Runs are steered as users do: a share is cancelled at a random moment, and every
``approval`` run's input step is answered (approve or reject) over HTTP through either gateway,
retried across 503s and lost answers (a 409 then says it was applied). ``chaos_pipe`` runs
(bench/chaos_flows.py) fan out a map step, then call an HTTP step's function
(bench/chaos_function.py) that misbehaves: 503s, callbacks twice, callbacks after the step's
timeout. Meanwhile a fault loop, at random intervals, SIGKILLs a worker (and starts a
replacement; its HTTP calls and awaited callbacks die with it), SIGKILLs the function mid-call
(and starts it again), terminates the gateways' LISTEN backends, restarts PostgreSQL (fast
mode) and aborts client sockets.

After the duration the faults stop; the soak waits (bounded) until every run is terminal and
every subscriber has its runs' terminal events, then checks: every run terminal; each
subscriber's stream per run equal to the run's log (``pgflow.get_run_events``), counting lost,
duplicated, out-of-order and mismatched events; no task left leased; no gateway or worker exited
on its own. It prints the counts, a final JSON line, and exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import orjson  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

from pgflow.db.local_server import PostgresCluster, free_port  # noqa: E402
from pgflow.db.migrate import migrate_url  # noqa: E402

HOST = "127.0.0.1"
FLOWS = ("diamond", "fanout", "flaky", "doomed", "approval", "chaos_pipe")
FLOW_INPUT = {
    "diamond": {"text": "the quick brown fox jumps over the lazy dog " * 3},
    "fanout": {"start": 3},
    "flaky": {"order": "C-1", "amount": 7},
    "doomed": {"mission": "chaos"},
    "approval": {"title": "chaos notes"},
    "chaos_pipe": {"n": 6},  # bench/chaos_flows.py: a map step, then an HTTP step
}
HTTP_SECRET = "the-chaos-soak-http-step-secret"
TERMINAL = {"run:completed", "run:failed", "run:cancelled"}
STEER_INTERVAL = 0.2  # seconds between two looks for waiting input steps
FAULT_COUNTERS = ("worker_sigkill", "listener_backend_terminations", "client_socket_drops",
                  "function_sigkill",
                  "postgres_restart")
LISTENER_APP = "pgflow-gateway-listener"  # gateway/relay.py APPLICATION_NAME
# Durable commits (the defaults), enough connections for gateways, workers and the soak.
SERVER_SETTINGS = {"max_connections": "300", "shared_buffers": "128MB"}


@dataclass
class Options:
    seconds: float = 120.0
    rate: float = 4.0  # runs started per second
    workers: int = 3
    gateways: int = 2
    subscribers: int = 30
    followers_per_run: int = 3
    lease: float = 2.0
    fault_min: float = 1.0  # seconds between two faults
    fault_max: float = 4.0
    delay_scale: float = 0.05  # PGFLOW_EXAMPLE_DELAY_SCALE
    drain_timeout: float = 90.0  # seconds to wait for every run to end after the faults
    seed: int | None = None
    quiet: bool = False
    round_robin_faults: bool = False  # each kind in turn (the test), else weighted random
    cancel_share: float = 0.15  # of the runs started, those cancelled at a random moment


def log(options: Options, message: str) -> None:
    if not options.quiet:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- processes ------------------------------------------------------------------------------------


class Child:
    """A ``python -m pgflow ...`` child process, its output in a log file."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str],
                 program: list[str] | None = None) -> None:
        self.name = name
        self.args = args
        self.program = program or [sys.executable, "-m", "pgflow"]
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.killed_by_us = False

    async def start(self) -> None:
        out = self.log_path.open("ab")  # a local file, opened once
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.program, *self.args,
                cwd=REPO_ROOT, env=self.env, stdin=asyncio.subprocess.DEVNULL,
                stdout=out, stderr=out,
            )
        finally:
            out.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def exited(self) -> bool:
        return self.process is not None and self.process.returncode is not None

    def sigkill(self) -> None:
        self.killed_by_us = True
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; always reaps the process."""
        if self.process is None:
            return
        if self.process.returncode is None:
            self.killed_by_us = True
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    def tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


# -- subscribers ----------------------------------------------------------------------------------


@dataclass
class Subscriber:
    """A simple, correct client: resubscribes with the last seq seen after every disconnect."""

    index: int
    urls: list[str]
    received: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    last_seq: dict[str, int] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    errors: list[dict[str, Any]] = field(default_factory=list)
    ws: ClientConnection | None = None
    subscribed_here: set[str] = field(default_factory=set)  # on the current socket
    connects: int = 0
    unavailable: int = 0  # subscriptions refused as `unavailable`, then retried
    disconnects: int = 0
    stopping: bool = False
    background: set[asyncio.Task[None]] = field(default_factory=set)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def follow(self, run_id: str) -> None:
        self.received.setdefault(run_id, [])
        self.last_seq.setdefault(run_id, 0)
        if self.ws is not None:
            self._spawn(self._subscribe(self.ws, run_id))

    async def _subscribe(self, ws: ClientConnection, run_id: str) -> None:
        if ws is not self.ws or run_id in self.subscribed_here or run_id in self.finished:
            return
        self.subscribed_here.add(run_id)
        with contextlib.suppress(ConnectionClosed, OSError):
            await ws.send(orjson.dumps({"type": "subscribe", "run_id": run_id,
                                        "since": self.last_seq[run_id]}).decode())

    def drop(self) -> bool:
        """Aborts the TCP connection (no close handshake): a client whose network vanished."""
        ws = self.ws
        if ws is None or ws.transport is None:
            return False
        ws.transport.abort()
        return True

    async def run(self) -> None:
        attempt = 0
        while not self.stopping:
            url = random.choice(self.urls)
            try:
                ws = await connect(url, proxy=None, open_timeout=10, max_size=2**24,
                                   ping_interval=None)
            except (OSError, InvalidStatus, TimeoutError, ConnectionClosed):
                attempt += 1
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0) * random.uniform(0.5, 1.0))
                continue
            attempt = 0
            self.connects += 1
            self.ws = ws
            self.subscribed_here = set()
            for run_id in list(self.received):
                await self._subscribe(ws, run_id)
            try:
                async for raw in ws:
                    self._on_message(orjson.loads(raw))
            except (ConnectionClosed, OSError):
                pass
            finally:
                self.ws = None
                self.disconnects += 0 if self.stopping else 1
            if not self.stopping:
                await asyncio.sleep(random.uniform(0.01, 0.1))

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "event":
            run_id = message["run_id"]
            if run_id not in self.received:
                self.errors.append({"unexpected_run": run_id})
                return
            self.received[run_id].append(message)
            self.last_seq[run_id] = max(self.last_seq[run_id], message["seq"])
            if message["event"] in TERMINAL:
                self.finished.add(run_id)
        elif kind == "error":
            run_id = message.get("run_id")
            if message.get("code") == "unavailable" and run_id in self.received:
                # The database is away (a restart): the subscription is worth retrying, as
                # client_js does. The socket stays open; only this subscription was refused.
                self.unavailable += 1
                self._spawn(self._retry(self.ws, run_id))
            else:
                self.errors.append(message)

    async def _retry(self, ws: ClientConnection | None, run_id: str) -> None:
        await asyncio.sleep(random.uniform(0.1, 0.3))
        if ws is not None and ws is self.ws:
            self.subscribed_here.discard(run_id)
            await self._subscribe(ws, run_id)

    async def close(self) -> None:
        self.stopping = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()


# -- the soak -------------------------------------------------------------------------------------


class Chaos:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.rng = random.Random(options.seed)
        self.tmp = Path(tempfile.mkdtemp(prefix="pgflow-chaos-"))
        # The embedded server's own user must reach tmp/db, or its data is placed elsewhere.
        self.tmp.chmod(0o755)
        self.cluster = PostgresCluster(self.tmp / "db", settings=SERVER_SETTINGS)
        self.url = ""
        # bench/ importable: the workers load its chaos_flows
        self.env = {**os.environ, "PGFLOW_EXAMPLE_DELAY_SCALE": str(options.delay_scale),
                    "NO_PROXY": "*", "no_proxy": "*",
                    "PYTHONPATH": os.pathsep.join(
                        p for p in (str(REPO_ROOT / "bench"), os.environ.get("PYTHONPATH"))
                        if p)}
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                     "all_proxy", "DATABASE_URL"):
            self.env.pop(name, None)
        self.workers: list[Child] = []
        self.retired_workers: list[Child] = []
        self.gateways: list[Child] = []
        self.gateway_urls: list[str] = []
        self.subscribers: list[Subscriber] = []
        self.runs: dict[str, str] = {}  # run_id -> flow
        self.faults: Counter[str] = Counter()
        self.start_failures: list[str] = []
        self.counts: Counter[str] = Counter()
        self._worker_seq = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self.function: Child | None = None
        self.function_port = free_port(HOST)

    # processes

    async def start_worker(self) -> Child:
        self._worker_seq += 1
        child = Child(f"worker-{self._worker_seq}", [
            "worker", "--database-url", self.url, "--flows", "examples.flows",
            "--flows", "chaos_flows",
            "--lease", str(self.o.lease), "--concurrency", "20", "--poll-interval", "0.5",
            "--shutdown-grace", "2",
            # HTTP steps: called on the function, called back on either gateway
            "--http-secret", HTTP_SECRET,
            "--http-base-url", f"http://{HOST}:{self.function_port}",
            "--callback-url", self.rng.choice(self.gateway_urls),
        ], self.tmp, self.env)
        await child.start()
        self.workers.append(child)
        return child

    async def start_gateway(self, index: int) -> None:
        port = free_port(HOST)
        child = Child(f"gateway-{index}", [
            "serve", "--database-url", self.url, "--flows", "examples.flows",
            "--host", HOST, "--port", str(port), "--http-secret", HTTP_SECRET,
        ], self.tmp, self.env)
        await child.start()
        self.gateways.append(child)
        base = f"http://{HOST}:{port}"
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=2) as http:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/healthz")).status_code == 200:
                        break
                if child.exited or time.monotonic() > deadline:
                    raise RuntimeError(f"{child.name} did not start:\n{child.tail()}")
                await asyncio.sleep(0.1)
        self.gateway_urls.append(base)

    # load

    async def start_runs(self, stop: asyncio.Event) -> None:
        clients = [httpx.AsyncClient(base_url=u, trust_env=False, timeout=10)
                   for u in self.gateway_urls]
        try:
            interval = 1.0 / self.o.rate
            next_at = time.monotonic()
            pending: set[asyncio.Task[None]] = set()
            while not stop.is_set():
                task = asyncio.create_task(self._start_one(self.rng.choice(clients)))
                pending.add(task)
                task.add_done_callback(pending.discard)
                next_at += interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
            if pending:
                await asyncio.gather(*pending)
        finally:
            for client in clients:
                await client.aclose()

    async def _start_one(self, http: httpx.AsyncClient) -> None:
        flow = self.rng.choice(FLOWS)
        deadline = time.monotonic() + 30
        while True:
            try:
                response = await http.post("/rpc/run_flow",
                                           json={"flow_slug": flow, "input": FLOW_INPUT[flow]})
                if response.status_code == 201:
                    break
                self.counts[f"start_http_{response.status_code}"] += 1
                if response.status_code != 503:
                    self.counts["start_failed"] += 1
                    self.start_failures.append(f"{response.status_code} {response.text[:300]}")
                    return
            except httpx.HTTPError:
                self.counts["start_transport_errors"] += 1
            if time.monotonic() > deadline:
                self.counts["start_failed"] += 1
                self.start_failures.append("gave up after 30 s of 503s or transport errors")
                return
            await asyncio.sleep(0.2)
        run_id = response.json()["run_id"]
        self.runs[run_id] = flow
        self.counts["runs_started"] += 1
        for subscriber in self.rng.sample(self.subscribers, self.o.followers_per_run):
            subscriber.follow(run_id)
        if self.rng.random() < self.o.cancel_share:
            # soon: the example flows end within a second at the soak's delay scale
            await asyncio.sleep(self.rng.uniform(0.0, 0.1))
            await self._steer(http, f"/runs/{run_id}/cancel", {"reason": "chaos"}, "cancels")

    # steering: cancels (above) and the answers input steps wait for

    async def _steer(self, http: httpx.AsyncClient, path: str, body: dict[str, Any],
                     kind: str) -> None:
        """POSTs until an answer: 200 applied, 409 already ended or answered (a repeat of a
        request whose first answer was lost, or a run that ended first)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                response = await http.post(path, json=body)
            except httpx.HTTPError:
                self.counts[f"{kind}_transport_errors"] += 1
            else:
                if response.status_code in (200, 409):
                    self.counts[f"{kind}_{response.status_code}"] += 1
                    return
                self.counts[f"{kind}_http_{response.status_code}"] += 1
                if response.status_code != 503:
                    self.counts["steer_failed"] += 1
                    self.start_failures.append(f"{path}: {response.status_code} "
                                               f"{response.text[:300]}")
                    return
            await asyncio.sleep(0.2)
        self.counts["steer_failed"] += 1

    async def answer_inputs(self, stop: asyncio.Event) -> None:
        """A person at the page: each waiting input step gets an answer, approve or reject,
        through a random gateway; until every run ended."""
        clients = [httpx.AsyncClient(base_url=u, trust_env=False, timeout=10)
                   for u in self.gateway_urls]
        answered: set[str] = set()
        try:
            while not stop.is_set():
                try:
                    connection = await asyncpg.connect(self.url, timeout=5)
                    try:
                        waiting = await connection.fetch(
                            "select run_id::text, step_slug from pgflow.step_states "
                            "where status = 'waiting'")
                    finally:
                        await connection.close()
                except (OSError, asyncpg.PostgresError):
                    waiting = []  # the server is restarting: look again
                for run_id, step_slug in waiting:
                    if run_id in answered:
                        continue
                    answered.add(run_id)
                    await self._steer(self.rng.choice(clients),
                                      f"/runs/{run_id}/steps/{step_slug}/input",
                                      {"value": self.rng.random() < 0.8}, "inputs")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), STEER_INTERVAL)
        finally:
            for client in clients:
                await client.aclose()

    # faults

    async def fault_loop(self, stop: asyncio.Event) -> None:
        kinds = ["kill_worker", "kill_listeners", "drop_sockets", "restart_postgres",
                 "kill_function"]
        weights = [3, 3, 3, 1, 2]
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(),
                                       self.rng.uniform(self.o.fault_min, self.o.fault_max))
            if stop.is_set():
                break
            if self.o.round_robin_faults:
                kind = kinds[sum(self.faults[k] for k in FAULT_COUNTERS) % len(kinds)]
            else:
                kind = self.rng.choices(kinds, weights)[0]
            try:
                await getattr(self, kind)()
            except Exception as exc:  # a fault that could not be injected is reported
                self.counts[f"fault_error_{kind}"] += 1
                log(self.o, f"fault {kind} failed: {exc!r}")

    async def kill_worker(self) -> None:
        alive = [w for w in self.workers if not w.exited]
        if not alive:
            return
        victim = self.rng.choice(alive)
        victim.sigkill()
        await victim.process.wait()  # type: ignore[union-attr]
        self.workers.remove(victim)
        self.retired_workers.append(victim)
        await self.start_worker()
        self.faults["worker_sigkill"] += 1
        log(self.o, f"SIGKILLed {victim.name} (pid {victim.pid}), started a replacement")

    async def start_function(self) -> None:
        """The HTTP steps' function (bench/chaos_function.py), on its fixed port."""
        child = Child("function", ["--port", str(self.function_port),
                                   "--seed", str(self.rng.randrange(2**31))],
                      self.tmp, {**self.env, "PGFLOW_HTTP_SECRET": HTTP_SECRET},
                      program=[sys.executable, str(REPO_ROOT / "bench" / "chaos_function.py")])
        await child.start()
        self.function = child
        deadline = time.monotonic() + 30
        while True:  # listening: a connection is refused no more
            try:
                _, writer = await asyncio.open_connection(HOST, self.function_port)
            except OSError:
                if child.exited or time.monotonic() > deadline:
                    raise RuntimeError(f"the function did not start:\n{child.tail()}") from None
                await asyncio.sleep(0.05)
            else:
                writer.close()
                return

    async def kill_function(self) -> None:
        """The function dies mid-call: calls in flight fail, callbacks it owed never come."""
        if self.function is not None:
            self.function.sigkill()
            await self.function.process.wait()  # type: ignore[union-attr]
        await asyncio.sleep(self.rng.uniform(0.1, 0.5))
        await self.start_function()
        self.faults["function_sigkill"] += 1
        log(self.o, "SIGKILLed the HTTP function, started it again")

    async def kill_listeners(self) -> None:
        connection = await asyncpg.connect(self.url, timeout=5)
        try:
            rows = await connection.fetch(
                "select pg_terminate_backend(pid) as ok from pg_stat_activity "
                "where application_name = $1", LISTENER_APP)
        finally:
            await connection.close()
        killed = sum(1 for r in rows if r["ok"])
        self.faults["listener_backend_terminations"] += 1
        self.faults["listener_backends_terminated"] += killed
        log(self.o, f"terminated {killed} gateway LISTEN backend(s)")

    async def restart_postgres(self) -> None:
        await asyncio.to_thread(self.cluster.restart, "fast")
        self.faults["postgres_restart"] += 1
        log(self.o, "restarted PostgreSQL (fast)")

    async def drop_sockets(self) -> None:
        victims = self.rng.sample(self.subscribers, max(1, len(self.subscribers) // 4))
        dropped = sum(1 for s in victims if s.drop())
        self.faults["client_socket_drops"] += 1
        self.faults["client_sockets_dropped"] += dropped
        log(self.o, f"aborted {dropped} client socket(s)")

    # checks

    async def wait_terminal(self) -> int:
        """Waits until no run is started; returns how many still are at the deadline."""
        deadline = time.monotonic() + self.o.drain_timeout
        while True:
            try:
                connection = await asyncpg.connect(self.url, timeout=5)
                try:
                    open_runs = await connection.fetchval(
                        "select count(*) from pgflow.runs where status = 'started'")
                finally:
                    await connection.close()
            except (OSError, asyncpg.PostgresError):
                open_runs = -1
            if open_runs == 0 or time.monotonic() > deadline:
                return int(open_runs)
            await asyncio.sleep(0.25)

    async def wait_subscribers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(set(s.received) <= s.finished for s in self.subscribers):
                return
            await asyncio.sleep(0.1)

    async def check(self) -> dict[str, Any]:
        connection = await asyncpg.connect(self.url, timeout=10)
        try:
            statuses = {str(r["run_id"]): r["status"] for r in await connection.fetch(
                "select run_id, status from pgflow.runs")}
            leased = await connection.fetchval(
                "select count(*) from pgflow.step_states where lease_expires_at is not null")
            logs: dict[str, list[dict[str, Any]]] = {}
            for run_id in self.runs:
                rows = await connection.fetch(
                    "select e from pgflow.get_run_events($1::uuid, 0) e", uuid.UUID(run_id))
                logs[run_id] = [json.loads(r["e"]) if isinstance(r["e"], str) else r["e"]
                                for r in rows]
        finally:
            await connection.close()
        result: Counter[str] = Counter()
        result["runs_in_database"] = len(statuses)
        result["runs_not_terminal"] = sum(1 for s in statuses.values()
                                          if s not in ("completed", "failed", "cancelled"))
        result["runs_unknown_to_database"] = sum(1 for r in self.runs if r not in statuses)
        for run_id, flow in self.runs.items():
            result[f"{flow}_{statuses.get(run_id, 'missing')}"] += 1
        result["tasks_left_leased"] = int(leased)
        for events in logs.values():
            terminal = [e for e in events if e["event"] in TERMINAL]
            seqs = [e["seq"] for e in events]
            if not events or len(terminal) != 1 or events[-1]["event"] not in TERMINAL or \
                    seqs != list(range(1, len(seqs) + 1)):
                result["malformed_logs"] += 1
        for subscriber in self.subscribers:
            result["subscriber_errors"] += len(subscriber.errors)
            for run_id, got in subscriber.received.items():
                want = logs[run_id]
                by_seq = {e["seq"]: e for e in want}
                seen: set[int] = set()
                previous = 0
                for event in got:
                    seq = event["seq"]
                    result["events_received"] += 1
                    if seq in seen:
                        result["events_duplicated"] += 1
                    elif seq < previous:
                        result["events_out_of_order"] += 1
                    if seq not in by_seq:
                        result["events_not_in_log"] += 1
                    elif {k: v for k, v in event.items() if k != "type"} != by_seq[seq]:
                        result["events_mismatched"] += 1
                    seen.add(seq)
                    previous = max(previous, seq)
                result["events_expected"] += len(want)
                result["events_lost"] += sum(1 for e in want if e["seq"] not in seen)
                result["streams_checked"] += 1
        result["gateways_exited"] = sum(1 for g in self.gateways if g.exited)
        result["workers_exited_unexpectedly"] = sum(
            1 for w in self.workers + self.retired_workers if w.exited and not w.killed_by_us)
        result["subscriber_connects"] = sum(s.connects for s in self.subscribers)
        result["subscribe_unavailable_retries"] = sum(s.unavailable for s in self.subscribers)
        errors = [e for s in self.subscribers for e in s.errors]
        checked: dict[str, Any] = dict(result)
        if errors:
            checked["subscriber_error_samples"] = errors[:5]
        return checked

    # the whole thing

    async def run(self) -> dict[str, Any]:
        o = self.o
        started = time.monotonic()
        await asyncio.to_thread(self.cluster.start)
        self.url = self.cluster.uri()
        await migrate_url(self.url)
        log(o, f"PostgreSQL on {self.url}, data in {self.tmp}")
        await self.start_function()
        # the gateways first: the workers' functions call them back
        await asyncio.gather(*(self.start_gateway(i + 1) for i in range(o.gateways)))
        for _ in range(o.workers):
            await self.start_worker()
        log(o, f"gateways {self.gateway_urls}, {o.workers} workers")
        ws_urls = [u.replace("http://", "ws://") + "/realtime" for u in self.gateway_urls]
        self.subscribers = [Subscriber(i, ws_urls) for i in range(o.subscribers)]
        self._tasks = [asyncio.create_task(s.run()) for s in self.subscribers]
        stop = asyncio.Event()
        load = asyncio.create_task(self.start_runs(stop))
        faults = asyncio.create_task(self.fault_loop(stop))
        drained = asyncio.Event()
        answers = asyncio.create_task(self.answer_inputs(drained))
        await asyncio.sleep(o.seconds)
        stop.set()
        await faults
        await load
        log(o, f"faults stopped after {o.seconds:.0f} s; {len(self.runs)} runs started; "
               "waiting for every run to end")
        not_terminal = await self.wait_terminal()
        drained.set()
        await answers
        await self.wait_subscribers(timeout=20.0 if not_terminal == 0 else 1.0)
        for subscriber in self.subscribers:
            await subscriber.close()
        await asyncio.wait(self._tasks, timeout=10)
        result = await self.check()
        result["seconds"] = o.seconds
        result["elapsed"] = round(time.monotonic() - started, 1)
        result.update({f"fault_{k}": v for k, v in self.faults.items()})
        result.update({k: v for k, v in self.counts.items() if k != "runs_started"})
        result["runs_started"] = len(self.runs)
        if self.start_failures:
            result["start_failures"] = self.start_failures[:5]
        result["failed_checks"] = failed_checks(result)
        result["ok"] = not result["failed_checks"]
        return result

    async def close(self, keep_logs: bool = False) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*(c.stop() for c in self.gateways + self.workers
                               + ([self.function] if self.function else [])),
                             return_exceptions=True)
        await asyncio.to_thread(self.cluster.kill)
        if keep_logs:  # the processes' logs (not the database) for a failed soak
            kept = Path(tempfile.mkdtemp(prefix="pgflow-chaos-logs-"))
            for path in self.tmp.glob("*.log"):
                shutil.copy(path, kept / path.name)
            with contextlib.suppress(FileNotFoundError):
                shutil.copy(self.tmp / "db" / "server.log", kept / "postgres.log")
            log(self.o, f"logs of the failed soak kept in {kept}")
            print(f"logs kept in {kept}", file=sys.stderr, flush=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


ZERO_CHECKS = (
    "runs_not_terminal", "runs_unknown_to_database", "tasks_left_leased", "malformed_logs",
    "events_lost", "events_duplicated", "events_out_of_order", "events_mismatched",
    "events_not_in_log", "subscriber_errors", "gateways_exited", "workers_exited_unexpectedly",
    "start_failed", "steer_failed",
)


def failed_checks(result: dict[str, Any]) -> list[str]:
    failed = [name for name in ZERO_CHECKS if result.get(name, 0) != 0]
    if result.get("runs_started", 0) == 0 or result.get("streams_checked", 0) == 0:
        failed.append("nothing_ran")
    return failed


async def run_chaos(options: Options) -> dict[str, Any]:
    chaos = Chaos(options)
    ok = False
    try:
        result = await chaos.run()
        ok = bool(result["ok"])
        return result
    except BaseException:
        for child in chaos.gateways + chaos.workers:
            if child.exited:
                log(options, f"{child.name} log tail:\n{child.tail()}")
        raise
    finally:
        await chaos.close(keep_logs=not ok)


def report(result: dict[str, Any]) -> None:
    lines = [
        f"runs started: {result['runs_started']} (not terminal: {result['runs_not_terminal']})",
        "outcomes: " + ", ".join(f"{k}={result[k]}" for k in sorted(result)
                                 if k.rsplit("_", 1)[0] in FLOWS),
        f"event streams checked: {result['streams_checked']}, events received "
        f"{result.get('events_received', 0)} of {result.get('events_expected', 0)} expected",
        f"lost {result.get('events_lost', 0)}, duplicated {result.get('events_duplicated', 0)}, "
        f"out of order {result.get('events_out_of_order', 0)}, "
        f"mismatched {result.get('events_mismatched', 0)}",
        f"tasks left leased: {result['tasks_left_leased']}",
        "faults: " + ", ".join(f"{k[6:]}={v}" for k, v in sorted(result.items())
                               if k.startswith("fault_") and not k.startswith("fault_error")),
        "checks: " + ("all passed" if result["ok"] else "FAILED " + ", ".join(
            result["failed_checks"])),
    ]
    print("\n".join(lines), flush=True)
    print(json.dumps(result, sort_keys=True), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Options()
    parser.add_argument("--seconds", type=float, default=defaults.seconds)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="runs per second")
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--subscribers", type=int, default=defaults.subscribers)
    parser.add_argument("--lease", type=float, default=defaults.lease)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    options = Options(seconds=args.seconds, rate=args.rate, workers=args.workers,
                      subscribers=args.subscribers, lease=args.lease, seed=args.seed,
                      quiet=args.quiet)
    result = asyncio.run(run_chaos(options))
    report(result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
