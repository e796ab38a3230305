"""``pgflow demo``: the main job on a fresh machine.

One process: the embedded PostgreSQL (data under ``.pgflow/``, kept between runs), migrations,
the example flows, a worker and the gateway (joined by ``pgflow.serve.create_app_with_worker``),
then the URL of the live page and of the database. Ctrl-C stops it all cleanly; running it
again picks up the same data, runs included. Two demos (or a demo and ``pgflow db start``) on
one data folder share its server: it stops when the last one exits.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os

from gateway.app import create_app, runtime_of
from gateway.server import GatewayServer
from pgflow.db.local_server import database_url, default_data_dir
from pgflow.flows import Flow, load_flows
from pgflow.serve import create_app_with_worker

logger = logging.getLogger(__name__)

# The repository's examples; an installed wheel carries the same module under gateway/.
EXAMPLE_MODULES = ("examples.flows", "pgflow._demo_flows")
DEMO_CONCURRENCY = 32


def example_flows() -> list[Flow]:
    for module in EXAMPLE_MODULES:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            return load_flows([module])
    return []


def demo_command(args: argparse.Namespace) -> int:
    flows = example_flows() + load_flows(args.flows)
    with database_url(args.database_url, args.data_dir) as url:
        embedded = not (args.database_url or os.environ.get("DATABASE_URL"))
        # The embedded server's URL has no secret in it; a URL given to us may have one.
        psql = "pgflow db psql" + (
            f" --data-dir {args.data_dir}" if args.data_dir != default_data_dir() else ""
        )
        database = f"{url}  ({psql})" if embedded else "your --database-url"
        return asyncio.run(_demo(url, database, flows, args))


async def _demo(url: str, database: str, flows: list[Flow], args: argparse.Namespace) -> int:
    if flows:
        app = create_app_with_worker(url, flows=flows, worker_options={
            "concurrency": DEMO_CONCURRENCY, "poll_interval": 0.5})
    else:
        app = create_app(url)
    runtime = runtime_of(app)
    await runtime.start()
    server = GatewayServer(
        app, host=args.host, port=args.port, log_level=args.log_level,
        install_signal_handlers=True,
    )
    bound = await server.start()
    print(
        f"\n  PGFlow demo is running: open {bound}/\n"
        f"  flows: {', '.join(f.slug for f in flows) or '(none)'}\n"
        f"  database: {database}\n"
        "  Ctrl-C stops it.\n",
        flush=True,
    )
    await server.wait()
    return 1 if runtime.failed is not None else 0
