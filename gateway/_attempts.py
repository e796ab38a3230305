"""One attempt of one step: the handler called async or in a thread, under the step's timeout,
its result checked as JSON. Used by ``worker.py``; no database here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.flows import Flow, StepContext
from gateway.store import Task

logger = logging.getLogger(__name__)

MAX_ERROR_LENGTH = 4000  # characters of a handler's error kept in the run


@dataclass(frozen=True, slots=True)
class Runner:
    """A step's handler, resolved once: how to call it and how long its retries wait."""

    handler: Callable[..., Any]
    is_async: bool
    takes_context: bool
    base_delay: float  # seconds

    def retry_in(self, task: Task) -> float | None:
        """Seconds until the engine retries this task if this attempt fails; None if final."""
        if task.attempt >= task.max_attempts:
            return None
        return float(self.base_delay * 2 ** (task.attempt - 1))


def runners(flows: list[Flow]) -> dict[tuple[str, str], Runner]:
    """(flow slug, step slug) -> Runner, for every step of ``flows``."""
    found = {}
    for flow in flows:
        flow.definition()  # an incomplete flow fails here, not at its first task
        for step in flow.steps.values():
            found[(flow.slug, step.slug)] = Runner(
                step.handler, step.is_async, step.takes_context,
                step.base_delay if step.base_delay is not None else flow.base_delay,
            )
    return found


def describe_error(exc: BaseException) -> str:
    """The text a failed attempt records: ``"ValueError: bad input"``."""
    return clip(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def clip(text: str) -> str:
    if len(text) <= MAX_ERROR_LENGTH:
        return text
    return text[: MAX_ERROR_LENGTH - 15] + "… (truncated)"


class Attempts:
    """Runs attempts; owns the threads of sync handlers.

    A thread cannot be killed: a sync handler past its timeout is reported as timed out and
    its thread runs on. It keeps counting in ``lingering`` until it returns, so that hung
    handlers cannot pile up threads beyond the worker's concurrency.
    """

    def __init__(
        self, worker_id: str, threads: int, on_thread_returned: Callable[[], None]
    ) -> None:
        self.worker_id = worker_id
        self.lingering = 0
        self._threads = threads
        self._on_thread_returned = on_thread_returned
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, task: Task, runner: Runner | None) -> tuple[str | None, Any]:
        """(error, output) of one attempt: error is None when it succeeded."""
        if runner is None:
            return (f"worker {self.worker_id} has no handler for step {task.step_slug!r} "
                    f"of flow {task.flow_slug!r}"), None
        if runner.takes_context:
            args: tuple[Any, ...] = (task.input, StepContext(
                task.run_id, task.flow_slug, task.step_slug, task.attempt, task.max_attempts,
                task.timeout, self.worker_id,
            ))
        else:
            args = (task.input,)
        deadline = asyncio.timeout(task.timeout)
        try:
            async with deadline:
                if runner.is_async:
                    output = await runner.handler(*args)
                else:
                    output = await self._in_thread(runner.handler, args)
                    if inspect.isawaitable(output):  # a plain function returning a coroutine
                        output = await output
        except (Exception, SystemExit) as exc:  # a handler's sys.exit() must not end the loop
            if deadline.expired():
                if not runner.is_async:
                    logger.warning(
                        "step %s timed out; its thread runs on in the background",
                        task.step_slug,
                        extra={"action": "thread_timeout", "run_id": str(task.run_id)},
                    )
                return f"step {task.step_slug!r} timed out after {task.timeout} s", None
            if logger.isEnabledFor(logging.DEBUG):  # one warning per failure is logged anyway
                logger.debug("step %s raised", task.step_slug, exc_info=exc,
                             extra={"action": "step_traceback", "run_id": str(task.run_id)})
            return describe_error(exc), None
        try:
            orjson.dumps(output)
        except TypeError as exc:  # orjson.JSONEncodeError
            return clip(
                f"step {task.step_slug!r} returned {type(output).__name__}, which is not "
                f"JSON: {exc}"
            ), None
        return None, output

    async def _in_thread(self, handler: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        if self._executor is None:
            self._loop = asyncio.get_running_loop()
            # As many threads as slots: a sync handler never queues behind another.
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._threads, thread_name_prefix="pgflow-handler"
            )
        future = self._executor.submit(handler, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if not future.done():
                self.lingering += 1
                future.add_done_callback(self._thread_returned)
            raise

    def _thread_returned(self, _future: concurrent.futures.Future[Any]) -> None:
        # In the handler's thread: hand over to the loop, if it still runs.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._count_returned)
            except RuntimeError:  # closed between the check and the call
                return

    def _count_returned(self) -> None:
        self.lingering -= 1
        self._on_thread_returned()
