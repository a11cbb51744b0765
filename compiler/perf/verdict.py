"""Regression verdict: one run against a reference (a stored baseline, or the old build measured
alongside), per model and concurrency, from a rank test on the per-window samples.

For each point and metric (throughput, higher is better; p99 latency, lower is better) the
windows of the two runs are compared with the Mann-Whitney U test (a rank test: no normality
assumed, one disturbed window moves it little) and the relative change is estimated with the
Hodges-Lehmann estimator (median of all pairwise ratios new/old) and its distribution-free
confidence interval, the one that matches the U test. Then, with `alpha` the significance level
and the spec's tolerance the smallest change that matters:

- `slower`: the change is significant (p < alpha) *and* worse than the tolerance;
- `faster`: significant and better than the tolerance;
- `same`: the confidence interval rules out a worsening beyond the tolerance;
- `inconclusive`: none of these: the spread of the windows hides whether the point got slower.
  Repeat with more rounds (`--rounds`, `--repeats`) or on a quieter machine to resolve it.

A point is `slower` when either metric is, `inconclusive` when either is and none is slower,
`faster` when either is and none is worse or inconclusive. Only `slower` (and `failed`: measured
before, not measurable now) fails the run (exit 3); `inconclusive` exits 0 with a warning, so
noise never fails a pipeline and never passes silently either.

This is the scheme of Google Benchmark's compare.py (U test + relative change) with the
significance level chosen for many points: at alpha = 0.01 a run of 30 points has about a 26 %
chance that one unchanged point tests significant, and the tolerance gate then keeps that point
from failing unless its change is also larger than the tolerance.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ..spec import PerfSettings
from .results import PerfResult

# The spec's `perf:` defaults: throughput may drop 10 % before it is a regression; p99 is a tail
# statistic and moves more than throughput, so it gets 25 %.
DEFAULT_TOLERANCE = PerfSettings.model_fields["tolerance"].default
DEFAULT_LATENCY_TOLERANCE = PerfSettings.model_fields["latency_tolerance"].default
DEFAULT_ALPHA = 0.01

STATUSES = ("slower", "failed", "inconclusive", "faster", "same")


@dataclass
class MetricComparison:
    """One metric of one point: new samples against reference samples."""

    change: float          # Hodges-Lehmann estimate of new / reference - 1
    low: float             # confidence interval of the change, level 1 - alpha (-1 .. inf when too few samples)
    high: float
    p_value: float         # two-sided Mann-Whitney U
    samples: tuple[int, int]  # (reference, new) window counts
    status: str            # "worse" | "better" | "same" | "inconclusive"


def compare_samples(reference: list[float], new: list[float], *, tolerance: float, higher_is_better: bool,
                    alpha: float = DEFAULT_ALPHA) -> MetricComparison:
    """The rank-test verdict on one metric; samples must be positive (throughputs, latencies)."""
    from scipy.stats import mannwhitneyu

    old = np.maximum(np.asarray(reference, dtype=float), 1e-12)
    now = np.maximum(np.asarray(new, dtype=float), 1e-12)
    m, n = len(old), len(now)
    if m == 0 or n == 0:
        return MetricComparison(0.0, -1.0, math.inf, 1.0, (m, n), "inconclusive")
    ratios = np.sort((np.log(now)[:, None] - np.log(old)[None, :]).ravel())
    change = math.expm1(float(np.median(ratios)))
    # Order statistics of the pairwise differences bound the shift at the U test's critical
    # value (normal approximation of U's distribution, as in Hollander & Wolfe ch. 4.3).
    z = _normal_quantile(1 - alpha / 2)
    k = math.floor(m * n / 2 - z * math.sqrt(m * n * (m + n + 1) / 12))
    if k < 0:
        low, high = -1.0, math.inf
    else:
        low, high = math.expm1(float(ratios[k])), math.expm1(float(ratios[m * n - 1 - k]))
    if np.all(now == old[0]) and np.all(old == old[0]):
        p_value = 1.0  # every sample equal: the test statistic is undefined, there is no change
    else:
        p_value = float(mannwhitneyu(now, old, alternative="two-sided").pvalue)
    # Express everything as "how much worse": positive is a regression for either metric.
    worse = -change if higher_is_better else change
    worse_bound = -low if higher_is_better else high
    if p_value < alpha and worse > tolerance:
        status = "worse"
    elif p_value < alpha and -worse > tolerance:
        status = "better"
    elif worse_bound <= tolerance:
        status = "same"
    else:
        status = "inconclusive"
    return MetricComparison(change, low, high, p_value, (m, n), status)


def _normal_quantile(q: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(q))


@dataclass
class PointVerdict:
    model: str
    concurrency: int
    baseline_throughput: float
    throughput: float
    throughput_delta: float       # relative: +0.05 = 5 % more inferences/s (Hodges-Lehmann over windows)
    baseline_p99_ms: float
    p99_ms: float
    p99_delta: float              # relative: +0.05 = 5 % slower tail
    status: str                   # one of STATUSES
    reasons: list[str] = field(default_factory=list)
    throughput_test: MetricComparison | None = None
    p99_test: MetricComparison | None = None


@dataclass
class Verdict:
    points: list[PointVerdict]
    missing: list[str]            # "model@concurrency" in the reference, not measured this time
    tolerance: float
    latency_tolerance: float
    alpha: float = DEFAULT_ALPHA
    reference: str = "baseline"   # what was compared against, for titles

    @property
    def regressed(self) -> bool:
        return any(p.status in ("slower", "failed") for p in self.points)

    @property
    def inconclusive(self) -> list[PointVerdict]:
        return [p for p in self.points if p.status == "inconclusive"]

    @property
    def summary(self) -> str:
        slower = sum(p.status in ("slower", "failed") for p in self.points)
        unsure = len(self.inconclusive)
        tail = f", {unsure} inconclusive (the noise is larger than the tolerance)" if unsure else ""
        if slower:
            return f"REGRESSION: {slower} of {len(self.points)} points slower than the {self.reference}{tail}"
        return f"no regression: {len(self.points)} points compared{tail}"

    def to_json(self) -> dict:
        return {"regressed": self.regressed, "summary": self.summary, "tolerance": self.tolerance,
                "latency_tolerance": self.latency_tolerance, "alpha": self.alpha, "reference": self.reference,
                "missing": self.missing, "points": [_finite(asdict(p)) for p in self.points]}

    def table_rows(self) -> list[list[str]]:
        return [[p.model, str(p.concurrency), f"{p.baseline_throughput:.1f}", f"{p.throughput:.1f}",
                 _change_text(p.throughput_test, p.throughput_delta), f"{p.baseline_p99_ms:.2f}", f"{p.p99_ms:.2f}",
                 _change_text(p.p99_test, p.p99_delta), p.status + (f": {'; '.join(p.reasons)}" if p.reasons else "")]
                for p in self.points]


def _finite(value):
    """JSON has no infinity: an unbounded interval end is written as null."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return None if isinstance(value, float) and math.isinf(value) else value


