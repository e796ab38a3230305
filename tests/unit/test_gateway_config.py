"""The gateway's options: defaults, environment, validation."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gateway.config import GatewayConfig, add_gateway_options, lease_seconds, port_number
from pgflow.errors import ConfigurationError
from pgflow.flows import Flow
from pgflow.worker.worker import Worker


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
    (["--allowed-origin", "example.com"], {}, "origin"),
    (["--public-origin", "*"], {}, "--public-origin"),
    (["--public-origin", "https://app.example:99999"], {}, "--public-origin"),
    (["--cors-origin", "https://user@app.example"], {}, "origin"),
    ([], {"PGFLOW_MAX_SOCKETS": "many"}, r"\$PGFLOW_MAX_SOCKETS: 'many' is not an integer"),
    ([], {"PGFLOW_MAX_SOCKETS": "0"}, r"\$PGFLOW_MAX_SOCKETS: 0 must be at least 1"),
    ([], {"PGFLOW_JWT_LEEWAY": "soon"}, "not a number"),
    ([], {"PGFLOW_CLOSE_TIMEOUT": "nan"}, "not a finite number"),
    ([], {"PGFLOW_SOCKET_STALL_TIMEOUT": "-1"}, "must not be negative"),
])
def test_bad_settings_are_configuration_errors(
    argv: list[str], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse(argv, environ)


@pytest.mark.parametrize(("argv", "message"), [
    (["--max-sockets", "0"], "argument --max-sockets: 0 must be at least 1"),
    (["--pool-size", "-3"], "argument --pool-size: -3 must be at least 1"),
    (["--max-body-bytes", "1.5"], "argument --max-body-bytes: '1.5' is not an integer"),
    (["--close-timeout", "-1"], "argument --close-timeout: -1 must not be negative"),
    (["--deflate-min-bytes", "-1"], "argument --deflate-min-bytes: -1 must not be negative"),
    (["--socket-ping-interval", "inf"], "argument --socket-ping-interval: 'inf' is not a finite"),
    (["--jwt-leeway", "nan"], "argument --jwt-leeway: 'nan' is not a finite number"),
])
def test_bad_numbers_are_usage_errors(argv: list[str], message: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_nan_is_refused_from_python_too() -> None:
    with pytest.raises(ConfigurationError, match="close_timeout"):
        GatewayConfig(close_timeout=float("nan"))
    with pytest.raises(ConfigurationError, match="jwt_leeway"):
        GatewayConfig(jwt_leeway=float("inf"))


@pytest.mark.parametrize(("text", "port"), [("0", 0), ("1", 1), ("8000", 8000),
                                            ("65535", 65535)])
def test_ports_from_0_to_65535_are_ports(text: str, port: int) -> None:
    assert port_number(text) == port


@pytest.mark.parametrize("text", ["99999", "65536", "-1", "8000.5", "http", ""])
def test_other_ports_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        port_number(text)


def test_public_origins_are_read_and_normalised() -> None:
    config = parse(["--public-origin", "HTTPS://App.Example/", "--public-origin",
                    "http://[::1]:8000"])
    assert config.public_origins == ("https://app.example", "http://[::1]:8000")
    assert parse([], {"PGFLOW_PUBLIC_ORIGINS": "https://a.example, http://b.example:8080"}
                 ).public_origins == ("https://a.example", "http://b.example:8080")


@pytest.mark.parametrize("port", [99999, 65536, -1])
def test_the_server_refuses_a_port_out_of_range(port: int) -> None:
    from gateway.server import _bind_socket

    with pytest.raises(ConfigurationError, match=f"port {port}"):
        _bind_socket("127.0.0.1", port).close()


_ONE_FLOW = Flow("lease_check")


@_ONE_FLOW.step()
def _only(input: object) -> None:
    return None


@pytest.mark.parametrize("text", ["0.05", "0", "-1", "86401", "1e300", "inf", "nan"])
def test_a_lease_outside_what_claim_tasks_accepts_is_refused(text: str) -> None:
    # The engine refuses leases outside 0.1 s .. 1 day (PF400): a worker started with one would
    # fail every claim, so the command line refuses it first.
    with pytest.raises(argparse.ArgumentTypeError):
        lease_seconds(text)
    with pytest.raises(ConfigurationError, match="lease"):
        Worker("postgresql://127.0.0.1:1/none", [_ONE_FLOW], lease_seconds=float(text))


@pytest.mark.parametrize("text", ["0.1", "30", "86400"])
def test_leases_the_engine_accepts_are_accepted(text: str) -> None:
    assert lease_seconds(text) == float(text)
