"""Helpers of the load-balancer test: child processes (``pgflow serve``, ``pgflow worker``,
Debian's ``haproxy``, the JS client in Node) whose output is read line by line, the shipped
docs/deploy/haproxy.cfg with its addresses filled in, HAProxy's stats, and the flow under test.

The flow ``handoff`` holds twice on a gate file (named in its input) that the test creates, so
the test, not a clock, decides when the run moves on:

    first -> held (gate 1) -> middle_a | middle_b -> held_again (gate 2) -> last (the output)
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pgflow import Flow

REPO = Path(__file__).resolve().parents[2]
HAPROXY_CFG = REPO / "docs" / "deploy" / "haproxy.cfg"
BALANCER_CLIENT = REPO / "client_js" / "test" / "balancer_client.mjs"
HAPROXY = "/usr/sbin/haproxy"
WAIT = 15.0  # seconds any single wait may take
GATE_POLL = 0.02  # seconds between looks for a gate file (the handler's own wait, not a test's)

# -- the flow ------------------------------------------------------------------------------------

handoff = Flow("handoff", max_attempts=1, timeout=60)


async def _gate(input: dict[str, Any], name: str) -> None:
    path = Path(input["run"]["gates"]) / name
    # Another process (the test) creates the file: nothing here to wait on but the file itself.
    while not path.exists():  # noqa: ASYNC110
        await asyncio.sleep(GATE_POLL)


@handoff.step()
async def first(input: dict[str, Any]) -> dict[str, Any]:
    return {"n": input["run"]["n"]}


@handoff.step(depends_on=[first])
async def held(input: dict[str, Any]) -> dict[str, Any]:
    await _gate(input, "1")
    return {"n": input["first"]["n"] + 1}


@handoff.step(depends_on=[held])
async def middle_a(input: dict[str, Any]) -> dict[str, Any]:
    return {"a": input["held"]["n"] * 2}


@handoff.step(depends_on=[held])
async def middle_b(input: dict[str, Any]) -> dict[str, Any]:
    return {"b": input["held"]["n"] * 3}


@handoff.step(depends_on=[middle_a, middle_b])
async def held_again(input: dict[str, Any]) -> dict[str, Any]:
    await _gate(input, "2")
    return {"sum": input["middle_a"]["a"] + input["middle_b"]["b"]}


@handoff.step(depends_on=[held_again], output=True)
async def last(input: dict[str, Any]) -> dict[str, Any]:
    return {"total": input["held_again"]["sum"]}


def handoff_output(n: int) -> dict[str, Any]:
    return {"total": (n + 1) * 2 + (n + 1) * 3}


# -- child processes -----------------------------------------------------------------------------


@dataclass
class Child:
    """A child process whose stdout and stderr are collected line by line as it writes them."""

    name: str
    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, name: str, *args: str, env: dict[str, str] | None = None) -> Child:
        process = await asyncio.create_subprocess_exec(
            *args, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        child = cls(name, process)
        child._reader = asyncio.create_task(child._read())
        return child

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
            self._changed.set()
        self._changed.set()

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def output(self) -> str:
        return "\n".join(self.lines[-60:])

    async def wait_for(self, predicate: Callable[[list[str]], Any], what: str,
                       timeout: float = WAIT) -> Any:
        """The first truthy ``predicate(lines)``, re-checked on each new line or exit."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._changed.clear()
                    found = predicate(self.lines)
                    if found:
                        return found
                    if self._reader is not None and self._reader.done():
                        raise AssertionError(
                            f"{self.name} ended ({self.process.returncode}) before {what}:\n"
                            f"{self.output()}")
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"{self.name}: no {what} within {timeout}s:\n"
                                 f"{self.output()}") from None

    def send(self, sig: signal.Signals) -> None:
        if self.alive:
            self.process.send_signal(sig)

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> None:
        """``sig``, then SIGKILL after ``timeout``; always reaps the process and its reader."""
        if self.alive:
            self.process.send_signal(sig)
            self.process.send_signal(signal.SIGCONT)  # a frozen process takes it only then
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                self.process.kill()
        await self.process.wait()
        if self._reader is not None:
            await self._reader


URL_LINE = re.compile(r"pgflow gateway listening on (http://127\.0\.0\.1:(\d+))")


