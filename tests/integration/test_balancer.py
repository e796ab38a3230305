"""Several ``pgflow serve`` gateways behind a real HAProxy (Debian's, with the shipped
docs/deploy/haproxy.cfg: round robin, health checks on /healthz, no stickiness), and the JS
client in Node following a run through it. The gateway that holds the client's socket is
SIGKILLed mid-run; the client reconnects through HAProxy to another gateway, resumes with
``since`` and sees every event exactly once, in order; HAProxy's checks take the dead gateway
out of rotation.

The run waits on gate files (balancer_harness.handoff), so the order of things is set by the
test: the holder is frozen (SIGSTOP) before gate 1 opens, so the events the run writes then
reach the client only from the log, through another gateway, after the SIGKILL.
"""

from __future__ import annotations

import asyncio
import re
import signal
import uuid
from pathlib import Path
from typing import Any

import httpx

from gateway.config import DEFAULT_SOCKET_PING_INTERVAL
from pgflow.db.local_server import free_port
from pgflow.db.store import Store
from tests.integration.balancer_harness import (
    HAPROXY_CFG,
    Child,
    gateway_metric,
    gateway_url,
    handoff_output,
    haproxy_config,
    haproxy_servers,
    records,
    start_gateway,
    start_haproxy,
    start_node_client,
    start_worker,
)
from tests.integration.gateway_harness import wait_until

GATEWAYS = 3
SCENARIO_TIMEOUT = 60.0  # seconds, the whole test; it takes ~10 s


def test_the_config_template_is_filled_with_addresses_only() -> None:
    shipped = HAPROXY_CFG.read_text()
    filled = haproxy_config(shipped, "127.0.0.1:1", "127.0.0.1:2",
                            [("gw1", "127.0.0.1:11"), ("gw2", "127.0.0.1:12")])
    kept = [line for line in shipped.splitlines() if " server " not in f" {line.strip()} "
            and not line.strip().startswith("bind ")]
    assert [line for line in filled.splitlines() if line in kept] == kept
    assert "    bind 127.0.0.1:1\n" in filled
    assert "    bind 127.0.0.1:2\n" in filled
    assert "    server gw1 127.0.0.1:11\n    server gw2 127.0.0.1:12\n" in filled
    assert "10.0.0.11" not in filled


UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
NGINX_CONF = HAPROXY_CFG.parent / "nginx.conf"


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value).groups()  # type: ignore[union-attr]
    return int(number) * UNITS[unit or "s"]  # both take plain numbers as seconds here


def test_the_shipped_configs_keep_a_quiet_socket_open_past_the_gateways_pings() -> None:
    # Silence allowed by the gateway: a ping after this much, as long again for the answer.
    longest_silence = 2 * DEFAULT_SOCKET_PING_INTERVAL
    haproxy = HAPROXY_CFG.read_text()
    tunnel = re.search(r"^\s+timeout tunnel (\S+)$", haproxy, flags=re.MULTILINE)
    assert tunnel is not None
    assert seconds(tunnel[1]) > longest_silence
    assert re.search(r"^\s+balance roundrobin$", haproxy, flags=re.MULTILINE)
    assert not re.search(r"^\s+(cookie|stick)\b", haproxy, flags=re.MULTILINE)  # no stickiness
    nginx = NGINX_CONF.read_text()
    realtime = re.search(r"location = /realtime \{(.*?)\n        \}", nginx, flags=re.DOTALL)
    assert realtime is not None
    read_timeout = re.search(r"proxy_read_timeout (\S+);", realtime[1])
    assert read_timeout is not None
    assert seconds(read_timeout[1]) > longest_silence
    for line in ("proxy_http_version 1.1;", "proxy_set_header Upgrade $http_upgrade;",
                 "proxy_set_header Connection $connection_upgrade;"):
        assert line in realtime[1]
    assert not re.search(r"^\s+(ip_hash|hash|sticky)\b", nginx, flags=re.MULTILINE)


def events_of(lines: list[str], kind: str, **match: Any) -> list[dict[str, Any]]:
    return [r for r in records(lines) if r["kind"] == kind
            and all(r.get(k) == v for k, v in match.items())]


