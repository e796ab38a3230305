"""HTTP steps: POSTing a claimed task to its function and reading what the answer means.

``HttpDispatcher.call(task, url, worker_id)`` sends one attempt of an HTTP step (the protocol:
docs/reference/http-steps.md) and returns an ``HttpOutcome``:

- ``Completed(output)``: 200 with a JSON object carrying ``"output"``;
- ``Deferred()``: 202, the function will call back (``/rpc/complete_step``, ``/rpc/fail_step``)
  with the token the request carried;
- ``Failed(error, final)``: ``final`` for a 4xx other than 408 and 429 (the request itself is
  wrong: more attempts would get the same), else a failed attempt the step's retries cover
  (5xx, 408, 429, a timeout, a refused or reset connection, an answer that is not the
  protocol's).

It never raises for what a function does; only cancellation goes through. One ``httpx``
client serves every call (keep-alive, at most ``concurrency`` connections), and a semaphore
bounds the calls in flight to ``concurrency``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from pgflow.db.json_values import UnstorableJSONError, encode_json
from pgflow.db.store import Task
from pgflow.signing import SIGNATURE_HEADER, make_token, signature_header
from pgflow.worker._attempts import clip

DEFAULT_HTTP_CONCURRENCY = 64  # calls in flight per process
MAX_RESPONSE_BYTES = 1024 * 1024  # of a function's answer, after content decoding
TOKEN_GRACE = 60  # seconds a token outlives the step's timeout
DEFAULT_CALL_TIMEOUT = 30.0  # seconds, for a task without a positive timeout
ERROR_BODY_CHARS = 200  # of an answer's body quoted in an error

# httpx logs every request at INFO: a line per call would bury the worker's own log; what a
# call came to is logged by the worker when it fails
logging.getLogger("httpx").setLevel(logging.WARNING)
COMPLETE_PATH = "/rpc/complete_step"
FAIL_PATH = "/rpc/fail_step"


@dataclass(frozen=True, slots=True)
class Completed:
    """The function answered 200 with ``{"output": ...}``: the step's output."""

    output: Any


@dataclass(frozen=True, slots=True)
class Deferred:
    """The function answered 202: it will call back with the request's token."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The attempt failed; ``final``: the step fails without more attempts."""

    error: str
    final: bool


HttpOutcome = Completed | Deferred | Failed


class _TooLarge(Exception):
    pass


def _snippet(body: bytes) -> str:
    text = body[: ERROR_BODY_CHARS * 4].decode("utf-8", "replace")
    return text[:ERROR_BODY_CHARS]


