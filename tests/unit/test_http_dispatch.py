"""HttpDispatcher against a real local server: what each answer of a function means
(docs/reference/http-steps.md), the signature and token it sends, and its concurrency bound."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from pgflow.db.store import Task
from pgflow.signing import SignatureError, read_token, verify_signature
from pgflow.worker._http_dispatch import (
    Completed,
    Deferred,
    Failed,
    HttpDispatcher,
)
from tests.local_http import TIMEOUT, refused_url, serving

SECRET = "dispatch-test-secret"
WORKER = "test-worker-1"


def task(**changes: Any) -> Task:
    fields: dict[str, Any] = {
        "run_id": uuid.uuid4(), "flow_slug": "site", "step_slug": "render", "attempt": 1,
        "input": {"run": {"title": "Hello"}}, "timeout": 5, "max_attempts": 3,
    }
    fields.update(changes)
    return Task(**fields)


class Function:
    """The functions under test, and what they saw."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.crowded = asyncio.Event()
        self.crowd = 8
        self.release = asyncio.Event()  # set when the tests are done: /hang answers
        self.hanging = asyncio.Event()  # a call to /hang arrived

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/ok", self.ok, methods=["POST"]),
            Route("/defer", self.defer, methods=["POST"]),
            Route("/status/{code:int}", self.status, methods=["POST"]),
            Route("/hang", self.hang, methods=["POST"]),
            Route("/raw/{kind}", self.raw, methods=["POST"]),
            Route("/big/{declared}", self.big, methods=["POST"]),
            Route("/crowd", self.crowded_call, methods=["POST"]),
        ])

    async def ok(self, request: Request) -> Response:
        body = await request.body()
        self.requests.append((dict(request.headers), body))
        try:
            verify_signature(SECRET, body, request.headers.get("pgflow-signature"))
        except SignatureError as exc:
            return Response(str(exc), 401)
        sent = orjson.loads(body)
        return Response(orjson.dumps({"output": {"html": f"<h1>{sent['input']['run']['title']}"
                                                          "</h1>"}}),
                        media_type="application/json")

    async def defer(self, request: Request) -> Response:
        self.requests.append((dict(request.headers), await request.body()))
        return Response(status_code=202)

    async def status(self, request: Request) -> Response:
        code = request.path_params["code"]
        return Response(f"status {code} " + "x" * 500, code)

    async def hang(self, request: Request) -> Response:
        self.hanging.set()
        await self.release.wait()  # long after the client gave up
        return Response(b'{"output": "late"}', media_type="application/json")

    async def raw(self, request: Request) -> Response:
        bodies = {
            "text": b"hello, not JSON",
            "list": b"[1, 2]",
            "nooutput": b'{"result": 1}',
            "null": b'{"output": null}',
            "nul": b'{"output": "a\\u0000b"}',
            "empty": b"",
        }
        return Response(bodies[request.path_params["kind"]], 200,
                        media_type="application/json")

    async def big(self, request: Request) -> Response:
        chunk = b"x" * 65536
        count = 17  # 1 MiB + 64 KiB
        if request.path_params["declared"] == "yes":
            return Response(chunk * count, 200, media_type="application/json")

        async def stream() -> AsyncIterator[bytes]:
            for _ in range(count):
                yield chunk

        return StreamingResponse(stream(), 200, media_type="application/json")

    async def crowded_call(self, request: Request) -> Response:
        await request.body()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if self.in_flight >= self.crowd:
            self.crowded.set()
        # hold on until the crowd is complete (bounded: a slow machine may never reach it)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.crowded.wait(), 0.2)
        await asyncio.sleep(0.005)
        self.in_flight -= 1
        self.crowded.clear()
        return Response(b'{"output": 1}', media_type="application/json")


@pytest.fixture(scope="module")
async def function() -> AsyncIterator[tuple[Function, str]]:
    fn = Function()
    async with serving(fn.app()) as url:
        try:
            yield fn, url
        finally:
            fn.release.set()


@pytest.fixture
async def dispatcher() -> AsyncIterator[HttpDispatcher]:
    d = HttpDispatcher(SECRET, concurrency=8, callback_url="http://gateway.test:8000/")
    try:
        yield d
    finally:
        await d.aclose()


