"""The HTML run report: one self-contained file (inline CSS and JS, no network, no CDN).

Totals, install savings, a sortable and filterable table of tests (status, flaky, duration,
device, attempts), the failures with their output, and a device timeline: one lane per
agent, each test a bar from its start to its end coloured by app version (a legend names
them), so a reader sees how grouping kept each device on one app. It reads on a phone
(the table scrolls, the timeline shrinks) and in print (no controls, every failure open).
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

Json = Mapping[str, Any]
STATUSES = ("passed", "failed", "error", "timed_out", "cancelled", "queued", "running", "assigned")
# Colour-blind-safe palette (Okabe-Ito) for app versions, cycled.
NONE = "-"  # a missing value
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _duration(seconds: Any) -> str:
    value = _number(seconds)
    if value is None:
        return NONE
    if value < 60:
        return f"{value:.1f}s"
    return f"{int(value // 60)}m {value % 60:04.1f}s"


def _when(epoch: Any) -> str:
    value = _number(epoch)
    if value is None:
        return NONE
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def install_savings(jobs: Sequence[Json]) -> dict[str, int]:
    """Installs a run needed against one install per test: each batch installs at most
    once, so the tests that ran (started on an agent) minus their batches were saved."""
    ran = [j for j in jobs if j.get("batch_id") and _number(j.get("started_at")) is not None]
    batches = {str(j.get("batch_id")) for j in ran}
    return {"tests_run": len(ran), "installs": len(batches), "saved": len(ran) - len(batches)}


def totals(run: Json, jobs: Sequence[Json]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in jobs:
        status = str(job.get("status"))
        counts[status] = counts.get(status, 0) + 1
    counts["flaky"] = sum(1 for j in jobs if j.get("flaky"))
    counts["total"] = int(run.get("total") or len(jobs))
    return counts


def _timeline(jobs: Sequence[Json], colours: Mapping[str, str]) -> str:
    timed = [
        j
        for j in jobs
        if _number(j.get("started_at")) is not None and j.get("agent_id") is not None
    ]
    if not timed:
        return '<p class="muted">No test has run on a device yet.</p>'
    start = min(float(j["started_at"]) for j in timed)
    ends = [
        _number(j.get("finished_at"))
        or float(j["started_at"]) + (_number(j.get("duration_s")) or 0)
        for j in timed
    ]
    span = max(max(ends) - start, 1e-6)
    lanes: dict[str, list[tuple[Json, float]]] = {}
    for job, end in zip(timed, ends, strict=True):
        lanes.setdefault(str(job["agent_id"]), []).append((job, end))
    rows = []
    for agent_id in sorted(lanes):
        bars = []
        previous_batch: str | None = None
        for job, end in sorted(lanes[agent_id], key=lambda pair: float(pair[0]["started_at"])):
            left = (float(job["started_at"]) - start) / span * 100
            width = max((end - float(job["started_at"])) / span * 100, 0.6)
            version = str(job.get("app_version_id"))
            batch = str(job.get("batch_id"))
            if batch != previous_batch:
                # A new batch on this device: where an install may have happened.
                bars.append(
                    f'<span class="install" style="left:{left:.3f}%" '
                    f'title="batch {_e(batch)}: app {_e(version)} installed (at most once)"></span>'
                )
                previous_batch = batch
            status = str(job.get("status"))
            title = (
                f"{job.get('test_path')} — {status}{' (flaky)' if job.get('flaky') else ''}, "
                f"{_duration(job.get('duration_s'))}, app {version}"
            )
            bars.append(
                f'<span class="bar s-{_e(status)}{" flaky" if job.get("flaky") else ""}" '
                f'style="left:{left:.3f}%;width:{width:.3f}%;background:{colours[version]}" '
                f'title="{_e(title)}"></span>'
            )
        rows.append(
            f'<div class="lane" data-agent="{_e(agent_id)}"><div class="lane-name">'
            f'{_e(agent_id)}</div><div class="track">{"".join(bars)}</div></div>'
        )
    legend = "".join(
        f'<span class="key"><span class="swatch" style="background:{colour}"></span>'
        f"{_e(version)}</span>"
        for version, colour in colours.items()
    )
    return (
        f'<div class="legend">App version: {legend}<span class="key"><span class="swatch '
        f'install-key"></span>batch start (install)</span><span class="key"><span '
        f'class="swatch fail-key"></span>failed</span><span class="key"><span '
        f'class="swatch flaky-key"></span>flaky</span></div>'
        f'<div class="timeline">{"".join(rows)}</div>'
        f'<p class="muted">{_duration(span)} from the first start to the last end.</p>'
    )


def html_report(
    run: Json, outputs: Mapping[str, str] | None = None, links: Mapping[str, str] | None = None
) -> str:
    """The report of ``run`` (a RunView with its ``jobs``); ``outputs``: job id -> output
    of the tests that did not pass; ``links``: job id -> a URL of its artifacts."""
    outputs = outputs or {}
    links = links or {}
    jobs = [j for j in run.get("jobs") or [] if isinstance(j, Mapping)]
    versions = sorted(
        {str(j.get("app_version_id")) for j in jobs} or {str(run.get("app_version_id"))}
    )
    colours = {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(versions)}
    count = totals(run, jobs)
    savings = install_savings(jobs)
    verdict = (
        "PASSED" if run.get("finished") and run.get("passed") else
        "FAILED" if run.get("finished") else "IN PROGRESS"
    )  # fmt: skip
    cards = "".join(
        f'<div class="card c-{name}"><b>{count.get(name, 0)}</b><span>{label}</span></div>'
        for name, label in (
            ("total", "tests"),
            ("passed", "passed"),
            ("failed", "failed"),
            ("flaky", "flaky"),
            ("error", "errors"),
            ("timed_out", "timed out"),
            ("cancelled", "cancelled"),
        )
    )
    rows = []
    for job in jobs:
        job_id = str(job.get("job_id"))
        status = str(job.get("status"))
        attempts = int(job.get("attempts") or 0)  # runs started, re-runs included
        link = links.get(job_id)
        link_cell = f'<a href="{_e(link)}">artifacts</a>' if link else ""
        reason = "" if status == "passed" else str(job.get("message") or "")
        rows.append(
            f'<tr data-job="{_e(job_id)}" data-status="{_e(status)}" '
            f'data-flaky="{"1" if job.get("flaky") else "0"}">'
            f'<td class="test">{_e(job.get("test_path"))}</td>'
            f'<td><span class="pill s-{_e(status)}">{_e(status)}</span></td>'
            f"<td>{'flaky' if job.get('flaky') else ''}</td>"
            f'<td data-sort="{_number(job.get("duration_s")) or 0}">'
            f"{_duration(job.get('duration_s'))}</td>"
            f"<td>{_e(job.get('agent_id') or NONE)}</td>"
            f'<td data-sort="{attempts}">{attempts}</td>'
            f'<td class="reason">{_e(reason[:200])}</td><td>{link_cell}</td></tr>'
        )
    failures = []
    for job in jobs:
        status = str(job.get("status"))
        tries = [t for t in job.get("tries") or [] if isinstance(t, Mapping)]
        if status == "passed" and not tries:
            continue
        if status in ("queued", "assigned", "running"):
            continue
        parts = [
            f'<h3>{_e(job.get("test_path"))} <span class="pill s-{_e(status)}">{_e(status)}'
            f"{' (flaky)' if job.get('flaky') else ''}</span></h3>",
            f'<p>{_e(job.get("message") or "")} <span class="muted">on '
            f"{_e(job.get('agent_id') or NONE)}, {_duration(job.get('duration_s'))}</span></p>",
        ]
        for tried in tries:
            parts.append(
                f"<p>Try {_e(tried.get('attempt'))} on {_e(tried.get('agent_id'))}: "
                f"{_e(tried.get('status'))} — {_e(tried.get('message') or '')}</p>"
            )
            if tried.get("output"):
                parts.append(f"<pre>{_e(tried.get('output'))}</pre>")
        output = outputs.get(str(job.get("job_id")))
        if output:
            parts.append(f"<pre>{_e(output)}</pre>")
        failures.append(
            f'<details class="failure" open><summary>{_e(job.get("test_path"))}</summary>'
            f"{''.join(parts)}</details>"
        )
    failures_html = "".join(failures) or '<p class="muted">No failures.</p>'
    title = f"qgjob run {run.get('run_id')}"
    data = json.dumps({"run_id": run.get("run_id"), "jobs": len(jobs)})
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{CSS}</style></head>
<body>
<header><h1>{_e(title)} <span class="verdict v-{verdict.split()[0].lower()}">{verdict}</span></h1>
<p class="muted">{_e(run.get("org_id"))} / app {_e(run.get("app_version_id"))} on
{_e(run.get("target"))} · report written {_e(_when(run.get("reported_at")))}</p></header>
<section class="cards">{cards}</section>
<section><h2>Install savings</h2><p><b>{savings["saved"]}</b> app installs saved:
{savings["tests_run"]} test(s) ran in {savings["installs"]} batch(es), each installing its
app at most once (one install per test would have been {savings["tests_run"]}).</p></section>
<section><h2>Device timeline</h2>{_timeline(jobs, colours)}</section>
<section><h2>Tests</h2>
<div class="controls"><input id="filter" type="search" placeholder="Filter tests, devices, reasons"
aria-label="Filter"><select id="status" aria-label="Status"><option value="">all statuses</option>
{"".join(f'<option value="{s}">{s}</option>' for s in STATUSES)}<option value="flaky">flaky</option>
</select></div>
<div class="scroll"><table id="tests"><thead><tr><th data-col="0">Test</th>
<th data-col="1">Status</th><th data-col="2">Flaky</th>
<th data-col="3" data-num="1">Duration</th><th data-col="4">Device</th>
<th data-col="5" data-num="1">Attempts</th><th data-col="6">Reason</th><th>Links</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table></div></section>
<section><h2>Failures</h2>{failures_html}</section>
<script type="application/json" id="qgjob-data">{_e(data)}</script>
<script>{JS}</script>
</body></html>
"""


