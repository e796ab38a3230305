"""Where the worker and the gateway meet: ``pgflow serve`` and the gateway with a worker inside.

The gateway (``gateway.app.create_app``) never imports the worker; ``create_app_with_worker``
runs one as a side task of the gateway's lifespan, for ``serve --with-worker`` and ``demo``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pgflow import event_loop
from pgflow.errors import ConfigurationError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from gateway.config import GatewayConfig
    from pgflow.flows import Flow

WORKER_DESCRIPTORS = 16  # a worker beside the gateway: its pool, its LISTEN connection, a margin



def create_app_with_worker(
    database_url: str,
    *,
    flows: Sequence[Flow],
    config: GatewayConfig | None = None,
    worker_options: Mapping[str, Any] | None = None,
) -> Starlette:
    """The gateway (``gateway.app.create_app``) with a worker for ``flows`` in its lifespan.

    ``worker_options``: keyword arguments of ``pgflow.worker.Worker``; its PgBouncer settings
    default to ``config``'s. The worker's metrics show in the gateway's ``/metrics``.
    """
    from gateway.app import SideTask, create_app, runtime_of
    from pgflow.worker import Worker, sync_flows

    through = ({"listen_database_url": config.listen_database_url, "pgbouncer": config.pgbouncer}
               if config is not None else {})
    worker = Worker(database_url, flows, **{**through, **dict(worker_options or {})})
    app = create_app(
        database_url, flows=flows, config=config, sync_flows=sync_flows,
        side_tasks=[SideTask("pgflow-worker", worker.run, worker.stop,
                             descriptors=WORKER_DESCRIPTORS)],
    )
    observe = runtime_of(app).metrics.observe
    observe("pgflow_worker_stuck_threads", "gauge",
            "plain handlers still in their threads past their attempt",
            lambda: worker.stuck_threads)
    observe("pgflow_worker_unreported_results", "gauge",
            "finished attempts the worker has not reported yet", lambda: worker.unreported)
    observe("pgflow_worker_refused_results_total", "counter",
            "results the database refused, failed or dropped instead",
            lambda: worker.refused_results)
    return app


def serve_command(args: argparse.Namespace) -> int:
    """``pgflow serve``: the gateway under uvicorn, until SIGINT/SIGTERM."""
    from gateway.config import GatewayConfig
    from pgflow.db.local_server import database_url
    from pgflow.flows import load_flows

    flows = load_flows(args.flows)
    config = GatewayConfig.from_args(args)
    if args.with_worker and not flows:
        raise ConfigurationError("--with-worker needs --flows")
    with database_url(args.database_url, args.data_dir) as url:
        return event_loop.run(_serve(url, flows, config, args))


async def _serve(url: str, flows: list[Flow], config: GatewayConfig,
                 args: argparse.Namespace) -> int:
    from gateway.app import create_app, runtime_of
    from gateway.server import GatewayServer
    from pgflow.worker import sync_flows

    if args.with_worker:
        app = create_app_with_worker(url, flows=flows, config=config, worker_options={
            "concurrency": args.concurrency,
            "batch_size": args.batch_size,
            "lease_seconds": args.lease,
            "poll_interval": args.poll_interval,
            "stream_interval": args.stream_interval,
            "stream_logs": args.stream_logs,
            "shutdown_grace": args.shutdown_grace,
            "max_stuck_threads": args.max_stuck_threads,
            "retention": args.retention,
            "retention_interval": args.retention_interval,
        })
    else:
        # The worker's flow sync, for its messages: a changed shape is a new version.
        app = create_app(url, flows=flows, config=config, sync_flows=sync_flows)
    runtime = runtime_of(app)
    await runtime.start()  # migrations and flow errors end here, with a clear message
    server = GatewayServer(
        app, host=args.host, port=args.port, log_level=args.log_level,
        access_log=os.environ.get("PGFLOW_ACCESS_LOG", "") == "1",
        install_signal_handlers=True,
    )
    bound = await server.start()
    print(f"pgflow gateway listening on {bound}", flush=True)
    await server.wait()
    return 1 if runtime.failed is not None else 0
