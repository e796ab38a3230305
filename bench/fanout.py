"""Fan-out benchmark: one run, many sockets: deliveries/s, commit -> last-subscriber latency,
and gateway memory per idle socket.

    python bench/fanout.py [--quick] [--sockets 10000] [--events 200] [--paced 30]
                           [--repeat N] [--deflate] [--idle] [-- extra `pgflow serve` options]

(Moved from tests/perf/bench_fanout.py, written by the gateway developer.)

Starts a private PostgreSQL (or uses $DATABASE_URL), a gateway process (`pgflow serve`), and a
client process holding the sockets with a minimal websocket reader (frame headers plus the
event's `seq`, so the client costs as little CPU as possible). Every socket follows the same
run. Phases, per repeat (each repeat: fresh server, gateway and sockets):

1. memory: gateway RSS before the sockets and once every socket is subscribed and its replay
   sent: KiB per idle subscribed socket (`--idle`: sockets that never subscribe).
2. throughput: the driver completes `--events` steps, one transaction each, as fast as the
   database goes (plus the root, one transaction of `events + 1` events, by reference).
   Delivery rate = frames received by the clients / (first to last event frame).
   Latency here is queueing under saturation, reported as `saturated_latency_ms`.
3. latency: `--paced` more steps, one transaction each, `--pace` seconds apart; for each event,
   commit (the driver's COMMIT acknowledged, time.time()) -> the last of the N sockets
   received it (client's time.time() at data_received, same machine clock). p50/p99/max over
   the paced events.

`--deflate`: clients offer `permessage-deflate` in the handshake (as browsers do); the JSON line
reports how many sockets negotiated it, and the reader inflates the compressed frames.

Prints progress to stderr and one JSON line to stdout. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, summary

from pgflow.db.local_server import PostgresCluster
from pgflow.db.migrate import migrate_url
from pgflow.db.store import Completion, Store

REPO = Path(__file__).resolve().parents[1]

SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
            "max_connections": "200"}


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


class Reader(asyncio.Protocol):
    """A websocket client that counts the text frames it receives, noting each event's seq."""

    def __init__(self, host: str, port: int, subscribe: bytes, stats: dict[str, Any],
                 deflate: bool) -> None:
        self.host, self.port, self.subscribe, self.stats = host, port, subscribe, stats
        self.deflate = deflate
        self.inflater: Any = None
        self.buffer = b""
        self.open = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        extension = ("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                     if self.deflate else "")
        transport.write(
            f"GET /realtime HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n{extension}"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        stats = self.stats
        if not self.open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            assert buffer.startswith(b"HTTP/1.1 101"), buffer[:80]
            if b"permessage-deflate" in buffer[:end].lower():
                stats["deflate_negotiated"] += 1
                self.inflater = zlib.decompressobj(-15)
            self.open = True
            stats["open"] += 1
            buffer = buffer[end + 4:]
            if self.subscribe:
                assert self.transport is not None
                self.transport.write(self.subscribe)
        now = None
        received = stats["received"]
        position, size = 0, len(buffer)
        while size - position >= 2:
            length = buffer[position + 1] & 0x7F
            header = 2
            if length == 126:
                if size - position < 4:
                    break
                length = int.from_bytes(buffer[position + 2:position + 4], "big")
                header = 4
            elif length == 127:
                if size - position < 10:
                    break
                length = int.from_bytes(buffer[position + 2:position + 10], "big")
                header = 10
            if size - position < header + length:
                break
            first = buffer[position]
            if first & 0x0F == 9:  # ping: answer, as any client must (the gateway drops mutes)
                assert self.transport is not None
                assert length < 126  # control frames are at most 125 bytes
                self.transport.write(bytes([0x8A, 0x80 | length]) + b"\x00\x00\x00\x00"
                                     + buffer[position + header:position + header + length])
            elif first & 0x0F == 1:
                start, end = position + header, position + header + length
                if first & 0x40 and self.inflater is not None:  # RSV1: compressed
                    payload = self.inflater.decompress(buffer[start:end] + b"\x00\x00\xff\xff")
                    start, end = 0, len(payload)
                else:
                    payload = buffer
                if payload.startswith(b'{"type":"subsc', start):
                    stats["subscribed"] += 1
                elif payload.startswith(b'{"type":"event"', start):
                    stats["events"] += 1
                    if now is None:
                        now = time.time()
                        if stats["first"] is None:
                            stats["first"] = now
                        stats["last"] = now
                    i = payload.find(b'"seq":', start, end) + 6
                    while payload[i] == 32:
                        i += 1
                    j = i
                    while 48 <= payload[j] <= 57:
                        j += 1
                    seq = int(payload[i:j])
                    entry = received.get(seq)
                    if entry is None:
                        received[seq] = [1, now]
                    else:
                        entry[0] += 1
                        entry[1] = now
            position += header + length
        self.buffer = buffer[position:]


def masked_text(text: str) -> bytes:
    payload = text.encode()
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + b"\x00\x00\x00\x00" + payload


def client_process(host: str, port: int, sockets: int, run_id: str | None, deflate: bool,
                   freeze: bool, conn: Any) -> None:
    async def main() -> None:
        stats: dict[str, Any] = {"open": 0, "subscribed": 0, "events": 0, "first": None,
                                 "last": None, "received": {}, "deflate_negotiated": 0}
        subscribe = masked_text(orjson.dumps({"type": "subscribe", "run_id": run_id}).decode()) \
            if run_id else b""
        loop = asyncio.get_running_loop()
        transports = []
        # In batches, each subscribed before the next: a steady state, not a reconnect storm.
        for start in range(0, sockets, 200):
            batch = await asyncio.gather(*(
                loop.create_connection(lambda: Reader(host, port, subscribe, stats, deflate),
                                       host, port)
                for _ in range(start, min(sockets, start + 200))))
            transports.extend(t for t, _ in batch)
            target = len(transports)
            while stats["open"] < target or (run_id and stats["subscribed"] < target):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        if freeze:  # the client is the instrument: keep its GC pauses out of the timings
            gc.freeze()
        conn.send(("open", stats["open"]))
        while True:
            if conn.poll():
                command = conn.recv()
                if command == "reset":
                    stats.update(events=0, first=None, last=None, received={})
                elif command == "report":
                    conn.send(("report", {k: v for k, v in stats.items() if k != "received"}))
                elif command == "received":
                    conn.send(("received", {k: tuple(v) for k, v in stats["received"].items()}))
                elif command == "cpu":
                    conn.send(("cpu", time.process_time()))
                elif command == "stop":
                    break
            await asyncio.sleep(0.02)
        for transport in transports:
            transport.close()

    asyncio.run(main())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def distribution(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"n": len(values), "p50": round(statistics.median(values), 1),
            "p99": round(percentile(values, 0.99), 1), "max": round(max(values), 1)}


async def ask(parent: Any, command: str) -> Any:
    parent.send(command)
    return (await asyncio.to_thread(parent.recv))[1]


async def wait_delivered(parent: Any, expected: int, timeout: float) -> dict[str, Any]:
    deadline = time.perf_counter() + timeout
    stats = await ask(parent, "report")
    while stats["events"] < expected and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
        stats = await ask(parent, "report")
    return stats


async def bench_once(url: str, args: argparse.Namespace) -> dict[str, Any]:
    await migrate_url(url)
    store = await Store.open(url, max_size=4)
    width = args.events + args.paced
    slug = f"bench_{uuid.uuid4().hex[:8]}"
    await store.define_flow({"slug": slug, "output_step": "root", "steps": [
        {"slug": "root"}, *({"slug": f"s{i}", "depends_on": ["root"]} for i in range(width))]})
    gateway = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pgflow", "--log-level", "warning", "serve", "--database-url", url,
        "--port", "0", "--max-sockets", str(args.sockets + 100), *args.gateway_args,
        stdout=asyncio.subprocess.PIPE, cwd=REPO)
    assert gateway.stdout is not None
    result: dict[str, Any] = {}
    process = None
    try:
        line = (await gateway.stdout.readline()).decode()
        address = line.rsplit("//", 1)[1].strip()
        host, port = address.split(":")
        run_id = uuid.UUID(str(await store.run_flow(slug, None)))
        base_rss = rss_kib(gateway.pid)
        parent, child = multiprocessing.Pipe()
        process = multiprocessing.Process(
            target=client_process,
            args=(host, int(port), args.sockets, None if args.idle else str(run_id),
                  args.deflate, not args.client_gc, child))
        process.start()
        started = time.perf_counter()
        opened = (await asyncio.to_thread(parent.recv))[1]
        # Wait for the replays (two events each) to go out, then measure idle memory.
        if not args.idle:
            await wait_delivered(parent, 2 * opened, args.timeout)
        await asyncio.sleep(0.5)
        idle_rss = rss_kib(gateway.pid)
        stats = await ask(parent, "report")
        result.update(
            sockets=opened, open_seconds=round(time.perf_counter() - started, 1),
            gateway_rss_kib={"before": base_rss, "idle": idle_rss},
            kib_per_idle_socket=round((idle_rss - base_rss) / opened, 2),
            deflate_offered=args.deflate, deflate_negotiated_sockets=stats["deflate_negotiated"])
        log(f"{opened} sockets open in {result['open_seconds']}s; gateway RSS "
            f"{base_rss} -> {idle_rss} KiB: {result['kib_per_idle_socket']} KiB/socket")
        if args.idle or args.memory_only:
            return result
        parent.send("reset")
        await ask(parent, "report")
        # Throughput: the root (its completion starts every branch: one transaction of
        # width+1 events, by reference), then one branch per transaction, as fast as it goes.
        commits: dict[str, float] = {}
        cpu0 = cpu_seconds(gateway.pid)
        client_cpu0 = await ask(parent, "cpu")
        t0 = time.perf_counter()
        transactions = 0
        tasks = await store.claim_tasks("bench", width + 1, lease_seconds=3600)
        root = [t for t in tasks if t.step_slug == "root"]
        await store.report("bench", [Completion(run_id, "root", root[0].attempt, {"n": "root"})])
        commits["root"] = time.time()
        transactions += 1
        branches = await store.claim_tasks("bench", width, lease_seconds=3600)
        by_slug = {t.step_slug: t for t in branches}
        order = [f"s{i}" for i in range(width)]
        for step in order[:args.events]:
            task = by_slug[step]
            await store.report("bench", [Completion(run_id, step, task.attempt, {"n": step})])
            commits[step] = time.time()
            transactions += 1
        driven = time.perf_counter() - t0
        events = await store.get_run_events(run_id)
        expected_events = len(events) - 2
        stats = await wait_delivered(parent, expected_events * opened, args.timeout)
        cpu = cpu_seconds(gateway.pid) - cpu0
        client_cpu = await ask(parent, "cpu") - client_cpu0
        delivered = stats["events"]
        seconds = stats["last"] - stats["first"] if stats["first"] else 0.0
        rate = delivered / max(seconds, 1e-9)
        received = await ask(parent, "received")
        saturated = []
        for event in events[2:]:
            seq, step = event["seq"], event["step_slug"]
            key = "root" if event["event"] == "step:started" else step
            if seq in received and key in commits:
                saturated.append((received[seq][1] - commits[key]) * 1000)
        result.update(
            throughput={
                "transactions": transactions, "events": expected_events,
                "drive_seconds": round(driven, 2),
                "deliveries": delivered, "expected": expected_events * opened,
                "seconds": round(seconds, 2), "deliveries_per_s": round(rate),
                "gateway_cpu_s": round(cpu, 2),
                "deliveries_per_gateway_cpu_s": round(delivered / max(cpu, 1e-9)),
                "client_cpu_s": round(client_cpu, 2),
                "saturated_latency_ms": distribution(saturated)})
        log(f"drove {transactions} transactions ({expected_events} events) in {driven:.2f}s; "
            f"{delivered} of {expected_events * opened} deliveries in {seconds:.2f}s: "
            f"{rate:,.0f}/s; gateway CPU {cpu:.2f}s, client CPU {client_cpu:.2f}s")
        # Latency: paced commits, one event each, the previous one fully delivered.
        latencies: list[float] = []
        each: list[tuple[int, int, float]] = []  # (seq, sockets that got it, ms)
        complete = 0
        for step in order[args.events:]:
            await asyncio.sleep(args.pace)
            parent.send("reset")
            await ask(parent, "report")  # the reset is done before the commit
            task = by_slug[step]
            await store.report("bench", [Completion(run_id, step, task.attempt, {"n": step})])
            committed = time.time()
            stats = await wait_delivered(parent, opened, min(args.timeout, 5.0))
            received = await ask(parent, "received")
            for seq, (count, last) in sorted(received.items()):
                latencies.append((last - committed) * 1000)
                complete += count == opened
                each.append((seq, count, round((last - committed) * 1000, 1)))
        result["paced_latency_ms"] = {**distribution(latencies), "pace_s": args.pace,
                                      "events_delivered_to_all": complete, "each": each}
        log(f"paced latency (commit -> last of {opened}): {result['paced_latency_ms']}")
        return result
    finally:
        if process is not None:
            if process.is_alive():
                parent.send("stop")
            process.join(10)
            if process.is_alive():
                process.kill()
        gateway.terminate()
        await gateway.wait()
        await store.close()


def once(args: argparse.Namespace) -> dict[str, Any]:
    url = os.environ.get("DATABASE_URL")
    if url:
        return asyncio.run(bench_once(url, args))
    directory = Path(tempfile.mkdtemp(prefix="pgflow-bench-"))
    cluster = PostgresCluster(directory, settings=SETTINGS)
    try:
        return asyncio.run(bench_once(cluster.start(), args))
    finally:
        cluster.kill()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="2,000 sockets, 50 events, 10 paced")
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=200, help="steps completed, one per tx")
    parser.add_argument("--paced", type=int, default=30, help="paced steps for the latency")
    parser.add_argument("--pace", type=float, default=0.3, help="seconds between paced steps")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--deflate", action="store_true", help="clients offer permessage-deflate")
    parser.add_argument("--idle", action="store_true", help="sockets do not subscribe (memory)")
    parser.add_argument("--memory-only", action="store_true",
                        help="stop after the memory phase (bench/memory.py)")
    parser.add_argument("--client-gc", action="store_true",
                        help="leave the client process's GC as is (default: gc.freeze())")
    parser.add_argument("gateway_args", nargs="*", help="extra `pgflow serve` options")
    args = parser.parse_args()
    if args.quick:
        args.sockets, args.events, args.paced, args.timeout = 2000, 50, 10, 30.0
    results = [once(args) for _ in range(args.repeat)]
    out: dict[str, Any] = {
        "benchmark": "fanout" + ("_idle" if args.idle else "")
        + ("_deflate" if args.deflate else ""),
        "sockets": args.sockets, "events": args.events, "paced": args.paced,
        "repeat": args.repeat,
        "kib_per_idle_socket": summary([r["kib_per_idle_socket"] for r in results]),
        "deflate_offered": args.deflate,
        "deflate_negotiated_sockets": [r["deflate_negotiated_sockets"] for r in results],
    }
    if not args.idle and not args.memory_only:
        out["deliveries_per_s"] = summary([r["throughput"]["deliveries_per_s"] for r in results])
        out["deliveries_per_gateway_cpu_s"] = summary(
            [r["throughput"]["deliveries_per_gateway_cpu_s"] for r in results])
        out["paced_latency_p50_ms"] = summary([r["paced_latency_ms"]["p50"] for r in results])
        out["paced_latency_p99_ms"] = summary([r["paced_latency_ms"]["p99"] for r in results])
        out["saturated_latency_p99_ms"] = summary(
            [r["throughput"]["saturated_latency_ms"]["p99"] for r in results])
    out["runs"] = results
    out["machine"] = machine()
    emit(out)


if __name__ == "__main__":
    main()
