"""The BuildStore contract, run against the in-memory fake AND DynamoDB (moto): the
version condition of every write and the bounded, per-org listing."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import boto3
import pytest

from qgjob_backend.adapters.dynamodb.builds import DynamoBuildStore
from qgjob_backend.config import Config
from qgjob_backend.domain.builds import Build, BuildFile, BuildState
from qgjob_backend.ports import BuildStore
from tests.unit.fakes import MemoryBuildStore

FILE = BuildFile(sha256="a" * 64, size=123, file_name="app.apk", key="builds/acme/v1/a/app.apk")


@pytest.fixture(params=["memory", "dynamo"])
def store(request: pytest.FixtureRequest) -> Iterator[BuildStore]:
    if request.param == "memory":
        yield MemoryBuildStore()
        return
    config: Config = request.getfixturevalue("config")
    session: boto3.Session = request.getfixturevalue("aws_session")
    assert config.builds_table, "template.yaml must define BuildsTable (BUILDS_TABLE)"
    yield DynamoBuildStore(session.client("dynamodb"), config.builds_table)


def build(version: str = "v1", org: str = "acme", **changes: object) -> Build:
    base = Build(org, version, created_at=10.0, updated_at=10.0, pending=FILE)
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_build_round_trips(store: BuildStore) -> None:
    assert store.get_build("acme", "v1") is None
    ready = build(ready=FILE, pending=None, uploaded_at=11.5, replaced=2)
    assert store.save_build(ready, None)
    got = store.get_build("acme", "v1")
    assert got == ready
    assert got is not None
    assert got.state is BuildState.READY


def test_a_first_write_fails_when_one_exists(store: BuildStore) -> None:
    assert store.save_build(build(), None)
    assert not store.save_build(build(updated_at=20.0), None)
    assert store.get_build("acme", "v1") == build()


def test_a_write_needs_the_version_it_read(store: BuildStore) -> None:
    assert store.save_build(build(), None)
    second = build(version="v1", ready=FILE, pending=None, updated_at=12.0)
    second = replace(second, version=2)
    assert not store.save_build(second, expected_version=7)
    assert store.save_build(second, expected_version=1)
    assert not store.save_build(replace(second, version=3), expected_version=1)  # stale read
    assert store.get_build("acme", "v1") == second


def test_orgs_never_see_each_others_builds(store: BuildStore) -> None:
    assert store.save_build(build(org="acme"), None)
    assert store.get_build("globex", "v1") is None
    assert store.list_builds("globex", None, 10).builds == []


def test_listing_pages_by_app_version_within_one_org(store: BuildStore) -> None:
    for version in ("v3", "v1", "v2"):
        assert store.save_build(build(version=version), None)
    assert store.save_build(build(version="v0", org="globex"), None)
    first = store.list_builds("acme", None, 2)
    assert [b.app_version_id for b in first.builds] == ["v1", "v2"]
    assert first.more
    rest = store.list_builds("acme", "v2", 2)
    assert [b.app_version_id for b in rest.builds] == ["v3"]
    assert not rest.more
