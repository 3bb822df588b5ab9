"""Counter items and the transaction actions that keep them (see domain.progress).

The Runs table holds three kinds of items (attribute ``kind``):

- ``run``: a run, with ``total`` and one ``jobs_<counter>`` number per counter;
- ``org_metrics``: one of ``METRIC_SHARDS`` shards of an org's metrics, key
  ``org#<org_id>#<n>``: ``jobs_<counter>``, ``batches``, ``installs``, ``agent_app_pairs``;
- ``agent_app_pair``: the marker of one (agent, app version, target) an org's batches
  used, key ``pair#<org_id>#<hash>``, so each pair is counted once.

Counters are top-level numbers updated with ``ADD`` (an absent one counts as 0), so a
shard needs no creation step. Every action here is one item of a TransactWriteItems whose
other items are the conditional writes of the transition being counted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from qgjob_backend.adapters.dynamodb.codec import (
    Item,
    expression_values,
    is_condition_failure,
    serialize,
)
from qgjob_backend.adapters.dynamodb.table import DynamoTables
from qgjob_backend.domain.progress import COUNTERS, metric_shard, moved
from qgjob_backend.schema import JobStatus

RUN_KIND = "run"
ORG_METRICS_KIND = "org_metrics"
PAIR_KIND = "agent_app_pair"
# Org-level counters of an org metrics shard besides the job counters.
ORG_TOTALS = ("batches", "installs", "agent_app_pairs")


def counter_attribute(counter: str) -> str:
    return f"jobs_{counter}"


def counts_of(item: Item) -> dict[str, int]:
    """The job counters of a run or shard item (absent ones are 0)."""
    return {c: int(item.get(counter_attribute(c), 0)) for c in COUNTERS}


def org_shard_key(org_id: str, shard: int) -> str:
    return f"org#{org_id}#{shard}"


def pair_key(org_id: str, agent_id: str, app_version_id: str, target: str) -> str:
    digest = hashlib.sha256(f"{agent_id}\x00{app_version_id}\x00{target}".encode()).hexdigest()
    return f"pair#{org_id}#{digest[:32]}"


def _adds(deltas: Mapping[str, int]) -> tuple[str, dict[str, Any]]:
    """``ADD a :d0, b :d1`` and its values, for the non-zero deltas."""
    parts: list[str] = []
    values: dict[str, Any] = {}
    for index, (attribute, delta) in enumerate(sorted(deltas.items())):
        if delta:
            parts.append(f"{attribute} :d{index}")
            values[f"d{index}"] = delta
    return "ADD " + ", ".join(parts), values


def run_counter_update(
    runs_table: str, run_id: str, jobs: Mapping[str, int], expires_at: int | None = None
) -> dict[str, Any]:
    """Moves the run's counters; the run must exist (a job's run is written first). With
    ``expires_at`` (a job finished), the run's TTL moves with them: a run expires a
    retention after its last job finished."""
    adds, values = _adds({counter_attribute(c): d for c, d in jobs.items()})
    if expires_at is not None:
        adds = f"SET expires_at = :expires {adds}"
        values["expires"] = expires_at
    return {
        "Update": {
            "TableName": runs_table,
            "Key": serialize({"run_id": run_id}),
            "UpdateExpression": adds,
            "ConditionExpression": "attribute_exists(run_id)",
            "ExpressionAttributeValues": expression_values(**values),
        }
    }


def org_counter_update(
    runs_table: str,
    org_id: str,
    subject: str,
    jobs: Mapping[str, int] | None = None,
    **totals: int,
) -> dict[str, Any]:
    """Moves one shard of the org's metrics (created by the first write to it); the shard
    is chosen by ``subject``, the id of what the write is about."""
    unknown = set(totals) - set(ORG_TOTALS)
    if unknown:
        raise ValueError(f"unknown org totals: {sorted(unknown)}")
    deltas = {counter_attribute(c): d for c, d in (jobs or {}).items()}
    deltas.update(totals)
    adds, values = _adds(deltas)
    values.update(kind=ORG_METRICS_KIND, org=org_id)
    return {
        "Update": {
            "TableName": runs_table,
            "Key": serialize({"run_id": org_shard_key(org_id, metric_shard(subject))}),
            "UpdateExpression": f"SET #kind = :kind, org_id = :org {adds}",
            "ExpressionAttributeNames": {"#kind": "kind"},
            "ExpressionAttributeValues": expression_values(**values),
        }
    }


def cancelled_items(error: ClientError) -> list[int]:
    """The indexes of a cancelled transaction's items whose condition failed."""
    reasons: Sequence[Mapping[str, Any]] = error.response.get("CancellationReasons") or []
    return [i for i, r in enumerate(reasons) if r.get("Code") == "ConditionalCheckFailed"]


