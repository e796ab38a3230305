"""Flows in Python: ``Flow`` and ``@flow.step(...)``, and loading them from ``--flows`` specs.

A ``Flow`` is the shape ``define_flow`` checks plus the handlers a worker runs. Mistakes in the
shape are raised at import time, naming the flow and the step, so a typo never reaches a worker.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from pgflow.errors import ConfigurationError, InvalidFlowError
from pgflow.input_schema import check_schema

# A handler takes the step's input, or (input, context); it may be async or plain.
Handler = Callable[..., Any]
H = TypeVar("H", bound=Callable[..., Any])

SLUG = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,127}$")
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BASE_DELAY = 1.0  # seconds
DEFAULT_TIMEOUT = 60  # seconds
MAX_INPUT_TIMEOUT = 30 * 86400  # seconds an input step may wait for its value
# what define_flow takes as an HTTP step's url (sql/schema/0110_function__normalise_flow.sql)
HTTP_URL = re.compile(r"^(https?://[^\s/?#]+|/)\S*$")


class ChunkSink(Protocol):
    """Where an attempt's streamed chunks go (the worker's ``_streams.StreamBuffer``)."""

    def emit(self, value: Any) -> None: ...

    async def emit_async(self, value: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a handler declared as ``def handler(input, context)`` is told about its task, and
    how it streams partial output into the run's log (``emit``)."""

    run_id: uuid.UUID
    flow_slug: str
    step_slug: str
    attempt: int  # 1 for the first try; a retry or a rerun after a lost lease counts up
    max_attempts: int
    timeout: int  # seconds this attempt may run
    worker_id: str
    stream: ChunkSink | None = field(default=None, repr=False, compare=False)
    cancel_signal: threading.Event | None = field(default=None, repr=False, compare=False)
    index: int | None = None  # a map step's element: its index in the array (also input["index"])

    @property
    def cancelled(self) -> bool:
        """Whether the run was cancelled (``cancel_run``) while this attempt runs: a plain
        handler, which cannot be interrupted, should check it and return early; whatever it
        returns then is not recorded. An async handler is cancelled instead
        (``asyncio.CancelledError`` at its next ``await``)."""
        return self.cancel_signal is not None and self.cancel_signal.is_set()

    def emit(self, value: Any) -> None:
        """Streams ``value`` (a string or any JSON value) as the next chunk of this attempt.

        Returns at once; the worker writes the chunks of all its running steps together, at
        most every ``--stream-interval``. Chunks keep their order, and all of them are in the
        run's log before the attempt's step:completed / step:failed. Callable from a plain
        handler's thread. When the attempt has 1 MiB of chunks not yet written, a plain handler
        waits here for room, and an async one gets ``StreamBufferFullError``: it should
        ``await context.emit_async(value)``, which waits instead.

        Raises:
            StreamError: not JSON (or not storable in ``jsonb``), over 64 KiB as JSON, or
                emitted after the attempt ended.
        """
        if self.stream is None:
            raise RuntimeError("this StepContext has no stream: it was not made by a worker")
        self.stream.emit(value)

    async def emit_async(self, value: Any) -> None:
        """``emit``, waiting for room in the attempt's buffer instead of refusing."""
        if self.stream is None:
            raise RuntimeError("this StepContext has no stream: it was not made by a worker")
        await self.stream.emit_async(value)


@dataclass(frozen=True)
class Step:
    slug: str
    handler: Handler | None  # None for an input step: a person's answer is its output
    depends_on: tuple[str, ...]
    max_attempts: int | None
    base_delay: float | None
    timeout: int | None
    takes_context: bool = False
    schema: dict[str, Any] | bool | None = None  # an input step's JSON Schema
    kind: str = "task"  # "task", "input", "map" (a task per element of `over`), "http"
    over: str | None = None  # a map step's array: a dependency's slug, or "run"
    url: str | None = None  # an HTTP step's function

    @property
    def is_input(self) -> bool:
        return self.kind == "input"

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)


