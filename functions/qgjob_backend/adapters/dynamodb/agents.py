"""Device agents: registration, signs of life, installs, and going offline."""

from __future__ import annotations

from typing import Any

from qgjob_backend.adapters.dynamodb.codec import Item, expression_values, optional_float
from qgjob_backend.adapters.dynamodb.counters import CountingTables
from qgjob_backend.adapters.dynamodb.shards import (
    IDLE_INDEX,
    TARGET_INDEX,
    all_shard_keys,
    merged,
    shard_key,
)
from qgjob_backend.domain.models import Agent, AgentStatus, AppRef
from qgjob_backend.schema import Target

# target-index: every agent by target_shard (its target, spread over the shards).
# idle-index (sparse, keys only): only idle agents carry idle_shard; sorted by last_seen, it
# finds silent idle agents without a scan. A busy agent's heartbeats touch its batch's lease
# and its own last_seen, never this index; an idle agent is heard from once per safety poll.
IDLE_PREFIX = "idle"
# Sparse: only agents with a push connection carry connection_id ($disconnect finds its agent).
CONNECTION_INDEX = "connection-index"
REGISTER_ATTEMPTS = 5


def target_shard(target: Target, agent_id: str) -> str:
    return shard_key(TARGET_INDEX, target.value, agent_id)


def idle_shard(agent_id: str) -> str:
    return shard_key(IDLE_INDEX, IDLE_PREFIX, agent_id)


def agent_from_item(item: Item) -> Agent:
    installed = None
    if item.get("installed_org") and item.get("installed_app"):
        installed = AppRef(item["installed_org"], item["installed_app"])
    return Agent(
        agent_id=item["agent_id"],
        target=Target(item["target"]),
        device_id=item["device_id"],
        status=AgentStatus(item["status"]),
        last_seen=float(item["last_seen"]),
        registered_at=float(item["registered_at"]),
        installed=installed,
        batch_id=item.get("batch_id"),
        batch_group=item.get("batch_group"),
        credential_hash=item.get("credential_hash") or None,
        lab_org_id=item.get("lab_org_id") or None,
        fleet_hash=item.get("fleet_hash") or None,
        batch_expected_free_at=optional_float(item.get("batch_expected_free_at")),
        connection_id=item.get("connection_id") or None,
        cancel_marks=frozenset(item.get("cancel_marks") or ()),
        drained_at=optional_float(item.get("drained_at")),
        yield_batch_id=item.get("yield_batch_id") or None,
    )


