"""Access on a real gateway: tokens on HTTP and on the socket, owners, admins, private flows,
Origin, a token expiring while connected."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.exceptions import ConnectionClosed

from gateway.app import create_app, runtime_of
from gateway.config import GatewayConfig
from gateway.server import GatewayServer
from tests.conftest import TEMPLATE_DB, Server
from tests.integration.gateway_harness import (
    CHAIN,
    TIMEOUT,
    Follower,
    RunningGateway,
    drop_database,
    fresh_database,
    open_socket,
    running_gateway,
    wait_until,
)

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
PRIVATE = {"slug": "secret_flow", "steps": [{"slug": "only"}]}
ALLOWED_ORIGIN = "https://app.example"
_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUBLIC_PEM = _RSA.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def token(sub: str | None = "alice", **claims: Any) -> str:
    body = {"sub": sub, "exp": int(time.time()) + 600, **claims}
    if sub is None:
        del body["sub"]
    return jwt.encode(body, SECRET, algorithm="HS256")


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def unsigned_token(sub: str = "mallory") -> str:
    return (_b64(b'{"alg":"none","typ":"JWT"}') + b"." + _b64(orjson.dumps({"sub": sub}))
            + b".").decode()


def hs_signed_with(key: bytes, sub: str = "mallory") -> str:
    head_body = _b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + _b64(orjson.dumps({"sub": sub}))
    return (head_body + b"." + _b64(hmac.new(key, head_body, hashlib.sha256).digest())).decode()


BAD_TOKENS = {
    "garbage": "not-a-token",
    "expired": token(exp=int(time.time()) - 120),
    "not yet valid": token(nbf=int(time.time()) + 600),
    "wrong key": jwt.encode({"sub": "alice"}, "another-secret-that-is-long-enough-too", "HS256"),
    "alg none": unsigned_token(),
    "RS256 on an HS256 gateway": jwt.encode({"sub": "alice"}, _RSA, algorithm="RS256"),
}


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture(scope="module")
async def gw(pg_server: Server, template_url: str) -> AsyncIterator[RunningGateway]:
    name = f"pgflow_gw_auth_{os.getpid()}"
    url = await fresh_database(pg_server.url, TEMPLATE_DB, name)
    config = GatewayConfig(jwt_secret=SECRET, admin_role="admin",
                           private_flows=frozenset({"secret_flow"}),
                           allowed_origins=(ALLOWED_ORIGIN,))
    try:
        async with running_gateway(url, config=config) as running:
            store = running.runtime.require_store()
            await store.define_flow(CHAIN)
            await store.define_flow(PRIVATE)
            yield running
    finally:
        await drop_database(pg_server.url, name)


async def start(gw: RunningGateway, flow: str, as_: str | None) -> str:
    return await gw.start_run(flow, headers=bearer(token(as_)) if as_ else None)


# -- HTTP -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", list(BAD_TOKENS))
async def test_a_bad_token_is_refused_on_http(gw: RunningGateway, bad: str) -> None:
    response = await gw.http.post("/rpc/run_flow", json={"flow_slug": "chain"},
                                  headers=bearer(BAD_TOKENS[bad]))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert await gw.healthy()


@pytest.mark.parametrize("header", ["Basic YWxpY2U6cHc=", "Bearer", "Token abc"])
async def test_a_malformed_authorization_header_is_refused(gw: RunningGateway,
                                                           header: str) -> None:
    response = await gw.http.get("/flows/chain", headers={"Authorization": header})
    assert response.status_code == 401


async def test_rs_hs_confusion_is_refused(pg_server: Server, template_url: str) -> None:
    name = f"pgflow_gw_rsa_{os.getpid()}"
    url = await fresh_database(pg_server.url, TEMPLATE_DB, name)
    try:
        async with running_gateway(url, config=GatewayConfig(jwt_public_key=RSA_PUBLIC_PEM)) as gw:
            await gw.runtime.require_store().define_flow(CHAIN)
            good = jwt.encode({"sub": "alice"}, _RSA, algorithm="RS256")
            started = await gw.http.post("/rpc/run_flow", json={"flow_slug": "chain"},
                                         headers=bearer(good))
            assert started.status_code == 201
            for forged in (hs_signed_with(RSA_PUBLIC_PEM.encode()), unsigned_token(),
                           token("alice")):
                response = await gw.http.get(f"/runs/{started.json()['run_id']}",
                                             headers=bearer(forged))
                assert response.status_code == 401, forged
            async with await open_socket(f"{gw.ws_url}?token={hs_signed_with(b'x')}") as ws:
                assert orjson.loads(await ws.recv())["code"] == "unauthorized"
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 1008
    finally:
        await drop_database(pg_server.url, name)


async def test_a_run_belongs_to_the_token_that_started_it(gw: RunningGateway) -> None:
    run_id = await start(gw, "chain", "alice")
    mine = await gw.http.get(f"/runs/{run_id}", headers=bearer(token("alice")))
    assert mine.status_code == 200
    assert mine.json()["owner"] == "alice"
    other = await gw.http.get(f"/runs/{run_id}", headers=bearer(token("bob")))
    assert other.status_code == 403
    assert other.json()["error"]["code"] == "forbidden"
    anonymous = await gw.http.get(f"/runs/{run_id}")
    assert anonymous.status_code == 401
    admin = await gw.http.get(f"/runs/{run_id}",
                              headers=bearer(token("carol", role=["ops", "admin"])))
    assert admin.status_code == 200
    assert await gw.healthy()


async def test_an_anonymous_run_is_readable_by_anyone_who_may_read_its_flow(
    gw: RunningGateway,
) -> None:
    run_id = await start(gw, "chain", None)
    assert (await gw.http.get(f"/runs/{run_id}")).status_code == 200
    assert (await gw.http.get(f"/runs/{run_id}", headers=bearer(token("bob")))).status_code == 200


async def test_a_private_flow_needs_a_token(gw: RunningGateway) -> None:
    refused = await gw.http.post("/rpc/run_flow", json={"flow_slug": "secret_flow"})
    assert refused.status_code == 401
    assert (await gw.http.get("/flows/secret_flow")).status_code == 401
    run_id = await start(gw, "secret_flow", "alice")
    shape = await gw.http.get("/flows/secret_flow", headers=bearer(token("bob")))
    assert shape.status_code == 200
    assert shape.json()["public"] is False
    assert "private" in shape.headers["cache-control"]
    assert (await gw.http.get(f"/runs/{run_id}", headers=bearer(token("bob")))).status_code == 403


async def test_listing_runs_shows_only_ones_own(gw: RunningGateway) -> None:
    mine = await start(gw, "chain", "dora")
    await start(gw, "chain", "erin")
    assert (await gw.http.get("/runs")).status_code == 401
    listed = (await gw.http.get("/runs", headers=bearer(token("dora")))).json()["runs"]
    assert [r["run_id"] for r in listed] == [mine]
    everyone = (await gw.http.get("/runs?limit=1000",
                                  headers=bearer(token("x", role="admin")))).json()["runs"]
    assert len(everyone) > 1


# -- the socket -------------------------------------------------------------------------------


async def refused(url: str, **kwargs: Any) -> tuple[dict[str, Any], int]:
    async with await open_socket(url, **kwargs) as ws:
        error = orjson.loads(await ws.recv())
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        return error, ws.close_code or 0


@pytest.mark.parametrize("bad", list(BAD_TOKENS))
async def test_a_bad_token_is_refused_on_the_socket(gw: RunningGateway, bad: str) -> None:
    error, code = await refused(f"{gw.ws_url}?token={BAD_TOKENS[bad]}")
    assert (error["type"], error["code"], code) == ("error", "unauthorized", 1008)
    assert await gw.healthy()


async def test_a_foreign_origin_is_refused_and_allowed_ones_are_not(gw: RunningGateway) -> None:
    error, code = await refused(gw.ws_url, origin="http://evil.example")
    assert (error["code"], code) == ("forbidden", 1008)
    host = gw.url.removeprefix("http://")
    for origin in (ALLOWED_ORIGIN, f"http://{host}"):
        async with await open_socket(gw.ws_url, origin=origin) as ws:
            await ws.send('{"type": "ping", "id": 1}')
            assert orjson.loads(await ws.recv())["type"] == "pong"
    assert await gw.healthy()


async def test_subscriptions_follow_run_ownership(gw: RunningGateway) -> None:
    run_id = await start(gw, "chain", "alice")
    bob = await Follower.open(f"{gw.ws_url}?token={token('bob')}")
    await bob.subscribe(run_id)
    anonymous = await Follower.open(gw.ws_url)
    await anonymous.subscribe(run_id)
    alice = await Follower.open(gw.ws_url, additional_headers=bearer(token("alice")))
    await alice.subscribe(run_id)
    admin = await Follower.open(f"{gw.ws_url}?token={token('root', role='admin')}")
    await admin.subscribe(run_id)
    await wait_until(lambda: bob.others and anonymous.others and alice.events.get(run_id)
                     and admin.events.get(run_id))
    assert bob.others == [{"type": "error", "code": "forbidden", "run_id": run_id,
                           "message": f"run {run_id} belongs to another user"}]
    assert anonymous.others[0]["code"] == "unauthorized"
    # Refused subscriptions leave the socket open.
    await bob.ws.send('{"type": "ping", "id": "still"}')
    await wait_until(lambda: len(bob.others) >= 2)
    assert bob.others[1] == {"type": "pong", "id": "still"}
    assert bob.events == {}
    for follower in (bob, anonymous, alice, admin):
        await follower.close()


async def test_a_token_that_expires_while_connected_closes_the_socket_with_4001(
    pg_server: Server, template_url: str
) -> None:
    name = f"pgflow_gw_exp_{os.getpid()}"
    url = await fresh_database(pg_server.url, TEMPLATE_DB, name)
    try:
        config = GatewayConfig(jwt_secret=SECRET, jwt_leeway=0)
        async with running_gateway(url, config=config) as gw:
            short = token("alice", exp=int(time.time()) + 2)
            follower = await Follower.open(f"{gw.ws_url}?token={short}")
            assert follower.task is not None
            async with asyncio.timeout(TIMEOUT):
                await follower.task
            assert follower.close_code == 4001
            assert await gw.healthy()
    finally:
        await drop_database(pg_server.url, name)


# -- NumericDate claims -----------------------------------------------------------------------


def date_tokens() -> dict[str, str]:
    later = int(time.time()) + 600
    return {
        "string exp": token(exp=str(later)),  # PyJWT alone takes it: a socket never expired
        "boolean exp": token(exp=True),
        "null exp": token(exp=None),
        "huge exp": token(exp=10**400),
        "string nbf": token(nbf="0"),
        "boolean iat": token(iat=False),
    }


@pytest.mark.parametrize("bad", list(date_tokens()))
async def test_a_date_claim_that_is_not_a_number_is_refused_on_http_and_the_socket(
    gw: RunningGateway, bad: str
) -> None:
    bad_token = date_tokens()[bad]
    response = await gw.http.get("/runs", headers=bearer(bad_token))
    assert response.status_code == 401
    assert "NumericDate" in response.json()["error"]["message"]
    error, code = await refused(f"{gw.ws_url}?token={bad_token}")
    assert (error["code"], code) == ("unauthorized", 1008)
    assert "NumericDate" in error["message"]


# -- Origin: the gateway's own origins, never the request's Host ------------------------------


async def open_as(gw: RunningGateway, host: str, origin: str) -> Any:
    """A socket to the gateway whose handshake says ``Host: host`` — what a page at a name that
    resolves to the gateway (DNS rebinding) sends."""
    port = int(gw.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    return await open_socket(f"ws://{host}/realtime", sock=sock, origin=origin)


async def refused_as(gw: RunningGateway, host: str, origin: str) -> tuple[dict[str, Any], int]:
    async with await open_as(gw, host, origin) as ws:
        error = orjson.loads(await ws.recv())
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        return error, ws.close_code or 0


async def works_as(gw: RunningGateway, host: str, origin: str) -> bool:
    async with await open_as(gw, host, origin) as ws:
        await ws.send('{"type": "ping", "id": 1}')
        return bool(orjson.loads(await ws.recv())["type"] == "pong")


async def test_a_dns_rebinding_origin_is_refused_although_the_host_matches(
    gw: RunningGateway,
) -> None:
    port = gw.url.rsplit(":", 1)[1]
    error, code = await refused_as(gw, f"attacker.example:{port}",
                                   f"http://attacker.example:{port}")
    assert (error["code"], code) == ("forbidden", 1008)
    # The gateway's own loopback origins pass, whatever the Host says.
    assert await works_as(gw, f"attacker.example:{port}", f"http://localhost:{port}")
    assert await gw.healthy()


async def test_an_origin_with_another_scheme_or_port_is_refused(gw: RunningGateway) -> None:
    host = gw.url.removeprefix("http://")
    port = int(host.rsplit(":", 1)[1])
    for origin in (f"https://{host}", f"http://127.0.0.1:{port + 1 if port < 65535 else 1}",
                   "http://127.0.0.1"):
        error, code = await refused_as(gw, host, origin)
        assert (error["code"], code) == ("forbidden", 1008), origin


@pytest.mark.parametrize("transport", ["native", "asgi"])
async def test_configured_public_origins_replace_the_loopback_ones(
    pg_server: Server, template_url: str, transport: str
) -> None:
    name = f"pgflow_gw_origin_{transport}_{os.getpid()}"
    url = await fresh_database(pg_server.url, TEMPLATE_DB, name)
    public = "https://app.example.com"
    app = create_app(url, config=GatewayConfig(public_origins=(public,)))
    server = GatewayServer(app, ws=None if transport == "native" else "websockets-sansio")
    try:
        bound = await server.start()
        async with httpx.AsyncClient(base_url=bound) as http:
            gw = RunningGateway(app, runtime_of(app), server, bound, http)
            host = bound.removeprefix("http://")
            for origin in (public, public + ":443"):
                assert await works_as(gw, host, origin), origin
            for origin in ("http://app.example.com", "https://app.example.com:8443",
                           f"http://{host}"):
                error, code = await refused_as(gw, "app.example.com", origin)
                assert (error["code"], code) == ("forbidden", 1008), origin
    finally:
        await server.stop()
        await drop_database(pg_server.url, name)


async def test_http_with_a_foreign_host_is_refused_on_a_loopback_gateway(
    gw: RunningGateway,
) -> None:
    # A DNS-rebinding page reaches the loopback gateway under the attacker's name; only the
    # gateway's own names (and configured public origins) may appear in Host.
    port = gw.url.rsplit(":", 1)[1]
    for host in (f"attacker.example:{port}", "attacker.example", f"10.0.0.1:{port}"):
        answer = await gw.http.get("/flows", headers={"Host": host})
        assert answer.status_code == 403, host
        assert answer.json()["error"]["code"] == "forbidden"
        answer = await gw.http.post("/rpc/run_flow", headers={"Host": host},
                                    json={"flow_slug": "chain"})
        assert answer.status_code == 403, host
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST"):
        answer = await gw.http.get("/flows", headers={"Host": host})
        assert answer.status_code == 200, host