@dataclass
class Flow:
    """A DAG of steps, declared once in Python.

    Args:
        slug: the flow's name in the database and in ``triggerFlow(slug, ...)``.
        max_attempts, base_delay, timeout: defaults for its steps.
        output_step: the step whose output is the run's output (default: the single leaf).
        public: whether callers without a token may start it and read its runs.
        stream_logs: forward what its handlers log (``logging``) into their step's stream
            as ``{"level", "logger", "message"}`` chunks, for a page to show live.
    """

    slug: str
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    base_delay: float = DEFAULT_BASE_DELAY
    timeout: int = DEFAULT_TIMEOUT
    output_step: str | None = None
    public: bool = True
    description: str = ""
    example_input: Any = None
    stream_logs: bool = False
    steps: dict[str, Step] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.slug, str) or not SLUG.match(self.slug):
            raise InvalidFlowError(f"flow slug {self.slug!r} must match {SLUG.pattern}")
        _check_options(f"flow {self.slug!r}", self.max_attempts, self.base_delay, self.timeout)

    def step(
        self,
        slug: str | None = None,
        *,
        depends_on: Iterable[str | Callable[..., Any]] = (),
        max_attempts: int | None = None,
        base_delay: float | None = None,
        timeout: int | None = None,
        output: bool = False,
    ) -> Callable[[H], H]:
        """Declares the decorated function as a step; its slug defaults to the function's name.

        The handler is called with the step's input, ``{"run": <flow input>, "<dep>": <dep
        output>, ...}``; one that takes two parameters also gets a ``StepContext``.
        """
        where = f"flow {self.slug!r}"
        _check_options(where, max_attempts, base_delay, timeout)
        depends_on = list(depends_on)  # an iterator would be used up by the first call

        def register(handler: H) -> H:
            step_slug = str(slug or getattr(handler, "__name__", ""))
            here = f"{where}, step {step_slug!r}"
            if not callable(handler):
                raise InvalidFlowError(f"{here}: the step must decorate a function")
            deps = self._check_new_step(here, step_slug, depends_on)
            takes_context = _takes_context(here, handler)
            self.steps[step_slug] = Step(
                step_slug, handler, deps, max_attempts, base_delay, timeout, takes_context
            )
            if output:
                if self.output_step is not None and self.output_step != step_slug:
                    raise InvalidFlowError(f"{here}: output step is already {self.output_step!r}")
                self.output_step = step_slug
            return handler

        return register

    def map(
        self,
        slug: str | None = None,
        *,
        over: str | Callable[..., Any],
        depends_on: Iterable[str | Callable[..., Any]] = (),
        max_attempts: int | None = None,
        base_delay: float | None = None,
        timeout: int | None = None,
        output: bool = False,
    ) -> Callable[[H], H]:
        """Declares the decorated function as a map step: it runs once per element of the array
        ``over`` gives (a step of this flow, its function or slug, or ``"run"``: the run's
        input), each element a task of its own, with its own attempts, lease and retries.

        The handler's input is the step's usual input with ``"item"`` (the element) and
        ``"index"`` added, without the array itself (``over``'s key, or ``"run"`` when it maps
        over the run's input): a 10,000-element array is not sent 10,000 times. The step's
        output is the array of the elements' outputs, in index order; an empty array gives
        ``[]`` at once. A value that is not an array, or one of more than 100,000 elements,
        fails the step. The options apply to each element.
        """
        where = f"flow {self.slug!r}"
        over_slug = over if over == "run" else self._dependency_slug(f"{where}, map step", over)
        depends = list(depends_on)
        if over_slug != "run" and over_slug not in [
                d if isinstance(d, str) else self._dependency_slug(where, d) for d in depends]:
            depends.insert(0, over_slug)
        register = self.step(slug, depends_on=depends, max_attempts=max_attempts,
                             base_delay=base_delay, timeout=timeout, output=output)

        def register_map(handler: H) -> H:
            register(handler)
            step_slug = str(slug or getattr(handler, "__name__", ""))
            self.steps[step_slug] = dataclasses.replace(
                self.steps[step_slug], kind="map", over=over_slug)
            return handler

        return register_map

    def http_step(
        self,
        slug: str,
        *,
        url: str,
        depends_on: Iterable[str | Callable[..., Any]] = (),
        max_attempts: int | None = None,
        base_delay: float | None = None,
        timeout: int | None = None,
        output: bool = False,
    ) -> str:
        """Declares a step run by an HTTP function, in any language: no Python handler. A
        worker POSTs the step's input, signed, to ``url`` (an ``http(s)://`` URL, or a path
        starting with ``/`` that the worker's ``--http-base-url`` completes); the function
        answers with the output, or 202 and calls back (docs/reference/http-steps.md).

        Returns the slug, to name in later steps' ``depends_on``.
        """
        where = f"flow {self.slug!r}, HTTP step {slug!r}"
        _check_options(where, max_attempts, base_delay, timeout)
        if not isinstance(url, str) or not HTTP_URL.match(url) or len(url) > 2000:
            raise InvalidFlowError(
                f"{where}: url must be an http(s) URL or a path starting with '/', without "
                f"spaces, at most 2000 characters, not {url!r}")
        deps = self._check_new_step(where, slug, depends_on)
        self.steps[slug] = Step(slug, None, deps, max_attempts, base_delay, timeout,
                                kind="http", url=url)
        if output:
            if self.output_step is not None and self.output_step != slug:
                raise InvalidFlowError(f"{where}: output step is already {self.output_step!r}")
            self.output_step = slug
        return slug

    def input_step(
        self,
        slug: str,
        *,
        depends_on: Iterable[str | Callable[..., Any]] = (),
        schema: dict[str, Any] | bool | None = None,
        timeout: int | None = None,
    ) -> str:
        """Declares a step with no handler that waits for a person (or any caller) to submit
        its value: ``submit_input`` in SQL, ``POST /runs/{id}/steps/{slug}/input``,
        ``run.submit(slug, value)`` in the JS client, ``Client.submit`` in Python.

        When its dependencies complete it waits (``step:waiting``, carrying ``schema`` and its
        assembled input); the value submitted, once it matches ``schema`` (a JSON Schema,
        draft 2020-12; any value when None), is the step's output and its dependents start.
        Past ``timeout`` seconds (default a day, at most 30 days) the step fails, and the run.

        Returns the slug, to name in later steps' ``depends_on``.
        """
        where = f"flow {self.slug!r}, input step {slug!r}"
        if timeout is not None and (
            not isinstance(timeout, int) or isinstance(timeout, bool)
            or not 1 <= timeout <= MAX_INPUT_TIMEOUT
        ):
            raise InvalidFlowError(
                f"{where}: timeout must be whole seconds from 1 to {MAX_INPUT_TIMEOUT}")
        if schema is not None:
            try:
                check_schema(schema)
            except ValueError as error:
                raise InvalidFlowError(f"{where}: {error}") from None
        deps = self._check_new_step(where, slug, depends_on)
        self.steps[slug] = Step(slug, None, deps, None, None, timeout, schema=schema,
                                kind="input")
        return slug

    def _check_new_step(self, here: str, step_slug: str,
                        depends_on: Iterable[str | Callable[..., Any]]) -> tuple[str, ...]:
        """The new step's dependencies, once its slug and theirs are known to be good."""
        if not SLUG.match(step_slug) or step_slug == "run":
            raise InvalidFlowError(
                f"{here}: a step slug must match {SLUG.pattern} and not be 'run'"
            )
        if step_slug in self.steps:
            raise InvalidFlowError(f"{here}: a step with this slug is already declared")
        deps = tuple(self._dependency_slug(here, d) for d in depends_on)
        for dep in deps:
            if dep not in self.steps:
                raise InvalidFlowError(
                    f"{here}: depends on {dep!r}, which is not declared before it"
                )
        if len(set(deps)) != len(deps):
            raise InvalidFlowError(f"{here}: a dependency is listed twice")
        return deps

    def _dependency_slug(self, where: str, dependency: str | Callable[..., Any]) -> str:
        if isinstance(dependency, str):
            return dependency
        # Found by identity among this flow's own steps: the same function may be a step of
        # several flows, under different slugs.
        for step in self.steps.values():
            if step.handler is not None and step.handler is dependency:
                return step.slug
        raise InvalidFlowError(
            f"{where}: depends_on takes step slugs or functions declared as steps of this flow "
            f"before it, not {dependency!r}"
        )

    def definition(self) -> dict[str, Any]:
        """The shape sent to ``define_flow``."""
        if not self.steps:
            raise InvalidFlowError(f"flow {self.slug!r} has no steps")
        if self.output_step is not None and self.output_step not in self.steps:
            raise InvalidFlowError(
                f"flow {self.slug!r}: output_step {self.output_step!r} is not one of its steps"
            )
        return {
            "slug": self.slug,
            "steps": [self._step_definition(s) for s in self.steps.values()],
            "output_step": self.output_step,
        }

    def _step_definition(self, step: Step) -> dict[str, Any]:
        shape: dict[str, Any] = {
            "slug": step.slug,
            "depends_on": list(step.depends_on),
            "max_attempts": step.max_attempts if step.max_attempts is not None
            else self.max_attempts,
            "base_delay": step.base_delay if step.base_delay is not None else self.base_delay,
        }
        if step.is_input:  # the engine's default wait (a day) unless given; no handler options
            shape |= {"kind": "input", "schema": step.schema if step.schema is not None else {}}
            if step.timeout is not None:
                shape["timeout"] = step.timeout
            return shape
        shape["timeout"] = step.timeout if step.timeout is not None else self.timeout
        if step.kind == "map":
            shape |= {"kind": "map", "over": step.over}
        elif step.kind == "http":
            shape |= {"kind": "http", "url": step.url}
        return shape


