"""What proves an HTTP step's messages genuine: the request signature and the callback token.

Both are HMAC-SHA256 under the one secret the worker and the gateway share (``--http-secret``,
docs/reference/http-steps.md):

- ``PGFlow-Signature: t=<unix seconds>,v1=<hex HMAC(secret, "<t>." + raw body)>`` on each request
  the worker sends a function; the function checks it (``verify_signature``, or ten lines in any
  language) and so knows the request came from a worker and is recent.
- ``pgflow1.<payload>.<mac>``, the token in that request's body, scoped to one attempt of one
  step; a function calling back (``POST /rpc/complete_step``, ``/rpc/fail_step``) hands it to the
  gateway, which reads it (``read_token``) and needs no other credential.

Every comparison is constant-time (``hmac.compare_digest``). Anything malformed raises
``SignatureError`` or ``TokenError`` (both ``ValueError``), never another exception.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass

import orjson

SIGNATURE_HEADER = "PGFlow-Signature"
DEFAULT_TOLERANCE = 300  # seconds a signature's timestamp may be off the verifier's clock
TOKEN_PREFIX = "pgflow1"
TOKEN_MAC_CONTEXT = b"pgflow-token."  # what a token's MAC covers besides its payload
MAX_HEADER_CHARS = 4096
MAX_TOKEN_CHARS = 4096
MAX_TIMESTAMP_DIGITS = 12  # unix seconds beyond the year 33,000: not a timestamp


class SignatureError(ValueError):
    """A request signature that is missing, malformed, out of its time window or wrong."""


class TokenError(ValueError):
    """A callback token that is malformed, forged or expired."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a token vouches for: one attempt of one step, until ``expires_at`` (unix seconds)."""

    run_id: uuid.UUID
    step_slug: str
    attempt: int
    worker_id: str
    expires_at: int


def _key(secret: bytes | str) -> bytes:
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if not key:
        raise ValueError("the HTTP-step secret is empty")
    return key


