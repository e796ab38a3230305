"""pgflow.signing: request signatures and callback tokens (docs/reference/http-steps.md)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import uuid

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgflow.signing import (
    SignatureError,
    TokenClaims,
    TokenError,
    make_token,
    read_token,
    signature_header,
    verify_signature,
)

SECRET = "s3cret-shared-by-worker-and-functions"
BODY = b'{"run_id":"x","input":{"title":"Hi"}}'
NOW = 1_800_000_000
RUN = uuid.UUID("0193f7a2-57b6-7d1e-9a61-0c8d3b5e4f21")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- signatures ------------------------------------------------------------------------------


def test_signature_round_trip_and_format() -> None:
    header = signature_header(SECRET, BODY, NOW)
    digest = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={digest}"
    verify_signature(SECRET, BODY, header, now=NOW)
    verify_signature(SECRET.encode(), BODY, header, now=NOW)  # bytes or str: the same key


def test_signature_defaults_to_now() -> None:
    verify_signature(SECRET, BODY, signature_header(SECRET, BODY))


@pytest.mark.parametrize("body", [BODY + b" ", BODY[:-1], b"", BODY.replace(b"Hi", b"Ho")])
def test_a_changed_body_is_a_mismatch(body: bytes) -> None:
    header = signature_header(SECRET, BODY, NOW)
    with pytest.raises(SignatureError, match="mismatch"):
        verify_signature(SECRET, body, header, now=NOW)


def test_a_wrong_secret_is_a_mismatch() -> None:
    header = signature_header("another secret", BODY, NOW)
    with pytest.raises(SignatureError, match="mismatch"):
        verify_signature(SECRET, BODY, header, now=NOW)


def test_a_moved_timestamp_is_a_mismatch() -> None:
    digest = signature_header(SECRET, BODY, NOW).split("v1=")[1]
    with pytest.raises(SignatureError, match="mismatch"):
        verify_signature(SECRET, BODY, f"t={NOW + 1},v1={digest}", now=NOW)


def test_every_flipped_hex_digit_is_a_mismatch() -> None:
    header = signature_header(SECRET, BODY, NOW)
    prefix, digest = header.split("v1=")
    for i in range(len(digest)):
        flipped = digest[:i] + ("0" if digest[i] != "0" else "1") + digest[i + 1:]
        with pytest.raises(SignatureError, match="mismatch"):
            verify_signature(SECRET, BODY, f"{prefix}v1={flipped}", now=NOW)


def test_the_tolerance_window_both_ways() -> None:
    header = signature_header(SECRET, BODY, NOW)
    verify_signature(SECRET, BODY, header, now=NOW + 300)
    verify_signature(SECRET, BODY, header, now=NOW - 300)
    with pytest.raises(SignatureError, match="too old"):
        verify_signature(SECRET, BODY, header, now=NOW + 301)
    with pytest.raises(SignatureError, match="future"):
        verify_signature(SECRET, BODY, header, now=NOW - 301)
    verify_signature(SECRET, BODY, header, now=NOW + 3600, tolerance=3600)
    with pytest.raises(SignatureError, match="too old"):
        verify_signature(SECRET, BODY, header, now=NOW + 11, tolerance=10)


def test_several_v1_values_for_secret_rotation() -> None:
    old = signature_header("old secret", BODY, NOW).split("v1=")[1]
    new = signature_header(SECRET, BODY, NOW).split("v1=")[1]
    header = f"t={NOW},v1={old},v1={new}"
    verify_signature(SECRET, BODY, header, now=NOW)
    verify_signature("old secret", BODY, header, now=NOW)
    with pytest.raises(SignatureError, match="mismatch"):
        verify_signature("a third secret", BODY, header, now=NOW)


def test_unknown_keys_spaces_and_upper_case_hex_are_accepted() -> None:
    digest = signature_header(SECRET, BODY, NOW).split("v1=")[1]
    verify_signature(SECRET, BODY, f" v0=abc, t={NOW} , v1={digest.upper()}", now=NOW)


@pytest.mark.parametrize("header", [
    None, "", "   ", "garbage", "t=1", f"v1={'0' * 64}", f"t=,v1={'0' * 64}",
    f"t=-5,v1={'0' * 64}", f"t=1.5,v1={'0' * 64}", f"t=1,t=2,v1={'0' * 64}",
    f"t=١٢٣,v1={'0' * 64}", f"t={'9' * 40},v1={'0' * 64}", "t=1,v1=é", "t" * 5000,
])
def test_malformed_headers(header: str | None) -> None:
    with pytest.raises(SignatureError):
        verify_signature(SECRET, BODY, header, now=NOW)


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        signature_header("", BODY)
    with pytest.raises(ValueError, match="empty"):
        verify_signature(b"", BODY, signature_header(SECRET, BODY))


@settings(max_examples=300, deadline=None)
@given(header=st.text(max_size=200), body=st.binary(max_size=64))
def test_arbitrary_headers_raise_only_signature_error(header: str, body: bytes) -> None:
    try:
        verify_signature(SECRET, body, header, now=NOW)
    except SignatureError:
        return
    pytest.fail(f"accepted {header!r}")


@settings(max_examples=200, deadline=None)
@given(items=st.lists(st.tuples(st.sampled_from(["t", "v1", "v0", "x", ""]),
                                st.text(alphabet="0123456789abcdef=, ", max_size=70)),
                      max_size=5))
def test_header_shaped_text_raises_only_signature_error(items: list[tuple[str, str]]) -> None:
    header = ",".join(f"{k}={v}" for k, v in items)
    with pytest.raises(SignatureError):
        verify_signature(SECRET, BODY, header, now=NOW)


# -- tokens ----------------------------------------------------------------------------------


def test_token_round_trip_and_format() -> None:
    token = make_token(SECRET, RUN, "render", 2, "host-1-abc", NOW + 90)
    prefix, payload, mac = token.split(".")
    assert prefix == "pgflow1"
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims == {"r": str(RUN), "s": "render", "a": 2, "w": "host-1-abc", "x": NOW + 90}
    expected = hmac.new(SECRET.encode(), b"pgflow-token." + payload.encode(),
                        hashlib.sha256).digest()
    assert mac == _b64(expected)
    assert "=" not in token
    assert read_token(SECRET, token, now=NOW) == TokenClaims(RUN, "render", 2, "host-1-abc",
                                                             NOW + 90)


def test_token_takes_a_string_run_id_and_unicode() -> None:
    token = make_token(SECRET.encode(), str(RUN), "square[17]", 1, "wörker ☃", NOW + 1)
    claims = read_token(SECRET, token, now=NOW)
    assert (claims.run_id, claims.step_slug, claims.worker_id) == (RUN, "square[17]", "wörker ☃")


def test_token_expiry() -> None:
    token = make_token(SECRET, RUN, "render", 1, "w", NOW + 60)
    read_token(SECRET, token, now=NOW + 59.9)
    with pytest.raises(TokenError, match="expired"):
        read_token(SECRET, token, now=NOW + 60)
    with pytest.raises(TokenError, match="expired"):
        read_token(SECRET, token, now=NOW + 10_000)


def test_token_defaults_to_now() -> None:
    import time

    read_token(SECRET, make_token(SECRET, RUN, "s", 1, "w", time.time() + 60))
    with pytest.raises(TokenError, match="expired"):
        read_token(SECRET, make_token(SECRET, RUN, "s", 1, "w", time.time() - 1))


def test_a_token_of_another_secret_is_forged() -> None:
    token = make_token("another secret", RUN, "render", 1, "w", NOW + 60)
    with pytest.raises(TokenError, match="forged"):
        read_token(SECRET, token, now=NOW)


def test_altered_claims_are_forged() -> None:
    token = make_token(SECRET, RUN, "render", 1, "w", NOW + 60)
    prefix, _payload, mac = token.split(".")
    for change in ({"a": 2}, {"x": NOW + 10**6}, {"s": "other"}, {"w": "me"},
                   {"r": str(uuid.uuid4())}):
        claims = {"r": str(RUN), "s": "render", "a": 1, "w": "w", "x": NOW + 60, **change}
        forged = f"{prefix}.{_b64(orjson.dumps(claims))}.{mac}"
        with pytest.raises(TokenError, match="forged"):
            read_token(SECRET, forged, now=NOW)


def test_every_changed_character_is_refused() -> None:
    token = make_token(SECRET, RUN, "render", 1, "w", NOW + 60)
    for i, char in enumerate(token):
        for other in {"A", "b", "-", "_", ".", "0"} - {char}:
            with pytest.raises(TokenError):
                read_token(SECRET, token[:i] + other + token[i + 1:], now=NOW)


def _signed(payload: str) -> str:
    mac = hmac.new(SECRET.encode(), b"pgflow-token." + payload.encode(), hashlib.sha256).digest()
    return f"pgflow1.{payload}.{_b64(mac)}"


@pytest.mark.parametrize("payload", [
    _b64(b"not json"), _b64(b"[1, 2]"), _b64(b'"text"'),
    _b64(orjson.dumps({"r": "not-a-uuid", "s": "x", "a": 1, "w": "w", "x": NOW + 9})),
    _b64(orjson.dumps({"r": str(RUN), "s": "x", "a": True, "w": "w", "x": NOW + 9})),
    _b64(orjson.dumps({"r": str(RUN), "s": "x", "a": 1, "w": "w", "x": float(NOW + 9)})),
    _b64(orjson.dumps({"r": str(RUN), "s": 5, "a": 1, "w": "w", "x": NOW + 9})),
    _b64(orjson.dumps({"r": str(RUN), "s": "x", "a": 1, "x": NOW + 9})),
    _b64(f'{{"r": "{RUN}", "s": "x", "a": 1, "w": "w", "x": 1{"0" * 30}}}'.encode()),
    _b64(b"[" * 300 + b"]" * 300),
])
def test_well_signed_but_malformed_payloads(payload: str) -> None:
    with pytest.raises(TokenError, match="malformed"):
        read_token(SECRET, _signed(payload), now=NOW)


@pytest.mark.parametrize("token", [
    "", "pgflow1", "pgflow1..", "pgflow2.e30.AAAA", "pgflow1.e30", "pgflow1.e30.AAAA.x",
    "pgflow1.e30=.AAAA", "pgflow1.e+0.AAAA", "pgflow1.ü.AAAA", "pgflow1." + "a" * 5000 + ".A",
    123, None, b"pgflow1.e30.AAAA",
])
def test_malformed_tokens(token: object) -> None:
    with pytest.raises(TokenError):
        read_token(SECRET, token, now=NOW)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(token=st.text(max_size=200))
def test_arbitrary_text_raises_only_token_error(token: str) -> None:
    with pytest.raises(TokenError):
        read_token(SECRET, token, now=NOW)


@settings(max_examples=300, deadline=None)
@given(payload=st.text(alphabet="ABCDEFabcdef0123456789-_=+/.", max_size=80),
       mac=st.text(alphabet="ABCDEFabcdef0123456789-_=", max_size=50))
def test_token_shaped_text_raises_only_token_error(payload: str, mac: str) -> None:
    with pytest.raises(TokenError):
        read_token(SECRET, f"pgflow1.{payload}.{mac}", now=NOW)


@settings(max_examples=100, deadline=None)
@given(claims=st.dictionaries(st.sampled_from(["r", "s", "a", "w", "x", "y"]),
                              st.one_of(st.none(), st.booleans(),
                                        st.integers(-(2**63), 2**63 - 1),
                                        st.floats(allow_nan=False), st.text(max_size=20),
                                        st.lists(st.integers(0, 9), max_size=2))))
def test_signed_arbitrary_claims_raise_only_token_error(claims: dict[str, object]) -> None:
    with contextlib.suppress(TokenError):
        read_token(SECRET, _signed(_b64(orjson.dumps(claims))), now=NOW)
