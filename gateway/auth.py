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
believes it is authenticated should learn that it is not.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.config import GatewayConfig
from gateway.errors import ConfigurationError, ForbiddenError, UnauthorizedError


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a verified token's subject and roles, or nobody."""

    subject: str | None = None
    roles: frozenset[str] = frozenset()
    expires_at: float | None = None  # unix time, from `exp`
    authenticated: bool = False


ANONYMOUS = Principal()


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
                options={"verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise UnauthorizedError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise UnauthorizedError("token not yet valid (nbf)") from None
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
        subject = claims.get("sub")
        if subject is not None and not isinstance(subject, str):
            raise UnauthorizedError("token `sub` must be a string")
        expires = claims.get("exp")
        return Principal(
            subject=subject,
            roles=_roles(claims.get(self.role_claim)),
            expires_at=float(expires) if isinstance(expires, int | float) else None,
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
