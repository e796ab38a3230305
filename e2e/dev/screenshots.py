"""Screenshots of the live page against the dev server (node e2e/dev/server.mjs --seed).

    .venv/bin/python e2e/dev/screenshots.py [BASE_URL] [OUT_DIR]

Drives a completed diamond, a wide fan-out, a failed run and a retrying step at desktop and
phone widths, light and dark, and fails on any console error or warning.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

from playwright.sync_api import ConsoleMessage, Page, sync_playwright

BASE = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8765"
OUT = Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/pgflow-shots")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}


def inject(run_id: str, *rows: dict) -> None:
    req = urllib.request.Request(
        f"{BASE}/_dev/runs/{run_id}/events",
        data=json.dumps(list(rows)).encode(),
        method="POST",
        headers={"content-type": "application/json"},
    )
    urllib.request.urlopen(req).read()


def ev(
    event: str,
    slug: str | None,
    status: str,
    attempt: int | None = None,
    error: str | None = None,
    output: object = None,
) -> dict:
    return {
        "event": event,
        "step_slug": slug,
        "status": status,
        "output": output,
        "error": error,
        "attempt": attempt,
    }


def start(page: Page, flow: str, input_: object | None = None) -> str:
    page.get_by_test_id("flow-select").select_option(flow)
    if input_ is not None:
        page.get_by_test_id("input-editor").fill(json.dumps(input_, indent=2))
    before = page.locator("#run-view").get_attribute("data-run-id")
    page.get_by_test_id("run-button").click()
    page.wait_for_function(
        "b => { const v = document.querySelector('#run-view').dataset.runId; "
        "return v && v !== b; }",
        arg=before,
    )
    return page.locator("#run-view").get_attribute("data-run-id") or ""


def status_is(page: Page, status: str) -> None:
    page.wait_for_selector(f'[data-testid="run-status"][data-status="{status}"]', timeout=15000)


def watch(page: Page, where: str, problems: list[str]) -> None:
    """Records console errors and warnings and uncaught exceptions."""

    def on_console(m: ConsoleMessage) -> None:
        if m.type in ("error", "warning"):
            problems.append(f"{where} console.{m.type}: {m.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda e: problems.append(f"{where} pageerror: {e}"))


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        for scheme in ("light", "dark"):
            for name, (w, h) in SIZES.items():
                ctx = browser.new_context(
                    viewport={"width": w, "height": h},
                    color_scheme=scheme,
                    device_scale_factor=1 if name == "desktop" else 2,
                )
                page = ctx.new_page()
                watch(page, f"{scheme}/{name}", problems)
                page.goto(BASE + "/")
                page.wait_for_selector('[data-testid="flow-select"]:not([disabled])')
                tag = f"{name}-{scheme}"
                page.screenshot(path=OUT / f"{tag}-0-preview.png", full_page=True)

                start(page, "diamond")
                status_is(page, "completed")
                page.get_by_test_id("node-combine").focus()
                page.screenshot(path=OUT / f"{tag}-1-diamond.png", full_page=True)

                start(page, "fanout", {"items": 1200, "shards": 12, "_dev": {"speed": 3}})
                page.wait_for_selector('[data-testid^="node-shard"][data-status="completed"]')
                page.screenshot(path=OUT / f"{tag}-2-fanout-live.png", full_page=True)
                status_is(page, "completed")
                page.screenshot(path=OUT / f"{tag}-3-fanout-done.png", full_page=True)

                start(page, "checkout")
                status_is(page, "failed")
                page.screenshot(path=OUT / f"{tag}-4-failed.png", full_page=True)

                manual = {"endpoint": "https://api.example.org", "_dev": {"manual": True}}
                run_id = start(page, "flaky", manual)
                inject(
                    run_id,
                    ev("step:started", "prepare", "started", 1),
                    ev("step:completed", "prepare", "completed", 1, output={"ok": True}),
                    ev("step:started", "call_api", "started", 1),
                    ev("step:retrying", "call_api", "retrying", 1, "HTTP 503 from upstream"),
                )
                page.wait_for_selector('[data-testid="node-call_api"][data-status="retrying"]')
                page.get_by_test_id("node-call_api").hover()
                page.screenshot(path=OUT / f"{tag}-5-retrying.png", full_page=True)
                inject(run_id, ev("step:started", "call_api", "started", 2))
                page.wait_for_selector(
                    '[data-testid="node-call_api"][data-attempt="2"][data-status="started"]'
                )
                page.wait_for_timeout(700)
                page.get_by_test_id("node-call_api").focus()
                page.screenshot(path=OUT / f"{tag}-6-attempt2.png", full_page=True)

                # reload on ?run= replays to the current state
                page.goto(f"{BASE}/?run={run_id}")
                page.wait_for_selector('[data-testid="node-call_api"][data-attempt="2"]')
                page.screenshot(path=OUT / f"{tag}-7-reattach.png", full_page=False)
                ctx.close()
        browser.close()
    for line in problems:
        print(line)
    print(f"screenshots in {OUT}; {len(problems)} console problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
