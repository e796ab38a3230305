"""The README's example, pasted into a page served from another origin, run in Chromium."""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.conftest import REPO, WatchedPage, start_demo, stop_demo
from pgflow.db.local_server import free_port

README_SNIPPET = re.compile(r'```html\n(<script type="module">.*?</script>)\n```', re.S)


@pytest.fixture
def page_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain static server on another port: 'a page served anywhere'."""
    port = free_port()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", tmp_path
    server.shutdown()
    server.server_close()


async def test_the_readme_example_runs_in_a_page_from_another_origin(
    db_url: str, page_server: tuple[str, Path], page: WatchedPage
) -> None:
    origin, directory = page_server
    env = {**os.environ, "PGFLOW_EXAMPLE_DELAY_SCALE": "0.1"}
    gateway = await start_demo(
        [
            "--database-url",
            db_url,
            "--with-worker",
            "--flows",
            "examples.flows",
            "--cors-origin",
            origin,
            "--allowed-origin",
            origin,
        ],
        env,
        command="serve",
    )
    try:
        match = README_SNIPPET.search((REPO / "README.md").read_text())
        assert match, "the README's browser example was not found"
        snippet = (
            match.group(1)
            .replace("http://127.0.0.1:8000", gateway.url)
            .replace('"analyze", { text: "Hello PGFlow" }', '"diamond", { text: "Hello PGFlow" }')
        )
        (directory / "index.html").write_text(f"<!doctype html><title>mine</title>{snippet}")
        await page.page.route("**/favicon.ico", lambda route: route.fulfill(status=204))
        await page.page.goto(origin + "/")
        await page.page.wait_for_function(
            "document.body && document.body.textContent.startsWith('{')", timeout=20_000
        )
        shown = await page.page.evaluate("JSON.parse(document.body.textContent)")
        assert shown["words"] == 2
        assert shown["summary"].startswith("Hello PGFlow")
        assert page.problems == []
    finally:
        await stop_demo(gateway)
