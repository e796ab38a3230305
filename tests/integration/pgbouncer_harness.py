"""Debian's PgBouncer in front of the tests' PostgreSQL, in transaction pooling mode.

``PgBouncer`` writes a ``pgbouncer.ini`` and an ``auth_file`` into a fresh folder, starts
``/usr/sbin/pgbouncer`` on 127.0.0.1 and a free port, and stops it on ``stop()``. The pool per
database and user is small, so that many client connections share few server connections, as in
production. As root it runs as an unprivileged user (PgBouncer refuses to run as root), the same
one the embedded PostgreSQL runs as.

``arith`` is the flow the tests run through it (``pgflow worker --flows`` this module): a
diamond whose output depends on the run's input, so that every run's result can be checked.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pgflow import Flow
from pgflow.db._placement import service_user

PGBOUNCER = Path(os.environ.get("PGFLOW_TEST_PGBOUNCER", "/usr/sbin/pgbouncer"))
START_TIMEOUT = 10.0  # seconds for PgBouncer to accept connections
DEFAULT_POOL_SIZE = 5  # server connections per database and user: fewer than the clients


arith = Flow("arith", max_attempts=3, base_delay=0.1, timeout=30)


@arith.step()
async def double(input: dict[str, Any]) -> int:
    return int(input["run"]["n"]) * 2


@arith.step(depends_on=[double])
async def plus_one(input: dict[str, Any]) -> int:
    return int(input["double"]) + 1


@arith.step(depends_on=[double])
async def squared(input: dict[str, Any]) -> int:
    return int(input["double"]) ** 2


@arith.step(depends_on=[plus_one, squared], output=True)
async def total(input: dict[str, Any]) -> dict[str, int]:
    return {"sum": int(input["plus_one"]) + int(input["squared"])}


def arith_output(n: int) -> dict[str, int]:
    """What ``arith`` returns for the input ``{"n": n}``."""
    return {"sum": 2 * n + 1 + (2 * n) ** 2}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PgBouncer:
    """One PgBouncer process in front of the PostgreSQL of ``server_url``."""

    def __init__(self, server_url: str, *, pool_mode: str = "transaction",
                 pool_size: int = DEFAULT_POOL_SIZE, max_client_conn: int = 100) -> None:
        if not PGBOUNCER.exists():
            raise AssertionError(
                f"PgBouncer is not installed ({PGBOUNCER} is missing): run scripts/install, "
                "or set PGFLOW_TEST_PGBOUNCER to the binary"
            )
        parts = urlsplit(server_url)
        self.server_url = server_url
        self.user = parts.username or "postgres"
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="pgflow-pgbouncer-"))
        self.directory.chmod(0o755)
        self.log_file = self.directory / "pgbouncer.log"
        self.process: subprocess.Popen[bytes] | None = None
        config = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(self.directory / "userlist.txt"),
            "pool_mode": pool_mode,
            "default_pool_size": str(pool_size),
            "min_pool_size": "0",
            "reserve_pool_size": "0",
            "max_client_conn": str(max_client_conn),
            "logfile": str(self.log_file),
        }
        database = f"* = host={parts.hostname} port={parts.port or 5432}"
        lines = ["[databases]", database, "", "[pgbouncer]"]
        lines += [f"{key} = {value}" for key, value in config.items()]
        (self.directory / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        (self.directory / "userlist.txt").write_text(f'"{self.user}" ""\n')

    def url(self, database: str) -> str:
        """The URL of ``database`` through PgBouncer."""
        parts = urlsplit(self.server_url)
        return urlunsplit(parts._replace(netloc=f"{self.user}@127.0.0.1:{self.port}",
                                         path="/" + database))

    def start(self) -> None:
        as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam(service_user())
            as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            for path in (self.directory, *self.directory.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.process = subprocess.Popen(
            [str(PGBOUNCER), str(self.directory / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **as_user,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"pgbouncer exited ({self.process.returncode}):\n{self.log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"pgbouncer did not listen within {START_TIMEOUT} s:\n{self.log}")

    @property
    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Stops PgBouncer; raises if it had died meanwhile (a crash would fail tests later
        with bare "connection refused" errors), after cleaning up."""
        crashed = self.process is not None and self.process.poll() is not None
        log = self.log if crashed else ""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: immediate shutdown
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)
        if crashed:
            assert self.process is not None
            raise AssertionError(f"pgbouncer died ({self.process.returncode}):\n{log[-3000:]}")

    def __enter__(self) -> PgBouncer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
