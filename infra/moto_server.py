"""moto's server on a thread, with DynamoDB requests made atomic.

DynamoDB applies each conditional write and each transaction atomically; qgjob's
correctness rests on that (an agent gets one batch, a job sits in one batch). moto's
threaded server does not: it checks conditions and writes without a lock, and a failed
TransactWriteItems restores a deep copy of every table it touched, taken when it began,
wiping out whatever other requests wrote meanwhile. The stack's functions run
concurrently (api, dispatcher and reaper, like separate Lambdas), so this module runs
DynamoDB requests one at a time. SQS and S3 requests stay concurrent.

It also patches three of moto's costs that grow with the stack's state (see
`install_moto_patches`): a transaction's rollback snapshot, SQS's queue attributes, and
GSI queries, which moto answers by sorting and scanning the whole table.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import inspect
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

import moto
import moto.dynamodb.models as dynamodb_models
from moto.core.responses import ActionResult
from moto.core.utils import camelcase_to_underscores
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import Table
from moto.dynamodb.responses import DynamoResult
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.sqs.models import Queue
from werkzeug.serving import BaseWSGIServer, make_server

from infra.serving import ServerThread

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
DYNAMODB_TARGET_PREFIX = "DynamoDB_"  # X-Amz-Target of every DynamoDB API call


class SerializedDynamoDB:
    """WSGI middleware: one DynamoDB request at a time, everything else passes through."""

    def __init__(self, app: WsgiApp) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith(DYNAMODB_TARGET_PREFIX):
            return self._app(environ, start_response)
        with self._lock:
            # The body is produced inside the lock: the work may happen while it is read.
            return list(self._app(environ, start_response))


class MotoServer:
    """moto's full server (every service) on ``host``, a free port by default."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        install_moto_patches()
        app = SerializedDynamoDB(DomainDispatcherApplication(create_backend_app))
        server: BaseWSGIServer = make_server(
            host, port, app, threaded=True, request_handler=MotoRequestHandler
        )
        self._serving = ServerThread(server, "moto-server")

    @property
    def endpoint(self) -> str:
        return self._serving.base_url

    def start(self) -> None:
        self._serving.start()

    def stop(self) -> None:
        self._serving.stop()


# ------------------------------------------------------------- moto patches
#
# Three of moto's costs grow with the stack's state, so a local stack under load stalls:
# - TransactWriteItems deep-copies every table it touches, once per item of the
#   transaction, to roll back on failure (a 25-item transaction on a 5,000-item table
#   copied 125,000 items).
# - A Query, Scan or BatchGetItem response goes through moto's generic serializer, about a
#   millisecond per item: the dispatcher's 1,000-item backlog pages took seconds.
# - SQS builds a queue's whole attribute dict, counting its messages three times, to read
#   one attribute: four times per message sent, three per message received.
# Each patch keeps moto's behaviour and is pinned to the source it was written against:
# when moto changes, `install_moto_patches` refuses to start instead of guessing.


class MotoPatchError(RuntimeError):
    """moto's code is not the code a patch was written for: review the patch."""


def _source_digest(function: Callable[..., Any]) -> str:
    return hashlib.sha256(inspect.getsource(function).encode("utf-8")).hexdigest()


def _check_pinned(function: Callable[..., Any], digest: str) -> None:
    if _source_digest(function) != digest:
        raise MotoPatchError(
            f"moto's {function.__module__}.{function.__qualname__} changed (moto "
            f"{moto.__version__}); review infra/moto_server.py's patch of it and re-pin it"
        )


# moto 5.2.5, moto/dynamodb/models/__init__.py and moto/sqs/models.py.
TRANSACT_WRITE_ITEMS_SHA256 = "81db2cb7d94e39c90b3a2077e1f4bb41a449c558ef9b1b1e2910fdaa39978ad4"
ACTION_RESULT_EXECUTE_SHA256 = "6333faa349b58671258985778d2aaf02d31e0617aae380442e4c683c36ab248d"
DYNAMO_RESULT_SHA256 = "60bf60c38edb801fb832be6f52fa15c4d403053250980babef761d96bf2f8227"
QUEUE_ATTRIBUTES_SHA256 = "40cb990b121628d535cecbcd0e0d333984024633b70a097489ae8611e1a59338"

_ItemKey = tuple[str, DynamoType, DynamoType | None]
_transaction = threading.local()  # .active: this thread runs a patched transaction


