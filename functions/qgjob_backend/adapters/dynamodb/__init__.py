"""DynamoDB implementation of the StateStore, TokenStore and EstimateStore ports.

Every state change is a conditional UpdateItem/PutItem or a TransactWriteItems; a
failed condition is reported as None/False, never raised, because under at-least-once
delivery "someone already did this" is the normal case.

One module per aggregate: ``jobs`` (runs and jobs), ``agents``, ``batches`` (and the
transactions that span tables), ``tokens``, ``estimates``; ``state`` composes the first
three into the one StateStore, over ``table``'s helpers and ``codec``'s conversions.
"""

from qgjob_backend.adapters.dynamodb.estimates import DynamoEstimateStore
from qgjob_backend.adapters.dynamodb.state import DynamoStateStore
from qgjob_backend.adapters.dynamodb.tokens import DynamoTokenStore

__all__ = ["DynamoEstimateStore", "DynamoStateStore", "DynamoTokenStore"]
