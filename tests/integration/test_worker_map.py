"""Map steps run by a worker: a handler per element, with its item, index and context; the
step's output in index order, whatever order the elements finish in; retries per element."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from pgflow import Flow, StepContext
from pgflow.db.store import Store
from tests.integration.worker_helpers import QUICK_POLL, running, step_of, wait_for_run

fan = Flow("fan", max_attempts=2, base_delay=0, timeout=10)


@fan.step()
async def words(input: Any) -> list[str]:
    return str(input["run"]["text"]).split()


@fan.map(over=words)
async def shout(input: Any, context: StepContext) -> dict[str, Any]:
    # later elements finish first: the output is in index order all the same
    await asyncio.sleep(0.001 * (10 - input["index"] % 10))
    return {"word": input["item"].upper(), "index": context.index, "step": context.step_slug,
            "keys": sorted(input)}


@fan.step(depends_on=[shout], output=True)
async def join(input: Any) -> str:
    return " ".join(item["word"] for item in input["shout"])


flaky_items: set[int] = set()
flaky_lock = threading.Lock()
squares = Flow("squares_worker", max_attempts=3, base_delay=0, timeout=10)


@squares.map(over="run", output=True)
def square(input: Any, context: StepContext) -> int:  # a plain function: in a thread
    with flaky_lock:
        if input["index"] % 3 == 0 and input["index"] not in flaky_items:
            flaky_items.add(input["index"])
            raise RuntimeError(f"first try of {input['index']}")
    return int(input["item"]) ** 2


async def test_a_map_step_runs_each_element_and_collects_their_outputs_in_order(
        db_url: str, store: Store) -> None:
    text = " ".join(f"w{i}" for i in range(40))
    async with running(db_url, [fan], poll_interval=QUICK_POLL):
        run = await wait_for_run(store, await store.run_flow("fan", {"text": text}))
    assert run["status"] == "completed", run
    assert run["output"] == text.upper()
    outputs = step_of(run, "shout")["output"]
    assert [o["index"] for o in outputs] == list(range(40))
    assert outputs[0]["step"] == "shout"
    assert outputs[0]["keys"] == ["index", "item", "run"]  # not the array: "words" left out
    assert (step_of(run, "shout")["tasks"], step_of(run, "shout")["tasks_completed"]) == (40, 40)
    events = await store.get_run_events(run["run_id"])
    assert sum(e["event"] == "task:completed" for e in events) == 40
    assert sum(e["event"] == "step:completed" for e in events) == 3


async def test_elements_retry_on_their_own_and_the_run_input_can_be_the_array(
        db_url: str, store: Store) -> None:
    flaky_items.clear()
    async with running(db_url, [squares], poll_interval=QUICK_POLL):
        run = await wait_for_run(store, await store.run_flow("squares_worker", list(range(12))))
    assert run["status"] == "completed", run
    assert run["output"] == [i * i for i in range(12)]
    events = await store.get_run_events(run["run_id"])
    retried = sorted(e["index"] for e in events if e["event"] == "task:retrying")
    assert retried == [0, 3, 6, 9]
    assert {e["attempt"] for e in events if e["event"] == "task:started"} == {2}
