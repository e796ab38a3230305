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
import importlib
import importlib.util
import logging
import os
import secrets

from starlette.routing import Mount

from gateway.app import create_app, runtime_of
from gateway.config import GatewayConfig
from gateway.server import GatewayServer
from pgflow.db.local_server import database_url, default_data_dir
from pgflow.flows import Flow, load_flows
from pgflow.serve import create_app_with_worker, http_worker_options

logger = logging.getLogger(__name__)

# The repository's examples; an installed wheel carries the same modules under pgflow/.
EXAMPLE_MODULES = ("examples.flows", "pgflow._demo_flows")
# The mixed flow (Python, map and HTTP steps), and the HTTP function its HTTP step calls,
# which the demo serves itself at FUNCTIONS_PATH.
PIPELINE_MODULES = ("examples.pipeline", "pgflow._demo_pipeline")
FUNCTION_MODULES = ("examples.functions.render_starlette", "pgflow._demo_function")
FUNCTIONS_PATH = "/functions"
DEMO_CONCURRENCY = 32


def _first_module(candidates: tuple[str, ...]) -> str | None:
    for module in candidates:
        try:
            if importlib.util.find_spec(module) is not None:
                return module
        except ModuleNotFoundError:
            continue
    return None


def example_flows() -> list[Flow]:
    """The example flows that need nothing set up (examples/flows.py)."""
    module = _first_module(EXAMPLE_MODULES)
    return load_flows([module]) if module is not None else []


def pipeline_flows() -> list[Flow]:
    """The mixed flow, whose HTTP step needs a secret and its function: the demo has both."""
    module = _first_module(PIPELINE_MODULES)
    if module is None or _first_module(FUNCTION_MODULES) is None:
        return []
    return load_flows([module])


def demo_command(args: argparse.Namespace) -> int:
    flows = example_flows() + pipeline_flows() + load_flows(args.flows)
    with database_url(args.database_url, args.data_dir) as url:
        embedded = not (args.database_url or os.environ.get("DATABASE_URL"))
        # The embedded server's URL has no secret in it; a URL given to us may have one.
        psql = "pgflow db psql" + (
            f" --data-dir {args.data_dir}" if args.data_dir != default_data_dir() else ""
        )
        database = f"{url}  ({psql})" if embedded else "your --database-url"
        return asyncio.run(_demo(url, database, flows, args))


async def _demo(url: str, database: str, flows: list[Flow], args: argparse.Namespace) -> int:
    function = _first_module(FUNCTION_MODULES)
    if not args.http_secret and function is not None and any(
            step.kind == "http" for flow in flows for step in flow.steps.values()):
        # nothing to set up: this process is the worker, the gateway and the function, so a
        # secret of its own signs the calls and the callbacks
        args.http_secret = secrets.token_urlsafe(32)
    config = GatewayConfig(http_secret=args.http_secret or None)
    port = args.port
    if flows:
        http_options, port = http_worker_options(args)
        app = create_app_with_worker(url, flows=flows, config=config, worker_options={
            "concurrency": DEMO_CONCURRENCY, "poll_interval": 0.5, **http_options})
    else:
        app = create_app(url, config=config)
    if function is not None and args.http_secret:
        # the example HTTP function (examples/functions/render_starlette.py), served here
        make_function = importlib.import_module(function).make_app
        app.router.routes.append(Mount(FUNCTIONS_PATH, app=make_function(args.http_secret)))
    runtime = runtime_of(app)
    await runtime.start()
    server = GatewayServer(
        app, host=args.host, port=port, log_level=args.log_level,
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
