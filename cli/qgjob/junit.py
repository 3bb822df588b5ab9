"""JUnit XML for a run, for CI systems that show test reports (GitHub Actions, GitLab, Jenkins)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qgjob.render import FINAL_STATUSES

# Characters XML 1.0 cannot carry, even escaped.
_INVALID_XML = {c: None for c in range(32) if c not in (9, 10, 13)}


def _clean(text: Any) -> str:
    return str(text).translate(_INVALID_XML)


def junit_xml(run: Mapping[str, Any], outputs: Mapping[str, str] | None = None) -> bytes:
    """One <testsuite> with one <testcase> per job of the run.

    failed -> <failure>, timed_out -> <failure type="timed_out">, error -> <error>,
    cancelled -> <skipped>, not finished -> <error type="not_finished">.
    `outputs` (job_id -> test output) become <system-out>.
    Earlier tries that failed (a job's ``tries``) are written as Surefire does: in a test
    that then passed (flaky), one <flakyFailure> each; in one that failed in the end, one
    <rerunFailure> each, beside its <failure>. Each names its try and agent and carries
    the tail of the try's output as <system-out>.
    """
    outputs = outputs or {}
    jobs = list(run.get("jobs") or [])
    target = str(run.get("target", ""))
    name = f"qgjob {run.get('org_id')}/{run.get('app_version_id')}/{target}"
    failures = sum(1 for j in jobs if j.get("status") in ("failed", "timed_out"))
    errors = sum(
        1 for j in jobs if j.get("status") == "error" or j.get("status") not in FINAL_STATUSES
    )
    skipped = sum(1 for j in jobs if j.get("status") == "cancelled")
    total_time = sum(float(j.get("duration_s") or 0.0) for j in jobs)

    suites = ET.Element("testsuites", name="qgjob")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=_clean(name),
        tests=str(len(jobs)),
        failures=str(failures),
        errors=str(errors),
        skipped=str(skipped),
        time=f"{total_time:.3f}",
    )
    properties = ET.SubElement(suite, "properties")
    for key in ("run_id", "org_id", "app_version_id", "target"):
        ET.SubElement(properties, "property", name=key, value=_clean(run.get(key, "")))

    for job in jobs:
        status = str(job.get("status"))
        message = _clean(job.get("message") or status)
        case = ET.SubElement(
            suite,
            "testcase",
            classname=_clean(f"qgjob.{target}"),
            name=_clean(job.get("test_path")),
            time=f"{float(job.get('duration_s') or 0.0):.3f}",
        )
        if status == "failed":
            ET.SubElement(case, "failure", message=message, type="failed").text = message
        elif status == "timed_out":
            ET.SubElement(case, "failure", message=message, type="timed_out").text = message
        elif status == "error":
            ET.SubElement(case, "error", message=message, type="error").text = message
        elif status == "cancelled":
            ET.SubElement(case, "skipped", message=message)
        elif status not in FINAL_STATUSES:
            text = f"not finished when qgjob stopped waiting (status {status})"
            ET.SubElement(case, "error", message=text, type="not_finished").text = text
        _tries(case, job, "flakyFailure" if status == "passed" else "rerunFailure")
        output = outputs.get(str(job.get("job_id")))
        if output:
            ET.SubElement(case, "system-out").text = _clean(output)
    ET.indent(suites)
    body: bytes = ET.tostring(suites, encoding="utf-8", xml_declaration=True)
    return body + b"\n"


def _tries(case: ET.Element, job: Mapping[str, Any], tag: str) -> None:
    """One ``tag`` element per earlier failed try of ``job``."""
    for tried in job.get("tries") or []:
        if not isinstance(tried, Mapping):
            continue
        text = _clean(
            f"try {tried.get('attempt')} on agent {tried.get('agent_id')}: "
            f"{tried.get('message') or tried.get('status')}"
        )
        element = ET.SubElement(
            case, tag, message=text, type=_clean(tried.get("status") or "failed")
        )
        ET.SubElement(element, "stackTrace").text = text  # Surefire's child for the detail
        if tried.get("output"):
            ET.SubElement(element, "system-out").text = _clean(tried["output"])


def write_junit(
    path: str | Path, run: Mapping[str, Any], outputs: Mapping[str, str] | None = None
) -> None:
    target = Path(path)
    if target.parent and not target.parent.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(junit_xml(run, outputs))