async def test_200_with_output_completes(function: tuple[Function, str],
                                         dispatcher: HttpDispatcher) -> None:
    _fn, url = function
    outcome = await dispatcher.call(task(), f"{url}/ok", WORKER)
    assert outcome == Completed({"html": "<h1>Hello</h1>"})


async def test_the_request_is_signed_and_carries_a_scoped_token(
        function: tuple[Function, str], dispatcher: HttpDispatcher) -> None:
    fn, url = function
    sent = task(attempt=2, timeout=7, input={"run": {"title": "T"}, "fetch": [1, 2]})
    before = time.time()
    assert isinstance(await dispatcher.call(sent, f"{url}/ok", WORKER), Completed)
    headers, body = fn.requests[-1]
    assert headers["content-type"] == "application/json"
    verify_signature(SECRET, body, headers["pgflow-signature"])
    with pytest.raises(SignatureError, match="mismatch"):
        verify_signature("another secret", body, headers["pgflow-signature"])
    message = orjson.loads(body)
    assert set(message) == {"run_id", "step_slug", "attempt", "input", "token", "callback"}
    assert message["run_id"] == str(sent.run_id)
    assert (message["step_slug"], message["attempt"]) == ("render", 2)
    assert message["input"] == {"run": {"title": "T"}, "fetch": [1, 2]}
    assert message["callback"] == {"complete": "http://gateway.test:8000/rpc/complete_step",
                                   "fail": "http://gateway.test:8000/rpc/fail_step"}
    claims = read_token(SECRET, message["token"])
    assert (claims.run_id, claims.step_slug, claims.attempt, claims.worker_id) == (
        sent.run_id, "render", 2, WORKER)
    assert before + 7 + 60 - 1 <= claims.expires_at <= time.time() + 7 + 60


async def test_a_function_with_another_secret_refuses_and_that_is_final(
        function: tuple[Function, str]) -> None:
    _fn, url = function
    wrong = HttpDispatcher("not the function's secret")
    try:
        outcome = await wrong.call(task(), f"{url}/ok", WORKER)
    finally:
        await wrong.aclose()
    assert isinstance(outcome, Failed)
    assert outcome.final
    assert outcome.error.startswith(f"HTTP 401 from {url}/ok: signature mismatch")


async def test_202_defers(function: tuple[Function, str], dispatcher: HttpDispatcher) -> None:
    fn, url = function
    assert await dispatcher.call(task(), f"{url}/defer", WORKER) == Deferred()
    assert orjson.loads(fn.requests[-1][1])["token"].startswith("pgflow1.")


@pytest.mark.parametrize("code", [400, 401, 403, 404, 405, 409, 410, 413, 422, 451, 499])
async def test_4xx_fails_for_good(function: tuple[Function, str], dispatcher: HttpDispatcher,
                                  code: int) -> None:
    _fn, url = function
    outcome = await dispatcher.call(task(), f"{url}/status/{code}", WORKER)
    assert isinstance(outcome, Failed)
    assert outcome.final
    prefix = f"HTTP {code} from {url}/status/{code}: "
    assert outcome.error.startswith(prefix + f"status {code} xxx")
    assert len(outcome.error) == len(prefix) + 200  # the body's first 200 characters


@pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 504, 599, 201, 204, 302, 304])
async def test_408_429_5xx_and_other_statuses_are_retried(
        function: tuple[Function, str], dispatcher: HttpDispatcher, code: int) -> None:
    _fn, url = function
    outcome = await dispatcher.call(task(), f"{url}/status/{code}", WORKER)
    assert isinstance(outcome, Failed)
    assert not outcome.final
    assert outcome.error.startswith(f"HTTP {code} from {url}/status/{code}")


@pytest.mark.parametrize("kind", ["text", "list", "nooutput", "empty", "nul"])
async def test_a_200_without_a_usable_output_is_retried(
        function: tuple[Function, str], dispatcher: HttpDispatcher, kind: str) -> None:
    _fn, url = function
    outcome = await dispatcher.call(task(), f"{url}/raw/{kind}", WORKER)
    assert isinstance(outcome, Failed), outcome
    assert not outcome.final
    assert outcome.error.startswith(f"HTTP 200 from {url}/raw/{kind}")
    assert "\x00" not in outcome.error


