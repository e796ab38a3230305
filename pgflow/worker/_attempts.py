"""One attempt of one step: the handler called async or in a thread, under the step's timeout,
its result checked and encoded as JSON that PostgreSQL can store. Used by ``worker.py``; no
database here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from pgflow.db.json_values import UnstorableJSONError as OutputError
from pgflow.db.json_values import encode_json as encode_output
from pgflow.db.store import Task
from pgflow.flows import ChunkSink, Flow, StepContext
from pgflow.worker._log_stream import current_stream

logger = logging.getLogger(__name__)

MAX_ERROR_LENGTH = 4000  # characters of a handler's error kept in the run

# Handler threads still running after their attempt ended, across every worker of the process
# (``abandoned_threads``): futures are added in the loop, discarded in the handler's thread.
_abandoned: set[concurrent.futures.Future[Any]] = set()


def abandoned_threads() -> int:
    """Plain handlers of this process still running in a thread after their attempt ended."""
    return len(_abandoned)


@dataclass(frozen=True, slots=True)
class Runner:
    """A step's handler, resolved once: how to call it. (Its retries' backoff is the engine's:
    the flow's definition gave it to define_flow.)"""

    handler: Callable[..., Any]
    is_async: bool
    takes_context: bool
    stream_logs: bool = False  # its logging records go to its stream (_log_stream.py)

    @property
    def streams(self) -> bool:
        return self.takes_context or self.stream_logs


def runners(flows: list[Flow], *, stream_logs: bool = False) -> dict[tuple[str, str], Runner]:
    """(flow slug, step slug) -> Runner, for every step of ``flows``; ``stream_logs``: every
    flow's handlers stream their logs, whatever the flow says."""
    found = {}
    for flow in flows:
        flow.definition()  # an incomplete flow fails here, not at its first task
        for step in flow.steps.values():
            if step.handler is None:  # an input step: its value is submitted, never run
                continue
            found[(flow.slug, step.slug)] = Runner(
                step.handler, step.is_async, step.takes_context, stream_logs or flow.stream_logs
            )
    return found


def describe_error(exc: BaseException) -> str:
    """The text a failed attempt records: ``"ValueError: bad input"``."""
    try:
        message = str(exc)
    except Exception:  # a handler's exception whose __str__ raises
        message = "(its message could not be read)"
    return clip(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)


def clip(text: str) -> str:
    """``text`` as PostgreSQL can store it, at most ``MAX_ERROR_LENGTH`` characters."""
    text = storable(text)
    if len(text) <= MAX_ERROR_LENGTH:
        return text
    return text[: MAX_ERROR_LENGTH - 15] + "… (truncated)"


def storable(text: str) -> str:
    """``text`` with what a PostgreSQL ``text`` cannot hold made visible: U+0000 becomes the six
    characters ``\\u0000``, a lone surrogate its ``\\udxxx`` escape."""
    if "\x00" in text:
        text = text.replace("\x00", "\\u0000")
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode()
    return text


class Attempts:
    """Runs attempts; owns the threads of sync handlers.

    A thread cannot be killed: a sync handler past its timeout is reported as timed out, its
    slot is freed, and its thread runs on, counted in ``stuck`` until it returns. The pool has
    a thread for every slot plus ``max_stuck`` for stuck ones, so stuck threads never make a
    new attempt wait for a thread; the worker stops claiming once ``stuck`` reaches
    ``max_stuck`` (``on_stuck``).
    """

    def __init__(
        self,
        worker_id: str,
        slots: int,
        on_thread_returned: Callable[[], None],
        *,
        max_stuck: int = 0,
        on_stuck: Callable[[int], None] | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.stuck = 0
        self.stuck_total = 0  # threads that ever outlived their attempt
        self._threads = slots + max_stuck
        self._on_thread_returned = on_thread_returned
        self._on_stuck = on_stuck
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, task: Task, runner: Runner | None,
                  stream: ChunkSink | None = None,
                  cancel_signal: threading.Event | None = None) -> tuple[str | None, Any]:
        """(error, output) of one attempt: error is None when it succeeded, and the output is
        then its JSON text (an ``orjson.Fragment``). ``stream``: where its ``emit`` goes;
        ``cancel_signal``: set when its run is cancelled (``StepContext.cancelled``)."""
        if runner is None:
            return (f"worker {self.worker_id} has no handler for step {task.step_slug!r} "
                    f"of flow {task.flow_slug!r}"), None
        if runner.takes_context:
            # a map step's element is told its map step and its index
            step_slug, index = task.map_element or (task.step_slug, None)
            args: tuple[Any, ...] = (task.input, StepContext(
                task.run_id, task.flow_slug, step_slug, task.attempt, task.max_attempts,
                task.timeout, self.worker_id, stream, cancel_signal, index,
            ))
        else:
            args = (task.input,)
        deadline = asyncio.timeout(task.timeout)
        # the handler's own task, or its thread's copy of this context, logs into its stream
        logging_into = current_stream.set(stream) if runner.stream_logs else None
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
                return f"step {task.step_slug!r} timed out after {task.timeout} s", None
            if logger.isEnabledFor(logging.DEBUG):  # one warning per failure is logged anyway
                logger.debug("step %s raised", task.step_slug, exc_info=exc,
                             extra={"action": "step_traceback", "run_id": str(task.run_id)})
            return describe_error(exc), None
        finally:
            if logging_into is not None:
                current_stream.reset(logging_into)
        try:
            encoded = encode_output(output)
        except OutputError as exc:
            return clip(f"step {task.step_slug!r} returned {exc}"), None
        except Exception as exc:  # an object whose serialisation itself fails
            return clip(f"step {task.step_slug!r} returned {type(output).__name__}, which "
                        f"could not be checked as JSON: {describe_error(exc)}"), None
        return None, orjson.Fragment(encoded)

    async def _in_thread(self, handler: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        if self._executor is None:
            self._loop = asyncio.get_running_loop()
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._threads, thread_name_prefix="pgflow-handler"
            )
        # the thread runs in a copy of this context: what the handler logs finds its stream
        future = self._executor.submit(contextvars.copy_context().run, handler, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if not future.cancel() and not future.done():
                self.stuck += 1
                self.stuck_total += 1
                _abandoned.add(future)
                future.add_done_callback(self._thread_returned)
                logger.warning(
                    "handler %s outlived its attempt; its thread runs on (%d stuck)",
                    getattr(handler, "__qualname__", handler), self.stuck,
                    extra={"action": "thread_stuck", "stuck": self.stuck},
                )
                if self._on_stuck is not None:
                    self._on_stuck(self.stuck)
            raise

    def _thread_returned(self, future: concurrent.futures.Future[Any]) -> None:
        # In the handler's thread: hand over to the loop, if it still runs.
        _abandoned.discard(future)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._count_returned)
            except RuntimeError:  # closed between the check and the call
                return

    def _count_returned(self) -> None:
        self.stuck -= 1
        self._on_thread_returned()
