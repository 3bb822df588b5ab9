"""Human-readable text for runs, jobs and results (the `--json` output is the API's JSON)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

Json = Mapping[str, Any]

FINAL_STATUSES = frozenset({"passed", "failed", "error", "cancelled", "timed_out"})
NOT_PASSED = frozenset({"failed", "error", "cancelled", "timed_out"})
# Reading order for counts: outcomes first, then work in flight.
STATUS_ORDER = (
    "passed",
    "failed",
    "error",
    "timed_out",
    "cancelled",
    "active",  # assigned to an agent or running: the server counts them as one
    "running",
    "assigned",
    "queued",
)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    widths = [len(h) for h in headers]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    lines = []
    for row in [list(headers), *[list(r) for r in rows]]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def counts_text(counts: Mapping[str, int]) -> str:
    """'3 passed, 1 failed, 2 queued' in a stable order; unknown statuses go last."""
    ordered = [s for s in STATUS_ORDER if counts.get(s)]
    ordered += sorted(s for s in counts if s not in STATUS_ORDER and counts.get(s))
    return ", ".join(f"{counts[s]} {s}" for s in ordered) or "no jobs"


def run_counts(run: Json) -> dict[str, int]:
    counts = run.get("counts")
    if isinstance(counts, Mapping) and counts:
        return {str(k): int(v) for k, v in counts.items()}
    tally: dict[str, int] = {}
    for job in run.get("jobs") or []:
        status = str(job.get("status"))
        tally[status] = tally.get(status, 0) + 1
    return tally


def finished_count(run: Json) -> int:
    return sum(n for status, n in run_counts(run).items() if status in FINAL_STATUSES)


def run_total(run: Json) -> int:
    total = run.get("total")
    return int(total) if isinstance(total, int) else len(run.get("jobs") or [])


def run_passed(run: Json) -> bool:
    """True when the run is finished and every job passed (the server's verdict, from its
    counters; the jobs' statuses only for an answer without one)."""
    if not run.get("finished"):
        return False
    verdict = run.get("passed")
    if isinstance(verdict, bool):
        return verdict
    jobs = run.get("jobs") or []
    return bool(jobs) and all(job.get("status") == "passed" for job in jobs)


def duration_text(seconds: Any) -> str:
    if isinstance(seconds, int | float):
        return f"{seconds:.2f}s"
    return "-"


def progress_line(run: Json, elapsed_s: float) -> str:
    """A followed run's line off a terminal (one per change: what precedes " after ")."""
    reason = waiting_reason(run)
    waiting = f"; waiting: {reason}" if reason else ""
    return (
        f"run {run.get('run_id')}: {finished_count(run)}/{run_total(run)} finished "
        f"({counts_text(run_counts(run))}{waiting}) after {elapsed_s:.0f}s"
    )


def run_header(run: Json) -> str:
    return (
        f"run {run.get('run_id')}: {run.get('org_id')}/{run.get('app_version_id')} "
        f"on {run.get('target')}"
    )


def run_table(run: Json) -> str:
    rows = []
    for job in run.get("jobs") or []:
        message = job.get("message") or ""
        if job.get("status") == "passed":
            message = ""
        rows.append(
            [
                str(job.get("job_id")),
                str(job.get("status"))
                + (" (flaky)" if job.get("flaky") else "")
                + (f" (moved from {job['moved_from']})" if job.get("moved_from") else ""),
                duration_text(job.get("duration_s")),
                str(job.get("test_path")),
                _one_line(message),
            ]
        )
    return table(["JOB", "STATUS", "DURATION", "TEST", "MESSAGE"], rows)


def run_summary(run: Json) -> str:
    state = "finished" if run.get("finished") else "in progress"
    verdict = ""
    if run.get("finished"):
        verdict = ": PASSED" if run_passed(run) else ": FAILED"
    flaky = run.get("flaky")
    flaky_text = f"; {flaky} flaky" if isinstance(flaky, int) and flaky else ""
    moved = run.get("moved")
    if isinstance(moved, int) and moved:
        flaky_text += f"; {moved} moved to {run.get('overflow')}"
    return (
        f"{run_header(run)} {state}{verdict} "
        f"({counts_text(run_counts(run))}{flaky_text}; {run_total(run)} total)"
    )


def run_text(run: Json) -> str:
    return "\n".join([run_summary(run), *build_lines(run), *queue_lines(run), run_table(run)])


def queue_lines(run: Json) -> list[str]:
    """What a run not finished says about its queue: why it waits, or where it stands."""
    if run.get("finished"):
        return []
    reason = waiting_reason(run)
    if reason is not None:
        return [f"waiting: {reason}"]
    queue = _queue(run)
    if not queue:
        return []
    parts = [text] if (text := queue_text(run)) else []
    eta = queue.get("eta_seconds")
    if isinstance(eta, int | float):
        parts.append(f"ETA {'>' if queue.get('approximate') else '~'}{span_text(eta)}")
    as_of = _timestamp(queue.get("as_of"))
    return [f"queue: {', '.join(parts)} (as of {as_of})"] if parts and as_of else []


def build_lines(view: Json) -> list[str]:
    """What a run (or a submit answer) says about its app build."""
    if view.get("build_note"):
        return [f"note: {view['build_note']}"]
    if view.get("build_sha256"):
        return [f"build: sha256 {view['build_sha256']}"]
    return []


def build_text(build: Json) -> str:
    lines = [
        f"build {build.get('org_id')}/{build.get('app_version_id')}: {build.get('state')}",
    ]
    if build.get("sha256"):
        lines.append(
            f"file: {build.get('file_name')} ({build.get('size')} bytes), "
            f"sha256 {build.get('sha256')}"
        )
    uploaded = _timestamp(build.get("uploaded_at"))
    if uploaded:
        replaced = int(build.get("replaced") or 0)
        lines.append(f"uploaded: {uploaded}" + (f" (replaced {replaced}x)" if replaced else ""))
    if build.get("pending_sha256"):
        lines.append(f"pending upload: sha256 {build['pending_sha256']} (not completed)")
    return "\n".join(lines)


def builds_text(builds: Sequence[Json]) -> str:
    rows = [
        [
            str(b.get("app_version_id")),
            str(b.get("state")),
            str(b.get("file_name") or ""),
            str(b.get("size") or ""),
            str(b.get("sha256") or "")[:16],
        ]
        for b in builds
    ]
    return table(["APP VERSION", "STATE", "FILE", "BYTES", "SHA256"], rows)


def submitted_state(answer: Json) -> str:
    """'queued' for new work; for a replay, the jobs' state now: 'passed' or '(1 passed, ...)'.

    The server sends `status` when every job shares it and `counts` always; an older
    server sends only `status` (always 'queued').
    """
    status = answer.get("status")
    if status:
        return str(status)
    counts = answer.get("counts")
    if isinstance(counts, Mapping) and counts:
        return f"({counts_text({str(k): int(v) for k, v in counts.items()})})"
    return "submitted"


def submitted_text(answer: Json, payload: Json) -> str:
    job_ids = [str(j) for j in answer.get("job_ids") or []]
    replay = " (replayed: this idempotency key was used before)" if answer.get("replayed") else ""
    lines = [
        f"run {answer.get('run_id')}: {len(job_ids)} job(s) {submitted_state(answer)} "
        f"for {payload.get('org_id')}/{payload.get('app_version_id')} on "
        f"{payload.get('target', 'emulator')}{replay}"
    ]
    lines.extend(build_lines(answer))
    tests = [str(t) for t in payload.get("test_paths") or []]
    rows = [[job_id, tests[i] if i < len(tests) else ""] for i, job_id in enumerate(job_ids)]
    if rows:
        lines.append(table(["JOB", "TEST"], rows))
    return "\n".join(lines)


def job_text(job: Json) -> str:
    fields = [
        ("run", job.get("run_id")),
        ("test", job.get("test_path")),
        (
            "app",
            f"{job.get('org_id')}/{job.get('app_version_id')} on {job.get('target')} "
            f"(priority {job.get('priority')})",
        ),
        ("attempts", job.get("attempts")),
        ("agent", _agent_text(job)),
        ("created", _timestamp(job.get("created_at"))),
        ("started", _timestamp(job.get("started_at"))),
        ("finished", _timestamp(job.get("finished_at"))),
        ("duration", duration_text(job.get("duration_s"))),
        ("message", job.get("message")),
        ("flaky", "yes: passed after a failed try" if job.get("flaky") else None),
        (
            "moved",
            f"from {job.get('moved_from')} to {job.get('target')} (overflow)"
            if job.get("moved_from")
            else None,
        ),
        *[
            (
                f"try {t.get('attempt')}",
                f"{t.get('status')} on {t.get('agent_id')}: "
                f"{_one_line(str(t.get('message') or ''))}",
            )
            for t in job.get("tries") or []
            if isinstance(t, dict)
        ],
    ]
    lines = [f"job {job.get('job_id')}: {job.get('status')}"]
    lines += [f"  {name:<9} {value}" for name, value in fields if value not in (None, "", "-")]
    return "\n".join(lines)


def result_text(result: Json) -> str:
    if not result.get("finished"):
        return f"job {result.get('job_id')} is not finished yet (status {result.get('status')})" + (
            f": {result['message']}" if result.get("message") else ""
        )
    lines = [
        f"job {result.get('job_id')}: {result.get('status')} in "
        f"{duration_text(result.get('duration_s'))}"
        + (f" on {result['agent_id']}" if result.get("agent_id") else "")
    ]
    if result.get("message"):
        lines.append(f"message: {result['message']}")
    if result.get("session_id"):
        lines.append(f"browserstack session: {result['session_id']} (qgjob audit --job-id ...)")
    if result.get("output_url"):
        lines.append(f"full output: {result['output_url']}")
    output = result.get("output")
    if output:
        lines.append("output:")
        lines.append(str(output).rstrip("\n"))
    artifacts = [a for a in result.get("artifacts") or [] if isinstance(a, Mapping)]
    if artifacts:
        lines.append(f"artifacts ({len(artifacts)}):")
        for artifact in artifacts:
            lines.append(
                f"  {artifact.get('name')} [{artifact.get('content_type')}, "
                f"{artifact.get('size')} bytes]"
            )
            if artifact.get("url"):
                lines.append(f"    {artifact['url']}")
    return "\n".join(lines)


def audit_text(audit: Json) -> str:
    """A job's results-vault audit records, one block per attempt."""
    records = [r for r in audit.get("records") or [] if isinstance(r, Mapping)]
    if not records:
        return f"job {audit.get('job_id')}: no audit records (no BrowserStack session archived)"
    lines = [f"job {audit.get('job_id')}: {len(records)} audit record(s)"]
    for record in records:
        lines.append(
            f"  attempt {record.get('attempt')}: {record.get('outcome')} "
            f"(HTTP {record.get('http_status')}, session {record.get('session_id')})"
        )
        if record.get("s3_key"):
            lines.append(
                f"    {record['s3_key']}  sha256 {record.get('sha256')}  {record.get('size')} bytes"
            )
        if record.get("detail"):
            lines.append(f"    {record['detail']}")
        if record.get("link"):
            lines.append(f"    {record['link']}  (valid {record.get('link_expires_s')} s)")
    return "\n".join(lines)


def _agent_text(job: Json) -> str | None:
    agent = job.get("agent_id")
    if not agent:
        return None
    batch = job.get("batch_id")
    return f"{agent} (batch {batch})" if batch else str(agent)


def _timestamp(value: Any) -> str | None:
    if not isinstance(value, int | float):
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(value))