async def start_gateway(name: str, database_url: str, public_origin: str) -> Child:
    """``pgflow serve`` on a free port of 127.0.0.1 (``gateway_url`` waits for it to listen)."""
    return await Child.start(
        name, sys.executable, "-m", "pgflow", "--log-level", "warning", "serve",
        "--database-url", database_url, "--host", "127.0.0.1", "--port", "0",
        "--public-origin", public_origin,
    )


async def gateway_url(gateway: Child) -> str:
    def url(lines: list[str]) -> str | None:
        return next((m[1] for m in map(URL_LINE.search, lines) if m), None)

    found: str = await gateway.wait_for(url, "'listening on' line", timeout=30)
    return found


async def start_worker(database_url: str, flows: str) -> Child:
    return await Child.start(
        "worker", sys.executable, "-m", "pgflow", "--log-level", "warning", "worker",
        "--database-url", database_url, "--flows", flows, "--poll-interval", "0.2",
        "--shutdown-grace", "1",
    )


def node_binary() -> str:
    node = shutil.which("node")
    assert node is not None, "the JS client test needs Node 20+ on PATH (scripts/install)"
    return node


async def start_node_client(url: str, flow: str, input: Any, timeout_ms: int) -> Child:
    return await Child.start(
        "node client", node_binary(), "--experimental-websocket", str(BALANCER_CLIENT),
        url, flow, json.dumps(input), str(timeout_ms),
    )


def records(lines: list[str]) -> list[dict[str, Any]]:
    """The JSON lines of balancer_client.mjs (anything else, e.g. a warning, is skipped)."""
    out = []
    for line in lines:
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


# -- HAProxy -------------------------------------------------------------------------------------


def haproxy_config(template: str, bind: str, stats_bind: str,
                   servers: list[tuple[str, str]]) -> str:
    """The shipped config with its listening addresses and its servers replaced.

    Only addresses change: every timeout, check and balancing line is the shipped one. Each
    ``server`` line of the template is replaced by ``servers`` (name, host:port), written once
    where the first one was.
    """

    def sub(pattern: str, replacement: str, text: str) -> str:
        new, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        assert count == 1, f"docs/deploy/haproxy.cfg: expected one line matching {pattern!r}"
        return new

    text = sub(r"^(frontend pgflow\n(?:.*\n)*?\s+bind )\S+", rf"\g<1>{bind}", template)
    text = sub(r"^(listen stats\n(?:.*\n)*?\s+bind )\S+", rf"\g<1>{stats_bind}", text)
    server_lines = re.findall(r"^(\s+)server \S+ \S+(.*)$", text, flags=re.MULTILINE)
    assert server_lines, "docs/deploy/haproxy.cfg: no server line"
    indent, rest = server_lines[0]
    text = re.sub(r"^\s+server .*\n", "", text, flags=re.MULTILINE)
    servers_text = "".join(f"{indent}server {name} {address}{rest}\n" for name, address in servers)
    return sub(r"^(\s+default-server .*\n)", rf"\g<1>{servers_text}", text)


def haproxy_binary() -> str:
    assert Path(HAPROXY).exists(), f"{HAPROXY} is missing: install Debian's haproxy " \
        "(scripts/install)"
    return HAPROXY


async def start_haproxy(config: Path) -> Child:
    haproxy = haproxy_binary()
    checked = await asyncio.create_subprocess_exec(
        haproxy, "-c", "-f", str(config), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await checked.communicate()
    assert checked.returncode == 0, f"haproxy -c refused the config:\n{out.decode()}"
    # -db: stay in the foreground, not daemonized; the test stops it by its pid.
    return await Child.start("haproxy", haproxy, "-db", "-f", str(config))


async def haproxy_servers(http: httpx.AsyncClient, stats_url: str) -> dict[str, dict[str, str]]:
    """The backend's servers in HAProxy's CSV stats: name -> row (status, scur, stot, ...)."""
    text = (await http.get(stats_url + ";csv")).text.lstrip("# ")
    return {row["svname"]: row for row in csv.DictReader(io.StringIO(text))
            if row["pxname"] == "pgflow_gateways" and row["svname"] not in
            ("FRONTEND", "BACKEND")}


async def gateway_metric(http: httpx.AsyncClient, url: str, name: str) -> float:
    for line in (await http.get(url + "/metrics")).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{url}: no metric {name}")
