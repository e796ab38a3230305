"""Where the worker and the gateway meet: ``pgflow serve`` and the gateway with a worker inside.

The gateway (``gateway.app.create_app``) never imports the worker; ``create_app_with_worker``
runs one as a side task of the gateway's lifespan, for ``serve --with-worker`` and ``demo``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pgflow import event_loop
from pgflow.errors import ConfigurationError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from gateway.config import GatewayConfig
    from pgflow.flows import Flow

WORKER_DESCRIPTORS = 16  # a worker beside the gateway: its pool, its LISTEN connection, a margin
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def own_url(host: str, port: int) -> tuple[str, int]:
    """The gateway's URL as a worker in its process reaches it, and the port to listen on:
    port 0 is resolved here to a free one, so that the URL can be known before the server
    starts (a worker's HTTP steps call it back there)."""
    host = _WILDCARDS.get(host, host)
    if port == 0:
        try:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
                probe.bind((host, 0))
                port = probe.getsockname()[1]
        except OSError as exc:
            raise ConfigurationError(f"cannot listen on {host}: {exc}") from exc
    try:
        shown = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:  # a name
        shown = host
    return f"http://{shown}:{port}", port


def http_worker_options(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """The HTTP-step options of the worker beside the gateway (``serve --with-worker``,
    ``demo``), and the port the gateway listens on: with ``--http-secret``, ``--http-base-url``
    and ``--callback-url`` each default to the gateway's own URL."""
    from pgflow.worker._options import http_step_options

    port: int = args.port
    base_url, callback_url = args.http_base_url, args.callback_url
    if args.http_secret and (base_url is None or callback_url is None):
        url, port = own_url(args.host, port)
        base_url = base_url or url
        callback_url = callback_url or url  # the callback routes are this gateway's
    return http_step_options(args.http_secret, args.http_concurrency, base_url,
                             callback_url), port



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

    port = args.port
    if args.with_worker:
        http_options, port = http_worker_options(args)
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
            **http_options,
        })
    else:
        # The worker's flow sync, for its messages: a changed shape is a new version.
        app = create_app(url, flows=flows, config=config, sync_flows=sync_flows)
    runtime = runtime_of(app)
    await runtime.start()  # migrations and flow errors end here, with a clear message
    server = GatewayServer(
        app, host=args.host, port=port, log_level=args.log_level,
        access_log=os.environ.get("PGFLOW_ACCESS_LOG", "") == "1",
        install_signal_handlers=True,
    )
    bound = await server.start()
    print(f"pgflow gateway listening on {bound}", flush=True)
    await server.wait()
    return 1 if runtime.failed is not None else 0
