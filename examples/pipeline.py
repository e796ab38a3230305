"""The demo's mixed flow: Python steps, a map step and an HTTP step in one run.

    pipeline  outline (Python) -> draft (map: one task per chapter, in parallel)
              -> render (HTTP: the example function, examples/functions/render_starlette.py)
              -> publish (Python)

``pgflow demo`` serves that function itself at ``/functions/render`` and dispatches to it with
a secret of its own, so the flow runs with nothing to set up. Elsewhere, run the function (or
your own, in any language: docs/reference/http-steps.md) and give the worker ``--http-secret``
and ``--http-base-url``. It lives apart from ``examples/flows.py``: a worker serving a flow with
an HTTP step needs the secret, and the other examples need nothing.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from pgflow import ConfigurationError, Flow


def _delay_scale() -> float:
    raw = os.environ.get("PGFLOW_EXAMPLE_DELAY_SCALE", "1.0")
    try:
        scale = float(raw)
    except ValueError:
        scale = -1.0
    if not scale >= 0:
        raise ConfigurationError(f"PGFLOW_EXAMPLE_DELAY_SCALE must be a number >= 0, not {raw!r}")
    return scale


DELAY_SCALE = _delay_scale()
CHAPTERS = 12  # default chapters, each a task of the map step
DRAFT_LATENCY = 0.4  # seconds per chapter, before scaling; chapters run side by side
DRAFT_LATENCY_STEP = 0.08  # seconds more per chapter index, so they finish one by one

pipeline = Flow(
    "pipeline",
    base_delay=0.2,
    timeout=30,
    description="Outlines a book, drafts every chapter in parallel (a map step: a task per "
    "chapter), renders the title with an HTTP function (any language), then publishes.",
    example_input={"title": "The Lighthouse", "chapters": CHAPTERS},
)


@pipeline.step()
async def outline(input: dict[str, Any]) -> list[dict[str, Any]]:
    run = input["run"] if isinstance(input["run"], dict) else {}
    count = run.get("chapters", CHAPTERS)
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 1000:
        raise ValueError("chapters must be a whole number from 0 to 1000")
    return [{"number": n + 1, "title": f"Chapter {n + 1}"} for n in range(count)]


@pipeline.map(over=outline)
async def draft(input: dict[str, Any]) -> dict[str, Any]:
    chapter = input["item"]
    await asyncio.sleep((DRAFT_LATENCY + DRAFT_LATENCY_STEP * (input["index"] % 8)) * DELAY_SCALE)
    return {"number": chapter["number"], "words": 900 + 37 * chapter["number"]}


render = pipeline.http_step("render", url="/functions/render", depends_on=[draft])


@pipeline.step(depends_on=[draft, render], output=True)
async def publish(input: dict[str, Any]) -> dict[str, Any]:
    return {"chapters": len(input["draft"]),
            "words": sum(chapter["words"] for chapter in input["draft"]),
            "cover": input["render"]["html"]}
