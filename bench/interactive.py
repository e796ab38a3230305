"""Interactive runs: C users, each triggering a run over HTTP and watching it on its own socket.

    python bench/interactive.py [--users C [C ...]] [--seconds S] [--warmup S]
                                [--mode with-worker|separate|both] [--repeat R]
                                [--client-procs P] [--concurrency N] [--serve-args "..."]
                                [--no-deflate]

Per repeat and mode: a private server (bench/_common.py) and either one
`python -m pgflow serve --with-worker --flows noop_flows` (`with-worker`) or
`python -m pgflow serve --flows noop_flows` plus one `python -m pgflow worker --flows noop_flows`
(`separate`), PYTHONPATH=bench: the no-op diamond a -> b, c -> d. For each level C (default
1 10 50 200) the users are spread over `--client-procs` processes (bench/interactive_client.py,
uvloop); each user has its own keep-alive HTTP/1.1 connection and websocket and loops:
`POST /rpc/run_flow`, subscribe to the run, await `run:completed`, unsubscribe. After
`--warmup` seconds (not counted), a window of `--seconds`:

- runs/s: runs completed in the window / its length;
- latency of a run, POST sent -> `run:completed` received: p50, p99, max (ms);
- server CPU per run (ms): utime + stime used in the window by the gateway process, the separate
  worker (if any), the postmaster and every child of it (backends, autovacuum, walwriter ...)
  read from /proc, divided by the runs completed. A backend that exits within the window is
  missed (the pools keep theirs open, so that is rare);
- the clients' own CPU seconds in the window: they run on the same machine.

The levels of one mode share its server, in order. One JSON line per mode; a table to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import shlex
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
from _common import emit, machine, private_server
from latency import percentile

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
FLOWS = {"noop": "bench_diamond", "stream": "bench_diamond_stream"}  # noop_flows.py
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 60.0  # seconds for the gateway to listen and the clients to connect
READY_TIMEOUT = 30.0  # seconds for the first run to complete (the worker is up)
RUN_TIMEOUT = 30.0  # seconds one run may take before its user counts a timeout
STOP_TIMEOUT = 30.0  # seconds a process gets after SIGTERM before it is killed


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    # after the ")" of comm: state is field 3, utime 14, stime 15 (proc(5))
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


def children_of(ppid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if parent_of(int(entry)) == ppid:
                    pids.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue  # exited while listing
    return pids


async def _postmaster(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        pid: int = await conn.fetchval("select pg_backend_pid()")
        return parent_of(pid)  # while the backend lives: it exits with the connection
    finally:
        await conn.close()


def postmaster_of(url: str) -> int:
    return asyncio.run(_postmaster(url))


def postgres_kind(pid: int) -> str:
    """backend (a client's connection), or the background process's own name (walwriter,
    checkpointer, autovacuum worker, ...): its title, ``postgres: <what>``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            title = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "gone"
    what = title.removeprefix("postgres:").strip()
    if not title.startswith("postgres:"):
        return "postmaster"
    if "(" in what or "idle" in what or "127.0.0.1" in what or "[local]" in what:
        return "backend"
    return what.split(" ")[0] if not what.startswith("autovacuum") else " ".join(what.split()[:2])


def postgres_cpu(postmaster: int) -> dict[int, tuple[str, float]]:
    pids = [postmaster, *children_of(postmaster)]
    return {pid: (postgres_kind(pid), cpu_seconds(pid)) for pid in pids}


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One line of a process's stdout, waiting at most `timeout` (a raw, unbuffered pipe)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no line from {proc.args!r} within {timeout} s")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"{proc.args!r} exited ({proc.poll()}) before its line")
            data += chunk
    return data.decode()


def stop(procs: list[subprocess.Popen[bytes]], grace: float = 0.0) -> None:
    """Waits `grace` seconds for the processes to exit, then SIGTERM, then kill."""
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            break
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_server(
    url: str, mode: str, args: argparse.Namespace, procs: list[subprocess.Popen[bytes]]
) -> tuple[int, subprocess.Popen[bytes], subprocess.Popen[bytes] | None]:
    env = {**os.environ, "PYTHONPATH": str(BENCH_DIR)}
    base = [sys.executable, "-m", "pgflow", "--log-level", "warning"]
    common = ["--database-url", url, "--flows", "noop_flows"]
    concurrency = ["--concurrency", str(args.concurrency)]
    serve = [*base, "serve", *common, "--host", "127.0.0.1", "--port", "0"]
    if mode == "with-worker":
        serve += ["--with-worker", *concurrency]
    serve += shlex.split(args.serve_args)
    gateway = subprocess.Popen(serve, env=env, cwd=REPO, stdout=subprocess.PIPE, bufsize=0)
    procs.append(gateway)
    # "pgflow gateway listening on http://127.0.0.1:PORT"
    port = int(read_line(gateway, START_TIMEOUT).strip().rsplit(":", 1)[1])
    worker = None
    if mode == "separate":
        # after the gateway: its start-up has applied the migrations
        worker = subprocess.Popen(
            [*base, "worker", *common, *concurrency], env=env, cwd=REPO,
            stdout=subprocess.DEVNULL,
        )
        procs.append(worker)
    wait_ready(port)
    return port, gateway, worker


def wait_ready(port: int) -> None:
    """One run completed end to end: the flow is defined and a worker claims its steps."""
    base = f"http://127.0.0.1:{port}"
    body = json.dumps({"flow_slug": FLOWS["noop"], "input": None}).encode()
    deadline = time.monotonic() + READY_TIMEOUT
    run_id = None
    while time.monotonic() < deadline:
        try:
            if run_id is None:
                request = urllib.request.Request(
                    base + "/rpc/run_flow", data=body,
                    headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    run_id = json.loads(response.read())["run_id"]
            with urllib.request.urlopen(f"{base}/runs/{run_id}", timeout=5) as response:
                if json.loads(response.read())["status"] == "completed":
                    return
        except OSError:
            pass  # not_found until the flow is defined; the worker may still be starting
        time.sleep(0.1)
    raise TimeoutError(f"no run of {FLOWS['noop']} completed within {READY_TIMEOUT} s")


def split(users: int, procs: int) -> list[int]:
    shares = [users // procs + (1 if i < users % procs else 0) for i in range(procs)]
    return [s for s in shares if s]


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def measure_level(
    port: int, users: int, server_pids: dict[str, int], postmaster: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    clients: list[subprocess.Popen[bytes]] = []
    try:
        for share in split(users, args.client_procs):
            clients.append(subprocess.Popen(
                [sys.executable, str(BENCH_DIR / "interactive_client.py"), "--port", str(port),
                 "--users", str(share), "--flow", FLOWS[args.flow],
                 "--run-timeout", str(RUN_TIMEOUT),
                 *(["--no-deflate"] if args.no_deflate else [])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, cwd=REPO))
        for client in clients:
            if read_line(client, START_TIMEOUT).strip() != "ready":
                raise RuntimeError("a client did not get ready")
        start = time.monotonic() + args.warmup
        end = start + args.seconds
        window = (json.dumps({"start": start, "end": end}) + "\n").encode()
        for client in clients:
            assert client.stdin is not None
            client.stdin.write(window)
            client.stdin.close()
        sleep_until(start)
        before = {name: cpu_seconds(pid) for name, pid in server_pids.items()}
        pg_before = postgres_cpu(postmaster)
        clients_before = sum(cpu_seconds(c.pid) for c in clients)
        sleep_until(end)
        after = {name: cpu_seconds(pid) for name, pid in server_pids.items()}
        pg_after = postgres_cpu(postmaster)
        clients_after = sum(cpu_seconds(c.pid) for c in clients)
        length = time.monotonic() - start  # the sleep may overshoot by a few ms
        results = [
            json.loads(read_line(c, RUN_TIMEOUT + START_TIMEOUT)) for c in clients
        ]
    finally:
        stop(clients, grace=10.0)  # done clients close their sockets and exit by themselves
    latencies = [ms for r in results for ms in r["latencies_ms"]]
    posts = [ms for r in results for ms in r["post_ms"]]
    errors: dict[str, int] = {}
    for r in results:
        for name, n in r["errors"].items():
            errors[name] = errors.get(name, 0) + n
    runs = len(latencies)
    cpu = {name: after[name] - before[name] for name in server_pids}
    by_kind: dict[str, float] = {}
    for pid, (kind, seconds) in pg_after.items():
        spent = seconds - pg_before.get(pid, (kind, 0.0))[1]
        by_kind[kind] = by_kind.get(kind, 0.0) + spent
    cpu["postgres"] = sum(by_kind.values())
    per_run = {name: round(s * 1000 / runs, 2) if runs else None for name, s in cpu.items()}
    postgres_per_run = {
        kind: round(s * 1000 / runs, 3) if runs else None for kind, s in sorted(by_kind.items())
    }
    total = sum(cpu.values())
    return {
        "users": users,
        "runs": runs,
        "seconds": round(length, 2),
        "runs_per_s": round(runs / args.seconds, 1),
        "p50_ms": round(statistics.median(latencies), 2) if runs else None,
        # of which the POST /rpc/run_flow round trip (group commit's share)
        "post_p50_ms": round(statistics.median(posts), 2) if posts else None,
        "p99_ms": round(percentile(latencies, 0.99), 2) if runs else None,
        "max_ms": round(max(latencies), 2) if runs else None,
        "server_cpu_ms_per_run": round(total * 1000 / runs, 2) if runs else None,
        "server_cpu_s": round(total, 2),
        "server_cpu_ms_per_run_by_process": per_run,
        "postgres_cpu_ms_per_run_by_kind": postgres_per_run,
        "client_cpu_s": round(clients_after - clients_before, 2),
        "errors": errors,
    }


def measure_mode(mode: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    procs: list[subprocess.Popen[bytes]] = []
    with private_server() as url:
        try:
            port, gateway, worker = start_server(url, mode, args, procs)
            server_pids = {"gateway": gateway.pid}
            if worker is not None:
                server_pids["worker"] = worker.pid
            postmaster = postmaster_of(url)
            levels = []
            for users in args.users:
                level = measure_level(port, users, server_pids, postmaster, args)
                levels.append(level)
                for proc in procs:
                    if proc.poll() is not None:
                        raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
            return levels
        finally:
            stop(procs)


def spread(values: list[float | None]) -> dict[str, float] | None:
    known = [v for v in values if v is not None]
    if not known:
        return None
    return {"min": round(min(known), 2), "median": round(statistics.median(known), 2),
            "max": round(max(known), 2)}


def table(mode: str, rows: list[list[dict[str, Any]]]) -> str:
    lines = [f"{mode}: users  runs/s   p50 ms (POST)   p99 ms   max ms  srv CPU ms/run"
             "  (gw / wk / pg)       client CPU s  errors"]
    for repeat in rows:
        for r in repeat:
            by = r["server_cpu_ms_per_run_by_process"]
            parts = " / ".join(str(by.get(k, "-")) for k in ("gateway", "worker", "postgres"))
            lines.append(
                f"{'':>{len(mode)}}  {r['users']:>5} {r['runs_per_s']:>7} {r['p50_ms']!s:>8}"
                f" ({r['post_p50_ms']!s:>5})"
                f" {r['p99_ms']!s:>8} {r['max_ms']!s:>8} {r['server_cpu_ms_per_run']!s:>10}"
                f"  ({parts}){'':<4} {r['client_cpu_s']:>8}  {r['errors'] or ''}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, nargs="+", default=[1, 10, 50, 200])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured, per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="not counted, per level")
    parser.add_argument("--mode", choices=["with-worker", "separate", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--flow", choices=sorted(FLOWS), default="noop",
                        help="noop: a no-op diamond; stream: its b streams 100 chunks")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=200, help="worker --concurrency")
    parser.add_argument("--serve-args", default="", help="more options for `pgflow serve`")
    parser.add_argument("--no-deflate", action="store_true",
                        help="clients do not negotiate permessage-deflate (browsers do)")
    args = parser.parse_args()
    modes = ["with-worker", "separate"] if args.mode == "both" else [args.mode]
    measured: dict[str, list[list[dict[str, Any]]]] = {m: [] for m in modes}
    for _ in range(args.repeat):
        for mode in modes:  # alternated, so drift on a shared machine hits both alike
            measured[mode].append(measure_mode(mode, args))
    for mode in modes:
        repeats = measured[mode]
        levels = []
        for i, users in enumerate(args.users):
            each = [r[i] for r in repeats]
            levels.append({
                "users": users,
                **{key: spread([e[key] for e in each]) for key in (
                    "runs_per_s", "p50_ms", "p99_ms", "max_ms", "server_cpu_ms_per_run",
                    "client_cpu_s")},
                "each": each,
            })
        emit({
            "benchmark": "interactive",
            "mode": mode,
            "flow": FLOWS[args.flow],
            "seconds": args.seconds,
            "warmup": args.warmup,
            "repeat": args.repeat,
            "client_procs": args.client_procs,
            "concurrency": args.concurrency,
            "serve_args": args.serve_args,
            "deflate": not args.no_deflate,
            "levels": levels,
            "cpu_note": "server CPU misses PostgreSQL children that exited within the window",
            "machine": machine(),
        })
        print(table(mode, repeats), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