def _mac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Unpadded base64url, strictly: any other alphabet or a non-canonical tail fails."""
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise TokenError("malformed token: bad base64url") from None
    if _b64(data) != text:
        raise TokenError("malformed token: bad base64url")
    return data


# -- request signatures ----------------------------------------------------------------------


def signature_header(secret: bytes | str, body: bytes, timestamp: int | None = None) -> str:
    """The ``PGFlow-Signature`` value of ``body``: ``t=<timestamp>,v1=<hex HMAC-SHA256>``.

    ``timestamp``: unix seconds (default: now).
    """
    t = int(time.time()) if timestamp is None else int(timestamp)
    if t < 0:
        raise ValueError(f"the timestamp must be unix seconds >= 0, not {t}")
    digest = hmac.new(_key(secret), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify_signature(
    secret: bytes | str,
    body: bytes,
    header: str | None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    """Checks that ``header`` (``PGFlow-Signature``) signs ``body`` with ``secret``, recently.

    The header is ``t=<unix seconds>`` and one or more ``v1=<hex>`` (a signer rotating its
    secret may send one per secret), comma-separated; other keys are ignored. The signed
    message is the header's ``t`` text, a dot and the raw body bytes.

    Raises:
        SignatureError: no header, a malformed one, a timestamp more than ``tolerance``
            seconds before or after ``now``, or no ``v1`` that matches.
    """
    key = _key(secret)
    if header is None or not header.strip():
        raise SignatureError("no signature: the PGFlow-Signature header is missing")
    if len(header) > MAX_HEADER_CHARS or not header.isascii():
        raise SignatureError("malformed signature header")
    stamps: list[str] = []
    signatures: list[bytes] = []
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            raise SignatureError("malformed signature header: expected t=…,v1=…")
        if name == "t":
            stamps.append(value)
        elif name == "v1":
            signatures.append(value.lower().encode("ascii"))
    if len(stamps) != 1:
        raise SignatureError("malformed signature header: expected one t=<unix seconds>")
    stamp = stamps[0]
    if not (stamp.isdigit() and len(stamp) <= MAX_TIMESTAMP_DIGITS):
        raise SignatureError("malformed signature header: t must be unix seconds")
    if not signatures:
        raise SignatureError("malformed signature header: no v1=<signature>")
    current = time.time() if now is None else now
    age = current - int(stamp)
    if age > tolerance:
        raise SignatureError(f"signature too old: signed {age:.0f} s ago, over the "
                             f"{tolerance:g} s tolerance")
    if -age > tolerance:
        raise SignatureError(f"signature from the future: signed {-age:.0f} s ahead, over the "
                             f"{tolerance:g} s tolerance")
    expected = hmac.new(key, stamp.encode() + b"." + body, hashlib.sha256).hexdigest().encode()
    # every candidate is compared, so the time taken says nothing about which one matched
    matched = False
    for candidate in signatures:
        matched |= hmac.compare_digest(candidate, expected)
    if not matched:
        raise SignatureError("signature mismatch: the body or the secret differs")


# -- callback tokens -------------------------------------------------------------------------


def make_token(
    secret: bytes | str,
    run_id: uuid.UUID | str,
    step_slug: str,
    attempt: int,
    worker_id: str,
    expires_at: float,
) -> str:
    """A token for one attempt: ``pgflow1.<b64url(JSON claims)>.<b64url(HMAC)>``.

    The claims are ``{"r": run_id, "s": step_slug, "a": attempt, "w": worker_id,
    "x": expires_at}`` (unix seconds, whole); the HMAC-SHA256 covers ``pgflow-token.`` and the
    payload's base64url text. base64url is unpadded.
    """
    claims = {"r": str(uuid.UUID(str(run_id))), "s": step_slug, "a": int(attempt),
              "w": worker_id, "x": int(expires_at)}
    payload = _b64(orjson.dumps(claims))
    mac = _mac(_key(secret), TOKEN_MAC_CONTEXT + payload.encode("ascii"))
    return f"{TOKEN_PREFIX}.{payload}.{_b64(mac)}"


def read_token(secret: bytes | str, token: str, *, now: float | None = None) -> TokenClaims:
    """The claims of a token ``make_token`` made with ``secret``, if it has not expired.

    Raises:
        TokenError: not a string of the token's shape, a MAC that does not match (forged,
            altered, another secret), claims of the wrong types, or ``now`` at or after its
            expiry.
    """
    key = _key(secret)
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise TokenError("malformed token")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        raise TokenError(f"malformed token: expected {TOKEN_PREFIX}.<payload>.<signature>")
    _, payload, signature = parts
    given = _unb64(signature)
    if not hmac.compare_digest(given, _mac(key, TOKEN_MAC_CONTEXT + payload.encode("ascii"))):
        raise TokenError("forged token: its signature does not match")
    try:
        claims = orjson.loads(_unb64(payload))
    except orjson.JSONDecodeError:
        raise TokenError("malformed token: its payload is not JSON") from None
    if not isinstance(claims, dict):
        raise TokenError("malformed token: its payload is not an object")
    run_id, step_slug = claims.get("r"), claims.get("s")
    attempt, worker_id, expires_at = claims.get("a"), claims.get("w"), claims.get("x")
    if not (isinstance(run_id, str) and isinstance(step_slug, str)
            and isinstance(worker_id, str) and type(attempt) is int
            and type(expires_at) is int):
        raise TokenError("malformed token: claims of the wrong types")
    try:
        parsed = uuid.UUID(run_id)
    except ValueError:
        raise TokenError("malformed token: the run id is not a UUID") from None
    current = time.time() if now is None else now
    if current >= expires_at:
        raise TokenError(f"expired token: it expired {current - expires_at:.0f} s ago")
    return TokenClaims(parsed, step_slug, attempt, worker_id, expires_at)
