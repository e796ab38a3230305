"""Example flows: what the engine does, each small enough to watch live in the demo.

    diamond  fetch -> (summarize | count_words, in parallel) -> report
    fanout   split -> 12 parallel branches -> total
    flaky    a step that fails on its first two attempts, then succeeds
    doomed   a step that always fails: the run fails for good, the rest is cancelled
    story    a step that writes a story word by word, streaming each word as it goes
    approval a draft waits for a person to approve it (an input step), then is published

``PGFLOW_EXAMPLE_DELAY_SCALE`` (default 1.0) scales every simulated latency: the demo keeps 1.0
so that each step is visible; tests set 0.05. Only latencies scale, never the flows' shapes
(base_delay, timeout): a shape that changed with the environment would conflict with the one
already stored under the same slug.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from typing import Any

from pgflow import ConfigurationError, Flow, StepContext

logger = logging.getLogger(__name__)
# its own level: the story's INFO lines stream to the page (stream_logs) whatever the
# process's --log-level, which sets the root logger's
logger.setLevel(logging.INFO)


def _delay_scale() -> float:
    raw = os.environ.get("PGFLOW_EXAMPLE_DELAY_SCALE", "1.0")
    try:
        scale = float(raw)
    except ValueError:
        scale = -1.0
    if not scale >= 0:
        raise ConfigurationError(
            f"PGFLOW_EXAMPLE_DELAY_SCALE must be a number >= 0, not {raw!r}"
        )
    return scale


DELAY_SCALE = _delay_scale()
FETCH_LATENCY = 0.3  # seconds, before scaling
SUMMARIZE_LATENCY = 0.9  # seconds; longer than count_words so the two visibly overlap
COUNT_WORDS_LATENCY = 0.5  # seconds
REPORT_LATENCY = 0.2  # seconds
SUMMARY_WORDS = 12
TOP_WORDS = 3
FANOUT_WIDTH = 12
FANOUT_LATENCY = 0.3  # seconds for the first branch
FANOUT_LATENCY_STEP = 0.05  # seconds more for each next one, so they finish one by one
FLAKY_FAILURES = 2  # attempts of flaky's `charge` that fail before one succeeds
RETRY_BASE_DELAY = 0.2  # seconds: retries are visible but quick
STORY_WORD_DELAY = 0.06  # seconds between streamed words, before scaling


async def _pause(seconds: float) -> None:
    """Simulated work (a fetch, a model call): what makes the demo's steps visible."""
    await asyncio.sleep(seconds * DELAY_SCALE)


# -- diamond ------------------------------------------------------------------------------------

diamond = Flow(
    "diamond",
    base_delay=RETRY_BASE_DELAY,
    timeout=30,
    description="Fetches a text, then summarizes it and counts its words in parallel, "
    "then reports both.",
    example_input={
        "text": "PGFlow keeps the whole state of every run in PostgreSQL. Workers claim "
        "ready steps, run them and report back, and every change is an event the browser "
        "sees at once. Two steps that depend on the same step run in parallel."
    },
)


@diamond.step()
async def fetch(input: dict[str, Any]) -> dict[str, Any]:
    text = input["run"].get("text") if isinstance(input["run"], dict) else None
    if not isinstance(text, str):
        raise ValueError('diamond takes {"text": "..."}')
    await _pause(FETCH_LATENCY)
    return {"text": " ".join(text.split())}


@diamond.step(depends_on=[fetch])
async def summarize(input: dict[str, Any]) -> dict[str, Any]:
    await _pause(SUMMARIZE_LATENCY)
    words = input["fetch"]["text"].split()
    summary = " ".join(words[:SUMMARY_WORDS])
    return {"summary": summary + (" …" if len(words) > SUMMARY_WORDS else "")}


@diamond.step(depends_on=[fetch])
async def count_words(input: dict[str, Any]) -> dict[str, Any]:
    await _pause(COUNT_WORDS_LATENCY)
    words = [w.strip(".,;:!?\"'()[]").lower() for w in input["fetch"]["text"].split()]
    counts = Counter(w for w in words if w)
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:TOP_WORDS]
    return {"words": sum(counts.values()), "unique": len(counts), "top": [list(t) for t in top]}


@diamond.step(depends_on=[summarize, count_words], output=True)
async def report(input: dict[str, Any]) -> dict[str, Any]:
    await _pause(REPORT_LATENCY)
    return {
        "summary": input["summarize"]["summary"],
        "words": input["count_words"]["words"],
        "top_words": [word for word, _ in input["count_words"]["top"]],
    }


# -- fanout -------------------------------------------------------------------------------------

fanout = Flow(
    "fanout",
    base_delay=RETRY_BASE_DELAY,
    timeout=30,
    description=f"Splits a range into {FANOUT_WIDTH} numbers, squares each in its own step, "
    "all in parallel, then adds the squares up.",
    example_input={"start": 1},
)

BRANCHES = [f"square_{i + 1:02d}" for i in range(FANOUT_WIDTH)]


@fanout.step()
async def split(input: dict[str, Any]) -> dict[str, Any]:
    start = input["run"].get("start", 1) if isinstance(input["run"], dict) else 1
    if not isinstance(start, int) or isinstance(start, bool):
        raise ValueError('fanout takes {"start": <integer>}')
    return {"items": list(range(start, start + FANOUT_WIDTH))}


def _square(index: int) -> Any:
    async def square(input: dict[str, Any]) -> dict[str, Any]:
        await _pause(FANOUT_LATENCY + FANOUT_LATENCY_STEP * index)
        value = input["split"]["items"][index]
        return {"value": value, "square": value * value}

    return square


