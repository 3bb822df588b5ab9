"""Device agents as an operator sees them: listing, draining and undraining.

A drained agent keeps the batch it holds and finishes it; the dispatcher skips it from
then on (``Agent.drained_at``), across its restarts, until it is undrained. Draining is
one conditional write on the agent's item and touches nothing else, so it is safe at any
moment and safe to repeat.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from qgjob_backend.adapters.dynamodb.agents import agent_from_item
from qgjob_backend.adapters.dynamodb.codec import (
    deserialize,
    expression_values,
    is_condition_failure,
    serialize,
)
from qgjob_backend.domain.models import Agent, AgentStatus
from qgjob_backend.ports import StateStore
from qgjob_backend.schema import Target

DRAINED_ATTRIBUTE = "drained_at"


@dataclass(frozen=True)
class DrainResult:
    agent: Agent
    changed: bool  # False: it was drained (or undrained) already

    @property
    def safe_to_stop(self) -> bool:
        """Drained and holding no batch: stopping its process loses nothing."""
        return self.agent.drained_at is not None and self.agent.batch_id is None


def agent_view(agent: Agent, now: float) -> dict[str, Any]:
    if agent.drained_at is not None:
        state = "drained, safe to stop" if agent.batch_id is None else "draining"
    else:
        state = agent.status.value
    return {
        "agent_id": agent.agent_id,
        "target": agent.target.value,
        "status": agent.status.value,
        "state": state,
        "drained_at": agent.drained_at,
        "batch_id": agent.batch_id,
        "lab_org_id": agent.lab_org_id,
        # The fleet token that registered it (its id, as `tokens list` shows it).
        "fleet_token_id": agent.fleet_hash,
        "device_id": agent.device_id,
        "last_seen": agent.last_seen,
        "last_seen_s_ago": round(max(0.0, now - agent.last_seen), 1),
        "push_connected": agent.connection_id is not None,
    }


class AgentAdmin:
    def __init__(
        self,
        client: Any,
        agents_table: str,
        store: StateStore,
        clock: Callable[[], float],
        request_plan: Callable[[], None] | None = None,
    ) -> None:
        self._db = client
        self._table = agents_table
        self._store = store
        self._clock = clock
        self._request_plan = request_plan

    def list(
        self,
        targets: list[Target],
        lab_org_id: str | None = None,
        include_offline: bool = False,
    ) -> list[Agent]:
        """Every agent of the targets, by id: one query per target-index shard (never a
        scan), sized by the fleet."""
        agents = [a for target in targets for a in self._store.list_agents(target)]
        return [
            a
            for a in agents
            if (lab_org_id is None or a.lab_org_id == lab_org_id)
            and (include_offline or a.status is not AgentStatus.OFFLINE or a.batch_id)
        ]

    def drain(self, agent_id: str) -> DrainResult:
        item = self._update(
            agent_id,
            f"SET {DRAINED_ATTRIBUTE} = :now",
            f"attribute_exists(agent_id) AND attribute_not_exists({DRAINED_ATTRIBUTE})",
            now=self._clock(),
        )
        return self._result(agent_id, item)

    def undrain(self, agent_id: str) -> DrainResult:
        item = self._update(
            agent_id, f"REMOVE {DRAINED_ATTRIBUTE}", f"attribute_exists({DRAINED_ATTRIBUTE})"
        )
        if item is not None and self._request_plan is not None:
            self._request_plan()  # waiting work reaches it at once, not at the next tick
        return self._result(agent_id, item)

    def _update(self, agent_id: str, update: str, condition: str, **values: Any) -> Any:
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "Key": serialize({"agent_id": agent_id}),
            "UpdateExpression": update,
            "ConditionExpression": condition,
            "ReturnValues": "ALL_NEW",
        }
        if values:
            kwargs["ExpressionAttributeValues"] = expression_values(**values)
        try:
            return self._db.update_item(**kwargs)["Attributes"]
        except ClientError as error:
            if is_condition_failure(error):
                return None
            raise

    def _result(self, agent_id: str, item: Any) -> DrainResult:
        if item is not None:
            return DrainResult(agent_from_item(deserialize(item)), changed=True)
        agent = self._store.get_agent(agent_id)
        if agent is None:
            raise LookupError(agent_id)
        return DrainResult(agent, changed=False)
