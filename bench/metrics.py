"""What a schedule achieves: makespan, installs, waits, utilization (and the installs bound).

wait = test start - arrival. Percentiles are nearest-rank (the smallest wait that at least
95% of the jobs do not exceed). Utilization = busy time (installs and tests) / (agents x
makespan), over every agent of the trace.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.bounds import installs_lower_bound
from bench.simulator import Segment
from bench.trace import Trace

PRIORITIES = tuple(range(1, 11))


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (``share`` in (0, 1]); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered) - 1e-9))
    return ordered[rank - 1]


@dataclass(frozen=True)
class PolicyMetrics:
    makespan_s: float
    installs: int
    installs_lower_bound_at_makespan: int | None
    mean_wait_s: float
    p95_wait_s: float
    p95_wait_s_by_priority: dict[int, float | None]
    utilization: float

    def to_json(self) -> dict[str, Any]:
        return {
            "makespan_s": round(self.makespan_s, 1),
            "installs": self.installs,
            "installs_lower_bound_at_makespan": self.installs_lower_bound_at_makespan,
            "mean_wait_s": round(self.mean_wait_s, 1),
            "p95_wait_s": round(self.p95_wait_s, 1),
            "p95_wait_s_by_priority": {
                str(p): None if w is None else round(w, 1)
                for p, w in self.p95_wait_s_by_priority.items()
            },
            "utilization": round(self.utilization, 4),
        }


def compute_metrics(trace: Trace, schedule: Mapping[str, Sequence[Segment]]) -> PolicyMetrics:
    """The metrics of a (valid) schedule of ``trace``."""
    arrival = {j.id: j.arrival_s for j in trace.jobs}
    priority = {j.id: j.priority for j in trace.jobs}
    segments = [s for lane in schedule.values() for s in lane]
    makespan = max((s.end_s for s in segments), default=0.0)
    waits: dict[int, list[float]] = {p: [] for p in PRIORITIES}
    for seg in segments:
        if seg.kind == "test" and seg.job_id is not None:
            waits[priority[seg.job_id]].append(seg.start_s - arrival[seg.job_id])
    every_wait = [w for ws in waits.values() for w in ws]
    busy = sum(s.end_s - s.start_s for s in segments)
    return PolicyMetrics(
        makespan_s=makespan,
        installs=sum(s.kind == "install" for s in segments),
        installs_lower_bound_at_makespan=(
            installs_lower_bound(trace, makespan) if trace.all_at_zero else None
        ),
        mean_wait_s=sum(every_wait) / len(every_wait) if every_wait else 0.0,
        p95_wait_s=percentile(every_wait, 0.95),
        p95_wait_s_by_priority={p: percentile(ws, 0.95) if ws else None for p, ws in waits.items()},
        utilization=busy / (len(trace.agents) * makespan) if makespan > 0 else 0.0,
    )
