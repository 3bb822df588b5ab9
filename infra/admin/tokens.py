"""Listing tokens: the one Scan of the system, and only here, in the operator's tooling.

The tokens table is keyed by token hash alone (a request reads one item), so listing it
means scanning it. An operator does that on purpose, one bounded page per call: no code
in functions/ scans (tests/unit/test_template_keys.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from qgjob_backend.adapters.dynamodb.codec import deserialize, serialize
from qgjob_backend.adapters.dynamodb.tokens import token_from_item
from qgjob_backend.ports import TokenRecord
from qgjob_backend.services.auth import TOKEN_ID_PATTERN


@dataclass(frozen=True)
class TokenPage:
    records: list[TokenRecord]
    after: str | None  # pass back to read the next page; None: this was the last one


def list_tokens(client: Any, table: str, after: str | None, limit: int) -> TokenPage:
    """Up to ``limit`` token records after the cursor ``after`` (a previous page's)."""
    if after is not None and not re.fullmatch(TOKEN_ID_PATTERN, after):
        raise ValueError(f"--after {after!r} is not a cursor a page printed")
    kwargs: dict[str, Any] = {"TableName": table, "Limit": limit}
    if after:
        kwargs["ExclusiveStartKey"] = serialize({"token_hash": after})
    response = client.scan(**kwargs)
    records = [token_from_item(deserialize(item)) for item in response.get("Items", [])]
    last = response.get("LastEvaluatedKey")
    return TokenPage(records, str(deserialize(last)["token_hash"]) if last else None)