def _takes_context(where: str, handler: Callable[..., Any]) -> bool:
    """Whether the handler wants ``(input, context)`` rather than ``(input)``."""
    try:
        parameters = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):  # some builtins have no signature: call them with input
        return False
    positional = [
        p for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    required = [p for p in positional if p.default is inspect.Parameter.empty]
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
    if len(required) > 2 or (not positional and not varargs):
        raise InvalidFlowError(
            f"{where}: a handler takes (input) or (input, context), "
            f"not {inspect.signature(handler)}"
        )
    return len(positional) >= 2 or varargs


def _check_options(
    where: str, max_attempts: int | None, base_delay: float | None, timeout: int | None
) -> None:
    if max_attempts is not None and (
        not isinstance(max_attempts, int)
        or isinstance(max_attempts, bool)
        or not 1 <= max_attempts <= 1000
    ):
        raise InvalidFlowError(f"{where}: max_attempts must be an integer from 1 to 1000")
    if base_delay is not None and (
        not isinstance(base_delay, int | float)
        or isinstance(base_delay, bool)
        or not 0 <= base_delay <= 86400
    ):
        raise InvalidFlowError(f"{where}: base_delay must be seconds from 0 to 86400")
    if timeout is not None and (
        not isinstance(timeout, int) or isinstance(timeout, bool) or not 1 <= timeout <= 86400
    ):
        raise InvalidFlowError(f"{where}: timeout must be whole seconds from 1 to 86400")


def _import_flows_module(spec: str, module_name: str) -> Any:
    """Imports a ``--flows`` module; whatever its import raises becomes one line that says
    where (a start-up error is read by a person, not a debugger).

    Raises:
        ConfigurationError: the module is missing, does not compile, or raised on import.
        InvalidFlowError: a Flow in it is malformed (the message names the flow).
    """
    try:
        return importlib.import_module(module_name)
    except InvalidFlowError as exc:
        raise InvalidFlowError(f"--flows {spec}: {exc}") from exc
    except SyntaxError as exc:
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else module_name
        raise ConfigurationError(f"--flows {spec}: {where}: {exc.msg}") from exc
    except ImportError as exc:
        raise ConfigurationError(f"--flows {spec}: cannot import {module_name!r}: {exc}") from exc
    except Exception as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1:]
        where = f" ({frame[0].filename}, line {frame[0].lineno})" if frame else ""
        raise ConfigurationError(
            f"--flows {spec}: importing {module_name} raised {type(exc).__name__}: {exc}{where}"
        ) from exc


