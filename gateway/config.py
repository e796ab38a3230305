"""The gateway's settings: limits, access control, and their command-line options.

``GatewayConfig`` is what ``create_app`` takes; ``add_gateway_options`` adds its options to
``pgflow serve`` and ``GatewayConfig.from_args`` reads them back. Every option also has an
environment variable (``PGFLOW_<OPTION>``), used when the option is not given, so secrets need
not appear on a command line.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pgflow.db.store import MAX_LEASE, MIN_LEASE
from pgflow.errors import ConfigurationError

MIN_HS256_SECRET_BYTES = 32  # RFC 7518 3.2: a key at least as long as the hash output
DEFAULT_JWT_LEEWAY = 5.0  # seconds of clock skew tolerated on exp / nbf
DEFAULT_ROLE_CLAIM = "role"
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, int]  # scheme, host, port
DEFAULT_MAX_FRAME_BYTES = 64 * 1024
DEFAULT_MAX_SUBSCRIPTIONS = 100  # per socket
DEFAULT_MAX_SOCKETS = 10_000  # per gateway process
# Seconds a connection has to deliver a complete request (headers and body) after it opens or
# after its previous response: idle and trickling connections are closed (gateway/connections.py).
DEFAULT_REQUEST_TIMEOUT = 20.0
DEFAULT_SOCKET_BUFFER_FRAMES = 4096  # frames queued for one socket before it is dropped (1013)
DEFAULT_SOCKET_BUFFER_BYTES = 16 * 1024 * 1024
DEFAULT_SOCKET_STALL_TIMEOUT = 20.0  # seconds a socket may accept nothing before it is dropped
# Smaller frames go out uncompressed on deflate sockets: the bytes saved on a few hundred bytes
# of JSON cost more than they save (clients such as Node's inflate off the event loop).
DEFAULT_DEFLATE_MIN_BYTES = 1024
# Larger frames go out uncompressed, 0: all do. Node's WebSocket (undici) refuses a compressed
# message that inflates past 4 MiB ("Max decompressed message size exceeded", close 1006): the
# replay would send it again on every reconnect. Plain frames of any size pass.
DEFAULT_DEFLATE_MAX_BYTES = 1024 * 1024
DEFAULT_SOCKET_PING_INTERVAL = 20.0  # seconds of silence before a ping; as long again to answer
DEFAULT_CLOSE_TIMEOUT = 5.0  # seconds a close frame may take to leave before the TCP is aborted
DEFAULT_LISTENER_HEALTH_INTERVAL = 10.0  # seconds of silence before the listener runs `select 1`
DEFAULT_LISTENER_HEALTH_TIMEOUT = 5.0  # seconds `select 1` may take before the link is dead
DEFAULT_POOL_SIZE = 10


@dataclass(frozen=True)
class GatewayConfig:
    """Settings of one gateway process. The defaults are a public, unauthenticated gateway.

    Access: ``jwt_secret`` (HS256) or ``jwt_public_key`` (RS256, PEM text) turns tokens on;
    without either everything is public and tokens are ignored.
    """

    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_audience: str | None = None
    jwt_leeway: float = DEFAULT_JWT_LEEWAY
    role_claim: str = DEFAULT_ROLE_CLAIM
    admin_role: str | None = None
    private_flows: frozenset[str] = frozenset()
    # The gateway's own origin(s) as browsers see it, e.g. behind a proxy; empty: the loopback
    # origins of the address it listens on (gateway.auth.OriginPolicy).
    public_origins: tuple[str, ...] = ()
    # Socket Origins allowed besides the gateway's own ("*": any).
    allowed_origins: tuple[str, ...] = ()
    # Origins whose pages may call the HTTP API (CORS) — also allowed on the socket.
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS
    max_sockets: int = DEFAULT_MAX_SOCKETS
    # TCP connections (HTTP and websockets) per process; None: what RLIMIT_NOFILE leaves.
    max_connections: int | None = None
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    socket_buffer_frames: int = DEFAULT_SOCKET_BUFFER_FRAMES
    socket_buffer_bytes: int = DEFAULT_SOCKET_BUFFER_BYTES
    socket_stall_timeout: float = DEFAULT_SOCKET_STALL_TIMEOUT
    socket_ping_interval: float = DEFAULT_SOCKET_PING_INTERVAL
    deflate_min_bytes: int = DEFAULT_DEFLATE_MIN_BYTES
    deflate_max_bytes: int = DEFAULT_DEFLATE_MAX_BYTES
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT
    listener_health_interval: float = DEFAULT_LISTENER_HEALTH_INTERVAL
    listener_health_timeout: float = DEFAULT_LISTENER_HEALTH_TIMEOUT
    pool_size: int = DEFAULT_POOL_SIZE
    migrate: bool = True
    # A direct URL for LISTEN and the migrations, when the database URL is PgBouncer's.
    listen_database_url: str | None = None
    pgbouncer: bool = False  # the database URL is PgBouncer in transaction mode
    # The HMAC secret of HTTP steps' callback tokens (/rpc/complete_step, /rpc/fail_step);
    # None: those routes answer 404.
    http_secret: str | None = None

    def __post_init__(self) -> None:
        if self.http_secret is not None and (not isinstance(self.http_secret, str)
                                             or not self.http_secret):
            raise ConfigurationError("--http-secret must be a non-empty string")
        if self.jwt_secret is not None and self.jwt_public_key is not None:
            raise ConfigurationError("give --jwt-secret or --jwt-public-key, not both")
        if self.jwt_secret is not None and len(self.jwt_secret.encode()) < MIN_HS256_SECRET_BYTES:
            raise ConfigurationError(
                f"--jwt-secret must be at least {MIN_HS256_SECRET_BYTES} bytes for HS256"
            )
        for name in ("max_body_bytes", "max_frame_bytes", "max_subscriptions", "max_sockets",
                     "socket_buffer_frames", "socket_buffer_bytes", "pool_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"{name} must be a positive integer, not {value!r}")
        for name in ("deflate_min_bytes", "deflate_max_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigurationError(f"{name} must be a non-negative integer, not "
                                         f"{value!r}")
        value = self.max_connections
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 1):
            raise ConfigurationError(f"max_connections must be a positive integer or None, not "
                                     f"{value!r}")
        value = self.request_timeout
        if (not isinstance(value, int | float) or isinstance(value, bool)
                or not math.isfinite(value) or value <= 0):
            raise ConfigurationError(f"request_timeout must be a positive number, not {value!r}")
        for name in ("jwt_leeway", "close_timeout", "listener_health_interval",
                     "listener_health_timeout", "socket_stall_timeout", "socket_ping_interval"):
            value = getattr(self, name)
            if (not isinstance(value, int | float) or isinstance(value, bool)
                    or not math.isfinite(value) or value < 0):
                raise ConfigurationError(f"{name} must be a non-negative number, not {value!r}")
        for origin in (*self.allowed_origins, *self.cors_origins):
            if origin != "*" and parse_origin(origin) is None:
                raise ConfigurationError(
                    f"origin {origin!r} must look like scheme://host[:port], or be '*'"
                )
        for origin in self.public_origins:
            if parse_origin(origin) is None:
                raise ConfigurationError(
                    f"--public-origin {origin!r} must look like scheme://host[:port]"
                )

    @property
    def auth_enabled(self) -> bool:
        return self.jwt_secret is not None or self.jwt_public_key is not None

    def with_changes(self, **changes: Any) -> GatewayConfig:
        return replace(self, **changes)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> GatewayConfig:
        """The settings ``add_gateway_options`` parsed (environment variables fill the gaps)."""
        public_key = None
        if args.jwt_public_key:
            try:
                public_key = Path(args.jwt_public_key).read_text()
            except OSError as exc:
                raise ConfigurationError(
                    f"--jwt-public-key {args.jwt_public_key}: cannot read it: {exc}"
                ) from exc
        return cls(
            jwt_secret=args.jwt_secret or None,
            jwt_public_key=public_key,
            jwt_audience=args.jwt_audience or None,
            jwt_leeway=args.jwt_leeway,
            role_claim=args.role_claim,
            admin_role=args.admin_role or None,
            private_flows=frozenset(args.private_flow),
            public_origins=tuple(_normalise_origins(args.public_origin)),
            allowed_origins=tuple(_normalise_origins(args.allowed_origin)),
            cors_origins=tuple(_normalise_origins(args.cors_origin)),
            max_body_bytes=args.max_body_bytes,
            max_frame_bytes=args.max_frame_bytes,
            max_subscriptions=args.max_subscriptions,
            max_sockets=args.max_sockets,
            max_connections=args.max_connections or None,
            request_timeout=args.request_timeout,
            socket_buffer_frames=args.socket_buffer_frames,
            socket_buffer_bytes=args.socket_buffer_bytes,
            socket_stall_timeout=args.socket_stall_timeout,
            socket_ping_interval=args.socket_ping_interval,
            deflate_min_bytes=args.deflate_min_bytes,
            deflate_max_bytes=args.deflate_max_bytes,
            close_timeout=args.close_timeout,
            listener_health_interval=args.listener_health_interval,
            pool_size=args.pool_size,
            listen_database_url=args.listen_database_url or None,
            pgbouncer=args.pgbouncer,
            http_secret=args.http_secret or None,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewayConfig:
        """The settings given only by ``PGFLOW_*`` environment variables."""
        parser = argparse.ArgumentParser(add_help=False)
        add_gateway_options(parser, environ)
        return cls.from_args(parser.parse_args([]))


def parse_origin(origin: str) -> Origin | None:
    """``scheme://host[:port]`` as (scheme, host, port), the default port filled in; None for
    anything else (``null``, a path, user info, a bad port)."""
    scheme, sep, netloc = origin.strip().lower().rstrip("/").partition("://")
    if not sep or scheme not in _DEFAULT_PORTS or not netloc or "/" in netloc or "@" in netloc:
        return None
    host, port_text = netloc, ""
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                return None
            port_text = rest[1:]
    elif ":" in netloc:
        host, _, port_text = netloc.rpartition(":")
    if not host or (port_text and not (port_text.isascii() and port_text.isdigit())):
        return None
    port = int(port_text) if port_text else _DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        return None
    return scheme, host, port


# -- argparse types: a bad number is a usage error (exit 2) that names the option -----------

def _number(text: str, kind: type[int] | type[float]) -> float:
    try:
        value = kind(text)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def port_number(text: str) -> int:
    """A TCP port: 1-65535, or 0 for a free one."""
    value = int(_number(text, int))
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port: 1-65535, or 0 for a free one")
    return value


def positive_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must not be negative")
    return value


def positive_seconds(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be more than 0 seconds")
    return value


def lease_seconds(text: str) -> float:
    """A lease as the engine takes it (``claim_tasks``: 0.1 to 86,400 seconds)."""
    value = _number(text, float)
    if not MIN_LEASE <= value <= MAX_LEASE:
        raise argparse.ArgumentTypeError(
            f"{value:g} must be from {MIN_LEASE:g} to {MAX_LEASE:g} seconds")
    return value


def non_negative_seconds(text: str) -> float:
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value:g} must not be negative")
    return value


def _normalise_origins(origins: Iterable[str]) -> list[str]:
    return [o.rstrip("/").lower() for o in origins]


def _env_list(environ: Mapping[str, str], name: str) -> list[str]:
    return [item.strip() for item in environ.get(name, "").split(",") if item.strip()]


def add_pgbouncer_options(
    parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None
) -> None:
    """``--listen-database-url`` and ``--pgbouncer``, of ``pgflow serve`` and ``pgflow worker``."""
    env = os.environ if environ is None else environ
    parser.add_argument(
        "--listen-database-url", default=env.get("PGFLOW_LISTEN_DATABASE_URL"), metavar="URL",
        help="a direct PostgreSQL URL for LISTEN and the start-up migrations, which need a "
        "session, when --database-url goes through PgBouncer (default: "
        "$PGFLOW_LISTEN_DATABASE_URL, else the database URL)",
    )
    parser.add_argument(
        "--pgbouncer", action="store_true",
        default=env.get("PGFLOW_PGBOUNCER", "").lower() in ("1", "true", "yes"),
        help="the database URL is PgBouncer in transaction pooling mode: no named prepared "
        "statements (default: $PGFLOW_PGBOUNCER=1, else off)",
    )


def add_http_secret_option(
    parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None
) -> None:
    """``--http-secret``, of ``pgflow serve``, ``pgflow worker`` and ``pgflow demo``."""
    env = os.environ if environ is None else environ
    parser.add_argument(
        "--http-secret", default=env.get("PGFLOW_HTTP_SECRET"), metavar="SECRET",
        help="the secret HTTP steps are signed with: the worker signs its requests and callback "
        "tokens with it, the functions check the signatures, the gateway the tokens "
        "(default: $PGFLOW_HTTP_SECRET; without it HTTP steps are off)",
    )


def add_gateway_options(
    parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None
) -> None:
    """Options of ``pgflow serve`` beyond host, port, database and flows (auth, limits)."""
    env = os.environ if environ is None else environ

    def number(name: str, default: float) -> float:
        raw = env.get(name)
        try:
            return non_negative_seconds(raw) if raw else default
        except argparse.ArgumentTypeError as exc:
            raise ConfigurationError(f"${name}: {exc}") from None

    def integer(name: str, default: int, minimum: int = 1) -> int:
        raw = env.get(name)
        try:
            return (positive_int if minimum else non_negative_int)(raw) if raw else default
        except argparse.ArgumentTypeError as exc:
            raise ConfigurationError(f"${name}: {exc}") from None

    auth = parser.add_argument_group("access (JWT; without a key everything is public)")
    auth.add_argument(
        "--jwt-secret", default=env.get("PGFLOW_JWT_SECRET"), metavar="SECRET",
        help="HS256 secret, at least 32 bytes (default: $PGFLOW_JWT_SECRET)",
    )
    auth.add_argument(
        "--jwt-public-key", default=env.get("PGFLOW_JWT_PUBLIC_KEY"), metavar="FILE",
        help="PEM file of the RS256 public key (default: $PGFLOW_JWT_PUBLIC_KEY)",
    )
    auth.add_argument(
        "--jwt-audience", default=env.get("PGFLOW_JWT_AUDIENCE"),
        help="required `aud` claim (default: not checked)",
    )
    auth.add_argument(
        "--jwt-leeway", type=non_negative_seconds, metavar="SECONDS",
        default=number("PGFLOW_JWT_LEEWAY", DEFAULT_JWT_LEEWAY),
        help=f"clock skew allowed on exp/nbf (default: {DEFAULT_JWT_LEEWAY:g})",
    )
    auth.add_argument(
        "--role-claim", default=env.get("PGFLOW_ROLE_CLAIM", DEFAULT_ROLE_CLAIM),
        help=f"claim holding the token's role(s) (default: {DEFAULT_ROLE_CLAIM})",
    )
    auth.add_argument(
        "--admin-role", default=env.get("PGFLOW_ADMIN_ROLE"),
        help="role that may read every run (default: none)",
    )
    auth.add_argument(
        "--private-flow", action="append", metavar="SLUG",
        default=_env_list(env, "PGFLOW_PRIVATE_FLOWS"),
        help="a flow only token holders may start and read; repeatable (flows loaded with "
        "--flows say so with Flow(public=False))",
    )
    auth.add_argument(
        "--public-origin", action="append", metavar="ORIGIN",
        default=_env_list(env, "PGFLOW_PUBLIC_ORIGINS"),
        help="the gateway's own origin as browsers reach it, e.g. https://app.example.com "
        "behind a proxy; repeatable (default: the loopback origins of --host and --port)",
    )
    auth.add_argument(
        "--allowed-origin", action="append", metavar="ORIGIN",
        default=_env_list(env, "PGFLOW_ALLOWED_ORIGINS"),
        help="Origin allowed on /realtime besides the gateway's own ('*': any); repeatable",
    )
    auth.add_argument(
        "--cors-origin", action="append", metavar="ORIGIN",
        default=_env_list(env, "PGFLOW_CORS_ORIGINS"),
        help="Origin whose pages may call the HTTP API and open /realtime ('*': any); "
        "repeatable",
    )

    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-body-bytes", type=positive_int,
        default=integer("PGFLOW_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
        help=f"largest HTTP body (default: {DEFAULT_MAX_BODY_BYTES})",
    )
    limits.add_argument(
        "--max-frame-bytes", type=positive_int,
        default=integer("PGFLOW_MAX_FRAME_BYTES", DEFAULT_MAX_FRAME_BYTES),
        help=f"largest websocket frame from a client (default: {DEFAULT_MAX_FRAME_BYTES})",
    )
    limits.add_argument(
        "--max-subscriptions", type=positive_int,
        default=integer("PGFLOW_MAX_SUBSCRIPTIONS", DEFAULT_MAX_SUBSCRIPTIONS),
        help=f"runs one socket may follow (default: {DEFAULT_MAX_SUBSCRIPTIONS})",
    )
    limits.add_argument(
        "--max-sockets", type=positive_int,
        default=integer("PGFLOW_MAX_SOCKETS", DEFAULT_MAX_SOCKETS),
        help=f"open websockets per process (default: {DEFAULT_MAX_SOCKETS})",
    )
    limits.add_argument(
        "--max-connections", type=positive_int, metavar="N",
        default=integer("PGFLOW_MAX_CONNECTIONS", 0, minimum=0),
        help="open TCP connections per process, HTTP and websockets; at the limit the oldest "
        "connection waiting for a request is closed, else the new one gets 503 (default: what "
        "the descriptor limit, ulimit -n, leaves)",
    )
    limits.add_argument(
        "--request-timeout", type=positive_seconds, metavar="SECONDS",
        default=number("PGFLOW_REQUEST_TIMEOUT", DEFAULT_REQUEST_TIMEOUT),
        help="time a connection has to send a complete request, from its start or its "
        f"previous response (default: {DEFAULT_REQUEST_TIMEOUT:g})",
    )
    limits.add_argument(
        "--socket-buffer-frames", type=positive_int,
        default=integer("PGFLOW_SOCKET_BUFFER_FRAMES", DEFAULT_SOCKET_BUFFER_FRAMES),
        help="frames queued for a slow socket before it is closed with 1013 "
        f"(default: {DEFAULT_SOCKET_BUFFER_FRAMES})",
    )
    limits.add_argument(
        "--socket-buffer-bytes", type=positive_int,
        default=integer("PGFLOW_SOCKET_BUFFER_BYTES", DEFAULT_SOCKET_BUFFER_BYTES),
        help=f"bytes queued for a slow socket before it is closed with 1013 "
        f"(default: {DEFAULT_SOCKET_BUFFER_BYTES})",
    )
    limits.add_argument(
        "--socket-stall-timeout", type=non_negative_seconds, metavar="SECONDS",
        default=number("PGFLOW_SOCKET_STALL_TIMEOUT", DEFAULT_SOCKET_STALL_TIMEOUT),
        help="time a socket may accept no data while frames wait before it is closed with "
        f"1013 (default: {DEFAULT_SOCKET_STALL_TIMEOUT:g})",
    )
    limits.add_argument(
        "--socket-ping-interval", type=non_negative_seconds, metavar="SECONDS",
        default=number("PGFLOW_SOCKET_PING_INTERVAL", DEFAULT_SOCKET_PING_INTERVAL),
        help="silence after which a socket is pinged; a peer silent twice as long is dropped "
        f"(0: never; default: {DEFAULT_SOCKET_PING_INTERVAL:g})",
    )
    limits.add_argument(
        "--deflate-min-bytes", type=non_negative_int,
        default=integer("PGFLOW_DEFLATE_MIN_BYTES", DEFAULT_DEFLATE_MIN_BYTES, minimum=0),
        help="smallest frame compressed on sockets that negotiated permessage-deflate "
        f"(default: {DEFAULT_DEFLATE_MIN_BYTES})",
    )
    limits.add_argument(
        "--deflate-max-bytes", type=non_negative_int,
        default=integer("PGFLOW_DEFLATE_MAX_BYTES", DEFAULT_DEFLATE_MAX_BYTES, minimum=0),
        help="largest frame compressed; larger ones go plain, which every client accepts "
        f"(0: never compress; default: {DEFAULT_DEFLATE_MAX_BYTES})",
    )
    limits.add_argument(
        "--close-timeout", type=non_negative_seconds, metavar="SECONDS",
        default=number("PGFLOW_CLOSE_TIMEOUT", DEFAULT_CLOSE_TIMEOUT),
        help="time a socket's close frame may take before the connection is aborted "
        f"(default: {DEFAULT_CLOSE_TIMEOUT:g})",
    )
    limits.add_argument(
        "--listener-health-interval", type=non_negative_seconds, metavar="SECONDS",
        default=number("PGFLOW_LISTENER_HEALTH_INTERVAL", DEFAULT_LISTENER_HEALTH_INTERVAL),
        help="quiet time after which the LISTEN connection is probed with `select 1` "
        f"(default: {DEFAULT_LISTENER_HEALTH_INTERVAL:g})",
    )
    limits.add_argument(
        "--pool-size", type=positive_int, default=integer("PGFLOW_POOL_SIZE", DEFAULT_POOL_SIZE),
        help=f"database connections for HTTP and replays (default: {DEFAULT_POOL_SIZE})",
    )
    add_pgbouncer_options(parser, env)
    add_http_secret_option(parser, env)