class _TransactionCopy:
    """Stands in for the ``copy`` module inside moto.dynamodb.models.

    In a patched transaction moto's snapshot of a whole table (``copy.deepcopy(table)``)
    is the table itself, and its rollback (``self.tables[name] = snapshot``) a no-op:
    `_TouchedItems` has the snapshot and does the rollback. Everything else is ``copy``.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)

    @staticmethod
    def deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
        if getattr(_transaction, "active", False) and isinstance(value, Table):
            return value
        return copy.deepcopy(value, memo)


class _TouchedItems:
    """The items one transaction may write, as they were before it: its rollback."""

    def __init__(self, tables: dict[str, Table]) -> None:
        self._tables = tables
        # key -> (copy of the item or None when absent, whether its hash partition existed)
        self._before: dict[_ItemKey, tuple[Item | None, bool]] = {}

    @classmethod
    def take(cls, tables: dict[str, Table], transact_items: Any) -> _TouchedItems | None:
        """The snapshot, or None when a write's place is not certain (moto's copy then)."""
        snapshot = cls(tables)
        for entry in transact_items:
            key = _write_key(tables, entry)
            if key == "unsure":
                return None
            if isinstance(key, tuple) and key not in snapshot._before:
                snapshot._before[key] = snapshot._read(key)
        return snapshot

    def _read(self, key: _ItemKey) -> tuple[Item | None, bool]:
        table_name, hash_value, range_value = key
        items: Any = self._tables[table_name].items
        partition = items.get(hash_value)
        if range_value is None:
            return copy.deepcopy(partition), hash_value in items
        item = partition.get(range_value) if partition is not None else None
        return copy.deepcopy(item), partition is not None

    def restore(self) -> None:
        for (table_name, hash_value, range_value), (item, had_partition) in self._before.items():
            table = self._tables.get(table_name)
            if table is None:
                continue
            _table_changed(table)
            items: Any = table.items
            if range_value is None:
                if item is None:
                    items.pop(hash_value, None)
                else:
                    items[hash_value] = item
                continue
            if item is not None:
                items[hash_value][range_value] = item
                continue
            partition = items.get(hash_value)
            if partition is not None:
                partition.pop(range_value, None)
                if not partition and not had_partition:
                    del items[hash_value]


def _write_key(tables: dict[str, Table], entry: Any) -> _ItemKey | Literal["no-write", "unsure"]:
    """Where one TransactItems entry can write, found the way moto finds it.

    "no-write" for an entry that writes nothing (a ConditionCheck; not exactly one
    operation: moto refuses it); "unsure" for a table named by ARN or unknown, a table
    with a stream (its records of a rolled-back write would stay), a key missing.
    """
    if not isinstance(entry, dict) or len(entry) != 1:
        return "no-write"
    ((op_type, op),) = entry.items()
    if op_type == "ConditionCheck":
        return "no-write"
    try:
        table = tables.get(op["TableName"])
        if table is None or table.stream_shard is not None:
            return "unsure"
        # moto reads the key first (get_keys_value): without its attributes, nothing is
        # written; a Put's key is in its item.
        attrs = op["Item"] if op_type == "Put" else op["Key"]
        hash_value = DynamoType(attrs[table.hash_key_attr])
        range_attr = table.range_key_attr
        range_value = None if range_attr is None else DynamoType(attrs[range_attr])
    except (AttributeError, KeyError, TypeError, ValueError):
        return "unsure"
    return (table.name, hash_value, range_value)


def _patched_transact_write_items(
    original: Callable[[Any, list[dict[str, Any]]], None],
) -> Callable[[Any, list[dict[str, Any]]], None]:
    @functools.wraps(original)
    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        snapshot = _TouchedItems.take(self.tables, transact_items)
        if snapshot is None or getattr(_transaction, "active", False):
            original(self, transact_items)  # moto's own whole-table copy
            return
        _transaction.active = True
        try:
            original(self, transact_items)
        except BaseException:
            snapshot.restore()
            raise
        finally:
            _transaction.active = False

    transact_write_items.qgjob_patched = True  # type: ignore[attr-defined]
    return transact_write_items


# The members of a read's response that hold items, by operation (BatchGetItem's
# Responses: table name -> items).
_ITEM_MEMBERS = {"Query": "Items", "Scan": "Items", "BatchGetItem": "Responses"}


def _base64(value: object) -> str:
    if isinstance(value, bytes | bytearray):  # B and BS values: base64, as the serializer does
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _patched_execute_result(
    original: Callable[[ActionResult, Any], Any],
) -> Callable[[ActionResult, Any], Any]:
    """DynamoDB reads with their items encoded by `json`, the rest by moto's serializer.

    moto's serializer walks each attribute value against the AttributeValue shape, about
    a millisecond per item: a 1,000-item page costs a second of CPU. The items are already
    plain DynamoDB JSON (DynamoResult converts them), so `json.dumps` writes the same.
    """

    @functools.wraps(original)
    def execute_result(self: ActionResult, context: Any) -> Any:
        member = _ITEM_MEMBERS.get(context.operation_model.name)
        result = self.result
        if member is None or not isinstance(result, dict) or member not in result:
            return original(self, context)
        rest = ActionResult({name: value for name, value in result.items() if name != member})
        status, headers, body = original(rest, context)
        payload = json.loads(body)
        payload[member] = result[member]
        return status, headers, json.dumps(payload, default=_base64)

    execute_result.qgjob_patched = True  # type: ignore[attr-defined]
    return execute_result


class _LazyQueueAttributes(Mapping[str, Any]):
    """`Queue.attributes`, computing only the attributes that are read.

    The same keys, order and values as moto's property, which builds every attribute
    (three of them scan all messages) even when one cheap attribute is read.
    """

    def __init__(self, queue: Queue) -> None:
        self._queue = queue
        names = list(queue.BASE_ATTRIBUTES)
        if queue.fifo_queue:
            names += queue.FIFO_ATTRIBUTES
        if getattr(queue, "kms_master_key_id", None):
            names += queue.KMS_ATTRIBUTES
        self._names = tuple(dict.fromkeys(names))

    def __getitem__(self, name: str) -> Any:
        if name not in self._names:
            raise KeyError(name)
        queue = self._queue
        if name == "RedrivePolicy" and queue.redrive_policy:
            return json.dumps(queue.redrive_policy)
        value = getattr(queue, camelcase_to_underscores(name))
        return str(value).lower() if isinstance(value, bool) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names


# ------------------------------------------------------------------ GSI queries
#
# moto's Table.query on an index sorts every item of the table (all_items) and tests each
# one, so a query costs O(n log n) in the table's size, not in what it returns: the
# stack's plans and reaper sweeps (8 sharded queries per index) slowed down with every job
# it ever ran. The patch hands Table.query, for an index query on one hash attribute, only
# the items whose attribute has the queried value (the same items, in the same order):
# moto's own code still does all the matching, filtering and paging. The buckets are built
# in one pass per table and index and dropped at any write to the table (every write path
# goes through Table.put_item, Table.delete_item, DynamoDBBackend.update_item or a
# transaction's restore), so a result never differs from moto's; tests/integration/
# test_moto_patches.py compares them after random writes.

TABLE_QUERY_SHA256 = "002b4d00be6df07cf37f6cbe0132e5eb89455ae12a8e79b23db3fb492450f21e"
TABLE_ALL_ITEMS_SHA256 = "c80d2ee3c896acd0cab6ca35aaeae3ab3fb65858933f8a3403d4e027c240f31d"
_query_scope = threading.local()  # the items all_items returns inside a patched query


def _table_changed(table: Table) -> None:
    table.__dict__["_qgjob_buckets"] = {}


def _bucket_key(value: DynamoType) -> tuple[str, str]:
    return (str(value.type), value.value if isinstance(value.value, str) else repr(value.value))


def _bucket(table: Table, attribute: str, value: DynamoType) -> list[Item]:
    """The items whose ``attribute`` is ``value``, in all_items' order (primary key).

    One pass over the table builds the buckets of every index hash attribute at once;
    only the buckets are sorted, never the whole table."""
    buckets: dict[str, dict[tuple[str, str], list[Item]]] | None = table.__dict__.get(
        "_qgjob_buckets"
    )
    if not buckets:
        attributes = {
            k["AttributeName"]
            for index in table.all_indexes()
            for k in index.schema
            if k["KeyType"] == "HASH"
        }
        buckets = {name: {} for name in attributes}
        for partition in table.items.values():
            items = partition.values() if table.range_key_attr else [partition]
            for item in items:
                if not isinstance(item, Item):
                    continue
                for name, by_value in buckets.items():
                    found = item.attrs.get(name)
                    if found is not None:
                        by_value.setdefault(_bucket_key(found), []).append(item)
        for by_value in buckets.values():
            for members in by_value.values():
                members.sort(key=_primary_order)
        table.__dict__["_qgjob_buckets"] = buckets
    return list(buckets.get(attribute, {}).get(_bucket_key(value), []))


def _primary_order(item: Item) -> Any:
    # all_items' sort key, as moto writes it
    return (item.hash_key, item.range_key) if item.range_key else item.hash_key


_ORIGINAL_ALL_ITEMS: list[Callable[[Table], list[Item]]] = []


def _scoped_all_items(self: Table) -> list[Item]:
    scope = getattr(_query_scope, "items", None)
    if scope is not None and scope[0] is self:
        return list(scope[1])
    return _ORIGINAL_ALL_ITEMS[0](self)


def _index_hash_attribute(table: Table, index_name: str) -> str | None:
    for index in table.all_indexes():
        if index.name == index_name:
            hashes = [k["AttributeName"] for k in index.schema if k["KeyType"] == "HASH"]
            return hashes[0] if len(hashes) == 1 else None
    return None


def _patched_query(query: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(query)

    @functools.wraps(query)
    def patched(self: Table, *args: Any, **kwargs: Any) -> Any:
        arguments = signature.bind(self, *args, **kwargs).arguments
        index_name = arguments.get("index_name")
        conditions = arguments.get("hash_key_conditions") or []
        attribute = _index_hash_attribute(self, index_name) if index_name else None
        values = [value for name, value in conditions if name == attribute]
        if attribute is None or len(values) != 1 or getattr(_query_scope, "items", None):
            return query(self, *args, **kwargs)
        _query_scope.items = (self, _bucket(self, attribute, values[0]))
        try:
            return query(self, *args, **kwargs)
        finally:
            _query_scope.items = None

    patched.qgjob_patched = True  # type: ignore[attr-defined]
    return patched


def _dropping_buckets(write: Callable[..., Any], *, by_name: bool) -> Callable[..., Any]:
    """A write method that drops its table's query buckets first (``by_name``: a backend
    method whose first argument is the table's name)."""

    @functools.wraps(write)
    def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
        table: Table | None = self
        if by_name:
            name = args[0] if args else kwargs.get("table_name")
            table = self.tables.get(name) if isinstance(name, str) else None
        if table is not None:
            _table_changed(table)
        try:
            return write(self, *args, **kwargs)
        finally:  # and after: an update mutates the item in place
            if table is not None:
                _table_changed(table)

    patched.qgjob_patched = True  # type: ignore[attr-defined]
    return patched


