"""The users of bench/interactive.py: one process running many users on uvloop.

    python bench/interactive_client.py --port P --users N [--flow SLUG] [--run-timeout S]
                                       [--no-deflate]

Started by bench/interactive.py, never by hand. Each user opens its own keep-alive HTTP/1.1
connection and its own websocket to the gateway on 127.0.0.1, then prints `ready` once all are
open. It reads one JSON line `{"start": t, "end": t}` (time.monotonic(), a clock shared by the
processes of the machine) from stdin, and loops: `POST /rpc/run_flow`, subscribe to the run on
its websocket, await `run:completed`, unsubscribe, until `end`. A run that completes within
[start, end] counts; the run in flight at `end` is finished but not counted. Writes one JSON
line to stdout: the latencies (ms) of the counted runs and the errors seen.

The HTTP client is a few lines over asyncio streams, not an HTTP library: with 200 users the
client shares the 2-core machine with the server, and its CPU must stay small.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

import uvloop
from websockets.asyncio.client import ClientConnection, connect

HOST = "127.0.0.1"
CONNECT_TIMEOUT = 20.0  # seconds for all users to open their connections
MAX_RECONNECTS = 20  # per user: beyond that the user stops (the server is gone)
MAX_FRAMES_PER_RUN = 1000  # a diamond run sends ~10 frames; a bound against a runaway stream


class HttpError(Exception):
    """A response other than 201, or a connection that broke mid-request."""


class User:
    """One user: its HTTP connection, its websocket, the runs it timed."""

    def __init__(
        self, port: int, flow: str, run_timeout: float, no_deflate: bool, errors: Counter[str]
    ) -> None:
        self.port = port
        self.no_deflate = no_deflate
        self.flow = flow
        self.run_timeout = run_timeout
        self.errors = errors
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.ws: ClientConnection | None = None
        # (sent, answered, completed) per run, time.monotonic()
        self.done: list[tuple[float, float, float]] = []
        self.count = 0

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        self.ws = await self.connect()

    async def connect(self) -> ClientConnection:
        # No Origin header: a non-browser client passes the gateway's Origin check. Protocol
        # pings off: the socket is busy, and the gateway pings a silent one itself.
        # permessage-deflate as browsers negotiate it, unless --no-deflate.
        return await connect(
            f"ws://{HOST}:{self.port}/realtime", max_size=None, ping_interval=None,
            open_timeout=CONNECT_TIMEOUT, proxy=None,
            compression=None if self.no_deflate else "deflate",
        )

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.ws is not None:
            await self.ws.close()

    async def post(self) -> str:
        body = json.dumps({"flow_slug": self.flow, "input": {"i": self.count}}).encode()
        head = (
            f"POST /rpc/run_flow HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        for _ in range(2):  # once more on a fresh connection if the kept one was closed
            if self.writer is None or self.writer.is_closing():
                self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
            assert self.reader is not None
            try:
                self.writer.write(head + body)
                status, close, answer = await read_response(self.reader)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                self.writer.close()
                self.writer = None
                self.errors[f"http_{type(exc).__name__}"] += 1
                continue
            if close:
                self.writer.close()
                self.writer = None
            if status != 201:
                raise HttpError(f"status {status}: {answer[:200]!r}")
            run_id: str = json.loads(answer)["run_id"]
            return run_id
        raise HttpError("connection lost twice")

    async def run_once(self) -> None:
        assert self.ws is not None
        sent = time.monotonic()
        run_id = await self.post()
        posted = time.monotonic()
        await self.ws.send(json.dumps({"type": "subscribe", "run_id": run_id, "since": 0}))
        for _ in range(MAX_FRAMES_PER_RUN):
            message = json.loads(await self.ws.recv(decode=False))
            if message.get("run_id") != run_id:
                continue  # the previous run's `unsubscribed`
            kind = message.get("type")
            if kind == "error":
                raise HttpError(f"socket error {message.get('code')}")
            if kind == "event" and message["event"] in ("run:completed", "run:failed"):
                if message["event"] == "run:failed":
                    self.errors["run_failed"] += 1
                break
        else:
            raise HttpError("no run:completed within the frame bound")
        self.done.append((sent, posted, time.monotonic()))
        # Not awaiting `unsubscribed`: the next run starts at once, as a page would.
        await self.ws.send(json.dumps({"type": "unsubscribe", "run_id": run_id}))

    async def loop(self, end: float) -> None:
        failures = 0
        while time.monotonic() < end and failures < MAX_RECONNECTS:
            self.count += 1
            try:
                async with asyncio.timeout(self.run_timeout):
                    await self.run_once()
            except TimeoutError:
                self.errors["run_timeout"] += 1
                failures += 1
                await self.reopen_socket()
            except HttpError as exc:
                self.errors[str(exc).split(":")[0]] += 1
                failures += 1
            except Exception as exc:  # a broken socket: count it, reconnect
                self.errors[type(exc).__name__] += 1
                failures += 1
                await self.reopen_socket()

    async def reopen_socket(self) -> None:
        # A run that timed out may still send frames: a fresh socket keeps them out of the next.
        if self.ws is not None:
            await self.ws.close()
        try:
            self.ws = await self.connect()
        except Exception as exc:  # counted; the next run retries
            self.errors[f"reconnect_{type(exc).__name__}"] += 1


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """Status, whether the server closes the connection, and the body (Content-Length only)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, close = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            close = value.strip().lower() == b"close"
        elif name == b"transfer-encoding":
            raise HttpError("chunked answer: not supported by this client")
    return status, close, await reader.readexactly(length)


async def main(args: argparse.Namespace) -> None:
    errors: Counter[str] = Counter()
    users = [
        User(args.port, args.flow, args.run_timeout, args.no_deflate, errors)
        for _ in range(args.users)
    ]
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await asyncio.gather(*(u.open() for u in users))
        print("ready", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        window = json.loads(line)
        start, end = window["start"], window["end"]
        await asyncio.gather(*(u.loop(end) for u in users))
        counted = [times for u in users for times in u.done if start <= times[2] <= end]
        result: dict[str, Any] = {
            "latencies_ms": [round((done - sent) * 1000, 3) for sent, _, done in counted],
            "post_ms": [round((answered - sent) * 1000, 3) for sent, answered, _ in counted],
            "started": sum(u.count for u in users),
            "errors": dict(errors),
        }
        print(json.dumps(result), flush=True)
    finally:
        try:
            async with asyncio.timeout(5):
                await asyncio.gather(*(u.close() for u in users), return_exceptions=True)
        except TimeoutError:
            pass


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--flow", default="bench_diamond")
    parser.add_argument("--run-timeout", type=float, default=30.0)
    parser.add_argument("--no-deflate", action="store_true", help="no permessage-deflate")
    return parser.parse_args()


if __name__ == "__main__":
    uvloop.run(main(parse_args()))