for _index, _slug in enumerate(BRANCHES):
    fanout.step(_slug, depends_on=[split])(_square(_index))


@fanout.step(depends_on=BRANCHES, output=True)
async def total(input: dict[str, Any]) -> dict[str, Any]:
    squares = [input[slug]["square"] for slug in BRANCHES]
    return {"squares": squares, "sum": sum(squares)}


# -- flaky --------------------------------------------------------------------------------------

flaky = Flow(
    "flaky",
    max_attempts=FLAKY_FAILURES + 2,
    base_delay=RETRY_BASE_DELAY,
    timeout=30,
    description=f"Its payment step fails on its first {FLAKY_FAILURES} attempts and succeeds "
    "on the next: retries with exponential backoff.",
    example_input={"order": "A-1001", "amount": 42},
)


@flaky.step()
async def reserve(input: dict[str, Any]) -> dict[str, Any]:
    await _pause(FETCH_LATENCY)
    run = input["run"] if isinstance(input["run"], dict) else {}
    return {"order": str(run.get("order", "A-0")), "amount": run.get("amount", 0)}


@flaky.step(depends_on=[reserve])
async def charge(input: dict[str, Any], context: StepContext) -> dict[str, Any]:
    await _pause(COUNT_WORDS_LATENCY)
    if context.attempt <= FLAKY_FAILURES:
        raise ConnectionError(f"payment service unavailable (attempt {context.attempt})")
    return {"charged": input["reserve"]["amount"], "attempts": context.attempt}


@flaky.step(depends_on=[reserve, charge], output=True)
async def confirm(input: dict[str, Any]) -> dict[str, Any]:
    return {
        "order": input["reserve"]["order"],
        "charged": input["charge"]["charged"],
        "attempts": input["charge"]["attempts"],
    }


# -- doomed -------------------------------------------------------------------------------------

doomed = Flow(
    "doomed",
    max_attempts=2,
    base_delay=RETRY_BASE_DELAY,
    timeout=30,
    description="Its launch step always fails: after 2 attempts the run fails for good and "
    "the step after it is cancelled.",
    example_input={"mission": "apollo"},
)


@doomed.step()
async def check(input: dict[str, Any]) -> dict[str, Any]:
    await _pause(FETCH_LATENCY)
    return {"ready": True}


@doomed.step(depends_on=[check])
async def launch(input: dict[str, Any]) -> dict[str, Any]:
    await _pause(COUNT_WORDS_LATENCY)
    raise RuntimeError("the launch pad is on fire")


@doomed.step(depends_on=[launch], output=True)
async def celebrate(input: dict[str, Any]) -> dict[str, Any]:
    return {"celebrated": True}  # never runs


# -- story --------------------------------------------------------------------------------------

story = Flow(
    "story",
    base_delay=RETRY_BASE_DELAY,
    timeout=60,
    stream_logs=True,  # what its steps log shows live on the page too
    description="Plans a short story, then writes it word by word: each word streams to the "
    "page as it is written.",
    example_input={"hero": "a lighthouse keeper", "place": "a windy island"},
)

_STORY = (
    "Once upon a time {hero} lived on {place}. Every night the keeper climbed the stairs and "
    "lit the lamp, and every morning the ships that had passed safely sent back a small "
    "wooden bird. After many years the room at the top of the tower was full of birds, and "
    "one stormy night, when the lamp went out, the birds began to sing, and the ships "
    "followed the song home."
)


@story.step()
async def plan(input: dict[str, Any]) -> dict[str, Any]:
    run = input["run"] if isinstance(input["run"], dict) else {}
    hero, place = str(run.get("hero", "a traveller")), str(run.get("place", "a road"))
    logger.info("planning a story about %s", hero)
    await _pause(FETCH_LATENCY)
    logger.info("the story takes place on %s", place)
    return {"hero": hero, "place": place}


@story.step(depends_on=[plan], output=True)
async def write(input: dict[str, Any], context: StepContext) -> dict[str, Any]:
    text = _STORY.format(**input["plan"])
    words = text.split(" ")
    for index, word in enumerate(words):
        context.emit(word if index == 0 else " " + word)
        await _pause(STORY_WORD_DELAY)
    return {"words": len(words), "story": text}


# -- approval -----------------------------------------------------------------------------------

approval = Flow(
    "approval",
    base_delay=RETRY_BASE_DELAY,
    timeout=30,
    description="Drafts a post, then waits for a person: Approve or Reject on the page (or "
    "run.submit('approve', true) from the JS client), and publishes it if approved.",
    example_input={"title": "Release notes", "author": "Ada"},
)


@approval.step()
async def draft(input: dict[str, Any]) -> dict[str, Any]:
    run = input["run"] if isinstance(input["run"], dict) else {}
    title = str(run.get("title", "Untitled"))
    await _pause(FETCH_LATENCY)
    return {"title": title, "text": f"{title}: what changed, and why it matters.",
            "author": str(run.get("author", "someone"))}


approve = approval.input_step(
    "approve", depends_on=[draft],
    schema={"type": "boolean", "title": "Publish this draft?"},
    timeout=3600,
)


@approval.step(depends_on=[draft, approve], output=True)
async def publish(input: dict[str, Any]) -> dict[str, Any]:
    if input["approve"] is not True:
        return {"published": False, "title": input["draft"]["title"]}
    await _pause(FETCH_LATENCY)
    return {"published": True, "title": input["draft"]["title"]}
