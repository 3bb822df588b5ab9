"""The OrgSettingsStore contract, run against the in-memory fake AND DynamoDB (moto): a
round trip, the version condition of every write, orgs kept apart; and, on DynamoDB, the
item sharing the runs table without ever being read as a run."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest

from qgjob_backend.adapters.dynamodb.org_settings import DynamoOrgSettingsStore, org_settings_key
from qgjob_backend.config import Config
from qgjob_backend.ports import OrgSettings, OrgSettingsStore
from qgjob_backend.schema import Target
from tests.integration.conftest import state_store_of
from tests.unit.fakes import MemoryOrgSettingsStore

FIRST = OrgSettings("acme", Target.BROWSERSTACK, updated_at=100.5, version=1)


@pytest.fixture(params=["memory", "dynamo"])
def store(request: pytest.FixtureRequest) -> Iterator[OrgSettingsStore]:
    if request.param == "memory":
        yield MemoryOrgSettingsStore()
        return
    config: Config = request.getfixturevalue("config")
    session: boto3.Session = request.getfixturevalue("aws_session")
    yield DynamoOrgSettingsStore(session.client("dynamodb"), config.runs_table)


def test_settings_round_trip_consistent_or_not(store: OrgSettingsStore) -> None:
    assert store.get("acme") is None
    assert store.put(FIRST, None)
    assert store.get("acme") == FIRST
    assert store.get("acme", consistent=False) == FIRST


def test_no_overflow_round_trips_as_none(store: OrgSettingsStore) -> None:
    assert store.put(FIRST, None)
    cleared = OrgSettings("acme", None, updated_at=200.0, version=2)
    assert store.put(cleared, expected_version=1)
    assert store.get("acme") == cleared


def test_a_first_write_fails_when_settings_exist(store: OrgSettingsStore) -> None:
    assert store.put(FIRST, None)
    assert not store.put(OrgSettings("acme", None, updated_at=300.0, version=1), None)
    assert store.get("acme") == FIRST


def test_a_write_needs_the_version_it_read(store: OrgSettingsStore) -> None:
    second = OrgSettings("acme", None, updated_at=200.0, version=2)
    assert not store.put(second, expected_version=1)  # nothing stored yet
    assert store.get("acme") is None
    assert store.put(FIRST, None)
    assert not store.put(second, expected_version=7)
    assert store.put(second, expected_version=1)
    stale = OrgSettings("acme", Target.BROWSERSTACK, updated_at=250.0, version=2)
    assert not store.put(stale, expected_version=1)  # a writer that read version 1 too
    assert store.get("acme") == second


def test_orgs_never_see_each_others_settings(store: OrgSettingsStore) -> None:
    assert store.put(FIRST, None)
    assert store.get("globex") is None
    other = OrgSettings("globex", None, updated_at=1.0, version=1)
    assert store.put(other, None)
    assert store.get("acme") == FIRST
    assert store.get("globex") == other


def test_the_item_lives_in_the_runs_table_and_is_never_a_run(
    config: Config, aws_session: boto3.Session
) -> None:
    client = aws_session.client("dynamodb")
    store = DynamoOrgSettingsStore(client, config.runs_table)
    assert store.put(FIRST, None)

    item = client.get_item(
        TableName=config.runs_table, Key={"run_id": {"S": org_settings_key("acme")}}
    )["Item"]
    assert item["kind"] == {"S": "org_settings"}
    assert "expires_at" not in item  # a setting lasts until changed
    assert state_store_of(aws_session, config).get_run(org_settings_key("acme")) is None


def test_an_item_of_another_kind_is_neither_read_nor_replaced(
    config: Config, aws_session: boto3.Session
) -> None:
    client = aws_session.client("dynamodb")
    key = {"run_id": {"S": org_settings_key("acme")}}
    client.put_item(
        TableName=config.runs_table, Item={**key, "kind": {"S": "run"}, "version": {"N": "1"}}
    )
    store = DynamoOrgSettingsStore(client, config.runs_table)

    assert store.get("acme") is None
    assert not store.put(OrgSettings("acme", None, 1.0, version=2), expected_version=1)
    assert client.get_item(TableName=config.runs_table, Key=key)["Item"]["kind"] == {"S": "run"}