@dataclass(frozen=True)
class Counted:
    """One job's transition, as the counters see it (``before``: any status of the counter
    it leaves; the job's condition is what makes sure it is in it)."""

    run_id: str
    org_id: str
    job_id: str
    before: JobStatus
    after: JobStatus
    # Other counters the same write moves (e.g. FLAKY: a job that passed after a failure).
    extra: Mapping[str, int] | None = None


class CountingTables(DynamoTables):
    """Writes that move counters together with the conditional writes they count."""

    def _transact(self, items: list[dict[str, Any]]) -> bool:
        """One TransactWriteItems; False (nothing written) when a condition failed."""
        try:
            self._db.transact_write_items(TransactItems=items)
        except ClientError as error:
            if is_condition_failure(error):
                return False
            raise
        return True

    def _counter_items(self, counted: Counted, expires_at: int | None) -> list[dict[str, Any]]:
        delta = moved(counted.before, counted.after)
        if counted.extra:
            delta = {**delta, **counted.extra}
        if not delta:
            return []
        return [
            run_counter_update(self._runs, counted.run_id, delta, expires_at),
            org_counter_update(self._runs, counted.org_id, counted.job_id, delta),
        ]

    def _expiring(
        self, counted: Counted, now: float, update: dict[str, Any]
    ) -> tuple[dict[str, Any], int | None]:
        """The update with the job's expiry set when its transition is final: a finished
        job (and its run) expire a retention later, set in the same write."""
        if not counted.after.is_final:
            return update, None
        expires_at = self._expires_at(now)
        expression = update["UpdateExpression"]
        if not expression.startswith("SET "):
            raise ValueError("a final transition's update must start with SET")
        return {
            **update,
            "UpdateExpression": "SET expires_at = :expires_at, " + expression[4:],
            "ExpressionAttributeValues": {
                **update["ExpressionAttributeValues"],
                **expression_values(expires_at=expires_at),
            },
        }, expires_at

    def _counted_updates(
        self, transitions: Sequence[tuple[Counted, dict[str, Any]]], now: float
    ) -> bool:
        """Several jobs' conditional updates in one transaction, with the counters they
        move summed per run and per org (one write each, not one per job): all or nothing;
        False when any job's condition failed."""
        items: list[dict[str, Any]] = []
        per_run: dict[str, dict[str, int]] = {}
        per_org: dict[str, tuple[str, dict[str, int]]] = {}
        run_expiry: dict[str, int | None] = {}
        for counted, update in transitions:
            update, expires_at = self._expiring(counted, now, update)
            key = serialize({"job_id": counted.job_id})
            items.append({"Update": {"TableName": self._jobs, "Key": key, **update}})
            delta = moved(counted.before, counted.after)
            if counted.extra:
                delta = {**delta, **counted.extra}
            run = per_run.setdefault(counted.run_id, {})
            subject, org = per_org.setdefault(counted.org_id, (counted.job_id, {}))
            for name, value in delta.items():
                run[name] = run.get(name, 0) + value
                org[name] = org.get(name, 0) + value
            if expires_at is not None:
                run_expiry[counted.run_id] = expires_at
        for run_id, run_delta in sorted(per_run.items()):
            if any(run_delta.values()):
                items.append(
                    run_counter_update(self._runs, run_id, run_delta, run_expiry.get(run_id))
                )
        for org_id, (subject, org_delta) in sorted(per_org.items()):
            if any(org_delta.values()):
                items.append(org_counter_update(self._runs, org_id, subject, org_delta))
        if len(items) == 1:
            return self._counted_update(transitions[0][0], now, **transitions[0][1])
        return self._transact(items)

    def _counted_update(self, counted: Counted, now: float, **update: Any) -> bool:
        """The job's conditional update and the counters it moves: all or nothing (one
        plain UpdateItem when it moves no counter)."""
        key = serialize({"job_id": counted.job_id})
        update, expires_at = self._expiring(counted, now, update)
        counters = self._counter_items(counted, expires_at)
        if not counters:
            try:
                self._db.update_item(TableName=self._jobs, Key=key, **update)
            except ClientError as error:
                if is_condition_failure(error):
                    return False
                raise
            return True
        job_update = {"Update": {"TableName": self._jobs, "Key": key, **update}}
        return self._transact([job_update, *counters])

    def _first_install(self, batch_id: str, agent_id: str, org_id: str, now: float) -> bool:
        """The batch's first install (by its agent): stamped, and counted once in the
        org's metrics; False when already stamped or not the agent's batch."""
        return self._transact(
            [
                {
                    "Update": {
                        "TableName": self._batches,
                        "Key": serialize({"batch_id": batch_id}),
                        "UpdateExpression": "SET installed_at = :now",
                        "ConditionExpression": (
                            "agent_id = :a AND attribute_not_exists(installed_at)"
                        ),
                        "ExpressionAttributeValues": expression_values(now=now, a=agent_id),
                    }
                },
                org_counter_update(self._runs, org_id, batch_id, installs=1),
            ]
        )
