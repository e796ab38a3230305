"""The README, followed verbatim: its SQL in psql, its shell commands, its Python."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import asyncpg
import pytest

from pgflow.db.command import psql_binary
from pgflow.flows import Flow
from tests.integration.worker_helpers import running

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def blocks(language: str, text: str = README) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang == language]


PSQL_SECTION = section("Running a flow from `psql` alone")
SQL = "\n".join(blocks("sql", PSQL_SECTION))


async def check_the_runs(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        runs = await connection.fetch(
            "select run_id, status, input from pgflow.runs where flow_slug = 'sql_diamond' "
            "order by started_at"
        )
        assert [(run["status"], run["input"]) for run in runs] == [
            ("completed", '{"text": "hello"}'), ("started", '{"text": "again"}')
        ]
        failed = await connection.fetchval(
            "select pgflow.get_run($1) -> 'steps'", runs[1]["run_id"]
        )
        assert '"upstream timed out"' in failed
    finally:
        await connection.close()


def test_the_readme_has_the_sections_these_tests_follow() -> None:
    assert "pgflow.run_flow('sql_diamond'" in SQL
    assert any("pgflow db psql" in block for block in blocks("sh", PSQL_SECTION))
    assert "scripts/demo " in README
    assert "scripts/test " in README


async def test_the_readme_sql_runs_verbatim_in_psql(db_url: str) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [psql_binary(), "-X", "-v", "ON_ERROR_STOP=1", "-f", "-", db_url],
        input=SQL, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "ERROR" not in result.stderr
    await check_the_runs(db_url)


@pytest.fixture
def data_dir(embedded_data_dir: Path) -> Path:
    return embedded_data_dir  # open to the embedded server's user, as a project folder is


async def test_the_readme_psql_section_works_on_the_embedded_database(data_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["PGFLOW_DATA_DIR"] = str(data_dir)
    commands = [
        line for block in blocks("sh", PSQL_SECTION) for line in block.splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert [line.split("#")[0].split() for line in commands] == [
        [".venv/bin/pgflow", "db", "start"],
        [".venv/bin/pgflow", "migrate"],
        [".venv/bin/pgflow", "db", "psql"],
        [".venv/bin/pgflow", "db", "stop"],
    ]
    url = ""
    for line in commands:
        is_psql = " db psql" in line
        if " db stop" in line:
            await check_the_runs(url)
        result = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-c", line], cwd=REPO, env=env, input=SQL if is_psql else "",
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert result.returncode == 0, f"{line}\n{result.stderr}"
        if " db start" in line:
            url = result.stdout.strip()
            assert url.startswith("postgresql://postgres@127.0.0.1:")
        if is_psql:
            assert "ERROR" not in result.stderr, result.stderr
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()


def test_the_readme_python_defines_flows(tmp_path: Path) -> None:
    for number, code in enumerate(blocks("python")):
        namespace: dict[str, object] = {}
        exec(compile(code, f"README.md python block {number}", "exec"), namespace)
        assert any(isinstance(value, Flow) for value in namespace.values()), code


def test_the_readme_install_section_names_no_outside_link() -> None:
    install = section("Use PGFlow in your project")
    assert "pip install /path/to/pgflow" in install
    assert "pgflow worker --flows mymodule" in install
    assert "http" not in install.replace("/rpc/run_flow", "")


async def test_the_readme_steering_example_approves_a_run_from_python(db_url: str) -> None:
    steer = section("Call it from your own page")
    (code,) = [b for b in blocks("python", steer) if "input_step" in b]
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md steering block", "exec"), namespace)
    approval = namespace["approval"]
    assert isinstance(approval, Flow)
    async with running(db_url, [approval]):
        approve_notes = namespace["approve_notes"]
        assert callable(approve_notes)
        output = await asyncio.wait_for(approve_notes(db_url), 30)
    assert output == {"published": True}
