"""Regression verdict: the current run against a baseline, per model and concurrency.

Noise-aware: each point is the median of `repeats` perf_analyzer runs, and a delta only counts as
a regression when it exceeds both the tolerance and the noise band measured on the two runs (the
sum of their relative spreads, max-min over median). A delta past the tolerance but inside the
noise band is reported as "within noise", never failed: repeat more to resolve it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..spec import PerfSettings
from .results import PerfResult

# The spec's `perf:` defaults: throughput may drop 10 % before it is a regression; p99 is a tail
# statistic and moves more than throughput, so it gets 25 %.
DEFAULT_TOLERANCE = PerfSettings.model_fields["tolerance"].default
DEFAULT_LATENCY_TOLERANCE = PerfSettings.model_fields["latency_tolerance"].default


@dataclass
class PointVerdict:
    model: str
    concurrency: int
    baseline_throughput: float
    throughput: float
    throughput_delta: float       # relative: +0.05 = 5 % more inferences/s
    baseline_p99_ms: float
    p99_ms: float
    p99_delta: float              # relative: +0.05 = 5 % slower tail
    throughput_threshold: float   # max(tolerance, noise band) used for this point
    p99_threshold: float
    status: str                   # "slower" | "failed" | "faster" | "within noise" | "ok"
    reasons: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    points: list[PointVerdict]
    missing: list[str]            # "model@concurrency" in the baseline, not asked for this time
    tolerance: float
    latency_tolerance: float

    @property
    def regressed(self) -> bool:
        return any(p.status in ("slower", "failed") for p in self.points)

    @property
    def summary(self) -> str:
        slower = sum(p.status in ("slower", "failed") for p in self.points)
        if slower:
            return f"REGRESSION: {slower} of {len(self.points)} points slower than the baseline"
        return f"no regression: {len(self.points)} points compared"

    def to_json(self) -> dict:
        return {"regressed": self.regressed, "summary": self.summary, "tolerance": self.tolerance,
                "latency_tolerance": self.latency_tolerance, "missing": self.missing,
                "points": [asdict(p) for p in self.points]}

    def table_rows(self) -> list[list[str]]:
        return [[p.model, str(p.concurrency), f"{p.baseline_throughput:.1f}", f"{p.throughput:.1f}",
                 f"{p.throughput_delta:+.1%}", f"{p.baseline_p99_ms:.2f}", f"{p.p99_ms:.2f}",
                 f"{p.p99_delta:+.1%}", p.status] for p in self.points]


TABLE_COLUMNS = ["model", "concurrency", "base infer/s", "infer/s", "Δ infer/s", "base p99 ms", "p99 ms",
                 "Δ p99", "verdict"]


def compare(current: PerfResult, baseline: PerfResult, *, tolerance: float = DEFAULT_TOLERANCE,
            latency_tolerance: float = DEFAULT_LATENCY_TOLERANCE) -> Verdict:
    points, missing = [], []
    for base_model in baseline.models:
        model = current.model(base_model.name)
        for base_point in base_model.points:
            if model is not None and model.error:
                # Measured before, not measurable now: the worst regression there is.
                points.append(PointVerdict(base_model.name, base_point.concurrency, base_point.throughput, 0.0,
                                           -1.0, base_point.p99_ms, 0.0, 0.0, tolerance, latency_tolerance,
                                           "failed", [model.error]))
                continue
            point = model.point(base_point.concurrency) if model else None
            if point is None:
                missing.append(f"{base_model.name}@{base_point.concurrency}")
                continue
            throughput_delta = _relative(point.throughput, base_point.throughput)
            p99_delta = _relative(point.p99_ms, base_point.p99_ms)
            throughput_noise = point.spread("throughput") + base_point.spread("throughput")
            p99_noise = point.spread("p99_ms") + base_point.spread("p99_ms")
            throughput_threshold = max(tolerance, throughput_noise)
            p99_threshold = max(latency_tolerance, p99_noise)
            reasons = []
            if throughput_delta < -throughput_threshold:
                reasons.append(f"throughput {throughput_delta:+.1%} (limit -{throughput_threshold:.0%})")
            if p99_delta > p99_threshold:
                reasons.append(f"p99 {p99_delta:+.1%} (limit +{p99_threshold:.0%})")
            if reasons:
                status = "slower"
            elif throughput_delta < -tolerance or p99_delta > latency_tolerance:
                status = "within noise"
            elif throughput_delta > throughput_threshold and p99_delta <= p99_threshold:
                status = "faster"
            else:
                status = "ok"
            points.append(PointVerdict(
                base_model.name, base_point.concurrency, base_point.throughput, point.throughput,
                throughput_delta, base_point.p99_ms, point.p99_ms, p99_delta, throughput_threshold,
                p99_threshold, status, reasons))
    return Verdict(points, missing, tolerance, latency_tolerance)


def _relative(value: float, reference: float) -> float:
    return value / reference - 1.0 if reference else 0.0