def _one_line(text: str, limit: int = 80) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ---------------------------------------------------------------- following
def span_text(seconds: float) -> str:
    """45s, 3m05s, 2h07m: a live line's elapsed time and ETA."""
    total = max(0, round(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


def waiting_reason(run: Json) -> str | None:
    """Why nothing of the run moves, when the server knows (no agent of its target)."""
    if run.get("no_agent") and not run.get("finished"):
        return f"no agent serves target {run.get('target')}"
    return None


def _queue(run: Json) -> Mapping[str, Any]:
    queue = run.get("queue")
    return queue if isinstance(queue, Mapping) else {}


def queue_text(run: Json) -> str | None:
    """'position 2, 14 jobs ahead' while the run waits behind others; None otherwise."""
    queue = _queue(run)
    ahead = queue.get("jobs_ahead")
    if not isinstance(ahead, int) or ahead <= 0:
        return None
    jobs = f"{ahead}{'+' if queue.get('approximate') else ''} job{'s' if ahead != 1 else ''}"
    position = queue.get("position")
    if isinstance(position, int) and position > 0:
        return f"position {position}, {jobs} ahead"
    return f"{jobs} ahead"


def live_text(run: Json, elapsed_s: float, eta_s: float | None) -> str:
    """The live line of a followed run on a terminal: what is done, running and queued,
    flaky tests, time so far, and the ETA (or why nothing moves)."""
    counts = run_counts(run)
    done = finished_count(run)
    running = sum(counts.get(s, 0) for s in ("active", "running", "assigned"))
    parts = [f"{done}/{run_total(run)} done"]
    failed = sum(counts.get(s, 0) for s in NOT_PASSED if s != "cancelled")
    if failed:
        parts[0] += f" ({failed} not passed)"
    parts.append(f"{running} running")
    parts.append(f"{counts.get('queued', 0)} queued")
    flaky = run.get("flaky")
    if isinstance(flaky, int) and flaky:
        parts.append(f"{flaky} flaky")
    line = f"run {run.get('run_id')}: " + ", ".join(parts) + f" | {span_text(elapsed_s)} elapsed"
    reason = waiting_reason(run)
    if reason is not None:
        return line + f" | waiting: {reason}"
    if run.get("finished"):
        return line
    where = queue_text(run)
    if eta_s is None:
        eta = "ETA unknown"
    else:
        bound = ">" if _queue(run).get("approximate") else "~"
        eta = f"ETA {bound}{span_text(eta_s)}"
    return line + f" | {eta}" + (f" ({where})" if where else "")
