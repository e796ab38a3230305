"""Frames past ``--deflate-max-bytes`` go out plain: every client can take them.

Node's WebSocket (undici) refuses a compressed message that inflates past 4 MiB (close 1006),
and the gateway would replay the same frame on every reconnect.
"""

from __future__ import annotations

import pytest

from gateway.config import DEFAULT_DEFLATE_MAX_BYTES, GatewayConfig
from gateway.wire import TextFrame
from pgflow.errors import ConfigurationError
from tests.unit.test_wire import inflate_alone, parse

MIN = 1024  # --deflate-min-bytes' default


def compressed(data: bytes) -> bool:
    return parse(data).rsv1


def test_a_frame_up_to_the_maximum_goes_compressed_and_one_past_it_goes_plain() -> None:
    at_max = TextFrame("x" * 4096)
    assert compressed(at_max.for_socket(MIN, 4096))
    assert inflate_alone(bytes(parse(at_max.for_socket(MIN, 4096)).data)) == "x" * 4096
    past = TextFrame("x" * 4097)
    plain = past.for_socket(MIN, 4096)
    assert not compressed(plain)
    assert bytes(parse(plain).data).decode() == "x" * 4097


def test_the_maximum_counts_utf8_bytes_not_characters() -> None:
    text = "é" * 3000  # 3,000 characters, 6,000 bytes
    assert not compressed(TextFrame(text).for_socket(MIN, 4096))
    assert compressed(TextFrame(text).for_socket(MIN, 6000))
    assert TextFrame(text).payload_bytes == 6000
    for size in (10, 200, 70_000):  # each frame length encoding: 7, 16 and 64 bits
        assert TextFrame("a" * size).payload_bytes == size


def test_a_maximum_of_zero_sends_every_frame_plain() -> None:
    for size in (MIN, 100_000):
        assert not compressed(TextFrame("y" * size).for_socket(0, 0))


def test_the_default_maximum_is_one_mib_and_a_5_mb_event_goes_plain() -> None:
    assert GatewayConfig().deflate_max_bytes == DEFAULT_DEFLATE_MAX_BYTES == 1024 * 1024
    assert not compressed(TextFrame("z" * 5_000_000).for_socket(MIN, DEFAULT_DEFLATE_MAX_BYTES))


def test_the_option_and_its_environment_variable_set_it_and_a_negative_one_is_refused() -> None:
    assert GatewayConfig.from_env({"PGFLOW_DEFLATE_MAX_BYTES": "0"}).deflate_max_bytes == 0
    with pytest.raises(ConfigurationError, match="deflate_max_bytes"):
        GatewayConfig(deflate_max_bytes=-1)
