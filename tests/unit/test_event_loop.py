"""``pgflow worker`` runs on uvloop where it is installed, and on asyncio's loop without it."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from pgflow import event_loop


async def _loop_type() -> type:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop())


def test_the_worker_loop_is_uvloop_where_it_is_installed() -> None:
    assert event_loop.run(_loop_type()) is uvloop.Loop


def test_without_uvloop_it_is_asyncios_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert not issubclass(event_loop.run(_loop_type()), uvloop.Loop)
