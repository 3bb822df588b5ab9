"""The local stack's patches of moto (infra.moto_server): same behaviour, bounded cost.

Against a real moto server on a thread (the patches are installed when it is created),
through boto3. Costs are shown by counting work (deep copies of items, message counts),
never by timing.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
import requests
from botocore.exceptions import ClientError
from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.serialize import BaseJSONSerializer
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import Item
from moto.dynamodb.models.table import Table
from moto.dynamodb.responses import DynamoResult
from moto.sqs.models import Queue, sqs_backends

from infra import moto_server
from infra.moto_server import MotoPatchError, MotoServer

REGION = "us-east-1"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = MotoServer()
    server.start()
    yield server.endpoint
    server.stop()


def _client(service: str, endpoint: str) -> Any:
    session: Any = boto3.session.Session()
    return session.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def db(endpoint: str) -> Any:
    return _client("dynamodb", endpoint)


@pytest.fixture
def tables(db: Any, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """An empty hash-key table and an empty hash+range table, per test."""
    base = request.node.name.replace("[", "-").replace("]", "")[:200]
    simple, ranged = f"{base}-simple", f"{base}-ranged"
    db.create_table(
        TableName=simple,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    db.create_table(
        TableName=ranged,
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    yield simple, ranged
    db.delete_table(TableName=simple)
    db.delete_table(TableName=ranged)


def _scan(db: Any, table: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = db.scan(TableName=table)["Items"]
    return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))


def _seed(db: Any, simple: str, ranged: str) -> None:
    for key in ("a", "b", "d"):
        db.put_item(TableName=simple, Item={"pk": {"S": key}, "v": {"N": "1"}})
    for sort in (1, 2):
        db.put_item(TableName=ranged, Item={"pk": {"S": "h"}, "sk": {"N": str(sort)}})


def _update(table: str, key: dict[str, Any], condition: str | None = None) -> dict[str, Any]:
    update: dict[str, Any] = {
        "TableName": table,
        "Key": key,
        "UpdateExpression": "SET v = :two, extra = :x",
        "ExpressionAttributeValues": {":two": {"N": "2"}, ":x": {"S": "x"}},
    }
    if condition:
        update["ConditionExpression"] = condition
        update["ExpressionAttributeValues"][":one"] = {"N": "1"}
    return {"Update": update}


def _every_kind_of_write(simple: str, ranged: str) -> list[dict[str, Any]]:
    """An update, a new item, a delete, a new item of a new partition, a range update."""
    return [
        _update(simple, {"pk": {"S": "a"}}, condition="v = :one"),
        {"Put": {"TableName": simple, "Item": {"pk": {"S": "new"}, "v": {"N": "9"}}}},
        {"Delete": {"TableName": simple, "Key": {"pk": {"S": "d"}}}},
        {"Put": {"TableName": ranged, "Item": {"pk": {"S": "fresh"}, "sk": {"N": "1"}}}},
        _update(ranged, {"pk": {"S": "h"}, "sk": {"N": "2"}}),
    ]


def _failing_check(simple: str) -> dict[str, Any]:
    return {
        "ConditionCheck": {
            "TableName": simple,
            "Key": {"pk": {"S": "b"}},
            "ConditionExpression": "attribute_not_exists(pk)",
        }
    }


# ------------------------------------------------------------ the guard


def test_the_patches_are_installed_and_pinned_to_this_moto(endpoint: str) -> None:
    transact = DynamoDBBackend.transact_write_items
    assert getattr(transact, "qgjob_patched", False)
    original = transact.__wrapped__  # type: ignore[attr-defined]
    assert moto_server._source_digest(original) == moto_server.TRANSACT_WRITE_ITEMS_SHA256
    attributes = Queue.__dict__["attributes"].fget
    assert getattr(attributes, "qgjob_patched", False)
    assert moto_server._source_digest(attributes.original) == moto_server.QUEUE_ATTRIBUTES_SHA256
    execute = DynamoResult.execute_result
    assert getattr(execute, "qgjob_patched", False)
    digest = moto_server._source_digest(execute.__wrapped__)  # type: ignore[attr-defined]
    assert digest == moto_server.ACTION_RESULT_EXECUTE_SHA256
    assert moto_server._source_digest(DynamoResult) == moto_server.DYNAMO_RESULT_SHA256
    query = Table.query
    assert getattr(query, "qgjob_patched", False)
    digest = moto_server._source_digest(query.__wrapped__)  # type: ignore[attr-defined]
    assert digest == moto_server.TABLE_QUERY_SHA256
    moto_server.install_moto_patches()  # a second install changes nothing
    assert DynamoDBBackend.transact_write_items is transact
    assert Table.query is query


def test_a_changed_moto_function_is_refused_loudly() -> None:
    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        """Not the code the patch was written for."""

    with pytest.raises(MotoPatchError, match="transact_write_items changed"):
        moto_server._check_pinned(transact_write_items, moto_server.TRANSACT_WRITE_ITEMS_SHA256)


# ------------------------------------------------------------ transactions


@pytest.mark.parametrize("failing_at", ["first", "last"])
def test_a_failed_transaction_leaves_every_item_as_it_was(
    db: Any, tables: tuple[str, str], failing_at: str
) -> None:
    simple, ranged = tables
    _seed(db, simple, ranged)
    before = (_scan(db, simple), _scan(db, ranged))
    writes = _every_kind_of_write(simple, ranged)
    # moto applies the writes after a failed condition too, then rolls back.
    items = (
        [_failing_check(simple), *writes]
        if failing_at == "first"
        else [*writes, _failing_check(simple)]
    )
    with pytest.raises(ClientError) as raised:
        db.transact_write_items(TransactItems=items)
    assert raised.value.response["Error"]["Code"] == "TransactionCanceledException"
    reasons = [r["Code"] for r in raised.value.response["CancellationReasons"]]
    assert reasons.count("ConditionalCheckFailed") == 1
    assert (_scan(db, simple), _scan(db, ranged)) == before


def test_a_rejected_transaction_writes_nothing(db: Any, tables: tuple[str, str]) -> None:
    # Two operations on one item: refused (ValidationException) after the first is applied.
    simple, ranged = tables
    _seed(db, simple, ranged)
    before = (_scan(db, simple), _scan(db, ranged))
    items = [*_every_kind_of_write(simple, ranged), _update(simple, {"pk": {"S": "a"}})]
    with pytest.raises(ClientError) as raised:
        db.transact_write_items(TransactItems=items)
    assert raised.value.response["Error"]["Code"] == "ValidationException"
    assert (_scan(db, simple), _scan(db, ranged)) == before


def test_a_succeeded_transaction_writes_everything(db: Any, tables: tuple[str, str]) -> None:
    simple, ranged = tables
    _seed(db, simple, ranged)
    db.transact_write_items(TransactItems=_every_kind_of_write(simple, ranged))
    by_key = {item["pk"]["S"]: item for item in _scan(db, simple)}
    assert set(by_key) == {"a", "b", "new"}
    assert by_key["a"]["v"] == {"N": "2"}
    assert by_key["a"]["extra"] == {"S": "x"}
    assert by_key["b"] == {"pk": {"S": "b"}, "v": {"N": "1"}}
    assert by_key["new"]["v"] == {"N": "9"}
    expected = [
        {"pk": {"S": "fresh"}, "sk": {"N": "1"}},
        {"pk": {"S": "h"}, "sk": {"N": "1"}},
        {"pk": {"S": "h"}, "sk": {"N": "2"}, "v": {"N": "2"}, "extra": {"S": "x"}},
    ]
    assert _scan(db, ranged) == sorted(expected, key=lambda item: json.dumps(item, sort_keys=True))


def test_conditions_see_the_state_before_the_transaction(db: Any, tables: tuple[str, str]) -> None:
    simple, ranged = tables
    _seed(db, simple, ranged)
    check_b = {
        "ConditionCheck": {
            "TableName": simple,
            "Key": {"pk": {"S": "b"}},
            "ConditionExpression": "v = :one",
            "ExpressionAttributeValues": {":one": {"N": "1"}},
        }
    }
    db.transact_write_items(
        TransactItems=[_update(simple, {"pk": {"S": "a"}}, condition="v = :one"), check_b]
    )
    # The same transaction again: a's condition now fails against its committed update.
    before = _scan(db, simple)
    with pytest.raises(ClientError) as raised:
        db.transact_write_items(
            TransactItems=[_update(simple, {"pk": {"S": "a"}}, condition="v = :one"), check_b]
        )
    reasons = [r["Code"] for r in raised.value.response["CancellationReasons"]]
    assert reasons == ["ConditionalCheckFailed", "None"]
    assert _scan(db, simple) == before


def _count_deep_copies(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    counts = {"Item": 0, "Table": 0}
    real: Callable[..., Any] = copy.deepcopy

    def counting(value: Any, memo: dict[int, Any] | None = None, *args: Any) -> Any:
        if isinstance(value, Item):
            counts["Item"] += 1
        elif isinstance(value, Table):
            counts["Table"] += 1
        return real(value, memo, *args)

    monkeypatch.setattr(copy, "deepcopy", counting)
    return counts


@pytest.mark.parametrize("outcome", ["succeeds", "fails"])
def test_a_transaction_copies_only_the_items_it_touches(
    db: Any, tables: tuple[str, str], monkeypatch: pytest.MonkeyPatch, outcome: str
) -> None:
    simple, ranged = tables
    _seed(db, simple, ranged)
    for start in range(0, 300, 25):
        puts = [
            {"PutRequest": {"Item": {"pk": {"S": f"bulk-{i}"}}}} for i in range(start, start + 25)
        ]
        db.batch_write_item(RequestItems={simple: puts})
    items = _every_kind_of_write(simple, ranged)
    if outcome == "fails":
        items.append(_failing_check(simple))
    counts = _count_deep_copies(monkeypatch)
    if outcome == "fails":
        with pytest.raises(ClientError):
            db.transact_write_items(TransactItems=items)
    else:
        db.transact_write_items(TransactItems=items)
    # moto copied each touched table once per item of the transaction (1,800+ items here);
    # the patch copies each touched item once, and moto's update_item its item once more.
    assert counts["Table"] == 0
    assert counts["Item"] <= 2 * len(items)


def test_a_table_with_a_stream_keeps_moto_s_own_rollback(
    db: Any, request: pytest.FixtureRequest
) -> None:
    table = f"{request.node.name}-streamed"
    db.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    db.put_item(TableName=table, Item={"pk": {"S": "b"}, "v": {"N": "1"}})
    with pytest.raises(ClientError):
        db.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": table, "Item": {"pk": {"S": "new"}}}},
                _failing_check(table),
            ]
        )
    assert _scan(db, table) == [{"pk": {"S": "b"}, "v": {"N": "1"}}]
    db.delete_table(TableName=table)


# ------------------------------------------------------------------ SQS


def _queue(sqs: Any, name: str, **attributes: str) -> Queue:
    sqs.create_queue(QueueName=name, Attributes=attributes)
    queue: Queue = sqs_backends[DEFAULT_ACCOUNT_ID][REGION].queues[name]
    return queue


def test_queue_attributes_are_moto_s_exactly(endpoint: str) -> None:
    sqs = _client("sqs", endpoint)
    dlq = _queue(sqs, "patch-attrs-dlq")
    policy = json.dumps({"Version": "2012-10-17", "Statement": []})
    redrive = json.dumps({"deadLetterTargetArn": dlq.queue_arn, "maxReceiveCount": 3})
    queues = [
        _queue(sqs, "patch-attrs-standard", DelaySeconds="2"),
        _queue(sqs, "patch-attrs.fifo", FifoQueue="true", ContentBasedDeduplication="true"),
        _queue(sqs, "patch-attrs-redrive", RedrivePolicy=redrive, Policy=policy),
        _queue(sqs, "patch-attrs-kms", KmsMasterKeyId="alias/aws/sqs"),
    ]
    original = Queue.__dict__["attributes"].fget.original
    for queue in queues:
        url = sqs.get_queue_url(QueueName=queue.name)["QueueUrl"]
        sqs.send_message(
            QueueUrl=url, MessageBody="m", **({"MessageGroupId": "g"} if queue.fifo_queue else {})
        )
        lazy = queue.attributes
        expected = original(queue)
        assert list(lazy) == list(expected)
        assert dict(lazy) == expected
        assert lazy.get("ContentBasedDeduplication") == expected.get("ContentBasedDeduplication")
        assert "NoSuchAttribute" not in lazy
        assert lazy.get("NoSuchAttribute") is None
        wire = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert wire == {k: str(v) for k, v in expected.items() if v is not None}


def test_sending_and_receiving_do_not_count_the_queue_s_messages(
    endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqs = _client("sqs", endpoint)
    _queue(sqs, "patch-count.fifo", FifoQueue="true")
    url = sqs.get_queue_url(QueueName="patch-count.fifo")["QueueUrl"]
    counted: list[str] = []
    for name in (
        "approximate_number_of_messages",
        "approximate_number_of_messages_delayed",
        "approximate_number_of_messages_not_visible",
    ):
        real = getattr(Queue, name)

        def spy(queue: Queue, _real: property = real, _name: str = name) -> int:
            counted.append(_name)
            return int(_real.fget(queue))  # type: ignore[misc]

        monkeypatch.setattr(Queue, name, property(spy))
    entries = [
        {
            "Id": str(i),
            "MessageBody": str(i),
            "MessageGroupId": "g",
            "MessageDeduplicationId": str(i),
        }
        for i in range(10)
    ]
    sqs.send_message_batch(QueueUrl=url, Entries=entries)
    received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"])
    assert len(received["Messages"]) == 10
    # moto counted every message of the queue 3 times per attribute read: 4 per message
    # sent, 3 per message received.
    assert counted == []
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "10"
    assert sorted(set(counted)) == sorted(
        [
            "approximate_number_of_messages",
            "approximate_number_of_messages_delayed",
            "approximate_number_of_messages_not_visible",
        ]
    )


# ------------------------------------------------------ DynamoDB reads


RICH_ITEM: dict[str, Any] = {
    "s": {"S": 'text é ✓ "quoted" \\ slash'},
    "empty": {"S": ""},
    "n": {"N": "-12.50"},
    "b": {"B": b"\x00\xffbinary"},
    "ss": {"SS": ["x", "y"]},
    "ns": {"NS": ["1", "2.5"]},
    "bs": {"BS": [b"a", b"\x01"]},
    "yes": {"BOOL": True},
    "none": {"NULL": True},
    "l": {"L": [{"S": "a"}, {"N": "1"}, {"M": {"deep": {"L": [{"BOOL": False}]}}}]},
    "m": {"M": {"k": {"S": "v"}, "b": {"B": b"\x02"}, "e": {"M": {}}}},
}


SIGNATURE = (
    "AWS4-HMAC-SHA256 Credential=testing/20250101/us-east-1/dynamodb/aws4_request, "
    "SignedHeaders=host, Signature=x"
)


def _raw_reads(endpoint: str, table: str) -> list[dict[str, Any]]:
    """The JSON bodies of a Query, a paged Scan and a BatchGetItem, as sent on the wire."""
    requests_ = [
        ("Query", {"TableName": table, "KeyConditionExpression": "pk = :h",
                   "ExpressionAttributeValues": {":h": {"S": "h"}}}),
        ("Scan", {"TableName": table, "Limit": 3}),
        ("BatchGetItem", {"RequestItems": {table: {"Keys": [
            {"pk": {"S": "h"}, "sk": {"N": str(i)}} for i in range(5)
        ]}}}),
    ]  # fmt: skip
    bodies = []
    for operation, body in requests_:
        response = requests.post(
            endpoint,
            data=json.dumps(body),
            headers={
                "X-Amz-Target": f"DynamoDB_20120810.{operation}",
                "Content-Type": "application/x-amz-json-1.0",
                "Authorization": SIGNATURE,
            },
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"] == "application/x-amz-json-1.0"
        bodies.append(response.json())
    return bodies


def test_reads_answer_exactly_what_moto_s_serializer_answers(
    endpoint: str, db: Any, tables: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, ranged = tables
    for i in range(5):
        db.put_item(TableName=ranged, Item={"pk": {"S": "h"}, "sk": {"N": str(i)}, **RICH_ITEM})
    patched = _raw_reads(endpoint, ranged)
    original = DynamoResult.execute_result.__wrapped__  # type: ignore[attr-defined]
    monkeypatch.setattr(DynamoResult, "execute_result", original)
    assert patched == _raw_reads(endpoint, ranged)
    query, scan, batch = patched
    assert query["Count"] == 5
    assert "LastEvaluatedKey" in scan
    assert len(batch["Responses"][ranged]) == 5
    # And boto3 reads them back as they were written.
    item = db.get_item(TableName=ranged, Key={"pk": {"S": "h"}, "sk": {"N": "0"}})["Item"]
    assert item["b"] == {"B": b"\x00\xffbinary"}


def test_a_large_page_is_not_walked_by_moto_s_serializer(
    db: Any, tables: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    simple, _ = tables
    for start in range(0, 200, 25):
        puts = [
            {"PutRequest": {"Item": {"pk": {"S": f"k{i}"}, "a": {"S": "x"}, "n": {"N": "1"}}}}
            for i in range(start, start + 25)
        ]
        db.batch_write_item(RequestItems={simple: puts})
    walked: list[str] = []
    real = BaseJSONSerializer._serialize_type_map

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        walked.append("map")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(BaseJSONSerializer, "_serialize_type_map", counting)
    assert len(db.scan(TableName=simple)["Items"]) == 200
    # moto's serializer walks one map per item (and one per attribute value).
    assert len(walked) < 10


# ------------------------------------------------------------ GSI queries


@pytest.fixture
def indexed(db: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty table with a sparse GSI (hash ``shard_id``, range ``at``), per test."""
    name = request.node.name.replace("[", "-").replace("]", "")[:200] + "-indexed"
    db.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "shard_id", "AttributeType": "S"},
            {"AttributeName": "at", "AttributeType": "N"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "shard-index",
                "KeySchema": [
                    {"AttributeName": "shard_id", "KeyType": "HASH"},
                    {"AttributeName": "at", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    yield name
    db.delete_table(TableName=name)


SHARDS = ("s0", "s1", "s2")


def _random_write(db: Any, table: str, rng: Any) -> None:
    """One of every way an item enters, moves within, or leaves the index."""
    key = {"pk": {"S": f"k{rng.randrange(12)}"}}
    shard = {"S": rng.choice(SHARDS)}
    at = {"N": str(rng.randrange(5))}
    kind = rng.randrange(6)
    if kind == 0:
        db.put_item(TableName=table, Item={**key, "shard_id": shard, "at": at})
    elif kind == 1:
        db.update_item(
            TableName=table,
            Key=key,
            UpdateExpression="SET shard_id = :s, #at = :a",
            ExpressionAttributeNames={"#at": "at"},
            ExpressionAttributeValues={":s": shard, ":a": at},
        )
    elif kind == 2:
        db.update_item(TableName=table, Key=key, UpdateExpression="REMOVE shard_id")
    elif kind == 3:
        db.delete_item(TableName=table, Key=key)
    elif kind == 4:
        other = {"pk": {"S": f"k{rng.randrange(12)}"}}
        if other == key:
            return
        items = [
            {"Update": {
                "TableName": table, "Key": key, "UpdateExpression": "SET shard_id = :s",
                "ExpressionAttributeValues": {":s": shard},
            }},
            {"Put": {"TableName": table, "Item": {**other, "shard_id": shard, "at": at}}},
        ]  # fmt: skip
        if rng.random() < 0.5:  # a failing condition: the transaction writes nothing
            items[1]["Put"]["ConditionExpression"] = "attribute_not_exists(pk) AND pk = :no"
            items[1]["Put"]["ExpressionAttributeValues"] = {":no": {"S": "never"}}
        with contextlib.suppress(ClientError):
            db.transact_write_items(TransactItems=items)
    else:
        db.batch_write_item(
            RequestItems={table: [{"PutRequest": {"Item": {**key, "shard_id": shard, "at": at}}}]}
        )


def _expected(db: Any, table: str, shard: str) -> list[dict[str, Any]]:
    """What the index holds for ``shard``: from a scan (never patched), in index order."""
    items = [i for i in db.scan(TableName=table)["Items"] if i.get("shard_id") == {"S": shard}]
    return sorted((i for i in items if "at" in i), key=lambda i: (int(i["at"]["N"]), i["pk"]["S"]))


def test_an_index_query_answers_what_moto_s_full_scan_answers(db: Any, indexed: str) -> None:
    rng = random.Random(7)
    for step in range(300):
        _random_write(db, indexed, rng)
        for shard in SHARDS:
            answer = db.query(
                TableName=indexed,
                IndexName="shard-index",
                KeyConditionExpression="shard_id = :s",
                ExpressionAttributeValues={":s": {"S": shard}},
            )["Items"]
            assert answer == _expected(db, indexed, shard), f"step {step}, {shard}"
    ranged = db.query(
        TableName=indexed,
        IndexName="shard-index",
        KeyConditionExpression="shard_id = :s AND #at < :a",
        ExpressionAttributeNames={"#at": "at"},
        ExpressionAttributeValues={":s": {"S": "s1"}, ":a": {"N": "3"}},
        ScanIndexForward=False,
        Limit=2,
    )
    expected = [i for i in _expected(db, indexed, "s1") if int(i["at"]["N"]) < 3][::-1][:2]
    assert ranged["Items"] == expected


def test_an_index_query_reads_only_its_bucket(
    db: Any, indexed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in range(200):
        db.put_item(
            TableName=indexed,
            Item={"pk": {"S": f"k{index}"}, "shard_id": {"S": SHARDS[index % 3]}, "at": {"N": "1"}},
        )
    handed: list[int] = []
    original = moto_server._scoped_all_items

    def counting(self: Table) -> list[Item]:
        items = original(self)
        handed.append(len(items))
        return items

    monkeypatch.setattr(Table, "all_items", counting)
    for shard in SHARDS:
        db.query(
            TableName=indexed,
            IndexName="shard-index",
            KeyConditionExpression="shard_id = :s",
            ExpressionAttributeValues={":s": {"S": shard}},
        )
    # Each query sees its shard's items (67, 67, 66), not the table's 200.
    assert handed == [67, 67, 66]
