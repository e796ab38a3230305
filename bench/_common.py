"""Shared pieces of the benchmarks: a private server, timing, results as JSON lines."""

from __future__ import annotations

import contextlib
import json
import platform
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgflow.db.local_server import PostgresCluster

# A benchmark server: durable commits as in production, more connections than the default, and
# autovacuum on at its defaults (said explicitly: a production database analyzes its tables as
# they change, and the engine's speed must survive that).
BENCH_SETTINGS = {"max_connections": "300", "shared_buffers": "256MB", "autovacuum": "on"}


@contextlib.contextmanager
def private_server(settings: dict[str, str] | None = None) -> Iterator[str]:
    directory = Path(tempfile.mkdtemp(prefix="pgflow-bench-"))
    cluster = PostgresCluster(directory, settings={**BENCH_SETTINGS, **(settings or {})})
    cluster.start()
    try:
        yield cluster.uri()
    finally:
        cluster.kill()
        shutil.rmtree(directory, ignore_errors=True)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 1),
        "median": round(statistics.median(values), 1),
        "max": round(max(values), 1),
    }


def machine() -> dict[str, Any]:
    import os

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)
