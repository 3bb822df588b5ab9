"""Duration estimates: how long a test (or an app install) is expected to take.

Pure: no AWS, no clock. Agents report every test's duration and every install; the
backend keeps one :class:`DurationEstimate` per (org, target, test path) and one per
target for installs, and the planner reads ``estimate_s`` to size batches and to predict
when a busy agent is free again.

The estimator is an exponentially weighted moving average of the mean and of the
variance (West's incremental form). The first samples are averaged equally (weight 1/n),
so the first report already counts fully and the estimate settles fast; after that each
new sample weighs ``ALPHA``, so a test that got slower is learnt within a few runs.
``estimate_s`` is a high percentile, not the mean: ``mean + Z * spread`` (about the 93rd
percentile of a normal distribution), where the spread blends the observed variance with
a prior of ``PRIOR_CV`` times the mean worth ``PRIOR_WEIGHT`` samples. One sample of 60 s
thus gives about 79 s, and a perfectly steady test settles about 14 % above its mean.

Absurd samples are clamped: negative or non-finite ones are ignored, none counts as more
than ``MAX_SAMPLE_S``, and once warm (``WARM_SAMPLES``) one sample moves the average at
most as far as ``OUTLIER_RATIO`` times (or 1/``OUTLIER_RATIO`` of) the current mean, so a
single hang or crash cannot wreck the estimate while a real change is still learnt.

An estimate also remembers the ids of its last ``RECENT_IDS`` samples (job or batch ids),
so a replayed report is recognised and never counted twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qgjob_backend.schema import Target

ALPHA = 0.2
Z = 1.5
PRIOR_CV = 0.3
PRIOR_WEIGHT = 1.0
MAX_SAMPLE_S = 6 * 3600.0
OUTLIER_RATIO = 5.0
WARM_SAMPLES = 3
MIN_ESTIMATE_S = 0.1
RECENT_IDS = 16
# An EWMA with weight ALPHA remembers about this many samples.
_EFFECTIVE_SAMPLES = (2 - ALPHA) / ALPHA


@dataclass(frozen=True)
class EstimateKey:
    """What a test duration estimate is kept for: one org's test path on one target."""

    org_id: str
    target: Target
    test_path: str


@dataclass(frozen=True)
class DurationEstimate:
    mean_s: float = 0.0
    var_s2: float = 0.0
    samples: int = 0
    recent_ids: tuple[str, ...] = ()

    def counted(self, sample_id: str) -> bool:
        """Whether the sample with this id was already counted (a replayed report)."""
        return sample_id in self.recent_ids

    def updated(self, sample_s: float, sample_id: str | None = None) -> DurationEstimate:
        """The estimate with one more sample; unchanged for an unusable or replayed one."""
        if sample_id is not None and self.counted(sample_id):
            return self
        if not math.isfinite(sample_s) or sample_s < 0:
            return self
        sample = min(sample_s, MAX_SAMPLE_S)
        if self.samples >= WARM_SAMPLES and self.mean_s > 0:
            sample = min(max(sample, self.mean_s / OUTLIER_RATIO), self.mean_s * OUTLIER_RATIO)
        count = self.samples + 1
        weight = max(ALPHA, 1.0 / count)
        diff = sample - self.mean_s
        mean = self.mean_s + weight * diff
        variance = (1 - weight) * (self.var_s2 + weight * diff * diff)
        recent = self.recent_ids
        if sample_id is not None:
            recent = (*recent, sample_id)[-RECENT_IDS:]
        return DurationEstimate(mean, max(0.0, variance), count, recent)

    @property
    def estimate_s(self) -> float | None:
        """A high percentile of the duration; None without any sample."""
        if self.samples <= 0:
            return None
        weight = min(float(self.samples), _EFFECTIVE_SAMPLES)
        prior = (PRIOR_CV * self.mean_s) ** 2
        variance = (weight * self.var_s2 + PRIOR_WEIGHT * prior) / (weight + PRIOR_WEIGHT)
        return max(MIN_ESTIMATE_S, self.mean_s + Z * math.sqrt(variance))