class HttpDispatcher:
    """POSTs HTTP steps' tasks to their functions, signed with ``secret``.

    Args:
        secret: the HMAC secret shared with the functions and the gateway (``--http-secret``).
        concurrency: calls in flight at once in this process (``--http-concurrency``); more
            wait their turn.
        base_url: what a relative url (``/functions/render``) is resolved against
            (``--http-base-url``).
        callback_url: the gateway base the functions call back (``--callback-url``); default:
            ``base_url``; with neither the request's ``callback`` is null.
        client: an ``httpx.AsyncClient`` to use instead of the dispatcher's own (not closed
            by ``aclose``).
    """

    def __init__(
        self,
        secret: bytes | str,
        *,
        concurrency: int = DEFAULT_HTTP_CONCURRENCY,
        base_url: str | None = None,
        callback_url: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ValueError(f"the HTTP concurrency must be at least 1, not {concurrency!r}")
        self._secret = secret.encode() if isinstance(secret, str) else bytes(secret)
        if not self._secret:
            raise ValueError("the HTTP-step secret is empty")
        self.concurrency = concurrency
        self.base_url = base_url.rstrip("/") if base_url else None
        callback = (callback_url or base_url or "").rstrip("/")
        self.callback: dict[str, str] | None = (
            {"complete": callback + COMPLETE_PATH, "fail": callback + FAIL_PATH}
            if callback else None)
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(
            limits=httpx.Limits(max_connections=concurrency,
                                max_keepalive_connections=concurrency),
            timeout=httpx.Timeout(DEFAULT_CALL_TIMEOUT),
            follow_redirects=False,
            headers={"User-Agent": "pgflow-worker"},
        )
        self._slots = asyncio.Semaphore(concurrency)
        self.in_flight = 0

    def resolve(self, url: str) -> str | Failed:
        """The absolute URL of a step's ``url``, or why there is none (a final failure)."""
        if url.startswith(("http://", "https://")):
            return url
        if url.startswith("/"):
            if self.base_url is None:
                return Failed(f"relative url {url!r} needs --http-base-url", final=True)
            return self.base_url + url
        return Failed(f"url {url!r} is neither http(s)://… nor a path starting with /",
                      final=True)

    def request_body(self, task: Task, worker_id: str, timeout: float) -> bytes:
        """The JSON body of the request for one attempt of ``task``, with its token."""
        token = make_token(self._secret, task.run_id, task.step_slug, task.attempt, worker_id,
                           int(time.time() + timeout + TOKEN_GRACE))
        return orjson.dumps({
            "run_id": str(task.run_id), "step_slug": task.step_slug, "attempt": task.attempt,
            "input": task.input, "token": token, "callback": self.callback,
        })

    async def call(self, task: Task, url: str, worker_id: str) -> HttpOutcome:
        """POSTs one attempt of ``task`` to ``url`` and says what the answer means.

        Waits for a free slot first (at most ``concurrency`` calls in flight); the call itself
        gets ``task.timeout`` seconds, connecting and reading the answer included.
        """
        target = self.resolve(url)
        if isinstance(target, Failed):
            return target
        timeout = float(task.timeout) if task.timeout and task.timeout > 0 else (
            DEFAULT_CALL_TIMEOUT)
        async with self._slots:
            self.in_flight += 1
            try:
                body = self.request_body(task, worker_id, timeout)
                headers = {"Content-Type": "application/json",
                           SIGNATURE_HEADER: signature_header(self._secret, body)}
                try:
                    async with asyncio.timeout(timeout):
                        status, answer = await self._post(target, body, headers, timeout)
                except TimeoutError:
                    return Failed(f"no answer from {target} within {timeout:g} s", final=False)
                except _TooLarge:
                    return Failed(f"response over 1 MiB from {target}", final=False)
                except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
                    return Failed(clip(f"cannot call {target}: {exc}"), final=True)
                except httpx.TimeoutException:
                    return Failed(f"no answer from {target} within {timeout:g} s", final=False)
                except (httpx.HTTPError, OSError) as exc:
                    reason = str(exc) or type(exc).__name__
                    return Failed(clip(f"cannot reach {target}: {reason}"), final=False)
                return self._outcome(target, status, answer)
            finally:
                self.in_flight -= 1

    async def _post(self, url: str, body: bytes, headers: dict[str, str],
                    timeout: float) -> tuple[int, bytes]:
        """The answer's status and body, reading at most ``MAX_RESPONSE_BYTES``."""
        request = self._client.build_request("POST", url, content=body, headers=headers,
                                             timeout=timeout)
        response = await self._client.send(request, stream=True)
        try:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
                raise _TooLarge
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise _TooLarge
                chunks.append(chunk)
            return response.status_code, b"".join(chunks)
        finally:
            await response.aclose()

    @staticmethod
    def _outcome(url: str, status: int, body: bytes) -> HttpOutcome:
        if status == 202:
            return Deferred()
        if status == 200:
            try:
                answer = orjson.loads(body)
            except orjson.JSONDecodeError:
                answer = None
            if not isinstance(answer, dict) or "output" not in answer:
                return Failed(clip(f'HTTP 200 from {url} without a JSON object {{"output": …}}: '
                                   f"{_snippet(body)}"), final=False)
            try:
                encode_json(answer["output"])
            except UnstorableJSONError as exc:
                return Failed(clip(f"HTTP 200 from {url}: the output cannot be stored: {exc}"),
                              final=False)
            return Completed(answer["output"])
        final = 400 <= status < 500 and status not in (408, 429)
        return Failed(clip(f"HTTP {status} from {url}: {_snippet(body)}"), final=final)

    async def aclose(self) -> None:
        """Closes the dispatcher's own client (one passed in is the caller's to close)."""
        if self._own_client:
            await self._client.aclose()