async def test_a_null_output_completes(function: tuple[Function, str],
                                       dispatcher: HttpDispatcher) -> None:
    _fn, url = function
    assert await dispatcher.call(task(), f"{url}/raw/null", WORKER) == Completed(None)


@pytest.mark.parametrize("declared", ["yes", "no"])
async def test_an_answer_over_1_mib_is_retried(function: tuple[Function, str],
                                               dispatcher: HttpDispatcher, declared: str) -> None:
    _fn, url = function
    outcome = await dispatcher.call(task(), f"{url}/big/{declared}", WORKER)
    assert outcome == Failed(f"response over 1 MiB from {url}/big/{declared}", final=False)


async def test_a_function_past_the_step_timeout_is_retried(
        function: tuple[Function, str], dispatcher: HttpDispatcher) -> None:
    _fn, url = function
    started = time.monotonic()
    outcome = await dispatcher.call(task(timeout=1), f"{url}/hang", WORKER)
    assert outcome == Failed(f"no answer from {url}/hang within 1 s", final=False)
    assert time.monotonic() - started < TIMEOUT
    assert dispatcher.in_flight == 0


async def test_a_refused_connection_is_retried(dispatcher: HttpDispatcher) -> None:
    url = refused_url()
    outcome = await dispatcher.call(task(), f"{url}/fn", WORKER)
    assert isinstance(outcome, Failed)
    assert not outcome.final
    assert outcome.error.startswith(f"cannot reach {url}/fn: ")


async def test_a_reset_connection_is_retried(dispatcher: HttpDispatcher) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        outcome = await dispatcher.call(task(), f"http://127.0.0.1:{port}/fn", WORKER)
    finally:
        server.close()
        await server.wait_closed()
    assert isinstance(outcome, Failed)
    assert not outcome.final
    assert outcome.error.startswith(f"cannot reach http://127.0.0.1:{port}/fn: ")


async def test_relative_urls_resolve_against_the_base_url(
        function: tuple[Function, str]) -> None:
    fn, url = function
    based = HttpDispatcher(SECRET, base_url=url + "/")
    try:
        assert isinstance(await based.call(task(), "/ok", WORKER), Completed)
        # without --callback-url, the functions call back the base URL
        assert orjson.loads(fn.requests[-1][1])["callback"] == {
            "complete": f"{url}/rpc/complete_step", "fail": f"{url}/rpc/fail_step"}
    finally:
        await based.aclose()


async def test_a_relative_url_without_a_base_url_fails_for_good(
        dispatcher: HttpDispatcher) -> None:
    assert await dispatcher.call(task(), "/functions/render", WORKER) == Failed(
        "relative url '/functions/render' needs --http-base-url", final=True)


@pytest.mark.parametrize("url", ["functions/render", "ftp://host/x", ""])
async def test_other_urls_fail_for_good(dispatcher: HttpDispatcher, url: str) -> None:
    outcome = await dispatcher.call(task(), url, WORKER)
    assert isinstance(outcome, Failed)
    assert outcome.final


async def test_without_a_callback_url_the_callback_is_null(
        function: tuple[Function, str]) -> None:
    fn, url = function
    plain = HttpDispatcher(SECRET.encode())
    try:
        assert await plain.call(task(), f"{url}/defer", WORKER) == Deferred()
    finally:
        await plain.aclose()
    assert orjson.loads(fn.requests[-1][1])["callback"] is None


async def test_at_most_concurrency_calls_are_in_flight(
        function: tuple[Function, str], dispatcher: HttpDispatcher) -> None:
    fn, url = function
    async with asyncio.timeout(TIMEOUT):
        outcomes = await asyncio.gather(*(
            dispatcher.call(task(), f"{url}/crowd", WORKER) for _ in range(100)))
    assert outcomes == [Completed(1)] * 100
    assert fn.most_in_flight <= 8
    assert fn.most_in_flight >= 2, fn.most_in_flight  # they did overlap
    assert dispatcher.in_flight == 0


