"""Access: optional JWTs, public and private flows, runs visible to the token that started them.

Without a key configured everything is public and tokens are ignored. With one:

- a token is checked with the one configured algorithm (HS256 with ``--jwt-secret``, RS256 with
  ``--jwt-public-key``), so ``alg: none`` and RS/HS confusion are refused; ``exp``/``nbf`` are
  checked with a small leeway and ``aud`` when ``--jwt-audience`` is set;
- a public flow may be started and read without a token, a private one needs a valid token;
- a run started with a token belongs to its ``sub``: only that subject, or a token whose role
  claim holds ``--admin-role``, may read it; a run without owner is readable by anyone who may
  read its flow.

A token that is present but invalid is refused even where none is required: a client that
believes it is authenticated should learn that it is not. Its ``exp``, ``nbf`` and ``iat`` must be
NumericDates (RFC 7519 2): JSON numbers that a double holds (finite, at most about 1.8e308);
a string, ``true`` or ``null`` there is refused, where PyJWT alone would read ``"exp": "1"`` as
``int("1")`` and the socket's expiry timer would never start.

Origins (``OriginPolicy``): a page may open ``/realtime`` when its ``Origin`` is one of the
gateway's public origins (``--public-origin``; by default the loopback origins of the address it
listens on) or of ``--allowed-origin`` / ``--cors-origin``, compared as scheme, host and port. The
request's ``Host`` never counts: a DNS-rebinding page at ``http://attacker.example:8000`` sends
``Host: attacker.example:8000`` too.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.config import GatewayConfig, Origin, parse_origin
from gateway.errors import ForbiddenError, UnauthorizedError
from pgflow.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a verified token's subject and roles, or nobody."""

    subject: str | None = None
    roles: frozenset[str] = frozenset()
    expires_at: float | None = None  # unix time, from `exp`
    authenticated: bool = False


ANONYMOUS = Principal()
NUMERIC_DATE_CLAIMS = ("exp", "nbf", "iat")


class Authenticator:
    """Verifies tokens and decides who may start flows and read runs."""

    def __init__(self, config: GatewayConfig, public_flows: Mapping[str, bool]) -> None:
        """``public_flows``: flows loaded in Python, slug -> ``Flow.public``."""
        self.enabled = config.auth_enabled
        self.audience = config.jwt_audience
        self.leeway = config.jwt_leeway
        self.role_claim = config.role_claim
        self.admin_role = config.admin_role
        self.private_flows = frozenset(config.private_flows) | {
            slug for slug, public in public_flows.items() if not public
        }
        self.origins = OriginPolicy(config.public_origins,
                                    (*config.allowed_origins, *config.cors_origins))
        self._key: str | RSAPublicKey | None
        if config.jwt_secret is not None:
            self.algorithm = "HS256"
            self._key = config.jwt_secret
        elif config.jwt_public_key is not None:
            self.algorithm = "RS256"
            self._key = _load_rsa_public_key(config.jwt_public_key)
        else:
            self.algorithm = ""
            self._key = None

    # -- tokens -------------------------------------------------------------------------------

    def authenticate(self, token: str | None) -> Principal:
        """The principal a token proves; ANONYMOUS without a token (or without auth).

        Raises:
            UnauthorizedError: the token is malformed, expired, not yet valid, signed with
                another key or algorithm, or for another audience.
        """
        if not self.enabled or token is None:
            return ANONYMOUS
        if not token:
            raise UnauthorizedError("empty token")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,  # type: ignore[arg-type]
                algorithms=[self.algorithm],
                audience=self.audience,
                leeway=self.leeway,
                # The dates are checked below, once known to be numbers: PyJWT reads them with
                # int(), which takes "123" and true.
                options={"verify_aud": self.audience is not None, "verify_exp": False,
                         "verify_nbf": False, "verify_iat": False},
            )
        except jwt.InvalidAlgorithmError:
            raise UnauthorizedError(
                f"token algorithm not allowed: this gateway accepts {self.algorithm} only"
            ) from None
        except jwt.InvalidSignatureError:
            raise UnauthorizedError("token signature does not verify") from None
        except jwt.InvalidAudienceError:
            raise UnauthorizedError("token is for another audience") from None
        except jwt.InvalidTokenError as exc:
            raise UnauthorizedError(f"invalid token: {exc}") from None
        expires = _numeric_dates(claims)
        now = time.time()
        if expires is not None and expires <= now - self.leeway:
            raise UnauthorizedError("token expired")
        for name in ("nbf", "iat"):
            if claims.get(name, -math.inf) > now + self.leeway:
                raise UnauthorizedError(f"token not yet valid ({name})")
        subject = claims.get("sub")
        if subject is not None and not isinstance(subject, str):
            raise UnauthorizedError("token `sub` must be a string")
        return Principal(
            subject=subject,
            roles=_roles(claims.get(self.role_claim)),
            expires_at=expires,
            authenticated=True,
        )

    def expires_in(self, principal: Principal, now: float | None = None) -> float | None:
        """Seconds until the principal's token stops being valid (with the leeway), or None."""
        if principal.expires_at is None:
            return None
        return principal.expires_at + self.leeway - (time.time() if now is None else now)

    def is_admin(self, principal: Principal) -> bool:
        return self.admin_role is not None and self.admin_role in principal.roles

    # -- decisions ----------------------------------------------------------------------------

    def is_public(self, flow_slug: str) -> bool:
        return not self.enabled or flow_slug not in self.private_flows

    def check_flow(self, principal: Principal, flow_slug: str) -> None:
        """May this principal start the flow, or read its shape?

        Raises:
            UnauthorizedError: a private flow and no token.
        """
        if not self.is_public(flow_slug) and not principal.authenticated:
            raise UnauthorizedError(f"flow {flow_slug!r} is private: send a token")

    def check_run(
        self, principal: Principal, flow_slug: str, owner: str | None, run_id: str
    ) -> None:
        """May this principal read the run (snapshot or events)?

        Raises:
            UnauthorizedError: no token, and the run or its flow needs one.
            ForbiddenError: a token that is neither the run's owner nor an admin.
        """
        if not self.enabled:
            return
        self.check_flow(principal, flow_slug)
        if owner is None or principal.subject == owner or self.is_admin(principal):
            return
        if not principal.authenticated:
            raise UnauthorizedError(f"run {run_id} belongs to a user: send their token")
        raise ForbiddenError(f"run {run_id} belongs to another user")

    def owner_filter(self, principal: Principal) -> tuple[bool, str | None]:
        """For listing runs: (allowed, owner to filter on; None = every run)."""
        if not self.enabled or self.is_admin(principal):
            return True, None
        if not principal.authenticated or principal.subject is None:
            return False, None
        return True, principal.subject