async def test_the_client_resumes_through_haproxy_when_its_gateway_is_killed_mid_run(
    db_url: str, store: Store, tmp_path: Path,
) -> None:
    lb_port, stats_port = free_port(), free_port()
    lb_url = f"http://127.0.0.1:{lb_port}"
    stats_url = f"http://127.0.0.1:{stats_port}/stats"
    gates = tmp_path / "gates"
    gates.mkdir()
    children: list[Child] = []
    try:
        async with asyncio.timeout(SCENARIO_TIMEOUT), httpx.AsyncClient(
                trust_env=False, timeout=5) as http:
            # -- gateways, a worker, HAProxy in front ----------------------------------------------
            children.append(await start_worker(
                db_url, "tests.integration.balancer_harness:handoff"))
            gateways = [await start_gateway(f"gw{i + 1}", db_url, lb_url)
                        for i in range(GATEWAYS)]
            children.extend(gateways)
            urls = [await gateway_url(gw) for gw in gateways]
            config = tmp_path / "haproxy.cfg"
            servers = [(gw.name, url.removeprefix("http://"))
                       for gw, url in zip(gateways, urls, strict=True)]
            config.write_text(haproxy_config(
                HAPROXY_CFG.read_text(), f"127.0.0.1:{lb_port}", f"127.0.0.1:{stats_port}",
                servers))
            haproxy = await start_haproxy(config)
            children.append(haproxy)

            async def all_checked_up() -> bool:
                try:
                    rows = await haproxy_servers(http, stats_url)
                except httpx.TransportError:  # HAProxy not listening yet
                    return False
                return len(rows) == GATEWAYS and all(
                    row["status"] == "UP" and row["check_status"] == "L7OK"
                    for row in rows.values())

            await wait_until(all_checked_up)

            async def flow_defined() -> bool:  # the worker defines it on start
                return (await http.get(lb_url + "/flows/handoff")).status_code == 200

            await wait_until(flow_defined)

            # -- the client starts the run through HAProxy -----------------------------------------
            node = await start_node_client(lb_url, "handoff", {"n": 4, "gates": str(gates)},
                                           timeout_ms=30_000)
            children.append(node)
            await node.wait_for(lambda lines: events_of(
                lines, "event", step_slug="held", event="step:started"), "held started")
            run_id = events_of(node.lines, "run")[0]["run_id"]
            sockets = [await gateway_metric(http, url, "pgflow_sockets_open") for url in urls]
            assert sorted(sockets) == [0] * (GATEWAYS - 1) + [1], sockets
            holder = gateways[sockets.index(1)]

            # -- freeze the holder, let the run move on, kill the holder ---------------------------
            holder.send(signal.SIGSTOP)
            (gates / "1").touch()

            async def held_again_started() -> bool:
                log = await store.get_run_events(uuid.UUID(run_id))
                return any(e["step_slug"] == "held_again" and e["event"] == "step:started"
                           for e in log)

            await wait_until(held_again_started)
            missed = await store.get_run_events(uuid.UUID(run_id))
            seen_before_kill = max(r["seq"] for r in events_of(node.lines, "frame"))
            assert len(missed) - seen_before_kill >= 4  # held done, middle_a/b, held_again
            holder.send(signal.SIGKILL)
            await holder.process.wait()

            # The client reconnects through HAProxy and gets what it missed from the log.
            await node.wait_for(lambda lines: events_of(
                lines, "frame", socket=2, seq=len(missed)), "the replay of what it missed")
            survivors = [url for gw, url in zip(gateways, urls, strict=True) if gw is not holder]
            resubscribed = [await gateway_metric(http, url, "pgflow_subscriptions")
                            for url in survivors]
            assert sorted(resubscribed) == [0] * (GATEWAYS - 2) + [1], resubscribed

            (gates / "2").touch()
            await node.wait_for(lambda lines: events_of(lines, "result")
                                or events_of(lines, "error"), "the run's end", timeout=20)
            assert await node.process.wait() == 0, node.output()

            # -- what the client saw, against the log ----------------------------------------------
            log = await store.get_run_events(uuid.UUID(run_id))
            assert log[-1]["event"] == "run:completed"
            applied = [{k: v for k, v in r.items() if k != "kind"}
                       for r in events_of(node.lines, "event")]
            assert applied == log  # every event once, in seq order, as the log has it
            assert events_of(node.lines, "result")[0]["output"] == handoff_output(4)
            # On the wire: socket 1 up to the kill, socket 2 from `since` on, nothing twice.
            frames = {n: [r["seq"] for r in events_of(node.lines, "frame", socket=n)]
                      for n in (1, 2)}
            assert frames[1] == list(range(1, seen_before_kill + 1)), frames
            assert [r["since"] for r in events_of(node.lines, "subscribe")] == [
                0, seen_before_kill]
            assert frames[2] == list(range(seen_before_kill + 1, len(log) + 1)), frames
            assert [r["socket"] for r in events_of(node.lines, "open")] == [1, 2]

            # -- HAProxy's checks took the dead gateway out ----------------------------------------
            async def holder_down() -> bool:
                return (await haproxy_servers(http, stats_url))[holder.name]["status"] == "DOWN"

            await wait_until(holder_down)
            before = await haproxy_servers(http, stats_url)
            for _ in range(2 * GATEWAYS):  # a new connection each: each is balanced anew
                async with httpx.AsyncClient(trust_env=False, timeout=5) as fresh:
                    assert (await fresh.get(lb_url + "/healthz")).status_code == 200
            after = await haproxy_servers(http, stats_url)
            assert after[holder.name]["stot"] == before[holder.name]["stot"]
            assert after[holder.name]["check_status"] in ("L4CON", "L4TOUT", "L7TOUT")
            assert all(int(after[gw.name]["stot"]) > int(before[gw.name]["stot"])
                       for gw in gateways if gw is not holder), (before, after)
    finally:
        for gate in ("1", "2"):  # so the worker's held handlers end and it stops at once
            (gates / gate).touch()
        for child in reversed(children):
            await child.stop()
