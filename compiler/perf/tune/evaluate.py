"""tune's evaluator: serve one model from a private repository copy, and score a point on it
(edit the copy's config.pbtxt, reload the model, sweep perf_analyzer over the concurrency levels);
and the repository a tune runs on (built from the spec unless one is given)."""
from __future__ import annotations

import contextlib
import math
import secrets
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import TritonizeError
from ...terminal import Terminal
from ...triton.client import HttpClient
from ...triton.config import CONFIG_NAME, to_pbtxt
from ..analyzer import MeasurementSettings, PerfAnalyzer, PointRequest

if TYPE_CHECKING:
    from ...triton.server import TritonServer
from .search import Evaluation
from .space import TunePoint

# Windows of a time-windowed measurement: long enough that a p99 and a 25 % stability check mean
# something on a busy machine (300 ms windows at c=16 on digits_mlp: 7120, 6856, 7342 infer/s in
# ~1 s per level, vs 7387-7572 in 3.3 s with count windows), and the shortest count window.
MIN_WINDOW_MS = 300
COUNT_WINDOW_MS = 1000


class ConfigEvaluator:
    """Serves one model from a private repository copy and scores TunePoints on it."""

    def __init__(self, model_dir: Path, analyzer: PerfAnalyzer, levels: list[int],
                 latency_budget_ms: float | None, settings: MeasurementSettings, work_dir: Path,
                 input_data: Path | None, shapes: tuple[str, ...], terminal: Terminal):
        from ..repository import read_config

        self.name = model_dir.name
        self.repository = work_dir / "repository"
        shutil.copytree(model_dir, self.repository / self.name,
                        ignore=shutil.ignore_patterns("__pycache__"))
        self.config_path = self.repository / self.name / CONFIG_NAME
        self.base_config = read_config(self.config_path)
        self.analyzer, self.levels, self.budget = analyzer, levels, latency_budget_ms
        self.settings, self.work_dir, self.terminal = settings, work_dir, terminal
        self.input_data, self.shapes = input_data, shapes
        self.server: TritonServer | None = None
        self.count = 0
        self._throughput: dict[int, float] = {}  # concurrency -> infer/s last measured there (any point)
        self._stack = contextlib.ExitStack()

    @property
    def _server(self) -> TritonServer:
        assert self.server is not None, "use the evaluator as a context manager"
        return self.server

    def __enter__(self) -> ConfigEvaluator:
        from ...triton.server import TritonServer
        from ...triton.server.access import RestrictedApis

        # Explicit model control: each point rewrites config.pbtxt and reloads just this model.
        # The load API runs any model.py it is sent: it answers only with this run's random key.
        server = TritonServer(self.repository, model_control="explicit", extra_args=["--load-model=*"],
                              log_path=self.work_dir / "tritonserver.log",
                              restricted=RestrictedApis(secrets.token_urlsafe(24)))
        with self.terminal.status(f"starting tritonserver for {self.name}"):
            self.server = self._stack.enter_context(server)
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def evaluate(self, point: TunePoint, step: int, around: int | None = None) -> Evaluation:
        """Score `point`: its best throughput over the concurrency sweep within the budget. With
        `around` (the level where the point it neighbours did best), the sweep starts there."""
        started = time.perf_counter()
        self._apply(point)
        self.count += 1

        def measure(level: int) -> dict[str, float]:
            request = PointRequest(self.name, level, self._server.grpc_url, "grpc", self.input_data, self.shapes)
            measurement = self.analyzer.measure(request, self._settings_at(level), self.work_dir / "raw",
                                                f"p{self.count}.c{level}")
            self._throughput[level] = measurement.throughput
            entry = {"concurrency": level, "throughput": measurement.throughput, "p99_ms": measurement.p99_us / 1000,
                     "noise": relative_standard_error([w.throughput for w in measurement.windows])}
            if measurement.window_ms is not None:
                entry["window_ms"] = measurement.window_ms
            return entry

        levels, best = sweep(self.levels, measure, self.budget, around)
        chosen = best or min(levels, key=lambda e: e["p99_ms"])
        return Evaluation(point, chosen["throughput"] if best else 0.0, chosen["p99_ms"], int(chosen["concurrency"]),
                          best is not None, levels, time.perf_counter() - started, step, chosen["noise"])

    def _settings_at(self, level: int) -> MeasurementSettings:
        """Time windows long enough for window_requests at the throughput last measured at this
        level (or the nearest level below), MIN_WINDOW_MS at least; count windows (>= 1 s each)
        when nothing was measured yet or they would be as long. Most of a search's measurements
        are neighbours at a level measured before, so they take ~1 s instead of >= 3 s."""
        if self.settings.window_ms is not None:
            return self.settings
        below = [known for known in self._throughput if known <= level]
        nearest = max(below) if below else min(self._throughput, default=None)
        if nearest is None or self._throughput[nearest] <= 0:
            return self.settings
        window_ms = max(MIN_WINDOW_MS, math.ceil(1000 * self.settings.window_requests / self._throughput[nearest]))
        return self.settings if window_ms >= COUNT_WINDOW_MS else replace(self.settings, window_ms=window_ms)

    def _apply(self, point: TunePoint) -> None:
        config = type(self.base_config)()
        config.CopyFrom(self.base_config)
        config.max_batch_size = point.max_batch_size
        config.dynamic_batching.Clear()
        config.dynamic_batching.preferred_batch_size.extend(point.preferred_sizes())
        config.dynamic_batching.max_queue_delay_microseconds = point.max_queue_delay_us
        if not config.instance_group:
            config.instance_group.add()
        for group in config.instance_group:
            group.count = point.instances
        for warmup in config.model_warmup:  # warmup batches above the new max would fail the load
            warmup.batch_size = min(warmup.batch_size, point.max_batch_size)
        self.config_path.write_text(to_pbtxt(config))
        server = self._server
        headers = server.restricted.headers if server.restricted is not None else None
        with HttpClient(server.http_url) as client:
            try:
                client.load_model(self.name, headers=headers)
            except Exception as exc:  # tritonclient raises its own InferenceServerException
                raise TritonizeError(f"model '{self.name}' did not reload with {point.label()}: {exc}",
                                     file=self.config_path, fix=f"see {self._server.log_path}") from None