TABLE_COLUMNS = ["model", "concurrency", "base infer/s", "infer/s", "Δ infer/s [CI] p", "base p99 ms", "p99 ms",
                 "Δ p99 [CI] p", "verdict"]


def _change_text(test: MetricComparison | None, delta: float) -> str:
    if test is None:
        return f"{delta:+.1%}"
    high = "∞" if math.isinf(test.high) else f"{test.high:+.0%}"
    return f"{delta:+.1%} [{test.low:+.0%}, {high}] p={test.p_value:.2g}"


def compare(current: PerfResult, baseline: PerfResult, *, tolerance: float = DEFAULT_TOLERANCE,
            latency_tolerance: float = DEFAULT_LATENCY_TOLERANCE, alpha: float = DEFAULT_ALPHA,
            reference: str = "baseline") -> Verdict:
    points, missing = [], []
    for base_model in baseline.models:
        model = current.model(base_model.name)
        for base_point in base_model.points:
            if model is not None and model.error:
                # Measured before, not measurable now: the worst regression there is.
                points.append(PointVerdict(base_model.name, base_point.concurrency, base_point.throughput, 0.0,
                                           -1.0, base_point.p99_ms, 0.0, 0.0, "failed", [model.error]))
                continue
            point = model.point(base_point.concurrency) if model else None
            if point is None:
                missing.append(f"{base_model.name}@{base_point.concurrency}")
                continue
            throughput = compare_samples(base_point.samples("throughput"), point.samples("throughput"),
                                         tolerance=tolerance, higher_is_better=True, alpha=alpha)
            p99 = compare_samples(base_point.samples("p99_ms"), point.samples("p99_ms"),
                                  tolerance=latency_tolerance, higher_is_better=False, alpha=alpha)
            reasons = []
            if throughput.status == "worse":
                reasons.append(f"throughput {throughput.change:+.1%} (tolerance -{tolerance:.0%}, "
                               f"p={throughput.p_value:.2g})")
            if p99.status == "worse":
                reasons.append(f"p99 {p99.change:+.1%} (tolerance +{latency_tolerance:.0%}, p={p99.p_value:.2g})")
            statuses = {throughput.status, p99.status}
            if reasons:
                status = "slower"
            elif "inconclusive" in statuses:
                status = "inconclusive"
            elif "better" in statuses:
                status = "faster"
            else:
                status = "same"
            points.append(PointVerdict(
                base_model.name, base_point.concurrency, base_point.throughput, point.throughput,
                throughput.change, base_point.p99_ms, point.p99_ms, p99.change, status, reasons, throughput, p99))
    return Verdict(points, missing, tolerance, latency_tolerance, alpha, reference)