CSS = """
:root{--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;--bg:#fff;--pass:#1a7f37;--fail:#cf222e;
--warn:#9a6700;--skip:#6e7781}
*{box-sizing:border-box}body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg);margin:0 auto;max-width:1100px;padding:16px}
h1{font-size:1.35rem;margin:.2em 0}h2{font-size:1.1rem;margin:1.4em 0 .5em;border-bottom:1px solid
var(--line);padding-bottom:.2em}h3{font-size:1rem;margin:.4em 0}.muted{color:var(--muted)}
.verdict{font-size:.8em;padding:2px 8px;border-radius:4px;color:#fff;vertical-align:middle}
.v-passed{background:var(--pass)}.v-failed{background:var(--fail)}.v-in{background:var(--warn)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(96px,1fr));gap:8px}
.card{border:1px solid var(--line);border-radius:6px;padding:8px;text-align:center}
.card b{display:block;font-size:1.5rem}.c-passed b{color:var(--pass)}.c-failed b,.c-error b,
.c-timed_out b{color:var(--fail)}.c-flaky b{color:var(--warn)}
.pill{font-size:.8em;padding:1px 6px;border-radius:10px;border:1px solid currentColor;
white-space:nowrap}
.s-passed{color:var(--pass)}.s-failed,.s-error,.s-timed_out{color:var(--fail)}
.s-cancelled{color:var(--skip)}.s-queued,.s-running,.s-assigned{color:var(--warn)}
.controls{display:flex;gap:8px;flex-wrap:wrap;margin:.5em 0}.controls input{flex:1;min-width:12em}
input,select{font:inherit;padding:4px 6px;border:1px solid var(--line);border-radius:4px}
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;min-width:640px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th[data-col]{cursor:pointer;user-select:none}th[aria-sort=ascending]::after{content:" ▲"}
th[aria-sort=descending]::after{content:" ▼"}td.test{word-break:break-all}
td.reason{color:var(--muted);max-width:22em}
.legend{display:flex;flex-wrap:wrap;gap:12px;align-items:center;margin-bottom:6px;font-size:.9em}
.key{display:inline-flex;gap:4px;align-items:center}.swatch{width:14px;height:14px;border-radius:3px;
display:inline-block}
.install-key{background:repeating-linear-gradient(90deg,#000 0 2px,transparent 2px 4px)}
.fail-key{border:2px solid var(--fail)}.flaky-key{border:2px dashed var(--warn)}
.lane{display:grid;grid-template-columns:minmax(90px,190px) 1fr;gap:8px;align-items:center;
margin:4px 0}
.lane-name{font-size:.85em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.track{position:relative;height:22px;background:#f6f8fa;border-radius:4px}
.bar{position:absolute;top:3px;height:16px;border-radius:3px;opacity:.9}
.bar.s-failed,.bar.s-error,.bar.s-timed_out{outline:2px solid var(--fail);outline-offset:-2px}
.bar.flaky{outline:2px dashed var(--warn);outline-offset:-2px}
.install{position:absolute;top:0;height:22px;width:2px;background:#000}
details.failure{border:1px solid var(--line);border-radius:6px;padding:6px 10px;margin:8px 0}
summary{cursor:pointer;font-weight:600;word-break:break-all}
pre{background:#f6f8fa;padding:8px;overflow:auto;max-height:24em;font-size:.85em;white-space:pre-wrap}
@media (max-width:600px){body{padding:8px;font-size:14px}.lane{grid-template-columns:80px 1fr}}
@media print{.controls{display:none}pre{max-height:none}body{max-width:none}
details.failure{break-inside:avoid}a{color:inherit}th[data-col]::after{content:""}}
"""

