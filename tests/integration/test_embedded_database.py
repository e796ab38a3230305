"""The embedded PostgreSQL as users meet it: real ``pgflow`` processes on one data folder.

Several processes share a data folder's server and the last one out stops it; a server that
stops under a running demo is reported in one line and restarted; ``pgflow db`` starts, shows
and stops it; as root, folders outside the data folder keep their permissions.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pgflow.db import _placement as placement
from pgflow.db._users import ServerUsers
from pgflow.db.local_server import PostgresCluster, embedded_bin_dir
from pgflow.errors import ConfigurationError
from tests.conftest import temporary_folder

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0  # seconds
RUN_TIMEOUT = 30.0  # seconds
URL_LINE = re.compile(r"open (http://127\.0\.0\.1:\d+)/")


def embedded_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PGFLOW_DATA_DIR")}
    return {**env, "PGFLOW_EXAMPLE_DELAY_SCALE": "0.05", **extra}


@pytest.fixture
def data_dir(embedded_data_dir: Path) -> Path:
    """A data folder under /tmp (reachable by the service user, so used in place)."""
    return embedded_data_dir


class Demo:
    """A ``pgflow demo`` process whose output is collected line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._new_line = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := (await self.process.stdout.readline()).decode(errors="replace"):
            self.lines.append(line)
            self._new_line.set()
        self._new_line.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    async def wait_for(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        async with asyncio.timeout(timeout):
            while True:
                if match := re.search(pattern, self.output):
                    return match
                if self._reader.done():
                    raise AssertionError(f"demo exited before {pattern!r}:\n{self.output}")
                self._new_line.clear()
                await self._new_line.wait()

    async def stop(self, sig: int = signal.SIGINT) -> int:
        if self.process.returncode is None:
            self.process.send_signal(sig)
        try:
            async with asyncio.timeout(30):
                await self.process.wait()
        finally:
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
            await self._reader
        return self.process.returncode or 0


async def start_demo(data_dir: Path) -> tuple[Demo, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pgflow", "demo", "--port", "0", "--data-dir", str(data_dir),
        cwd=REPO, env=embedded_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    demo = Demo(process)
    try:
        url = (await demo.wait_for(URL_LINE.pattern)).group(1)
    except BaseException:
        await demo.stop(signal.SIGKILL)
        raise
    return demo, url


@pytest.fixture
async def demos() -> AsyncIterator[list[Demo]]:
    started: list[Demo] = []
    yield started
    for demo in started:
        await demo.stop(signal.SIGKILL)


def request(url: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json"} if data else {}
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=10) as reply:
        return json.load(reply)


async def run_diamond(url: str) -> dict[str, Any]:
    started = await asyncio.to_thread(
        request, f"{url}/rpc/run_flow", {"flow_slug": "diamond", "input": {"text": "a b c"}}
    )
    async with asyncio.timeout(RUN_TIMEOUT):
        while True:
            run: dict[str, Any] = await asyncio.to_thread(
                request, f"{url}/runs/{started['run_id']}"
            )
            if run["status"] in ("completed", "failed"):
                return run
            await asyncio.sleep(0.05)


def pgflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgflow", *args], cwd=REPO, env=env or embedded_env(),
        capture_output=True, text=True, timeout=120, check=False,
    )


# --- item 17: one data folder, several processes ---------------------------------------------


async def test_two_demos_share_the_server_and_only_the_last_one_out_stops_it(
    data_dir: Path, demos: list[Demo]
) -> None:
    first, _ = await start_demo(data_dir)
    demos.append(first)
    second, second_url = await start_demo(data_dir)
    demos.append(second)
    await second.wait_for(r"sharing the embedded server with pid \d+ \(pgflow demo\)")

    assert await first.stop() == 0
    assert re.search(r"leaving the embedded server running for pid \d+ \(pgflow demo\)",
                     first.output)
    assert (data_dir / "pgdata" / "postmaster.pid").exists()
    run = await run_diamond(second_url)  # the second demo still has its database
    assert run["status"] == "completed", run
    assert "stopped under this process" not in second.output

    assert await second.stop() == 0
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()  # the last one out stopped it
    assert not (data_dir / "pgdata").is_symlink()  # in place: /tmp is open to the service user
    assert "Traceback" not in first.output + second.output


async def test_a_server_stopped_under_a_demo_is_reported_in_one_line_and_restarted(
    data_dir: Path, demos: list[Demo]
) -> None:
    demo, url = await start_demo(data_dir)
    demos.append(demo)
    port = PostgresCluster(data_dir).running_port()
    await asyncio.to_thread(PostgresCluster(data_dir).shutdown)  # someone ran pg_ctl stop

    await demo.wait_for(r"embedded PostgreSQL is back on 127\.0\.0\.1:\d+")
    gone = re.findall(r".*stopped under this process.*", demo.output)
    assert len(gone) == 1, demo.output
    assert '"received fast shutdown request"' in gone[0]
    assert PostgresCluster(data_dir).running_port() == port  # same URL as before
    run = await run_diamond(url)
    assert run["status"] == "completed", run
    assert await demo.stop() == 0
    assert "Traceback" not in demo.output  # the outage is told in lines, not stack traces


def test_db_start_url_status_and_stop_share_with_other_users(data_dir: Path) -> None:
    env = embedded_env(PGFLOW_DATA_DIR=str(data_dir))  # the variable picks the data folder
    started = pgflow("db", "start", env=env)
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip()
    assert re.fullmatch(r"postgresql://postgres@127\.0\.0\.1:\d+/postgres", url)
    assert pgflow("db", "url", env=env).stdout.strip() == url
    assert (data_dir / "server.pinned").exists()

    # a migrate on the pinned server leaves it running
    migrated = pgflow("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert pgflow("db", "url", env=env).stdout.strip() == url

    # another pgflow process uses it: `db stop` names it and leaves the server alone
    users = ServerUsers(data_dir)
    users.add("pgflow demo", pid=os.getpid())
    try:
        refused = pgflow("db", "stop", env=env)
        assert refused.returncode == 1
        assert f"still used by pid {os.getpid()} (pgflow demo)" in refused.stderr
        status = pgflow("db", "status", env=env)
        # the refused stop unpinned it: it stops when that process exits
        assert f"used by: pid {os.getpid()} (pgflow demo)" in status.stdout
        assert str(data_dir / "pgdata") in status.stdout
    finally:
        users.remove(pid=os.getpid())

    stopped = pgflow("db", "stop", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()
    missing = pgflow("db", "url", env=env)
    assert missing.returncode == 1
    assert "pgflow db start" in missing.stderr


def test_entries_of_processes_that_died_do_not_keep_the_server(tmp_path: Path) -> None:
    users = ServerUsers(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    users.add("pgflow demo", pid=int(dead.stdout))
    users.add("pgflow serve", pid=os.getpid())
    assert [user.pid for user in users.live()] == [os.getpid()]
    assert users.live(exclude=os.getpid()) == []
    assert not (tmp_path / "users" / dead.stdout.strip()).exists()


# --- item 21: as root, nothing outside the data folder changes mode ---------------------------


async def select_one(url: str) -> Any:
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetchval("select 1")
    finally:
        await connection.close()


def modes_up_to_root(path: Path) -> dict[Path, int]:
    return {folder: stat.S_IMODE(folder.stat().st_mode) for folder in path.absolute().parents}


def assert_used_in_place(data_dir: Path, private_parent: Path) -> None:
    data_dir.parent.mkdir(exist_ok=True)
    before = modes_up_to_root(data_dir)
    cluster = PostgresCluster(data_dir)
    try:
        assert asyncio.run(select_one(cluster.start())) == 1
        assert cluster.pgdata == data_dir.absolute() / "pgdata"
        assert not (data_dir / "pgdata").is_symlink()
        assert modes_up_to_root(data_dir) == before
        assert stat.S_IMODE(private_parent.stat().st_mode) == 0o700
    finally:
        cluster.kill()


@pytest.fixture
def private_parent() -> Iterator[Path]:
    """A folder like /root: 0700, owned by root."""
    with temporary_folder("pgflow-private-parent-", 0o700) as directory:
        yield directory


def test_as_root_data_and_binaries_under_a_private_folder_leave_its_mode_alone(
    private_parent: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if os.geteuid() != 0:
        # Not root, the server runs as this user, who owns the private folder: no service
        # user, nothing relocated, no mode changed (CI runs the root case below).
        assert_used_in_place(private_parent / "project" / ".pgflow", private_parent)
        return
    data_dir = private_parent / "project" / ".pgflow"
    data_dir.parent.mkdir()
    # A virtualenv inside the private folder, laid out as pip installs the wheel.
    wheel = embedded_bin_dir().parent.parent
    site = private_parent / "venv" / "site-packages"
    install = site / wheel.name / "pginstall"
    shutil.copytree(wheel / "pginstall", install, symlinks=True)
    shutil.copytree(wheel.with_name(f"{wheel.name}.libs"), site / f"{wheel.name}.libs")
    before = {**modes_up_to_root(data_dir), **modes_up_to_root(install / "bin")}
    cluster = PostgresCluster(data_dir, bin_dir=install / "bin")
    try:
        url = cluster.start()
        assert cluster._server_bin is not None
        assert cluster._server_bin.is_relative_to(placement.SERVICE_ROOT)  # a copy it can run
        assert asyncio.run(select_one(url)) == 1
        assert {**modes_up_to_root(data_dir), **modes_up_to_root(install / "bin")} == before
        assert stat.S_IMODE(private_parent.stat().st_mode) == 0o700
        place = placement.relocated_place(data_dir)
        assert cluster.pgdata == place / "pgdata"
        assert (data_dir / "pgdata").resolve() == place / "pgdata"
        assert str(place) in caplog.text  # the log says where the data went
        assert stat.S_IMODE(place.stat().st_mode) == 0o700
        assert place.owner() == placement.SERVICE_USER
    finally:
        cluster.kill()
        shutil.rmtree(placement.relocated_place(data_dir), ignore_errors=True)
        if cluster._server_bin is not None and cluster._server_bin != install / "bin":
            shutil.rmtree(cluster._server_bin.parents[2], ignore_errors=True)


def test_as_root_existing_data_behind_a_private_folder_gets_a_clear_message(
    private_parent: Path,
) -> None:
    if os.geteuid() != 0:  # the folder is this user's own: its data stays usable in place
        assert_used_in_place(private_parent / ".pgflow", private_parent)
        return
    # The data of an earlier version, in place: reachable then, the parent made private since.
    private_parent.chmod(0o755)
    data_dir = private_parent / ".pgflow"
    cluster = PostgresCluster(data_dir)
    cluster.start()
    cluster.shutdown()
    assert not (data_dir / "pgdata").is_symlink()
    again = PostgresCluster(data_dir)
    again.start()  # existing data in a reachable place keeps working, in place
    assert again.pgdata == data_dir.absolute() / "pgdata"
    again.shutdown()

    private_parent.chmod(0o700)
    with pytest.raises(ConfigurationError) as refused:
        PostgresCluster(data_dir).start()
    message = str(refused.value)
    assert f"cannot enter {private_parent} (mode 700)" in message
    assert f"chmod o+x {private_parent}" in message
    assert stat.S_IMODE(private_parent.stat().st_mode) == 0o700

    # The move it suggests, done verbatim, makes the same data work again.
    place = placement.relocated_place(data_dir)
    try:
        subprocess.run(["sh", "-c", message.split("which pgflow then uses: ")[1]], check=True)
        moved = PostgresCluster(data_dir)
        moved.start()
        assert moved.pgdata == place / "pgdata"
        moved.shutdown()
        assert stat.S_IMODE(private_parent.stat().st_mode) == 0o700
    finally:
        shutil.rmtree(place, ignore_errors=True)
