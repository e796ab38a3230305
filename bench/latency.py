"""Trigger latency: the JS client's `triggerFlow("bench_diamond", ...)` -> resolved, end to end.

    python bench/latency.py [--quick] [--triggers N] [--repeat R]

Per repeat: a private server (bench/_common.py), `python -m pgflow serve --with-worker
--flows noop_flows` (PYTHONPATH=bench: the no-op diamond a -> b, c -> d), and Node
(`/usr/bin/node --experimental-websocket`) importing client_js/client.js, making N sequential
triggers (light load: one at a time) after 5 warm-ups. Each trigger is POST /rpc/run_flow, then
a subscribe on the client's websocket, until `run:completed`. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

from _common import emit, machine, private_server, summary

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
NODE = os.environ.get("NODE", "/usr/bin/node")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def once(triggers: int, warmup: int, concurrency: int) -> list[float]:
    with private_server() as url:
        env = {**os.environ, "PYTHONPATH": str(BENCH_DIR)}
        gateway = subprocess.Popen(
            [sys.executable, "-m", "pgflow", "--log-level", "warning", "serve",
             "--database-url", url, "--host", "127.0.0.1", "--port", "0", "--with-worker",
             "--flows", "noop_flows", "--concurrency", str(concurrency)],
            env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
        try:
            assert gateway.stdout is not None
            line = gateway.stdout.readline()
            base = "http://" + line.rsplit("//", 1)[1].strip()
            out = subprocess.run(
                [NODE, "--experimental-websocket", "--no-warnings", str(BENCH_DIR / "latency.mjs"),
                 base, (REPO / "client_js" / "client.js").as_uri(), str(triggers), str(warmup),
                 "bench_diamond"],
                check=True, capture_output=True, text=True, timeout=600)
            return json.loads(out.stdout.strip().splitlines()[-1])["times"]
        finally:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(30)
            except subprocess.TimeoutExpired:
                gateway.kill()
                gateway.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--triggers", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=10, help="worker --concurrency")
    args = parser.parse_args()
    triggers = 30 if args.quick else args.triggers
    repeat = 1 if args.quick else args.repeat
    runs = []
    for _ in range(repeat):
        times = once(triggers, args.warmup, args.concurrency)
        runs.append({"p50": round(statistics.median(times), 2),
                     "p99": round(percentile(times, 0.99), 2),
                     "max": round(max(times), 2), "min": round(min(times), 2), "n": len(times)})
    emit({
        "benchmark": "trigger_latency",
        "flow": "bench_diamond",
        "triggers": triggers,
        "repeat": repeat,
        "p50_ms": summary([r["p50"] for r in runs]),
        "p99_ms": summary([r["p99"] for r in runs]),
        "max_ms": summary([r["max"] for r in runs]),
        "runs": runs,
        "machine": machine(),
    })


if __name__ == "__main__":
    main()
