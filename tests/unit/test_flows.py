"""Flow, @flow.step and load_flows: shapes checked at import time, without a database."""

from __future__ import annotations

import itertools
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from examples import flows as examples
from pgflow import ConfigurationError, Flow, InvalidFlowError, StepContext
from pgflow.flows import load_flows

_module_names = itertools.count()


async def noop(input: Any) -> None:
    return None


def test_a_flow_slug_that_is_not_a_slug_is_refused_naming_it() -> None:
    with pytest.raises(InvalidFlowError, match=r"flow slug 'has space' must match"):
        Flow("has space")


def test_a_bad_step_slug_is_refused_naming_the_flow_and_the_step() -> None:
    flow = Flow("f")
    with pytest.raises(InvalidFlowError, match=r"flow 'f', step '9lives': a step slug must"):
        flow.step("9lives")(noop)


def test_the_step_slug_run_is_reserved_for_the_run_input() -> None:
    flow = Flow("f")
    with pytest.raises(InvalidFlowError, match=r"flow 'f', step 'run'.*not be 'run'"):
        flow.step("run")(noop)


def test_a_dependency_on_an_undeclared_step_is_refused_naming_both() -> None:
    flow = Flow("f")
    with pytest.raises(
        InvalidFlowError, match=r"flow 'f', step 'b': depends on 'a', which is not declared"
    ):
        flow.step("b", depends_on=["a"])(noop)


def test_a_duplicate_step_is_refused_naming_it() -> None:
    flow = Flow("f")
    flow.step("a")(noop)
    with pytest.raises(InvalidFlowError, match=r"flow 'f', step 'a': .*already declared"):
        flow.step("a")(noop)


def test_a_dependency_listed_twice_is_refused() -> None:
    flow = Flow("f")
    flow.step("a")(noop)
    with pytest.raises(InvalidFlowError, match=r"flow 'f', step 'b': a dependency is listed"):
        flow.step("b", depends_on=["a", "a"])(noop)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be an integer from 1 to 1000"),
        ({"max_attempts": True}, "max_attempts must be an integer"),
        ({"base_delay": -1}, "base_delay must be seconds from 0 to 86400"),
        ({"timeout": 1.5}, "timeout must be whole seconds"),
        ({"timeout": 0}, "timeout must be whole seconds"),
    ],
)
def test_bad_options_are_refused_naming_where_they_were_given(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidFlowError, match=rf"^flow 'f': {message}"):
        Flow("f", **options)
    with pytest.raises(InvalidFlowError, match=rf"^flow 'f': {message}"):
        Flow("f").step("a", **options)


def test_a_handler_that_cannot_take_its_input_is_refused() -> None:
    flow = Flow("f")

    def no_parameters() -> None: ...

    def three(a: Any, b: Any, c: Any) -> None: ...

    with pytest.raises(InvalidFlowError, match=r"flow 'f', step 'no_parameters': a handler"):
        flow.step()(no_parameters)
    with pytest.raises(InvalidFlowError, match=r"takes \(input\) or \(input, context\)"):
        flow.step()(three)


def test_a_handler_with_two_parameters_is_given_a_context() -> None:
    flow = Flow("f")

    @flow.step()
    def plain(input: Any) -> None: ...

    @flow.step()
    async def with_context(input: Any, context: StepContext) -> None: ...

    assert flow.steps["plain"].takes_context is False
    assert flow.steps["with_context"].takes_context is True
    assert flow.steps["plain"].is_async is False
    assert flow.steps["with_context"].is_async is True


def test_depends_on_takes_step_functions_as_well_as_slugs() -> None:
    flow = Flow("f")

    @flow.step()
    async def a(input: Any) -> None: ...

    @flow.step("b", depends_on=[a])
    async def b_handler(input: Any) -> None: ...

    @flow.step(depends_on=["b", a])
    async def c(input: Any) -> None: ...

    assert flow.steps["b"].depends_on == ("a",)
    assert flow.steps["c"].depends_on == ("b", "a")


def test_a_function_that_is_a_step_of_two_flows_is_a_dependency_in_each() -> None:
    first, second = Flow("first"), Flow("second")
    first.step("shared_a")(noop)
    second.step("shared_b")(noop)
    after = _copy_of_noop()
    first.step("next", depends_on=[noop])(after)
    second.step("next", depends_on=[noop])(after)
    assert first.steps["next"].depends_on == ("shared_a",)
    assert second.steps["next"].depends_on == ("shared_b",)


def _copy_of_noop() -> Any:
    async def other(input: Any) -> None: ...

    return other


