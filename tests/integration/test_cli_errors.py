"""Start-up errors of ``pgflow`` as a person sees them: one line on stderr, no traceback, and
the exit status of docs/gateway.md (2: change something; 1: the database is unreachable).

Each case runs ``python -m pgflow ...`` in a real subprocess against the session's server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from pgflow.db.local_server import free_port
from tests.conftest import Server

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30.0  # seconds one command may take to fail


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "PYTHONASYNCIODEBUG") and not k.startswith("PGFLOW_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


async def pgflow(*argv: str, cwd: Path = REPO_ROOT) -> tuple[int, list[str]]:
    """Exit status and stderr lines of ``python -m pgflow *argv``."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pgflow", *argv, cwd=cwd, env=_env(),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(TIMEOUT):
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stderr.decode().splitlines()


def closed_port_url() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"


COMMANDS = {
    "migrate": ("migrate",),
    "serve": ("serve", "--port", "0"),
    "demo": ("demo", "--port", "0"),
    "worker": ("worker", "--flows", "examples.flows"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
async def test_an_unknown_database_is_one_line_and_status_2(pg_server: Server,
                                                            command: str) -> None:
    url = pg_server.url_for("pgflow_no_such_database")
    status, lines = await pgflow(*COMMANDS[command], "--database-url", url)
    assert status == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"pgflow {command}: ")
    assert 'database "pgflow_no_such_database" does not exist' in lines[0]


@pytest.mark.parametrize("command", ["migrate", "serve", "demo"])
async def test_an_unknown_role_is_one_line_and_status_2(pg_server: Server, command: str) -> None:
    url = pg_server.url.replace("postgres@", "pgflow_nobody:hunter2@", 1)
    assert url != pg_server.url
    status, lines = await pgflow(*COMMANDS[command], "--database-url", url)
    assert status == 2, lines
    assert len(lines) == 1, lines
    assert 'role "pgflow_nobody" does not exist' in lines[0]
    assert "hunter2" not in lines[0]


@pytest.mark.parametrize("command", ["migrate", "serve", "demo"])
async def test_a_closed_port_is_one_line_and_status_1(command: str) -> None:
    url = closed_port_url()
    status, lines = await pgflow(*COMMANDS[command], "--database-url", url)
    assert status == 1, lines
    assert lines == [f"pgflow {command}: cannot connect to the database at "
                     f"{url.removeprefix('postgresql://')}: connection refused"]


FLOW_MODULES = {
    "syntax error": ("bad_flows", 'from pgflow import Flow\nflow = Flow("x"\n',
                     "bad_flows.py, line 2: '(' was never closed"),
    "import error": ("bad_flows", "import pgflow_no_such_module\n",
                     "cannot import 'bad_flows': No module named 'pgflow_no_such_module'"),
    "raises on import": ("bad_flows", "from pgflow import Flow\n\n1 / 0\n",
                         "importing bad_flows raised ZeroDivisionError: division by zero "),
    "missing attribute": ("good_flows:nope", 'from pgflow import Flow\nflow = Flow("x")\n',
                          "good_flows has no 'nope'"),
    "bad flow": ("bad_flows", 'from pgflow import Flow\nflow = Flow("no spaces allowed")\n',
                 "no spaces allowed"),
}


@pytest.mark.parametrize("case", list(FLOW_MODULES))
@pytest.mark.parametrize("command", ["worker", "serve"])
async def test_a_broken_flows_module_is_one_line_and_status_2(
    tmp_path: Path, case: str, command: str
) -> None:
    spec, source, message = FLOW_MODULES[case]
    (tmp_path / f"{spec.partition(':')[0]}.py").write_text(source)
    status, lines = await pgflow(command, "--flows", spec, "--database-url", closed_port_url(),
                                 cwd=tmp_path)
    assert status == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"pgflow {command}: --flows {spec}: ")
    assert message in lines[0]


@pytest.mark.parametrize(("argv", "message"), [
    (("serve", "--port", "99999"), "argument --port: 99999 is not a port"),
    (("demo", "--port", "-1"), "argument --port: -1 is not a port"),
    (("serve", "--port", "http"), "argument --port: 'http' is not an integer"),
    (("serve", "--max-sockets", "0"), "argument --max-sockets: 0 must be at least 1"),
    (("serve", "--close-timeout", "nan"), "argument --close-timeout: 'nan' is not a finite"),
    (("worker", "--flows", "x", "--concurrency", "0"), "argument --concurrency: 0 must be"),
    (("worker", "--flows", "x", "--lease", "inf"), "argument --lease: 'inf' is not a finite"),
    (("worker", "--flows", "x", "--poll-interval", "0"), "argument --poll-interval: 0 must be"),
])
async def test_a_bad_number_is_a_usage_error(argv: tuple[str, ...], message: str) -> None:
    status, lines = await pgflow(*argv)
    assert status == 2, lines
    assert lines[-1].endswith(message) or message in lines[-1], lines
    assert lines[-1].startswith(f"pgflow {argv[0]}: error: ")


async def test_a_worker_keeps_saying_that_it_retries_an_unreachable_database() -> None:
    """The first failures are each logged with their count and the next delay (then one per
    ``RETRY_LOG_INTERVAL``, tests/unit/test_retry_log.py); SIGTERM still ends it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pgflow", "worker", "--flows", "examples.flows",
        "--database-url", closed_port_url(), cwd=REPO_ROOT, env=_env(),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    warnings: list[str] = []
    try:
        async with asyncio.timeout(TIMEOUT):
            while len(warnings) < 3:
                line = (await process.stderr.readline()).decode()
                assert line, "the worker exited"
                if "WARNING" in line:
                    warnings.append(line)
            process.send_signal(signal.SIGTERM)
            status = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    for count, line in enumerate(warnings, 1):
        assert f"migrating failed ({count} in a row), retrying in " in line, warnings
        assert "connection refused" in line
    assert status == 0
