"""Bearer tokens: creation, authentication, the kind checks and the cache."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from qgjob_backend.schema import Target
from qgjob_backend.services.auth import (
    Principal,
    TokenKind,
    TokenService,
    hash_token,
    require_fleet,
    require_org,
)
from qgjob_backend.services.errors import Forbidden, Unauthorized
from tests.unit.fakes import FakeClock, MemoryTokenStore

CACHE_SECONDS = 60.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(5_000.0)


@pytest.fixture
def store() -> MemoryTokenStore:
    return MemoryTokenStore()


@pytest.fixture
def tokens(store: MemoryTokenStore, clock: FakeClock) -> TokenService:
    counter = itertools.count(1)
    return TokenService(
        store, clock, new_secret=lambda: f"secret{next(counter)}", cache_seconds=CACHE_SECONDS
    )


def test_an_org_token_authenticates_as_its_org(tokens: TokenService) -> None:
    token = tokens.create(TokenKind.ORG, "acme", label="ci")

    principal = tokens.authenticate(f"Bearer {token}")

    assert token.startswith("qgj_org_")
    assert principal == Principal(TokenKind.ORG, "acme", None, hash_token(token))
    assert require_org(principal) == "acme"
    with pytest.raises(Forbidden, match="fleet"):
        require_fleet(principal)


def test_a_shared_fleet_token_has_no_org_and_no_target(tokens: TokenService) -> None:
    token = tokens.create("agent")

    principal = tokens.authenticate(f"Bearer {token}")

    assert token.startswith("qgj_agent_")
    assert principal == Principal(TokenKind.AGENT, None, None, hash_token(token))
    assert require_fleet(principal) is principal
    with pytest.raises(Forbidden, match="org token"):
        require_org(principal)


def test_a_fleet_token_can_be_scoped_to_a_target_and_a_private_lab(
    tokens: TokenService, store: MemoryTokenStore
) -> None:
    token = tokens.create("agent", "acme", label="acme lab", target="device")

    principal = tokens.authenticate(f"Bearer {token}")

    assert principal == Principal(TokenKind.AGENT, "acme", Target.DEVICE, hash_token(token))
    (record,) = store.records.values()
    assert (record.org_id, record.target) == ("acme", "device")
    with pytest.raises(Forbidden, match="org token"):
        require_org(principal)  # a lab's fleet token is still no org token


def test_only_a_fleet_token_can_have_a_target(tokens: TokenService) -> None:
    with pytest.raises(ValueError, match="target"):
        tokens.create(TokenKind.ORG, "acme", target="device")
    with pytest.raises(ValueError, match="tablet"):
        tokens.create(TokenKind.AGENT, target="tablet")


def test_only_the_hash_is_stored(
    tokens: TokenService, store: MemoryTokenStore, clock: FakeClock
) -> None:
    token = tokens.create(TokenKind.ORG, "acme", label="laptop")

    (record,) = store.records.values()
    assert record.token_hash == hashlib.sha256(token.encode()).hexdigest() == hash_token(token)
    assert (record.kind, record.org_id, record.label, record.created_at) == (
        "org",
        "acme",
        "laptop",
        clock(),
    )
    secret = token.removeprefix("qgj_org_")
    for value in (record.token_hash, record.kind, record.org_id, record.label):
        assert token not in str(value)
        assert secret not in str(value)


def test_two_tokens_are_different(tokens: TokenService) -> None:
    assert tokens.create(TokenKind.ORG, "acme") != tokens.create(TokenKind.ORG, "acme")


def test_the_default_secret_is_long_and_random(store: MemoryTokenStore, clock: FakeClock) -> None:
    service = TokenService(store, clock)

    first, second = service.create(TokenKind.AGENT), service.create(TokenKind.AGENT)

    assert first != second
    assert len(first.removeprefix("qgj_agent_")) >= 40


@pytest.mark.parametrize("org_id", [None, "", "has space", "x" * 65, "a/b"])
def test_an_org_token_needs_a_valid_org(tokens: TokenService, org_id: str | None) -> None:
    with pytest.raises(ValueError, match="org id"):
        tokens.create(TokenKind.ORG, org_id)


def test_an_unknown_kind_is_refused(tokens: TokenService) -> None:
    with pytest.raises(ValueError, match="admin"):
        tokens.create("admin")


def test_a_hash_collision_is_reported(store: MemoryTokenStore, clock: FakeClock) -> None:
    service = TokenService(store, clock, new_secret=lambda: "same")
    service.create(TokenKind.ORG, "acme")

    with pytest.raises(RuntimeError, match="collision"):
        service.create(TokenKind.ORG, "globex")
    assert len(store.records) == 1


@pytest.mark.parametrize("header", [None, ""])
def test_a_missing_header_says_how_to_send_one(tokens: TokenService, header: str | None) -> None:
    with pytest.raises(Unauthorized) as raised:
        tokens.authenticate(header)

    assert "Authorization" in raised.value.message
    assert "Bearer <token>" in raised.value.message
    assert "QGJOB_TOKEN" in raised.value.message


@pytest.mark.parametrize(
    "header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "qgj_org_secret1", "Token abc"]
)
def test_a_garbled_header_is_unauthorized(tokens: TokenService, header: str) -> None:
    tokens.create(TokenKind.ORG, "acme")

    with pytest.raises(Unauthorized, match="Bearer <token>"):
        tokens.authenticate(header)


def test_an_unknown_token_is_unauthorized(tokens: TokenService) -> None:
    with pytest.raises(Unauthorized, match="invalid token"):
        tokens.authenticate("Bearer qgj_org_made-up")


def test_the_scheme_is_case_insensitive_and_spaces_are_trimmed(tokens: TokenService) -> None:
    token = tokens.create(TokenKind.ORG, "acme")

    assert tokens.authenticate(f"  bearer   {token}  ").org_id == "acme"
    assert tokens.authenticate(f"BEARER {token}").org_id == "acme"


def test_a_token_of_another_org_does_not_authenticate_as_ours(tokens: TokenService) -> None:
    theirs = tokens.create(TokenKind.ORG, "globex")

    assert require_org(tokens.authenticate(f"Bearer {theirs}")) == "globex"


def test_authentication_is_cached_for_a_while(
    tokens: TokenService, store: MemoryTokenStore, clock: FakeClock
) -> None:
    token = tokens.create(TokenKind.ORG, "acme")
    tokens.authenticate(f"Bearer {token}")
    assert store.gets == 1

    clock.advance(CACHE_SECONDS - 1)
    assert tokens.authenticate(f"Bearer {token}").org_id == "acme"
    assert store.gets == 1  # served from the cache

    clock.advance(1)
    tokens.authenticate(f"Bearer {token}")
    assert store.gets == 2  # the entry expired: read again


def test_a_revoked_token_stops_working_once_the_cache_expires(
    tokens: TokenService, store: MemoryTokenStore, clock: FakeClock
) -> None:
    token = tokens.create(TokenKind.ORG, "acme")
    tokens.authenticate(f"Bearer {token}")
    store.records.clear()  # revoked

    assert tokens.authenticate(f"Bearer {token}").org_id == "acme"  # within the cache TTL
    clock.advance(CACHE_SECONDS)
    with pytest.raises(Unauthorized):
        tokens.authenticate(f"Bearer {token}")


def test_failures_are_not_cached(tokens: TokenService, store: MemoryTokenStore) -> None:
    token = "qgj_org_secret1"  # what the next create() returns
    with pytest.raises(Unauthorized):
        tokens.authenticate(f"Bearer {token}")

    assert tokens.create(TokenKind.ORG, "acme") == token
    assert tokens.authenticate(f"Bearer {token}").org_id == "acme"
    assert store.gets == 2