class OriginPolicy:
    """Which page origins may open ``/realtime``: the gateway's public origins and the
    configured ones, compared as (scheme, host, port) — never against the request's ``Host``.

    Without public origins, the gateway's own are the loopback origins of the address it listens
    on, known once it is bound (``listening_on``): ``http://127.0.0.1:PORT``,
    ``http://localhost:PORT``, ``http://[::1]:PORT`` for a loopback or wildcard address, else
    ``http://HOST:PORT``. A DNS-rebinding page cannot send one of those.
    """

    def __init__(self, public: Iterable[str], allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        self.any = "*" in allowed
        self.public = _parsed_all(public)
        self.allowed = _parsed_all(allowed)
        self.local: frozenset[Origin] = frozenset()
        # Host names HTTP requests may carry; None: any (see allows_host).
        self.hosts: frozenset[str] | None = None

    def listening_on(self, host: str, port: int) -> None:
        """The gateway is bound to ``host:port``: its default origins when none is configured."""
        names = {host.strip("[]").lower()}
        try:
            address = ipaddress.ip_address(next(iter(names)))
        except ValueError:
            address = None
        loopback = names == {"localhost"} or (address is not None and address.is_loopback)
        if loopback or (address is not None and address.is_unspecified):
            names = {"127.0.0.1", "localhost", "::1"}
        self.local = frozenset(("http", name, port) for name in names)
        if loopback and not self.any:
            # Only loopback clients reach this gateway, so a Host naming anything else is a
            # DNS-rebinding page (or a proxy in front, which --public-origin names).
            self.hosts = frozenset(names) | {o[1] for o in self.public | self.allowed}

    def allows_host(self, host: str | None) -> bool:
        """Whether an HTTP request's ``Host`` names this gateway. Checked only when it listens on
        loopback (any name may reach a public address); a request without ``Host`` passes."""
        if self.hosts is None or not host:
            return True
        name = host.strip().lower()
        if name.startswith("["):
            name = name[1:].partition("]")[0]
        elif name.count(":") == 1:
            name = name.partition(":")[0]
        return name in self.hosts

    def allows(self, origin: str) -> bool:
        if self.any:
            return True
        parsed = parse_origin(origin)
        if parsed is None:
            return False
        return parsed in self.allowed or parsed in (self.public or self.local)


def _parsed_all(origins: Iterable[str]) -> frozenset[Origin]:
    return frozenset(p for o in origins if (p := parse_origin(o)) is not None)



def _numeric_dates(claims: Mapping[str, Any]) -> float | None:
    """Checks ``exp``/``nbf``/``iat`` are NumericDates; returns ``exp`` (None without one).

    Raises:
        UnauthorizedError: one of them is not a JSON number (a string, a boolean, null) or is
            not finite as a double (NaN, Infinity, 10**400).
    """
    for name in NUMERIC_DATE_CLAIMS:
        if name not in claims:
            continue
        value = claims[name]
        if value is None or isinstance(value, bool | str | list | dict):
            kind = {type(None): "null", bool: "a boolean", str: "a string", list: "an array",
                    dict: "an object"}[type(value)]
        elif not isinstance(value, int | float):
            kind = type(value).__name__
        elif not _is_finite_double(value):
            kind = "a number out of range"
        else:
            continue
        raise UnauthorizedError(
            f"invalid token: `{name}` must be a NumericDate (a finite JSON number of seconds "
            f"since 1970), not {kind}"
        )
    expires = claims.get("exp")
    return None if expires is None else float(expires)


def _is_finite_double(value: float) -> bool:
    try:
        return math.isfinite(value)  # an int beyond a double's range raises OverflowError
    except OverflowError:
        return False


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None without the header.

    Raises:
        UnauthorizedError: an Authorization header of another scheme or without a token.
    """
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthorizedError("Authorization must be 'Bearer <token>'")
    return token.strip()


def _roles(claim: object) -> frozenset[str]:
    if isinstance(claim, str):
        return frozenset([claim])
    if isinstance(claim, Collection) and not isinstance(claim, bytes | Mapping):
        return frozenset(r for r in claim if isinstance(r, str))
    return frozenset()


def _load_rsa_public_key(pem: str) -> RSAPublicKey:
    try:
        key = load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise ConfigurationError(f"--jwt-public-key is not a PEM public key: {exc}") from exc
    if not isinstance(key, RSAPublicKey):
        raise ConfigurationError("--jwt-public-key must be an RSA public key (RS256)")
    return key
