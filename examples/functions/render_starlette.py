"""An HTTP step's function as a Starlette app, without PGFlow installed (Starlette, httpx).

    PGFLOW_HTTP_SECRET=... uvicorn examples.functions.render_starlette:app --port 8787

and in the flow: ``flow.http_step("render", url="http://127.0.0.1:8787/render", ...)``. It
renders ``{"html": "<h1>…</h1>"}`` from the run input's ``title``. When the run input asks for
``{"sync": true}`` it answers at once (200 ``{"output": …}``); otherwise it accepts the work
(202) and calls the gateway back when done, with the token the request carried. The protocol:
docs/reference/http-steps.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import html
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TOLERANCE = 300  # seconds a signature's timestamp may be off our clock


def verify(secret: str, raw_body: bytes, header: str | None) -> bool:
    """True when ``header`` (PGFlow-Signature: ``t=<unix seconds>,v1=<hex>[,v1=…]``) signs
    ``raw_body`` (the bytes as received) with ``secret``, within the tolerance."""
    fields = [item.strip().partition("=") for item in (header or "").split(",")]
    stamps = [value for key, _, value in fields if key == "t"]
    signatures = [value.lower() for key, _, value in fields if key == "v1"]
    if len(stamps) != 1 or not (stamps[0].isascii() and stamps[0].isdigit()):
        return False
    if abs(time.time() - int(stamps[0])) > TOLERANCE:
        return False
    expected = hmac.new(secret.encode(), stamps[0].encode() + b"." + raw_body,
                        hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(s.encode(), expected.encode()) for s in signatures
               if s.isascii())


async def _call_back(url: str, body: dict[str, Any]) -> bool:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(url, json=body)
    response.raise_for_status()
    return bool(response.json()["applied"])  # False: too late (the attempt was given up)


async def complete(callback_url: str, token: str, output: Any) -> bool:
    """Completes the step: ``callback_url`` is the request's ``callback.complete``."""
    return await _call_back(callback_url, {"token": token, "output": output})


async def fail(callback_url: str, token: str, error: str) -> bool:
    """Fails this attempt (the step's retries apply): ``callback.fail`` of the request."""
    return await _call_back(callback_url, {"token": token, "error": error[:4000]})


def render(step_input: Any) -> dict[str, str]:
    title = (step_input.get("run") or {}).get("title") if isinstance(step_input, dict) else None
    if not isinstance(title, str):
        raise ValueError("input.run.title must be a string")
    return {"html": f"<h1>{html.escape(title)}</h1>"}


async def render_later(job: dict[str, Any]) -> None:
    try:
        output = render(job["input"])
    except ValueError as error:
        await fail(job["callback"]["fail"], job["token"], str(error))
        return
    await complete(job["callback"]["complete"], job["token"], output)


async def render_step(request: Request) -> Response:
    raw = await request.body()
    if not verify(request.app.state.secret, raw, request.headers.get("pgflow-signature")):
        return JSONResponse({"error": "bad signature"}, 401)
    job = await request.json()
    run = job["input"].get("run") if isinstance(job["input"], dict) else None
    if (isinstance(run, dict) and run.get("sync")) or not job["callback"]:
        try:
            return JSONResponse({"output": render(job["input"])})
        except ValueError as error:
            return JSONResponse({"error": str(error)}, 422)  # fails the step for good
    # accepted: the result comes by callback, once this answer is sent
    return Response(status_code=202, background=BackgroundTask(render_later, job))


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    if not app.state.secret:  # refuse to start rather than answer 401 to everything
        raise RuntimeError("set PGFLOW_HTTP_SECRET to the secret of pgflow's --http-secret")
    yield


def make_app(secret: str | None = None) -> Starlette:
    """The function's app; ``secret``: default ``$PGFLOW_HTTP_SECRET``."""
    app = Starlette(routes=[Route("/render", render_step, methods=["POST"])],
                    lifespan=_lifespan)
    app.state.secret = os.environ.get("PGFLOW_HTTP_SECRET", "") if secret is None else secret
    return app


app = make_app()
