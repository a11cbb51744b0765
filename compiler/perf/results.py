"""Measured results: one point per (model, concurrency), the median of its repeats.

`results.json` is both the machine-readable report and the baseline format (`--save-baseline`
writes the same document), so a baseline is simply an earlier run's results. Each repeat keeps its
stable windows' throughput and p99 (windows.py): the samples the verdict's rank test compares, in
a fresh run and in a stored baseline alike. Files written before windows were recorded have none;
their repeats' own numbers stand in.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TritonizeError
from .analyzer import Measurement
from .streaming import TokenMetrics

RESULTS_FORMAT = 1
BREAKDOWN_FIELDS = ("queue", "compute_input", "compute_infer", "compute_output", "network", "client_send",
                    "client_recv")


@dataclass
class RepeatResult:
    throughput: float
    p99_ms: float
    stable: bool
    attempts: int
    window_requests: int
    raw_files: list[str]
    windows: list[dict[str, float]] = field(default_factory=list)  # {"throughput", "p99_ms", "requests"}


@dataclass
class PointResult:
    concurrency: int
    throughput: float                    # inferences/s, median of repeats
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    breakdown_us: dict[str, float]       # mean time per request by stage, median of repeats
    repeats: list[RepeatResult]
    response_throughput: float | None = None
    composing: list[dict[str, Any]] = field(default_factory=list)
    tokens: dict[str, Any] | None = None

    @property
    def stable(self) -> bool:
        return all(r.stable for r in self.repeats)

    def spread(self, metric: str) -> float:
        """Relative spread (max - min) / median of one metric over the repeats (the report's noise column)."""
        values = [getattr(r, metric) for r in self.repeats]
        middle = statistics.median(values)
        return (max(values) - min(values)) / middle if middle else 0.0

    def samples(self, metric: str) -> list[float]:
        """One value per measured window over all repeats ("throughput" or "p99_ms"); a repeat
        without recorded windows contributes its own number."""
        values: list[float] = []
        for repeat in self.repeats:
            values.extend([w[metric] for w in repeat.windows] if repeat.windows else [getattr(repeat, metric)])
        return values


@dataclass
class ModelResult:
    name: str
    kind: str                            # "model" | "ensemble" | "streaming"
    settings: dict[str, Any]
    input_data: str                      # "manifest samples" | "random"
    points: list[PointResult] = field(default_factory=list)
    error: str | None = None             # why it could not be measured (the run went on)

    def point(self, concurrency: int) -> PointResult | None:
        return next((p for p in self.points if p.concurrency == concurrency), None)


@dataclass
class PerfResult:
    models: list[ModelResult]
    repository: str
    url: str
    protocol: str
    repeats: int
    measurement: dict[str, Any]
    machine: dict[str, Any]
    tools: dict[str, str]
    created: str
    report_dir: Path | None = None
    verdict: Any = None                  # verdict.Verdict when a baseline was given
    baseline: str | None = None

    @property
    def exit_code(self) -> int:
        """3 when the verdict found a regression, else 0 (the CLI's exit status)."""
        return 3 if self.verdict is not None and self.verdict.regressed else 0

    def model(self, name: str) -> ModelResult | None:
        return next((m for m in self.models if m.name == name), None)

    def to_json(self) -> dict[str, Any]:
        document = {"format": RESULTS_FORMAT, "repository": self.repository, "url": self.url,
                    "protocol": self.protocol, "repeats": self.repeats, "measurement": self.measurement,
                    "machine": self.machine, "tools": self.tools, "created": self.created,
                    "baseline": self.baseline,
                    "models": [asdict(m) for m in self.models]}
        if self.verdict is not None:
            document["verdict"] = self.verdict.to_json()
        return document

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")


def aggregate(concurrency: int, measurements: list[Measurement],
              tokens: list[TokenMetrics | None]) -> PointResult:
    """Median over repeats of every reported number (medians resist one disturbed repeat)."""
    def med(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    breakdown = {name: med(getattr(m.breakdown, name) for m in measurements) for name in BREAKDOWN_FIELDS}
    composing = []
    for name in dict.fromkeys(c.model for m in measurements for c in m.composing):
        stats = [c for m in measurements for c in m.composing if c.model == name]
        entry = {"model": name, **{key: med(getattr(s, key) for s in stats)
                                   for key in ("inference_count", "execution_count", "latency_us", "queue_us",
                                               "compute_input_us", "compute_infer_us", "compute_output_us")}}
        entry["avg_batch"] = entry["inference_count"] / entry["execution_count"] if entry["execution_count"] else None
        composing.append(entry)
    token_list = [t for t in tokens if t is not None]
    token_summary = ({key: med(getattr(t, key) for t in token_list) for key in TokenMetrics.__dataclass_fields__}
                     if token_list else None)
    return PointResult(
        concurrency=concurrency,
        throughput=med(m.throughput for m in measurements),
        p50_ms=med(m.p50_us for m in measurements) / 1000, p90_ms=med(m.p90_us for m in measurements) / 1000,
        p95_ms=med(m.p95_us for m in measurements) / 1000, p99_ms=med(m.p99_us for m in measurements) / 1000,
        breakdown_us=breakdown,
        response_throughput=med(m.response_throughput for m in measurements),
        composing=composing, tokens=token_summary,
        repeats=[RepeatResult(m.throughput, m.p99_us / 1000, m.stable, m.attempts, m.window_requests,
                              m.raw_files, [asdict(w) for w in m.windows]) for m in measurements])


def load_results(path: Path) -> PerfResult:
    """Read a results.json / baseline file back."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise TritonizeError("baseline file not found", file=path,
                             fix="record one with `tritonize perf REPO --save-baseline FILE`") from None
    except json.JSONDecodeError as exc:
        raise TritonizeError(f"baseline is not JSON: {exc.msg}", file=path, line=exc.lineno,
                             fix="pass a results.json written by `tritonize perf`") from None
    if document.get("format") != RESULTS_FORMAT or "models" not in document:
        raise TritonizeError(f"not a tritonize perf results file (format {document.get('format')!r})", file=path,
                             fix="pass a results.json written by `tritonize perf`")
    models = []
    for model in document["models"]:
        points = [PointResult(**{**point, "repeats": [RepeatResult(**r) for r in point["repeats"]]})
                  for point in model["points"]]
        models.append(ModelResult(**{**model, "points": points}))
    return PerfResult(models=models, repository=document["repository"], url=document["url"],
                      protocol=document["protocol"], repeats=document["repeats"],
                      measurement=document["measurement"], machine=document["machine"],
                      tools=document["tools"], created=document["created"], baseline=document.get("baseline"))
