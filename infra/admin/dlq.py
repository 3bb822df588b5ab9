"""The dead-letter queues: what is in them, and sending it back.

jobs.fifo dead-letters a message after 5 failed receives: a plan request whose plan kept
failing, or (from stacks older than jobs written straight into their backlog, and from
the reaper's re-sends) a job to admit. A redrive re-sends a job only while it still
waits to be admitted, and admission is a conditional write (queued and not yet admitted
-> in the backlog), so however often a message is redriven, its job is admitted once.
Plan requests are merged into one. The vault queue's messages go back as they are (the
vault archives each job attempt once).

A message is deleted from the dead-letter queue only after what replaces it was sent, so
an interrupted redrive loses nothing; running it again re-sends at most what it had not
deleted yet (deduplicated by SQS for five minutes, and by admission after that).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from qgjob_backend.adapters.sqs import PLAN_GROUP, is_plan_request
from qgjob_backend.ports import StateStore
from qgjob_backend.schema import JobStatus

SQS_BATCH_LIMIT = 10
# How long the messages an inspect or redrive is looking at stay hidden from others; an
# inspect makes them visible again as soon as it is done.
HOLD_SECONDS = 60


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    kind: str  # "job" | "plan" | "vault" | "malformed"
    receive_count: int
    sent_at: float | None  # when it was first sent to its queue (epoch seconds)
    group_id: str | None
    job_id: str | None
    # What the job is now and what a redrive does with the message.
    job_status: str | None
    verdict: str
    body: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RedriveReport:
    resent: list[str]  # message ids sent back to the source queue
    dropped: list[str]  # deleted: nothing left to do (job admitted, finished or gone)
    kept: list[str]  # left in the dead-letter queue (unreadable)
    plan_requested: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class DeadLetters:
    """One dead-letter queue and the queue it drains (``fifo``: jobs.fifo's shapes)."""

    def __init__(
        self,
        sqs: Any,
        dlq_url: str,
        source_url: str,
        *,
        fifo: bool,
        store: StateStore | None,
        request_plan: Callable[[], None] | None = None,
    ) -> None:
        self._sqs = sqs
        self._dlq = dlq_url
        self._source = source_url
        self._fifo = fifo
        self._store = store
        self._request_plan = request_plan

    def depth(self) -> dict[str, int]:
        attributes = self._sqs.get_queue_attributes(
            QueueUrl=self._dlq,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return {
            "visible": int(attributes.get("ApproximateNumberOfMessages", 0)),
            "in_flight": int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        }

    def inspect(self, limit: int) -> list[DeadLetter]:
        """Up to ``limit`` messages, each with what a redrive would do; they stay queued.

        FIFO shows a group's later messages only once its earlier ones are gone, so an
        inspect sees the head of each group."""
        messages = self._receive(limit)
        try:
            return self._classify(messages)
        finally:
            self._release(messages)

    def redrive(self, limit: int) -> tuple[RedriveReport, list[DeadLetter]]:
        """Handles up to ``limit`` messages as their verdicts say (see ``inspect``)."""
        messages = self._receive(limit)
        report = RedriveReport([], [], [])
        try:
            letters = self._classify(messages)
            by_id = {m["MessageId"]: m for m in messages}
            plans = [x.message_id for x in letters if x.kind == "plan"]
            for letter in letters:
                if letter.kind == "plan":
                    continue
                if letter.verdict.startswith("re-send"):
                    self._resend(by_id[letter.message_id])
                    report.resent.append(letter.message_id)
                elif letter.verdict.startswith("drop"):
                    report.dropped.append(letter.message_id)
                else:
                    report.kept.append(letter.message_id)
            if plans and self._request_plan is not None:
                self._request_plan()  # one plan answers every request
                report.plan_requested = True
                report.dropped.extend(plans)
            else:
                report.kept.extend(plans)
            self._delete([by_id[i] for i in report.resent + report.dropped])
            self._release([by_id[i] for i in report.kept])
        except BaseException:
            # Nothing deleted yet: all of it comes back (a re-send already made is
            # deduplicated, or found admitted, when the redrive runs again).
            self._release(messages)
            raise
        return report, letters

    # ---------------------------------------------------------------- internals

    def _receive(self, limit: int) -> list[dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        while len(seen) < limit:
            batch = self._sqs.receive_message(
                QueueUrl=self._dlq,
                MaxNumberOfMessages=min(SQS_BATCH_LIMIT, limit - len(seen)),
                VisibilityTimeout=HOLD_SECONDS,
                AttributeNames=["All"],
                WaitTimeSeconds=0,
            ).get("Messages", [])
            fresh = [m for m in batch if m["MessageId"] not in seen]
            if not fresh:
                break
            seen.update((m["MessageId"], m) for m in fresh)
        return list(seen.values())

    def _classify(self, messages: Sequence[dict[str, Any]]) -> list[DeadLetter]:
        bodies = [_body(m.get("Body", "")) for m in messages]
        job_ids = [b["job_id"] for b in bodies if b is not None and _is_job(b)]
        jobs = {}
        if job_ids and self._store is not None:
            jobs = {job.job_id: job for job in self._store.get_jobs(sorted(set(job_ids)))}
        letters = []
        for message, body in zip(messages, bodies, strict=True):
            attributes = message.get("Attributes", {})
            sent = attributes.get("SentTimestamp")
            common = {
                "message_id": message["MessageId"],
                "receive_count": int(attributes.get("ApproximateReceiveCount", 0)),
                "sent_at": int(sent) / 1000 if sent else None,
                "group_id": attributes.get("MessageGroupId"),
                "body": message.get("Body", ""),
            }
            if not self._fifo:
                letters.append(
                    DeadLetter(
                        kind="vault",
                        job_id=_vault_job(body),
                        job_status=None,
                        verdict="re-send: the vault archives each job attempt once",
                        **common,
                    )
                )
            elif body is not None and is_plan_request(body):
                letters.append(
                    DeadLetter(
                        kind="plan",
                        job_id=None,
                        job_status=None,
                        verdict="merged into one new plan request",
                        **common,
                    )
                )
            elif body is not None and _is_job(body):
                job = jobs.get(body["job_id"])
                if job is None:
                    status, verdict = None, "drop: no such job (never written, or expired)"
                elif job.status is JobStatus.QUEUED and not job.admitted:
                    status, verdict = job.status.value, "re-send: the job waits for admission"
                elif job.status is JobStatus.QUEUED:
                    status, verdict = job.status.value, "drop: already admitted (in its backlog)"
                else:
                    status, verdict = job.status.value, f"drop: already {job.status.value}"
                letters.append(
                    DeadLetter(
                        kind="job",
                        job_id=body["job_id"],
                        job_status=status,
                        verdict=verdict,
                        **common,
                    )
                )
            else:
                letters.append(
                    DeadLetter(
                        kind="malformed",
                        job_id=None,
                        job_status=None,
                        verdict="kept: not a qgjob message; read it, then delete it by hand",
                        **common,
                    )
                )
        return letters

    def _resend(self, message: dict[str, Any]) -> None:
        if not self._fifo:
            self._sqs.send_message(QueueUrl=self._source, MessageBody=message["Body"])
            return
        body = json.loads(message["Body"])
        group = message.get("Attributes", {}).get("MessageGroupId") or body.get("group_key")
        self._sqs.send_message(
            QueueUrl=self._source,
            MessageBody=message["Body"],
            MessageGroupId=group or PLAN_GROUP,
            # Per dead letter, not per job: an interrupted redrive run again within five
            # minutes is deduplicated; admission settles everything else.
            MessageDeduplicationId=f"redrive-{message['MessageId']}",
        )

    def _delete(self, messages: Sequence[dict[str, Any]]) -> None:
        for start in range(0, len(messages), SQS_BATCH_LIMIT):
            chunk = messages[start : start + SQS_BATCH_LIMIT]
            self._sqs.delete_message_batch(
                QueueUrl=self._dlq,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)
                ],
            )

    def _release(self, messages: Sequence[dict[str, Any]]) -> None:
        """Makes messages looked at but not handled visible again at once."""
        for start in range(0, len(messages), SQS_BATCH_LIMIT):
            chunk = messages[start : start + SQS_BATCH_LIMIT]
            # Best effort: they come back by themselves after HOLD_SECONDS anyway.
            with contextlib.suppress(Exception):
                self._sqs.change_message_visibility_batch(
                    QueueUrl=self._dlq,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                        for i, m in enumerate(chunk)
                    ],
                )


def _body(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _is_job(body: dict[str, Any]) -> bool:
    job_id = body.get("job_id")
    return isinstance(job_id, str) and bool(job_id)


def _vault_job(body: dict[str, Any] | None) -> str | None:
    job_id = body.get("job_id") if body else None
    return job_id if isinstance(job_id, str) else None
