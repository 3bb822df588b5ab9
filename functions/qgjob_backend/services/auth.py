"""Bearer tokens: one per org (client) or for device agents. Only a hash is stored."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from qgjob_backend.ports import TokenRecord, TokenStore
from qgjob_backend.schema import ID_PATTERN
from qgjob_backend.services.errors import Forbidden, Unauthorized


class TokenKind(StrEnum):
    ORG = "org"
    AGENT = "agent"


@dataclass(frozen=True)
class Principal:
    kind: TokenKind
    org_id: str | None


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
        self, kind: TokenKind | str, org_id: str | None = None, label: str | None = None
    ) -> str:
        kind = TokenKind(kind)
        if kind is TokenKind.ORG and (org_id is None or not re.match(ID_PATTERN, org_id)):
            raise ValueError("an org token needs an org id of 1-64 characters [A-Za-z0-9._-]")
        if kind is TokenKind.AGENT:
            org_id = None
        prefix = "qgj_org_" if kind is TokenKind.ORG else "qgj_agent_"
        token = prefix + self._new_secret()
        record = TokenRecord(hash_token(token), kind.value, org_id, self._clock(), label)
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
        principal = Principal(TokenKind(record.kind), record.org_id)
        self._cache[digest] = (now + self._cache_seconds, principal)
        return principal


def require_org(principal: Principal) -> str:
    if principal.kind is not TokenKind.ORG or principal.org_id is None:
        raise Forbidden("this endpoint needs an org token, not an agent token")
    return principal.org_id


def require_agent(principal: Principal) -> None:
    if principal.kind is not TokenKind.AGENT:
        raise Forbidden("this endpoint is for device agents: use an agent token")
