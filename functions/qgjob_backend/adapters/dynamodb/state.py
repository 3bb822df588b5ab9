"""The StateStore port over DynamoDB: one store composed of each aggregate's part."""

from __future__ import annotations

from qgjob_backend.adapters.dynamodb.agents import AgentStore
from qgjob_backend.adapters.dynamodb.batches import BatchStore
from qgjob_backend.adapters.dynamodb.cancels import CancelStore
from qgjob_backend.adapters.dynamodb.jobs import JobStore
from qgjob_backend.adapters.dynamodb.moves import MoveStore
from qgjob_backend.adapters.dynamodb.retries import RetryStore


class DynamoStateStore(JobStore, AgentStore, BatchStore, CancelStore, RetryStore, MoveStore):
    """StateStore over the jobs, runs, agents and batches tables (see template.yaml)."""