def test_a_function_that_is_no_step_of_this_flow_is_refused_as_a_dependency() -> None:
    flow = Flow("f")
    with pytest.raises(InvalidFlowError, match=r"flow 'f', step 'b': depends_on takes"):
        flow.step("b", depends_on=[noop])(_copy_of_noop())


def test_definition_fills_each_step_option_from_the_flow_defaults() -> None:
    flow = Flow("shape", max_attempts=5, base_delay=0.5, timeout=10)

    @flow.step()
    async def a(input: Any) -> None: ...

    @flow.step(depends_on=[a], max_attempts=1, timeout=3, output=True)
    async def b(input: Any) -> None: ...

    assert flow.definition() == {
        "slug": "shape",
        "steps": [
            {"slug": "a", "depends_on": [], "max_attempts": 5, "base_delay": 0.5,
             "timeout": 10},
            {"slug": "b", "depends_on": ["a"], "max_attempts": 1, "base_delay": 0.5,
             "timeout": 3},
        ],
        "output_step": "b",
    }


def test_a_second_output_step_is_refused() -> None:
    flow = Flow("f")
    flow.step("a", output=True)(noop)
    with pytest.raises(InvalidFlowError, match=r"output step is already 'a'"):
        flow.step("b", output=True)(_copy_of_noop())


def test_a_flow_without_steps_has_no_definition() -> None:
    with pytest.raises(InvalidFlowError, match=r"flow 'empty' has no steps"):
        Flow("empty").definition()


# -- load_flows --------------------------------------------------------------------------------

@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("flows_under_test_"):
            del sys.modules[name]


def _write_module(directory: Path, source: str) -> str:
    name = f"flows_under_test_{next(_module_names)}"
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return name


FLOWS_SOURCE = """
    from pgflow import Flow

    one = Flow("one")
    two = Flow("two")

    @one.step()
    async def a(input): ...

    @two.step()
    async def b(input): ...

    both = [one, two]
    not_a_flow = 42
"""


def test_load_flows_takes_every_flow_at_the_top_of_a_module(module_dir: Path) -> None:
    name = _write_module(module_dir, FLOWS_SOURCE)
    assert [f.slug for f in load_flows([name])] == ["one", "two"]


def test_load_flows_takes_one_flow_or_a_list_by_attribute(module_dir: Path) -> None:
    name = _write_module(module_dir, FLOWS_SOURCE)
    assert [f.slug for f in load_flows([f"{name}:two"])] == ["two"]
    assert [f.slug for f in load_flows([f"{name}:both"])] == ["one", "two"]
    # the same flow named twice is loaded once
    assert [f.slug for f in load_flows([f"{name}:one", name])] == ["one", "two"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_here", "cannot import 'no_such_module_here'"),
        ("{name}:missing", "has no 'missing'"),
        ("{name}:not_a_flow", "'not_a_flow' is not a Flow or a list of Flows"),
        (":one", "expected MODULE or MODULE:ATTR"),
    ],
)
def test_load_flows_explains_a_spec_it_cannot_load(
    module_dir: Path, spec: str, message: str
) -> None:
    name = _write_module(module_dir, FLOWS_SOURCE)
    with pytest.raises(ConfigurationError, match=message):
        load_flows([spec.format(name=name)])


def test_load_flows_refuses_a_module_without_flows(module_dir: Path) -> None:
    name = _write_module(module_dir, "x = 1\n")
    with pytest.raises(ConfigurationError, match=f"{name} defines no Flow"):
        load_flows([name])


def test_load_flows_refuses_two_flows_with_the_same_slug(module_dir: Path) -> None:
    first = _write_module(module_dir, FLOWS_SOURCE)
    second = _write_module(module_dir, FLOWS_SOURCE)
    with pytest.raises(ConfigurationError, match="two flows are named 'one'"):
        load_flows([first, second])


def test_a_flow_error_in_a_module_surfaces_with_the_flow_and_step_named(
    module_dir: Path,
) -> None:
    name = _write_module(module_dir, """
        from pgflow import Flow

        broken = Flow("broken")

        @broken.step(depends_on=["nowhere"])
        async def a(input): ...
    """)
    with pytest.raises(InvalidFlowError, match=r"flow 'broken', step 'a': depends on 'nowhere'"):
        load_flows([name])


# -- the examples ------------------------------------------------------------------------------

def test_every_example_flow_has_a_description_and_an_example_input() -> None:
    flows = load_flows(["examples.flows"])
    assert {f.slug for f in flows} == {"diamond", "fanout", "flaky", "doomed", "story", "approval"}
    for flow in flows:
        assert flow.description, flow.slug
        assert flow.example_input is not None, flow.slug
        assert flow.definition()["output_step"] is not None, flow.slug