class AgentStore(CountingTables):
    """The agents table."""

    # ------------------------------------------------------------- agents
    def get_agent(self, agent_id: str) -> Agent | None:
        item = self._get(self._agents, {"agent_id": agent_id})
        return agent_from_item(item) if item else None

    def register_agent(
        self,
        agent_id: str,
        target: Target,
        device_id: str,
        installed: AppRef | None,
        now: float,
        *,
        credential_hash: str,
        lab_org_id: str | None = None,
        fleet_hash: str | None = None,
    ) -> Agent | None:
        sets = [
            "#t = :target",
            "device_id = :device",
            "last_seen = :now",
            "registered_at = :now",
            "#s = :idle",
            "credential_hash = :cred",
            "target_shard = :tshard",
            "idle_shard = :ishard",
        ]
        values: dict[str, Any] = {
            "target": target.value,
            "device": device_id,
            "now": now,
            "idle": AgentStatus.IDLE.value,
            "cred": credential_hash,
            "fleet": fleet_hash or "",
            "tshard": target_shard(target, agent_id),
            "ishard": idle_shard(agent_id),
        }
        # The clear-text session of older registrations, and the push connection of the
        # process this registration replaces (the new process connects on its own).
        removed = ["session_id", "connection_id"]
        for name, value in (("lab_org_id", lab_org_id), ("fleet_hash", fleet_hash)):
            if value:
                sets.append(f"{name} = :{name}")
                values[name] = value
            else:
                removed.append(name)
        # What the device holds is what the agent says now: after a restart with nothing
        # to report, the next batch installs again rather than trust a wiped device.
        if installed is not None:
            sets += ["installed_org = :iorg", "installed_app = :iapp"]
            values.update(iorg=installed.org_id, iapp=installed.app_version_id)
        else:
            removed += ["installed_org", "installed_app"]
        # Only the fleet token that registered an agent id may register it again.
        same_fleet = "(attribute_not_exists(fleet_hash) OR fleet_hash = :fleet)"
        for _ in range(REGISTER_ATTEMPTS):
            item = self._update(
                self._agents,
                {"agent_id": agent_id},
                UpdateExpression="SET " + ", ".join(sets) + " REMOVE " + ", ".join(removed),
                ConditionExpression=f"attribute_not_exists(batch_id) AND {same_fleet}",
                ExpressionAttributeNames={"#t": "target", "#s": "status"},
                ExpressionAttributeValues=expression_values(**values),
            )
            if item is None:
                # It still holds a batch: it restarted mid-batch and will resume it.
                item = self._update(
                    self._agents,
                    {"agent_id": agent_id},
                    UpdateExpression=(
                        "SET last_seen = :now, #s = :busy, credential_hash = :cred "
                        "REMOVE session_id, connection_id, idle_shard"
                    ),
                    ConditionExpression=f"attribute_exists(batch_id) AND {same_fleet}",
                    ExpressionAttributeNames={"#s": "status"},
                    ExpressionAttributeValues=expression_values(
                        now=now,
                        busy=AgentStatus.BUSY.value,
                        cred=credential_hash,
                        fleet=fleet_hash or "",
                    ),
                )
            if item is not None:
                return agent_from_item(item)
            holder = self.get_agent(agent_id)
            if holder is not None and holder.fleet_hash not in (None, fleet_hash):
                return None
            # Otherwise its batch came or went between the two writes: try again.
        raise RuntimeError(f"agent {agent_id}: registration kept racing with its batch")

    def touch_agent(self, agent_id: str, now: float, credential_hash: str) -> Agent | None:
        item = self._update(
            self._agents,
            {"agent_id": agent_id},
            UpdateExpression="SET last_seen = :now",
            ConditionExpression="#s <> :offline AND credential_hash = :cred",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=expression_values(
                now=now, offline=AgentStatus.OFFLINE.value, cred=credential_hash
            ),
        )
        return agent_from_item(item) if item else None

    def set_agent_connection(
        self, agent_id: str, credential_hash: str, connection_id: str, now: float
    ) -> Agent | None:
        item = self._update(
            self._agents,
            {"agent_id": agent_id},
            UpdateExpression="SET connection_id = :c, last_seen = :now",
            ConditionExpression="#s <> :offline AND credential_hash = :cred",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=expression_values(
                c=connection_id, now=now, offline=AgentStatus.OFFLINE.value, cred=credential_hash
            ),
        )
        return agent_from_item(item) if item else None

    def clear_agent_connection(self, agent_id: str, connection_id: str) -> bool:
        item = self._update(
            self._agents,
            {"agent_id": agent_id},
            UpdateExpression="REMOVE connection_id",
            ConditionExpression="connection_id = :c",
            ExpressionAttributeValues=expression_values(c=connection_id),
        )
        return item is not None

    def agent_for_connection(self, connection_id: str) -> str | None:
        response = self._db.query(
            TableName=self._agents,
            IndexName=CONNECTION_INDEX,
            KeyConditionExpression="connection_id = :c",
            ExpressionAttributeValues=expression_values(c=connection_id),
            Limit=1,
        )
        items = response.get("Items") or []
        return str(items[0]["agent_id"]["S"]) if items else None

    def list_agents(self, target: Target) -> list[Agent]:
        """Every agent of ``target``, by agent id, from each of its shards."""
        streams = (
            self._query(
                TableName=self._agents,
                IndexName=TARGET_INDEX,
                KeyConditionExpression="target_shard = :shard",
                ExpressionAttributeValues=expression_values(shard=value),
            )
            for value in all_shard_keys(TARGET_INDEX, target.value)
        )
        return [agent_from_item(item) for item in merged(streams, lambda i: i["agent_id"])]

    def silent_agent_ids(self, silent_since: float) -> list[str]:
        """Idle agents last seen before ``silent_since`` (from every idle-index shard)."""
        streams = (
            self._query(
                TableName=self._agents,
                IndexName=IDLE_INDEX,
                KeyConditionExpression="idle_shard = :shard AND last_seen < :cutoff",
                ExpressionAttributeValues=expression_values(shard=value, cutoff=silent_since),
            )
            for value in all_shard_keys(IDLE_INDEX, IDLE_PREFIX)
        )
        items = merged(streams, lambda i: (float(i["last_seen"]), i["agent_id"]))
        return [item["agent_id"] for item in items]

    def record_install(self, agent_id: str, batch_id: str, app: AppRef, now: float) -> bool:
        agent = self._update(
            self._agents,
            {"agent_id": agent_id},
            UpdateExpression="SET installed_org = :org, installed_app = :app, last_seen = :now",
            ConditionExpression="batch_id = :b",
            ExpressionAttributeValues=expression_values(
                org=app.org_id, app=app.app_version_id, now=now, b=batch_id
            ),
        )
        if agent is None:
            return False
        # The batch's first install is stamped and counted in the org's metrics (once).
        self._first_install(batch_id, agent_id, app.org_id, now)
        return True

    def release_agent(self, agent_id: str, batch_id: str, *, offline: bool, now: float) -> bool:
        status = AgentStatus.OFFLINE if offline else AgentStatus.IDLE
        values = expression_values(status=status.value, now=now, b=batch_id)
        if offline:
            idle, removed = "", ", idle_shard"
        else:
            idle, removed = ", idle_shard = :ishard", ""
            values.update(expression_values(ishard=idle_shard(agent_id)))
        item = self._update(
            self._agents,
            {"agent_id": agent_id},
            UpdateExpression=(
                f"SET #s = :status, updated_at = :now{idle} "
                # Its batch's cancel marks go with the batch.
                f"REMOVE batch_id, batch_group, batch_expected_free_at, cancel_marks{removed}"
            ),
            ConditionExpression="batch_id = :b",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=values,
        )
        return item is not None

    def renew_batch_free_at(self, agent_id: str, batch_id: str, free_at: float) -> bool:
        # Only while it holds the batch: a start reported after a release (or a new batch)
        # must not give the agent another batch's end.
        return self._update_holding(
            agent_id, batch_id, "SET batch_expected_free_at = :free", free=free_at
        )

    def request_yield(self, agent_id: str, batch_id: str, now: float) -> bool:
        # Keyed by the batch: a mark left from an earlier batch means nothing (see
        # Agent.yield_requested), so release_agent need not clear it.
        return self._update_holding(
            agent_id, batch_id, "SET yield_batch_id = :b, updated_at = :now", now=now
        )

    def _update_holding(self, agent_id: str, batch_id: str, update: str, **values: Any) -> bool:
        """Applies ``update`` (``:b`` is the batch id) only while the agent holds the batch."""
        item = self._update(
            self._agents,
            {"agent_id": agent_id},
            UpdateExpression=update,
            ConditionExpression="batch_id = :b",
            ExpressionAttributeValues=expression_values(b=batch_id, **values),
        )
        return item is not None

    def mark_agent_offline(self, agent_id: str, silent_since: float, now: float) -> bool:
        item = self._update(
            self._agents,
            {"agent_id": agent_id},
            UpdateExpression="SET #s = :offline, updated_at = :now REMOVE idle_shard",
            ConditionExpression=(
                "#s = :idle AND last_seen < :cutoff AND attribute_not_exists(batch_id)"
            ),
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=expression_values(
                offline=AgentStatus.OFFLINE.value,
                idle=AgentStatus.IDLE.value,
                cutoff=silent_since,
                now=now,
            ),
        )
        return item is not None

    def deregister_agent(self, agent_id: str, now: float) -> bool:
        item = self._update(
            self._agents,
            {"agent_id": agent_id},
            UpdateExpression="SET #s = :offline, updated_at = :now REMOVE idle_shard",
            ConditionExpression="attribute_exists(agent_id) AND attribute_not_exists(batch_id)",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=expression_values(offline=AgentStatus.OFFLINE.value, now=now),
        )
        return item is not None
