"""Bearer tokens: org tokens (clients) and fleet tokens (device agents). Only a hash is stored.

A fleet token (kind ``agent``) may only register agents; each registration then acts with
its own credential (see ``agent_protocol``). A fleet token may be scoped to one target
and to one org: a private lab, whose agents run only that org's jobs.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from qgjob_backend.ports import TokenRecord, TokenStore
from qgjob_backend.schema import ID_PATTERN, Target
from qgjob_backend.services.errors import Forbidden, Unauthorized


class TokenKind(StrEnum):
    ORG = "org"
    AGENT = "agent"  # a fleet token: registers device agents


@dataclass(frozen=True)
class Principal:
    kind: TokenKind
    # An org token's org; for a fleet token, the private lab's org (None: a shared fleet).
    org_id: str | None
    target: Target | None = None  # a fleet token scoped to one target
    token_hash: str = ""  # binds the agents a fleet token registers to it


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenService:
    def __init__(
        self,
        store: TokenStore,
        clock: Callable[[], float],
        new_secret: Callable[[], str] = lambda: secrets.token_urlsafe(32),
        cache_seconds: float = 60.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._new_secret = new_secret
        self._cache_seconds = cache_seconds
        # Warm Lambda containers skip a DynamoDB read per request; revocation lags by this TTL.
        self._cache: dict[str, tuple[float, Principal]] = {}

    def create(
        self,
        kind: TokenKind | str,
        org_id: str | None = None,
        label: str | None = None,
        target: Target | str | None = None,
    ) -> str:
        """A new token. ``org_id`` is required for an org token and, for a fleet token,
        makes it a private lab's; ``target`` scopes a fleet token to one device pool."""
        kind = TokenKind(kind)
        if kind is TokenKind.ORG and org_id is None:
            raise ValueError("an org token needs an org id")
        if org_id is not None and not re.match(ID_PATTERN, org_id):
            raise ValueError("an org id is 1-64 characters [A-Za-z0-9._-]")
        if kind is TokenKind.ORG and target is not None:
            raise ValueError("only a fleet (agent) token can be scoped to a target")
        scope = Target(target).value if target is not None else None
        prefix = "qgj_org_" if kind is TokenKind.ORG else "qgj_agent_"
        token = prefix + self._new_secret()
        record = TokenRecord(hash_token(token), kind.value, org_id, self._clock(), label, scope)
        if not self._store.put(record):
            raise RuntimeError("token collision; try again")
        return token

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthorized(
                "missing Authorization header: send 'Authorization: Bearer <token>' "
                "(qgjob --token or QGJOB_TOKEN)"
            )
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("Authorization header must be 'Bearer <token>'")
        digest = hash_token(token)
        now = self._clock()
        cached = self._cache.get(digest)
        if cached and cached[0] > now:
            return cached[1]
        record = self._store.get(digest)
        if record is None:
            raise Unauthorized("invalid token: ask your qgjob admin for a token of your org")
        target = Target(record.target) if record.target else None
        principal = Principal(TokenKind(record.kind), record.org_id, target, digest)
        self._cache[digest] = (now + self._cache_seconds, principal)
        return principal


def require_org(principal: Principal) -> str:
    if principal.kind is not TokenKind.ORG or principal.org_id is None:
        raise Forbidden("this endpoint needs an org token, not an agent token")
    return principal.org_id


def require_fleet(principal: Principal) -> Principal:
    if principal.kind is not TokenKind.AGENT:
        raise Forbidden("registering a device agent needs a fleet (agent) token")
    return principal
