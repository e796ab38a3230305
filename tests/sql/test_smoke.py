from __future__ import annotations

from gateway.store import Store


async def test_a_diamond_flow_can_be_defined(store: Store) -> None:
    shape = await store.define_flow({"slug": "d", "steps": [{"slug": "a"}]})
    assert shape["output_step"] == "a"
