"""Tokens and access decisions: what is refused, and with which error."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.auth import ANONYMOUS, Authenticator, Principal, bearer_token
from gateway.config import GatewayConfig
from gateway.errors import ForbiddenError, UnauthorizedError
from pgflow.errors import ConfigurationError

SECRET = "s" * 40
RUN = "0b7e8a3c-5a43-4b8e-9f5c-2f1e6f3b9a10"


@pytest.fixture(scope="module")
def rsa_pair() -> tuple[Any, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return key, public


def hs(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def unsigned(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def authenticator(**options: Any) -> Authenticator:
    config = GatewayConfig(**{"jwt_secret": SECRET, "jwt_leeway": 0, **options})
    return Authenticator(config, {"secret_flow": False, "open_flow": True})


def test_without_a_key_everything_is_public_and_tokens_are_ignored() -> None:
    auth = Authenticator(GatewayConfig(private_flows=frozenset({"x"})), {"y": False})
    assert auth.authenticate("garbage") is ANONYMOUS
    assert auth.is_public("x")
    assert auth.is_public("y")
    auth.check_run(ANONYMOUS, "x", "someone", RUN)
    assert auth.owner_filter(ANONYMOUS) == (True, None)


def test_a_valid_token_gives_its_subject_roles_and_expiry() -> None:
    auth = authenticator(admin_role="admin")
    exp = int(time.time()) + 60
    principal = auth.authenticate(hs({"sub": "alice", "role": ["user", "admin"], "exp": exp}))
    assert principal == Principal("alice", frozenset({"user", "admin"}), float(exp), True)
    assert auth.is_admin(principal)
    assert 55 < (auth.expires_in(principal) or 0) <= 60


# Tokens are made when the test runs, not when it is collected: a long suite would otherwise
# let a "not yet valid" token become valid before its test ran.
@pytest.mark.parametrize(("make_token", "message"), [
    (lambda: hs({"sub": "a", "exp": int(time.time()) - 60}), "expired"),
    (lambda: hs({"sub": "a", "nbf": int(time.time()) + 60}), "not yet valid"),
    (lambda: hs({"sub": "a"}, secret="t" * 40), "signature"),
    (lambda: unsigned({"sub": "a"}), "algorithm"),
    (lambda: "not.a.token", "invalid token"),
    (lambda: "", "empty"),
    (lambda: hs({"sub": 5}), "invalid token"),
], ids=["expired", "not-yet-valid", "wrong-key", "alg-none", "garbage", "empty", "sub-not-string"])
def test_bad_tokens_are_unauthorized(make_token: Callable[[], str], message: str) -> None:
    token = make_token()
    with pytest.raises(UnauthorizedError, match=message):
        authenticator().authenticate(token)


def test_the_audience_is_checked_when_configured() -> None:
    auth = authenticator(jwt_audience="pgflow")
    assert auth.authenticate(hs({"sub": "a", "aud": "pgflow"})).subject == "a"
    with pytest.raises(UnauthorizedError, match="audience"):
        auth.authenticate(hs({"sub": "a", "aud": "other"}))
    with pytest.raises(UnauthorizedError):
        auth.authenticate(hs({"sub": "a"}))


def test_rs256_accepts_its_key_and_refuses_hs256_signed_with_the_public_key(
    rsa_pair: tuple[Any, str],
) -> None:
    private, public = rsa_pair
    auth = Authenticator(GatewayConfig(jwt_public_key=public), {})
    assert auth.authenticate(jwt.encode({"sub": "a"}, private, algorithm="RS256")).subject == "a"
    # The classic confusion: an HS256 token whose "secret" is the public key's PEM.
    import hashlib
    import hmac

    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(b'{"sub":"mallory"}').rstrip(b"=")
    signature = base64.urlsafe_b64encode(
        hmac.new(public.encode(), header + b"." + body, hashlib.sha256).digest()).rstrip(b"=")
    with pytest.raises(UnauthorizedError, match="algorithm"):
        auth.authenticate((header + b"." + body + b"." + signature).decode())
    with pytest.raises(UnauthorizedError, match="algorithm"):
        auth.authenticate(unsigned({"sub": "a"}))


def test_hs256_refuses_an_rs256_token(rsa_pair: tuple[Any, str]) -> None:
    private, _ = rsa_pair
    with pytest.raises(UnauthorizedError, match="algorithm"):
        authenticator().authenticate(jwt.encode({"sub": "a"}, private, algorithm="RS256"))


def test_bad_keys_are_configuration_errors(rsa_pair: tuple[Any, str]) -> None:
    with pytest.raises(ConfigurationError, match="32 bytes"):
        GatewayConfig(jwt_secret="short")
    with pytest.raises(ConfigurationError, match="not both"):
        GatewayConfig(jwt_secret=SECRET, jwt_public_key=rsa_pair[1])
    with pytest.raises(ConfigurationError, match="PEM"):
        Authenticator(GatewayConfig(jwt_public_key="nope"), {})


def test_private_flows_need_a_token() -> None:
    auth = authenticator(private_flows=frozenset({"psql_flow"}))
    alice = auth.authenticate(hs({"sub": "alice"}))
    for slug in ("secret_flow", "psql_flow"):
        assert not auth.is_public(slug)
        with pytest.raises(UnauthorizedError):
            auth.check_flow(ANONYMOUS, slug)
        auth.check_flow(alice, slug)
    auth.check_flow(ANONYMOUS, "open_flow")
    auth.check_flow(ANONYMOUS, "never_loaded")


def test_a_run_is_visible_to_its_owner_and_admins_only() -> None:
    auth = authenticator(admin_role="ops", role_claim="roles")
    alice = auth.authenticate(hs({"sub": "alice"}))
    bob = auth.authenticate(hs({"sub": "bob"}))
    ops = auth.authenticate(hs({"sub": "carol", "roles": "ops"}))
    auth.check_run(alice, "open_flow", "alice", RUN)
    auth.check_run(ops, "open_flow", "alice", RUN)
    with pytest.raises(ForbiddenError, match=RUN):
        auth.check_run(bob, "open_flow", "alice", RUN)
    with pytest.raises(UnauthorizedError):
        auth.check_run(ANONYMOUS, "open_flow", "alice", RUN)
    # Without owner: whoever may read the flow.
    auth.check_run(ANONYMOUS, "open_flow", None, RUN)
    auth.check_run(bob, "secret_flow", None, RUN)
    with pytest.raises(UnauthorizedError):
        auth.check_run(ANONYMOUS, "secret_flow", None, RUN)


def test_listing_runs_filters_by_owner() -> None:
    auth = authenticator(admin_role="admin")
    assert auth.owner_filter(ANONYMOUS) == (False, None)
    assert auth.owner_filter(auth.authenticate(hs({"sub": "a"}))) == (True, "a")
    assert auth.owner_filter(auth.authenticate(hs({"role": "admin"}))) == (True, None)


@pytest.mark.parametrize(("header", "token"), [
    (None, None), ("Bearer abc", "abc"), ("bearer  abc ", "abc"),
])
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "Bearer   ", "abc"])
def test_a_malformed_authorization_header_is_unauthorized(header: str) -> None:
    with pytest.raises(UnauthorizedError):
        bearer_token(header)


# -- NumericDate claims (RFC 7519 2) ----------------------------------------------------------


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", [
    str(int(time.time()) + 3600),  # PyJWT reads it as int("..."): a socket that never expires
    "soon", True, False, None, [1], {"at": 1},
    10**400, -(10**400),
])
def test_a_date_claim_that_is_not_a_numeric_date_is_unauthorized(claim: str, value: Any) -> None:
    now = int(time.time())
    claims = {"sub": "alice", "exp": now + 60, "nbf": now - 60, "iat": now - 60, claim: value}
    with pytest.raises(UnauthorizedError, match=f"`{claim}` must be a NumericDate"):
        authenticator().authenticate(hs(claims))


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_date_claims_are_unauthorized(text: str) -> None:
    # Python's json reads these (1e400 as inf); a JSON encoder never writes them.
    body = orjson.dumps({"sub": "alice"})[:-1] + f', "exp": {text}}}'.encode()
    head = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    payload = base64.urlsafe_b64encode(body).rstrip(b"=")
    signature = jwt.api_jws.PyJWS().encode(body, SECRET, algorithm="HS256").rsplit(".", 1)[1]
    token = f"{head.decode()}.{payload.decode()}.{signature}"
    with pytest.raises(UnauthorizedError):
        authenticator().authenticate(token)


def test_numeric_dates_may_be_fractional_and_far_ahead() -> None:
    now = time.time()
    principal = authenticator().authenticate(hs({
        "sub": "alice", "exp": 10**300, "nbf": now - 0.5, "iat": now - 0.25,
    }))
    assert principal.expires_at == 1e300
    assert authenticator().authenticate(hs({"exp": now + 9.5})).expires_at == now + 9.5


# -- Origins ----------------------------------------------------------------------------------


def policy(**options: Any) -> Any:
    auth = Authenticator(GatewayConfig(**options), {})
    auth.origins.listening_on("127.0.0.1", 8101)
    return auth.origins


@pytest.mark.parametrize(("origin", "allowed"), [
    ("http://127.0.0.1:8101", True),
    ("http://localhost:8101", True),
    ("http://LOCALHOST:8101/", True),
    ("http://[::1]:8101", True),
    ("http://attacker.example:8101", False),  # DNS rebinding: Host says the same
    ("https://127.0.0.1:8101", False),  # another scheme
    ("http://127.0.0.1:8102", False),  # another port
    ("http://127.0.0.1", False),
    ("null", False),
    ("http://127.0.0.1:8101/path", False),
    ("http://user@127.0.0.1:8101", False),
    ("http://127.0.0.1:99999", False),
    ("", False),
])
def test_the_default_origins_are_the_loopback_origins_of_the_listening_port(
    origin: str, allowed: bool
) -> None:
    assert policy().allows(origin) is allowed


def test_public_origins_replace_the_loopback_ones_and_compare_scheme_host_and_port() -> None:
    origins = policy(public_origins=("https://app.example.com",),
                     allowed_origins=("http://other.example:3000",))
    assert origins.allows("https://app.example.com")
    assert origins.allows("https://app.example.com:443")
    assert origins.allows("http://other.example:3000")
    for refused in ("http://app.example.com", "https://app.example.com:8443",
                    "https://app.example.com.evil", "http://127.0.0.1:8101",
                    "http://other.example"):
        assert not origins.allows(refused), refused
    assert policy(allowed_origins=("*",)).allows("http://anything.example")


CANDIDATES = ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000",
              "http://192.0.2.7:8000", "http://pgflow.internal:8000")
LOOPBACK = {"http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"}


@pytest.mark.parametrize(("host", "origins"), [
    ("127.0.0.1", LOOPBACK),
    ("0.0.0.0", LOOPBACK),
    ("::", LOOPBACK),
    ("localhost", LOOPBACK),
    ("192.0.2.7", {"http://192.0.2.7:8000"}),
    ("pgflow.internal", {"http://pgflow.internal:8000"}),
])
def test_the_listening_address_gives_the_default_origins(host: str, origins: set[str]) -> None:
    policy = Authenticator(GatewayConfig(), {}).origins
    assert not any(policy.allows(o) for o in CANDIDATES)  # not bound yet: none
    policy.listening_on(host, 8000)
    assert {o for o in CANDIDATES if policy.allows(o)} == origins
