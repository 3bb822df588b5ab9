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
from qgjob_backend.services.errors import Conflict, Forbidden, NotFound, Unauthorized

# A warm Lambda container trusts a token it has checked for this long without reading the
# tokens table again: a revoked token is refused at most this many seconds after
# ``revoke`` (infra.admin tokens revoke says so). Longer saves reads, shorter revokes faster.
TOKEN_CACHE_SECONDS = 60.0
# A token id as operators see it: the SHA-256 of the token, 64 lowercase hex digits.
TOKEN_ID_PATTERN = r"^[0-9a-f]{64}$"  # noqa: S105 - a pattern, not a secret


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
        cache_seconds: float = TOKEN_CACHE_SECONDS,
    ) -> None:
        self._store = store
        self._clock = clock
        self._new_secret = new_secret
        self._cache_seconds = cache_seconds
        # Warm Lambda containers skip a DynamoDB read per request; revocation lags by this TTL.
        self._cache: dict[str, tuple[float, Principal]] = {}

    @property
    def cache_seconds(self) -> float:
        return self._cache_seconds

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

    def get(self, token_id: str) -> TokenRecord:
        record = self._store.get(_checked_id(token_id))
        if record is None:
            raise NotFound(f"no token has id {token_id}")
        return record

    def revoke(self, token_id: str) -> TokenRecord:
        """Revokes the token: refused by every container within ``cache_seconds``.

        Conflict when it was revoked already (the record keeps the first revocation)."""
        revoked = self._store.revoke(_checked_id(token_id), self._clock())
        if revoked is None:
            raise _not_revocable(self.get(token_id))
        return revoked

    def rotate(self, token_id: str) -> tuple[str, TokenRecord]:
        """A new token of the same kind, org, target and label, then the old one revoked
        (pointing at its replacement). Returns the new token and the old record.

        A rotation interrupted between the two writes leaves both tokens valid: run it
        again, or revoke the old one; the extra new token shows in the listing."""
        old = self.get(token_id)
        if old.revoked_at is not None:
            raise _not_revocable(old)
        token = self.create(old.kind, old.org_id, old.label, old.target)
        revoked = self._store.revoke(old.token_hash, self._clock(), hash_token(token))
        if revoked is None:  # revoked by someone else in between: keep theirs, drop ours
            self._store.revoke(hash_token(token), self._clock())
            raise _not_revocable(self.get(token_id))
        return token, revoked

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
        if record is None or record.revoked_at is not None:
            raise Unauthorized("invalid token: ask your qgjob admin for a token of your org")
        target = Target(record.target) if record.target else None
        principal = Principal(TokenKind(record.kind), record.org_id, target, digest)
        self._cache[digest] = (now + self._cache_seconds, principal)
        return principal


def _checked_id(token_id: str) -> str:
    if not re.fullmatch(TOKEN_ID_PATTERN, token_id):
        raise ValueError(
            f"token id {token_id!r} is not a token id (the 64 hex digits `tokens list` shows)"
        )
    return token_id


def _not_revocable(record: TokenRecord) -> Conflict:
    replaced = f", replaced by {record.replaced_by}" if record.replaced_by else ""
    return Conflict(f"token {record.token_hash} is already revoked{replaced}")


def require_org(principal: Principal) -> str:
    if principal.kind is not TokenKind.ORG or principal.org_id is None:
        raise Forbidden("this endpoint needs an org token, not an agent token")
    return principal.org_id


def require_fleet(principal: Principal) -> Principal:
    if principal.kind is not TokenKind.AGENT:
        raise Forbidden("registering a device agent needs a fleet (agent) token")
    return principal
