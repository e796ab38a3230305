"""The gateway's options: defaults, environment, validation."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gateway.config import GatewayConfig, add_gateway_options
from gateway.errors import ConfigurationError


def parse(argv: list[str], environ: dict[str, str] | None = None) -> GatewayConfig:
    parser = argparse.ArgumentParser()
    add_gateway_options(parser, environ or {})
    return GatewayConfig.from_args(parser.parse_args(argv))


def test_no_options_is_the_default_config() -> None:
    assert parse([]) == GatewayConfig()
    assert not GatewayConfig().auth_enabled


def test_options_and_environment() -> None:
    config = parse(
        ["--private-flow", "a", "--private-flow", "b", "--cors-origin", "HTTP://Page.Example/",
         "--max-sockets", "5", "--admin-role", "ops"],
        {"PGFLOW_JWT_SECRET": "k" * 32, "PGFLOW_ALLOWED_ORIGINS": "https://x.example, *",
         "PGFLOW_MAX_FRAME_BYTES": "1000", "PGFLOW_SOCKET_STALL_TIMEOUT": "2.5"},
    )
    assert config.auth_enabled
    assert config.jwt_secret == "k" * 32
    assert config.private_flows == {"a", "b"}
    assert config.cors_origins == ("http://page.example",)
    assert config.allowed_origins == ("https://x.example", "*")
    assert (config.max_sockets, config.max_frame_bytes, config.socket_stall_timeout) == (
        5, 1000, 2.5)
    assert config.admin_role == "ops"
    assert GatewayConfig.from_env({"PGFLOW_MAX_SOCKETS": "7"}).max_sockets == 7


def test_the_public_key_is_read_from_its_file(tmp_path: Path) -> None:
    pem = tmp_path / "key.pem"
    pem.write_text("-----BEGIN PUBLIC KEY-----\n...")
    assert parse(["--jwt-public-key", str(pem)]).jwt_public_key == pem.read_text()
    with pytest.raises(ConfigurationError, match="cannot read"):
        parse(["--jwt-public-key", str(tmp_path / "missing.pem")])


@pytest.mark.parametrize(("argv", "environ", "message"), [
    (["--jwt-secret", "short"], {}, "32 bytes"),
    (["--max-sockets", "0"], {}, "max_sockets"),
    (["--close-timeout", "-1"], {}, "close_timeout"),
    (["--deflate-min-bytes", "-1"], {}, "deflate_min_bytes"),
    (["--socket-ping-interval", "-1"], {}, "socket_ping_interval"),
    (["--allowed-origin", "example.com"], {}, "origin"),
    ([], {"PGFLOW_MAX_SOCKETS": "many"}, "not an integer"),
    ([], {"PGFLOW_JWT_LEEWAY": "soon"}, "not a number"),
])
def test_bad_settings_are_configuration_errors(
    argv: list[str], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse(argv, environ)