def _install_query_patch() -> None:
    query = Table.query
    if getattr(query, "qgjob_patched", False):
        return
    _check_pinned(query, TABLE_QUERY_SHA256)
    _check_pinned(Table.all_items, TABLE_ALL_ITEMS_SHA256)
    _ORIGINAL_ALL_ITEMS.append(Table.all_items)
    setattr(Table, "all_items", _scoped_all_items)  # noqa: B010
    setattr(Table, "query", _patched_query(query))  # noqa: B010
    setattr(Table, "put_item", _dropping_buckets(Table.put_item, by_name=False))  # noqa: B010
    setattr(Table, "delete_item", _dropping_buckets(Table.delete_item, by_name=False))  # noqa: B010
    update = DynamoDBBackend.update_item
    setattr(DynamoDBBackend, "update_item", _dropping_buckets(update, by_name=True))  # noqa: B010


_patch_lock = threading.Lock()


def install_moto_patches() -> None:
    """Installs the patches once per process; MotoPatchError when moto changed."""
    with _patch_lock:
        transact = DynamoDBBackend.transact_write_items
        if not getattr(transact, "qgjob_patched", False):
            _check_pinned(transact, TRANSACT_WRITE_ITEMS_SHA256)
            if getattr(dynamodb_models, "copy", None) is not copy:
                raise MotoPatchError("moto.dynamodb.models no longer uses the copy module")
            patched = _patched_transact_write_items(transact)
            setattr(dynamodb_models, "copy", _TransactionCopy())  # noqa: B010
            setattr(DynamoDBBackend, "transact_write_items", patched)  # noqa: B010
        execute = DynamoResult.execute_result
        if not getattr(execute, "qgjob_patched", False):
            _check_pinned(execute, ACTION_RESULT_EXECUTE_SHA256)
            _check_pinned(DynamoResult, DYNAMO_RESULT_SHA256)
            setattr(DynamoResult, "execute_result", _patched_execute_result(execute))  # noqa: B010
        attributes = Queue.__dict__["attributes"]
        if not getattr(attributes.fget, "qgjob_patched", False):
            _check_pinned(attributes.fget, QUEUE_ATTRIBUTES_SHA256)

            def lazy_attributes(queue: Queue) -> Mapping[str, Any]:
                return _LazyQueueAttributes(queue)

            lazy_attributes.qgjob_patched = True  # type: ignore[attr-defined]
            lazy_attributes.original = attributes.fget  # type: ignore[attr-defined]
            setattr(Queue, "attributes", property(lazy_attributes))  # noqa: B010
        _install_query_patch()