JS = """
(function(){
  var table=document.getElementById('tests'),body=table.tBodies[0];
  var filter=document.getElementById('filter'),status=document.getElementById('status');
  function apply(){
    var q=filter.value.toLowerCase(),s=status.value;
    Array.prototype.forEach.call(body.rows,function(r){
      var okS=!s||(s==='flaky'?r.dataset.flaky==='1':r.dataset.status===s);
      r.hidden=!(okS&&r.textContent.toLowerCase().indexOf(q)>=0);
    });
  }
  filter.addEventListener('input',apply);status.addEventListener('change',apply);
  Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th){
    if(!th.dataset.col)return;
    th.addEventListener('click',function(){
      var col=+th.dataset.col,num=!!th.dataset.num;
      var asc=th.getAttribute('aria-sort')!=='ascending';
      Array.prototype.forEach.call(table.tHead.rows[0].cells,function(c){c.removeAttribute('aria-sort');});
      th.setAttribute('aria-sort',asc?'ascending':'descending');
      var rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(a,b){
        var x=a.cells[col],y=b.cells[col];
        var p=num?parseFloat(x.dataset.sort||x.textContent):x.textContent.toLowerCase();
        var q2=num?parseFloat(y.dataset.sort||y.textContent):y.textContent.toLowerCase();
        return (p<q2?-1:p>q2?1:0)*(asc?1:-1);
      });
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
  document.body.setAttribute('data-ready','1');
})();
"""


def write_report(
    path: str,
    run: Json,
    outputs: Mapping[str, str] | None = None,
    links: Mapping[str, str] | None = None,
) -> None:
    from pathlib import Path

    target = Path(path)
    if target.parent and not target.parent.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(html_report(run, outputs, links), encoding="utf-8")
