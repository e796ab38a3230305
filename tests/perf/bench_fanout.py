"""Fan-out benchmark: one run, many sockets, deliveries per second and memory per socket.

    .venv/bin/python tests/perf/bench_fanout.py --sockets 10000 --events 200

Starts a private PostgreSQL (or uses $DATABASE_URL), a gateway process (`pgflow serve`), and a
client process holding the sockets with a minimal websocket reader (frame headers only, so the
client costs as little CPU as possible). Every socket follows the same run; the driver completes
its steps one transaction at a time. Reports the gateway's RSS per idle socket and the delivery
rate measured by the clients (frames received / time from the first to the last event frame).
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from gateway.database import PostgresCluster
from gateway.migrate import migrate_url
from gateway.store import Completion, Store

REPO = Path(__file__).resolve().parents[2]

SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
            "max_connections": "200"}


class Reader(asyncio.Protocol):
    """A websocket client that only counts the text frames it receives."""

    def __init__(self, host: str, port: int, subscribe: bytes, stats: dict[str, Any]) -> None:
        self.host, self.port, self.subscribe, self.stats = host, port, subscribe, stats
        self.buffer = b""
        self.open = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET /realtime HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        if not self.open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            assert buffer.startswith(b"HTTP/1.1 101"), buffer[:80]
            self.open = True
            self.stats["open"] += 1
            buffer = buffer[end + 4:]
            if self.subscribe:
                assert self.transport is not None
                self.transport.write(self.subscribe)
        stats = self.stats
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
            if buffer[position] & 0x0F == 1:
                payload = buffer[position + header:position + header + 16]
                if payload.startswith(b'{"type":"subsc'):
                    stats["subscribed"] += 1
                elif payload.startswith(b'{"type":"event"'):
                    stats["events"] += 1
                    now = time.perf_counter()
                    if stats["first"] is None:
                        stats["first"] = now
                    stats["last"] = now
            position += header + length
        self.buffer = buffer[position:]


def masked_text(text: str) -> bytes:
    payload = text.encode()
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + b"\x00\x00\x00\x00" + payload


def client_process(host: str, port: int, sockets: int, run_id: str | None, conn: Any) -> None:
    async def main() -> None:
        stats: dict[str, Any] = {"open": 0, "subscribed": 0, "events": 0, "first": None,
                                 "last": None}
        subscribe = masked_text(orjson.dumps({"type": "subscribe", "run_id": run_id}).decode()) \
            if run_id else b""
        loop = asyncio.get_running_loop()
        transports = []
        # In batches, each subscribed before the next: a steady state, not a reconnect storm.
        for start in range(0, sockets, 200):
            batch = await asyncio.gather(*(
                loop.create_connection(lambda: Reader(host, port, subscribe, stats), host, port)
                for _ in range(start, min(sockets, start + 200))))
            transports.extend(t for t, _ in batch)
            target = len(transports)
            while stats["open"] < target or (run_id and stats["subscribed"] < target):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        conn.send(("open", stats["open"]))
        while True:
            if conn.poll():
                command = conn.recv()
                if command == "reset":
                    stats.update(events=0, first=None, last=None)
                elif command == "report":
                    conn.send(("report", dict(stats)))
                elif command == "stop":
                    break
            await asyncio.sleep(0.05)
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


async def bench(url: str, args: argparse.Namespace) -> None:
    await migrate_url(url)
    store = await Store.open(url, max_size=4)
    width = args.events
    await store.define_flow({"slug": "bench", "output_step": "root", "steps": [
        {"slug": "root"}, *({"slug": f"s{i}", "depends_on": ["root"]} for i in range(width))]})
    gateway = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--log-level", "warning", "serve", "--database-url", url,
        "--port", "0", "--max-sockets", str(args.sockets + 100), *args.gateway_args,
        stdout=asyncio.subprocess.PIPE, cwd=REPO)
    assert gateway.stdout is not None
    line = (await gateway.stdout.readline()).decode()
    address = line.rsplit("//", 1)[1].strip()
    host, port = address.split(":")
    try:
        run_id = uuid.UUID(str(await store.run_flow("bench", None)))
        base_rss = rss_kib(gateway.pid)
        parent, child = multiprocessing.Pipe()
        process = multiprocessing.Process(
            target=client_process,
            args=(host, int(port), args.sockets, None if args.idle else str(run_id), child))
        process.start()
        started = time.perf_counter()
        _, opened = await asyncio.to_thread(parent.recv)
        # Wait for the replays (two events each) to go out, then measure idle memory.
        while not args.idle:
            parent.send("report")
            _, replayed = await asyncio.to_thread(parent.recv)
            if replayed["events"] >= 2 * opened:
                break
            await asyncio.sleep(0.1)
        idle_rss = rss_kib(gateway.pid)
        print(f"{opened} sockets open in {time.perf_counter() - started:.1f}s; gateway RSS "
              f"{base_rss} -> {idle_rss} KiB: {(idle_rss - base_rss) / opened:.1f} KiB/socket")
        if args.idle:
            parent.send("stop")
            process.join(10)
            return
        parent.send("reset")
        parent.send("report")
        _, before = await asyncio.to_thread(parent.recv)
        # Drive: the root (its completion starts every branch: one big transaction, by
        # reference), then one branch per transaction, as fast as the database goes.
        cpu0 = cpu_seconds(gateway.pid)
        t0 = time.perf_counter()
        transactions = 0
        while True:
            tasks = await store.claim_tasks("bench", 1 if transactions else width)
            if not tasks:
                break
            for task in tasks:
                await store.report("bench", [Completion(task.run_id, task.step_slug,
                                                        task.attempt, {"n": task.step_slug})])
                transactions += 1
        driven = time.perf_counter() - t0
        events = len(await store.get_run_events(run_id)) - 2
        expected = before["events"] + events * opened
        deadline = time.perf_counter() + args.timeout
        stats = before
        while time.perf_counter() < deadline:
            parent.send("report")
            _, stats = await asyncio.to_thread(parent.recv)
            if stats["events"] >= expected:
                break
            await asyncio.sleep(0.2)
        cpu = cpu_seconds(gateway.pid) - cpu0
        delivered = stats["events"] - before["events"]
        seconds = stats["last"] - max(stats["first"], 0) if stats["first"] else 0
        print(f"drove {transactions} transactions ({events} events) in {driven:.2f}s; "
              f"{delivered} of {expected - before['events']} deliveries")
        print(f"delivery rate: {delivered / max(seconds, 1e-9):,.0f}/s "
              f"(client side, first to last event frame: {seconds:.2f}s); gateway CPU "
              f"{cpu:.2f}s: {delivered / max(cpu, 1e-9):,.0f} deliveries per CPU-second")
        parent.send("stop")
        process.join(10)
    finally:
        gateway.terminate()
        await gateway.wait()
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=200, help="steps completed, one per tx")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--idle", action="store_true", help="sockets do not subscribe")
    parser.add_argument("gateway_args", nargs="*", help="extra `pgflow serve` options")
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL")
    if url:
        asyncio.run(bench(url, args))
        return
    directory = Path(tempfile.mkdtemp(prefix="pgflow-bench-"))
    cluster = PostgresCluster(directory, settings=SETTINGS)
    try:
        asyncio.run(bench(cluster.start(), args))
    finally:
        cluster.kill()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
