"""The reference in docs/reference/ names everything the code offers: a flag, a route, a SQL
function, an event type or a client export added without its documentation fails here."""

from __future__ import annotations

import argparse
import re
import typing
from pathlib import Path

import pytest

from pgflow.cli import build_parser
from pgflow.db.notifications import EventName

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "docs" / "reference"


def _page(name: str) -> str:
    return (REFERENCE / name).read_text()


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = sub
    return found


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def test_every_cli_command_and_option_is_in_the_cli_reference() -> None:
    page = _page("cli.md")
    parser = build_parser()
    missing = [f"pgflow {option}" for option in _options(parser) if f"`{option}" not in page]
    for name, sub in _subcommands(parser).items():
        if f"pgflow {name}" not in page:
            missing.append(f"pgflow {name}")
        for option in _options(sub):
            if f"`{option}" not in page:
                missing.append(f"pgflow {name} {option}")
        for inner, subsub in _subcommands(sub).items():
            if inner not in page:
                missing.append(f"pgflow {name} {inner}")
            missing += [f"pgflow {name} {inner} {o}" for o in _options(subsub)
                        if f"`{o}" not in page]
    assert not missing, f"not in docs/reference/cli.md: {missing}"


def test_every_http_route_is_in_the_http_reference() -> None:
    page = _page("http.md")
    # The routes as http.py declares them (building them needs a running gateway's parts).
    source = (REPO / "gateway" / "http.py").read_text()
    paths = re.findall(r'Route\("([^"]+)"', source)
    assert len(paths) >= 10, f"too few routes found: {paths}"
    missing = [path for path in paths if path not in page]
    assert not missing, f"not in docs/reference/http.md: {missing}"
    assert "/realtime" in _page("websocket.md")


@pytest.mark.parametrize("event", typing.get_args(EventName))
def test_every_event_type_is_in_the_events_reference(event: str) -> None:
    assert f"`{event}`" in _page("events.md")


def test_every_public_sql_function_is_in_the_sql_reference() -> None:
    page = _page("sql-api.md")
    functions = [
        re.match(r"0100_function_(\w+)\.sql", path.name).group(1)  # type: ignore[union-attr]
        for path in sorted((REPO / "sql" / "schema").glob("0100_function_*.sql"))
    ]
    assert functions, "no public SQL functions found"
    missing = [name for name in functions if f"{name}(" not in page]
    assert not missing, f"not in docs/reference/sql-api.md: {missing}"


def test_every_export_of_the_js_client_is_in_the_js_reference() -> None:
    source = (REPO / "client_js" / "client.js").read_text()
    exports = set(re.findall(
        r"^export (?:async )?(?:function|class|const|let)\s+(\w+)", source, re.MULTILINE))
    for names in re.findall(r"^export \{([^}]*)\}", source, re.MULTILINE):
        exports |= {n.strip().split(" as ")[-1] for n in names.split(",") if n.strip()}
    assert exports, "no exports found in client.js"
    page = _page("js-client.md")
    missing = sorted(name for name in exports if name not in page)
    assert not missing, f"not in docs/reference/js-client.md: {missing}"


def test_every_name_pgflow_exports_is_in_the_python_reference() -> None:
    import pgflow

    page = _page("python-api.md")
    missing = [name for name in pgflow.__all__ if name not in page]
    assert not missing, f"not in docs/reference/python-api.md: {missing}"