async def test_a_cancelled_call_frees_its_slot(function: tuple[Function, str]) -> None:
    fn, url = function
    single = HttpDispatcher(SECRET, concurrency=1)
    try:
        call = asyncio.create_task(single.call(task(timeout=60), f"{url}/hang", WORKER))
        fn.hanging.clear()
        async with asyncio.timeout(TIMEOUT):
            await fn.hanging.wait()
        assert single.in_flight == 1
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert single.in_flight == 0
        async with asyncio.timeout(TIMEOUT):
            assert isinstance(await single.call(task(), f"{url}/ok", WORKER), Completed)
    finally:
        await single.aclose()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        HttpDispatcher(SECRET, concurrency=0)
    with pytest.raises(ValueError, match="empty"):
        HttpDispatcher("")


# -- the command line's options, as the worker gets them -------------------------------------


def test_worker_options_reach_the_worker_kwargs(monkeypatch: pytest.MonkeyPatch) -> None:
    from pgflow.cli import build_parser
    from pgflow.worker._options import http_step_options

    monkeypatch.delenv("PGFLOW_HTTP_SECRET", raising=False)
    args = build_parser().parse_args([
        "worker", "--flows", "x", "--http-secret", "s", "--http-concurrency", "8",
        "--http-base-url", "https://fn.example/base/", "--callback-url", "http://gw:8000"])
    assert http_step_options(args.http_secret, args.http_concurrency, args.http_base_url,
                             args.callback_url) == {
        "http_secret": "s", "http_concurrency": 8, "http_base_url": "https://fn.example/base",
        "callback_url": "http://gw:8000"}
    # without a secret HTTP steps are off: the Worker gets none of them
    args = build_parser().parse_args(["worker", "--flows", "x", "--http-concurrency", "8"])
    assert http_step_options(args.http_secret, args.http_concurrency, args.http_base_url,
                             args.callback_url) == {}
    monkeypatch.setenv("PGFLOW_HTTP_SECRET", "from-env")
    args = build_parser().parse_args(["worker", "--flows", "x"])
    assert http_step_options(args.http_secret) == {"http_secret": "from-env"}


@pytest.mark.parametrize("url", ["fn.example", "ftp://fn.example", "http://", "http://h:99999",
                                 "http://h/?q=1"])
def test_bad_urls_are_usage_errors(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from pgflow.cli import build_parser

    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["worker", "--flows", "x", "--http-base-url", url])
    assert exited.value.code == 2
    assert "--http-base-url" in capsys.readouterr().err


@pytest.mark.parametrize(("command", "host", "port", "expected"), [
    (["serve", "--with-worker"], "127.0.0.1", 8123, "http://127.0.0.1:8123"),
    (["demo"], "0.0.0.0", 8124, "http://127.0.0.1:8124"),
    (["serve", "--with-worker"], "::", 8125, "http://[::1]:8125"),
    (["demo"], "localhost", 8126, "http://localhost:8126"),
])
def test_serve_and_demo_default_to_the_gateways_own_url(
        command: list[str], host: str, port: int, expected: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pgflow.cli import build_parser
    from pgflow.serve import http_worker_options

    monkeypatch.delenv("PGFLOW_HTTP_SECRET", raising=False)
    args = build_parser().parse_args(
        [*command, "--host", host, "--port", str(port), "--http-secret", "s"])
    assert http_worker_options(args) == ({"http_secret": "s", "http_base_url": expected,
                                          "callback_url": expected}, port)
    args = build_parser().parse_args(
        [*command, "--port", str(port), "--http-secret", "s", "--http-base-url",
         "https://fn.example", "--http-concurrency", "3"])
    assert http_worker_options(args) == ({
        "http_secret": "s", "http_concurrency": 3, "http_base_url": "https://fn.example",
        "callback_url": f"http://127.0.0.1:{port}"}, port)
    args = build_parser().parse_args([*command, "--port", str(port)])
    assert http_worker_options(args) == ({}, port)


def test_port_0_is_resolved_before_the_server_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    from pgflow.cli import build_parser
    from pgflow.serve import http_worker_options

    monkeypatch.delenv("PGFLOW_HTTP_SECRET", raising=False)
    args = build_parser().parse_args(["demo", "--port", "0", "--http-secret", "s"])
    options, port = http_worker_options(args)
    assert port > 0
    assert options["http_base_url"] == options["callback_url"] == f"http://127.0.0.1:{port}"
