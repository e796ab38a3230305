"""Whatever a handler streams: every JSON value ``ctx.emit`` can be given, either written and
read back exactly, or refused for that chunk alone with a reason the output oracle names."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given

from pgflow.errors import StreamError
from pgflow.worker._streams import MAX_CHUNK_BYTES, encode_chunk
from tests.property.test_handler_outputs import SETTINGS, has_float, outputs, problems
from tests.sql._helpers import claim, define, events, start


@SETTINGS
@given(value=outputs)
def test_every_chunk_is_encoded_exactly_or_refused_with_its_reason(value: Any) -> None:
    why = problems(value)
    if why:
        with pytest.raises(StreamError) as refused:
            encode_chunk(value)
        assert any(reason in str(refused.value) for reason in why), (why, refused.value)
        return
    if len(orjson.dumps(value)) > MAX_CHUNK_BYTES:
        with pytest.raises(StreamError, match="over the"):
            encode_chunk(value)
        return
    encoded = encode_chunk(value)
    if not has_float(value):
        assert orjson.loads(encoded) == value


TRICKY = [
    "", "a\u2028b", "\U0001f600", '"quoted" \\ back', "\\u0000 as text", 0, -(2**63), 2**64 - 1,
    1.5, -0.0, 1e300, True, None, [], {}, {"": [[[]]]}, {"é": {"k": [1, "x", None]}},
    "x" * 60_000,
]


@pytest.mark.parametrize("value", TRICKY, ids=range(len(TRICKY)))
async def test_tricky_chunks_read_back_from_the_log_as_emitted(conn: Any, value: Any) -> None:
    await define(conn, {"slug": "one", "steps": [{"slug": "a"}]})
    run_id = await start(conn, "one")
    (task,) = await claim(conn)
    chunks = b"[" + encode_chunk(value) + b"," + encode_chunk("after") + b"]"
    applied = await conn.fetchval(
        "select pgflow.stream_steps('w1', $1, $2, $3, $4::text[]::jsonb[])",
        [run_id], ["a"], [task["attempt"]], [chunks.decode()])
    assert applied == [True]
    (streamed,) = [e for e in await events(conn, run_id) if e["event"] == "step:stream"]
    assert streamed["chunks"] == [value, "after"]