def load_flows(specs: Sequence[str]) -> list[Flow]:
    """Imports ``MODULE`` (every top-level Flow) or ``MODULE:ATTR`` (a Flow or a list of them).

    The current directory is importable, as it is for ``python -m``.
    """
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    flows: dict[str, Flow] = {}
    for spec in specs:
        module_name, _, attr = spec.partition(":")
        if not module_name:
            raise ConfigurationError(f"--flows {spec!r}: expected MODULE or MODULE:ATTR")
        module = _import_flows_module(spec, module_name)
        if attr:
            try:
                value = getattr(module, attr)
            except AttributeError as exc:
                raise ConfigurationError(f"--flows {spec}: {module_name} has no {attr!r}") from exc
            found = [value] if isinstance(value, Flow) else value
            if not isinstance(found, list | tuple) or not all(isinstance(f, Flow) for f in found):
                raise ConfigurationError(
                    f"--flows {spec}: {attr!r} is not a Flow or a list of Flows"
                )
        else:
            found = [v for v in vars(module).values() if isinstance(v, Flow)]
            if not found:
                raise ConfigurationError(f"--flows {spec}: {module_name} defines no Flow")
        for flow in found:
            other = flows.get(flow.slug)
            if other is not None and other is not flow:
                raise ConfigurationError(f"--flows: two flows are named {flow.slug!r}")
            flows[flow.slug] = flow
    return list(flows.values())