def test_the_fanout_example_has_twelve_parallel_steps_between_one_root_and_one_fan_in() -> None:
    steps = examples.fanout.definition()["steps"]
    roots = [s["slug"] for s in steps if not s["depends_on"]]
    middle = [s for s in steps if s["depends_on"] == roots]
    fan_in = [s for s in steps if len(s["depends_on"]) == len(middle)]
    assert (len(roots), len(middle), len(fan_in)) == (1, 12, 1)


def test_example_latencies_scale_with_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGFLOW_EXAMPLE_DELAY_SCALE", "0.05")
    assert examples._delay_scale() == 0.05
    monkeypatch.setenv("PGFLOW_EXAMPLE_DELAY_SCALE", "fast")
    with pytest.raises(ConfigurationError, match="PGFLOW_EXAMPLE_DELAY_SCALE"):
        examples._delay_scale()


# -- input steps -------------------------------------------------------------------------------

def test_an_input_step_has_no_handler_and_sends_its_kind_schema_and_timeout() -> None:
    flow = Flow("review", timeout=30)

    @flow.step()
    async def write(input: Any) -> Any: ...

    asked = flow.input_step("ok", depends_on=[write], schema={"type": "boolean"}, timeout=600)
    later = flow.input_step("later", depends_on=[asked])

    @flow.step(depends_on=[asked, later])
    async def use(input: Any) -> Any: ...

    steps = flow.definition()["steps"]
    assert steps[1] == {"slug": "ok", "depends_on": ["write"], "max_attempts": 3,
                        "base_delay": 1.0, "kind": "input", "schema": {"type": "boolean"},
                        "timeout": 600}
    assert "timeout" not in steps[2]
    assert steps[2]["schema"] == {}
    assert steps[3]["depends_on"] == ["ok", "later"]
    assert steps[3]["timeout"] == 30
    assert flow.steps["ok"].is_input
    assert not flow.steps["use"].is_input


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"schema": {"type": "nonsense"}}, "input step 'x'"),
    ({"schema": "a string"}, "input step 'x'"),
    ({"timeout": 0}, "timeout must be whole seconds from 1 to 2592000"),
    ({"timeout": 2592001}, "timeout must be whole seconds from 1 to 2592000"),
    ({"depends_on": ["missing"]}, "depends on 'missing'"),
])
def test_an_input_step_refuses_bad_options(kwargs: dict[str, Any], message: str) -> None:
    flow = Flow("review")
    with pytest.raises(InvalidFlowError, match=re.escape(message)):
        flow.input_step("x", **kwargs)


def test_an_input_step_slug_is_checked_like_any_step() -> None:
    flow = Flow("review")
    flow.input_step("x")
    with pytest.raises(InvalidFlowError, match="already declared"):
        flow.input_step("x")
    with pytest.raises(InvalidFlowError, match="not be 'run'"):
        flow.input_step("run")


# -- map and HTTP steps ------------------------------------------------------------------------

def test_a_map_step_sends_its_kind_and_array_and_depends_on_it() -> None:
    flow = Flow("fan")

    @flow.step()
    async def split(input: Any) -> Any: ...

    @flow.map(over=split, max_attempts=5)
    async def each(input: Any, context: StepContext) -> Any: ...

    @flow.map(over="run")
    def direct(input: Any) -> Any: ...

    steps = flow.definition()["steps"]
    assert steps[1] == {"slug": "each", "depends_on": ["split"], "max_attempts": 5,
                        "base_delay": 1.0, "timeout": 60, "kind": "map", "over": "split"}
    assert steps[2]["depends_on"] == []
    assert steps[2]["over"] == "run"
    assert flow.steps["each"].handler is each  # the decorator returns the function unchanged


def test_a_map_step_over_a_step_not_declared_before_is_refused() -> None:
    flow = Flow("fan")
    with pytest.raises(InvalidFlowError, match="depends_on takes step slugs or functions"):
        flow.map(over=lambda input: input)


def test_an_http_step_sends_its_url_and_checks_it() -> None:
    flow = Flow("calls", timeout=20)
    first = flow.http_step("render", url="https://fn.example/render", max_attempts=2)
    flow.http_step("again", url="/functions/again", depends_on=[first], output=True)
    steps = flow.definition()["steps"]
    assert steps[0] == {"slug": "render", "depends_on": [], "max_attempts": 2, "base_delay": 1.0,
                        "timeout": 20, "kind": "http", "url": "https://fn.example/render"}
    assert steps[1]["depends_on"] == ["render"]
    assert flow.output_step == "again"
    for bad in ("ftp://x", "relative/path", "/has space", "/" + "x" * 2000):
        with pytest.raises(InvalidFlowError, match="url must be an http"):
            flow.http_step("bad", url=bad)