def served_model(spec_path: Path, model: str, repository: Path | None, terminal: Terminal):
    """The built repository of the spec (built when `repository` is None, skipped when up to date)
    and its served description of `model`."""
    from ...pipeline import build
    from ..repository import load_repository

    if repository is None:
        repository = build(spec_path, terminal=terminal).repository
    served = load_repository(Path(repository))
    if model not in served:
        raise TritonizeError(f"model '{model}' is not in the repository", file=repository,
                             fix="rebuild it with `tritonize build`")
    return Path(repository), served[model]


def relative_standard_error(values: list[float]) -> float:
    """Standard error of the mean over its value (0 with fewer than two values)."""
    if len(values) < 2 or not (mean := statistics.fmean(values)):
        return 0.0
    return statistics.stdev(values) / mean / math.sqrt(len(values))


def sweep(levels: list[int], measure: Callable[[int], dict[str, float]], budget_ms: float | None,
          around: int | None = None) -> tuple[list[dict[str, float]], dict[str, float] | None]:
    """Measure concurrency levels upwards and stop early; returns every level measured (in order)
    and the highest throughput within the budget (None when no level fits).

    From the lowest level (the start point), two levels in a row over the budget end it (more
    concurrency only queues longer; one level over may be a single slow window on a busy machine),
    and so do two levels in a row without 3 % more throughput (saturated: more clients add latency,
    not throughput).
    With `around` (one of `levels`), the sweep starts there instead: a neighbouring config's best
    level is close to this one's, and starting there skips the low levels, which only matter when
    throughput still grows with concurrency. Such a sweep stops at the first level over the budget
    or without 3 % more: a neighbour only has to show whether it beats the current point near the
    current point's best level, and most of a search's points are neighbours (the one-measurement-
    per-config quick search of Model Analyzer is what tune is measured against,
    perf/bench_tune_vs_model_analyzer.py). If the first level is over the budget, the levels below
    it are tried downwards until one fits.
    """
    first = levels.index(around) if around in levels else 0
    patience = 1 if around in levels else 2
    measured: list[dict[str, float]] = []
    best: dict[str, float] | None = None
    flat = over = 0
    for level in levels[first:]:
        entry = measure(level)
        measured.append(entry)
        if budget_ms is not None and entry["p99_ms"] > budget_ms:
            over += 1
            if over == patience:
                break
            continue
        over = 0
        flat = flat + 1 if best is not None and entry["throughput"] < best["throughput"] * 1.03 else 0
        best = entry if best is None or entry["throughput"] > best["throughput"] else best
        if flat == patience:
            break
    if best is None:
        for level in reversed(levels[:first]):  # the start was over the budget: come down to one that fits
            entry = measure(level)
            measured.append(entry)
            if budget_ms is None or entry["p99_ms"] <= budget_ms:
                best = entry
                break
    return measured, best
