"""The chaos soak's HTTP function (bench/chaos.py): it misbehaves as functions do. Per call, at
random: answers at once; accepts (202) and calls back; calls back twice; calls back after the
step's timeout (stale by then: the task was given to another attempt); answers 503. The soak
also SIGKILLs it mid-call and starts it again on the same port.

    PGFLOW_HTTP_SECRET=... python bench/chaos_function.py --port 8799
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import random
import time
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

LATE = 4.0  # seconds: past the chaos flow's 3 s timeout


def verify(secret: str, body: bytes, header: str) -> bool:
    fields = dict(item.strip().partition("=")[::2] for item in header.split(","))
    stamp, signature = fields.get("t", ""), fields.get("v1", "")
    if not stamp.isdigit() or abs(time.time() - int(stamp)) > 300:
        return False
    expected = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature.encode(), expected.encode())


async def call_back(job: dict[str, Any], output: Any, times: int, delay: float) -> None:
    await asyncio.sleep(delay)
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        for _ in range(times):
            try:
                await http.post(job["callback"]["complete"],
                                json={"token": job["token"], "output": output})
            except httpx.HTTPError:
                return  # the gateway is away: the attempt's lease runs out, and it is retried


def make_app(secret: str, seed: int | None) -> Starlette:
    rng = random.Random(seed)

    async def call(request: Request) -> Response:
        body = await request.body()
        if not verify(secret, body, request.headers.get("pgflow-signature", "")):
            return JSONResponse({"error": "bad signature"}, 401)
        job = await request.json()
        output = {"squares": len(job["input"]["square"]), "attempt": job["attempt"]}
        roll = rng.random()
        if roll < 0.35:
            return JSONResponse({"output": output})
        if roll < 0.45:
            return JSONResponse({"error": "busy"}, 503)
        times, delay = (1, rng.uniform(0, 0.3))
        if roll > 0.9:
            times = 2  # the second is stale
        elif roll > 0.8:
            delay = LATE
        return Response(status_code=202, background=BackgroundTask(call_back, job, output, times,
                                                                   delay))

    return Starlette(routes=[Route("/call", call, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    app = make_app(os.environ["PGFLOW_HTTP_SECRET"], args.seed)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
