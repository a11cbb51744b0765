"""`tritonize tune`: hill-climb one model's batching and instance settings against the real server.

The search space has four ordered dimensions: max_batch_size, preferred batch sizes (none, the
max, or half and max), max queue delay and instance count. Starting from the spec's own
settings, each step measures every unexplored neighbour (one dimension one notch up or down) and
moves to the best one if it beats the current point by more than `min_gain`; it stops when none
does (or after `max_points`). A point is scored by the highest throughput over a concurrency
sweep whose p99 stays within the latency budget; the sweep itself stops early once p99 passes
the budget, or throughput stops growing, for two levels in a row.

Every point is served by one tritonserver in explicit model-control mode: the model's
config.pbtxt (a copy, edited through model_config_pb2) is rewritten and the model reloaded, so
nothing is reconverted between points.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import TritonizeError
from ..model_config import CONFIG_NAME, to_pbtxt
from ..terminal import Terminal, default_terminal
from .analyzer import MeasurementSettings, PerfAnalyzer, PointRequest, find_perf_analyzer

PREFERRED_CHOICES = ("none", "max", "half+max")


@dataclass(frozen=True)
class TunePoint:
    max_batch_size: int
    preferred: str            # one of PREFERRED_CHOICES, or the spec's own sizes ("32,64")
    max_queue_delay_us: int
    instances: int

    def preferred_sizes(self) -> list[int]:
        if self.preferred[0].isdigit():  # the spec's own list, e.g. "32,64", kept as the start point
            return [size for size in map(int, self.preferred.split(",")) if size <= self.max_batch_size]
        if self.preferred == "max":
            return [self.max_batch_size]
        if self.preferred == "half+max":
            return sorted({max(1, self.max_batch_size // 2), self.max_batch_size})
        return []

    def label(self) -> str:
        return (f"mbs={self.max_batch_size} pref={self.preferred} delay={self.max_queue_delay_us}us "
                f"inst={self.instances}")


@dataclass
class SearchSpace:
    max_batch_size: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64, 128])
    preferred: list[str] = field(default_factory=lambda: list(PREFERRED_CHOICES))
    max_queue_delay_us: list[int] = field(default_factory=lambda: [0, 100, 500, 1000, 2000, 5000])
    instances: list[int] = field(default_factory=lambda: [1, 2, 3, 4])

    def dimensions(self) -> list[tuple[str, list]]:
        return [("max_batch_size", self.max_batch_size), ("preferred", self.preferred),
                ("max_queue_delay_us", self.max_queue_delay_us), ("instances", self.instances)]

    def grid(self) -> list[TunePoint]:
        import itertools

        return [TunePoint(*values) for values in itertools.product(*(v for _, v in self.dimensions()))]

    def neighbours(self, point: TunePoint) -> list[TunePoint]:
        result = []
        for name, values in self.dimensions():
            index = values.index(getattr(point, name))
            for step in (-1, 1):
                if 0 <= index + step < len(values):
                    result.append(dataclasses.replace(point, **{name: values[index + step]}))
        return result


@dataclass
class Evaluation:
    point: TunePoint
    throughput: float             # best infer/s within the budget (0 when no level fits)
    p99_ms: float                 # p99 at that level (or the lowest p99 seen when none fits)
    concurrency: int
    feasible: bool
    levels: list[dict[str, float]]
    seconds: float
    step: int                     # climb step that explored it (0 = the starting point)

    def better_than(self, other: "Evaluation", min_gain: float = 0.0) -> bool:
        if self.feasible != other.feasible:
            return self.feasible
        if not self.feasible:
            return self.p99_ms < other.p99_ms * (1 - min_gain)
        return self.throughput > other.throughput * (1 + min_gain)


@dataclass
class TuneResult:
    model: str
    latency_budget_ms: float | None
    start: Evaluation
    best: Evaluation
    explored: list[Evaluation]
    seconds: float
    settings: dict[str, Any]      # the winning settings as spec keys
    yaml: str                     # the block to paste under `models:`
    written: bool
    report_dir: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "latency_budget_ms": self.latency_budget_ms, "seconds": self.seconds,
                "start": dataclasses.asdict(self.start), "best": dataclasses.asdict(self.best),
                "settings": self.settings, "written": self.written,
                "explored": [dataclasses.asdict(e) for e in self.explored]}


class ConfigEvaluator:
    """Serves one model from a private repository copy and scores TunePoints on it."""

    def __init__(self, model_dir: Path, analyzer: PerfAnalyzer, levels: list[int],
                 latency_budget_ms: float | None, settings: MeasurementSettings, work_dir: Path,
                 input_data: Path | None, shapes: tuple[str, ...], terminal: Terminal):
        from .repository import read_config

        self.name = model_dir.name
        self.repository = work_dir / "repository"
        shutil.copytree(model_dir, self.repository / self.name,
                        ignore=shutil.ignore_patterns("__pycache__"))
        self.config_path = self.repository / self.name / CONFIG_NAME
        self.base_config = read_config(self.config_path)
        self.analyzer, self.levels, self.budget = analyzer, levels, latency_budget_ms
        self.settings, self.work_dir, self.terminal = settings, work_dir, terminal
        self.input_data, self.shapes = input_data, shapes
        self.server = None
        self.count = 0
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "ConfigEvaluator":
        from ..server import TritonServer

        # Explicit model control: each point rewrites config.pbtxt and reloads just this model.
        server = TritonServer(self.repository, model_control="explicit", extra_args=["--load-model=*"],
                              log_path=self.work_dir / "tritonserver.log")
        with self.terminal.status(f"starting tritonserver for {self.name}"):
            self.server = self._stack.enter_context(server)
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def evaluate(self, point: TunePoint, step: int) -> Evaluation:
        started = time.perf_counter()
        self._apply(point)
        self.count += 1
        levels, best, lowest, flat, over = [], None, None, 0, 0
        for level in self.levels:
            request = PointRequest(self.name, level, self.server.grpc_url, "grpc", self.input_data, self.shapes)
            measurement = self.analyzer.measure(request, self.settings, self.work_dir / "raw",
                                                f"p{self.count}.c{level}")
            entry = {"concurrency": level, "throughput": measurement.throughput,
                     "p99_ms": measurement.p99_us / 1000}
            levels.append(entry)
            if lowest is None or entry["p99_ms"] < lowest["p99_ms"]:
                lowest = entry
            # Two levels in a row over the budget end the sweep: more concurrency only queues
            # longer (one level over it may be a single slow window on a busy machine).
            if self.budget is not None and entry["p99_ms"] > self.budget:
                over += 1
                if over == 2:
                    break
                continue
            over = 0
            # Saturated after two levels in a row without 3 % more throughput: more clients would
            # add latency, not throughput (two, so that one noisy window does not end the sweep).
            flat = flat + 1 if best is not None and entry["throughput"] < best["throughput"] * 1.03 else 0
            best = entry if best is None or entry["throughput"] > best["throughput"] else best
            if flat == 2:
                break
        chosen = best or lowest
        return Evaluation(point, chosen["throughput"] if best else 0.0, chosen["p99_ms"], chosen["concurrency"],
                          best is not None, levels, time.perf_counter() - started, step)

    def _apply(self, point: TunePoint) -> None:
        import tritonclient.http as http_client

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
        with http_client.InferenceServerClient(self.server.http_url) as client:
            try:
                client.load_model(self.name)
            except Exception as exc:  # tritonclient raises its own InferenceServerException
                raise TritonizeError(f"model '{self.name}' did not reload with {point.label()}: {exc}",
                                     file=self.config_path, fix=f"see {self.server.log_path}") from None


def hill_climb(space: SearchSpace, start: TunePoint, evaluate: Callable[[TunePoint, int], Evaluation], *,
               min_gain: float = 0.03, max_points: int = 40,
               on_point: Callable[[Evaluation, Evaluation], None] | None = None) -> list[Evaluation]:
    """Steepest-ascent hill climb with early stop; returns every evaluation in order."""
    explored: dict[TunePoint, Evaluation] = {}
    current = explored[start] = evaluate(start, 0)
    if on_point:
        on_point(current, current)
    step = 0
    while len(explored) < max_points:
        step += 1
        candidates = [p for p in space.neighbours(current.point) if p not in explored]
        best_neighbour = None
        for point in candidates[:max_points - len(explored)]:
            evaluation = explored[point] = evaluate(point, step)
            if best_neighbour is None or evaluation.better_than(best_neighbour):
                best_neighbour = evaluation
            if on_point:
                on_point(evaluation, current)
        if best_neighbour is None or not best_neighbour.better_than(current, min_gain):
            break
        current = best_neighbour
    return list(explored.values())


def best_of(evaluations: list[Evaluation]) -> Evaluation:
    best = evaluations[0]
    for evaluation in evaluations[1:]:
        if evaluation.better_than(best):
            best = evaluation
    return best


def tune(spec_path: Path, *, model: str, latency_budget_ms: float | None = None, write: bool = False,
         concurrency: str = "1:16", repository: Path | None = None, space: SearchSpace | None = None,
         max_points: int = 40, min_gain: float = 0.03, report_dir: Path | None = None,
         settings: MeasurementSettings = MeasurementSettings(window_requests=100, retries=1),
         terminal: Terminal = default_terminal) -> TuneResult:
    """Tune `model` of the spec at `spec_path`; print the winning YAML, or write it into the spec.

    `repository` is a built repository of the spec; by default the spec's own is built (skipped
    when up to date). The report of every point explored goes to `report_dir`
    (default: perf/reports/tune-<model> next to the spec).
    """
    from ..pipeline import build
    from ..spec import load_spec
    from .repository import load_repository, write_input_data
    from .run import parse_concurrency
    from .specedit import model_settings_yaml, write_model_settings

    started = time.perf_counter()
    spec_path = Path(spec_path)
    spec = load_spec(spec_path)
    names = [m.name for m in spec.models]
    if model not in names:
        raise TritonizeError(f"unknown model '{model}'", file=spec_path, field="--model",
                             fix=f"use one of: {', '.join(names)}")
    model_spec = spec.model(model)
    if model_spec.max_batch_size == 0 or model_spec.decoupled:
        raise TritonizeError(f"model '{model}' cannot be tuned: tune searches dynamic batching, which needs "
                             "max_batch_size > 0 and a non-decoupled model", file=spec_path, field="--model",
                             fix="tune a batching model")
    if latency_budget_ms is not None and latency_budget_ms <= 0:
        raise TritonizeError("the latency budget must be positive", field="--latency-budget-ms",
                             fix="pass milliseconds, e.g. --latency-budget-ms 10")
    levels = parse_concurrency(concurrency)
    analyzer = find_perf_analyzer()
    if repository is None:
        repository = build(spec_path, terminal=terminal).repository
    served = load_repository(Path(repository))
    if model not in served:
        raise TritonizeError(f"model '{model}' is not in the repository", file=repository,
                             fix="rebuild it with `tritonize build`")
    start = start_point(model_spec)
    space = fit_space(space or SearchSpace(), start, _min_batch_size(spec, model))
    report_dir = Path(report_dir) if report_dir is not None else spec_path.parent / "perf" / "reports" / f"tune-{model}"
    report_dir.mkdir(parents=True, exist_ok=True)
    budget_text = f"p99 <= {latency_budget_ms:g} ms" if latency_budget_ms is not None else "no latency budget"
    terminal.step(f"tuning {model}: hill climb from {start.label()}, {budget_text}, concurrency {levels}")

    with tempfile.TemporaryDirectory(prefix="tritonize-tune-") as work:
        work_dir = Path(work)
        input_data, shapes = write_input_data(served[model], work_dir / "input_data.json")
        evaluator = ConfigEvaluator(Path(repository) / model, analyzer, levels, latency_budget_ms, settings,
                                    work_dir, input_data, shapes, terminal)
        with evaluator:
            explored = hill_climb(space, start, evaluator.evaluate, min_gain=min_gain, max_points=max_points,
                                  on_point=_progress_printer(terminal))
        shutil.copy(work_dir / "tritonserver.log", report_dir / "tritonserver.log")

    best = best_of(explored)
    settings_out = _spec_settings(best.point, model_spec)
    snippet = model_settings_yaml(model, settings_out)
    result = TuneResult(model, latency_budget_ms, explored[0], best, explored, time.perf_counter() - started,
                        settings_out, snippet, written=False, report_dir=report_dir)
    if write and best.point != start:
        write_model_settings(spec_path, model, settings_out)
        result.written = True
    _write_tune_report(result, report_dir)
    _print_tune_summary(result, spec_path, write, terminal)
    return result


def _progress_printer(terminal: Terminal) -> Callable[[Evaluation, Evaluation], None]:
    count = 0

    def show(evaluation: Evaluation, current: Evaluation) -> None:
        nonlocal count
        count += 1
        fits = "fits" if evaluation.feasible else "over budget"
        terminal.info(f"  [{count}] {evaluation.point.label()}: {evaluation.throughput:.1f} infer/s at "
                      f"c={evaluation.concurrency}, p99 {evaluation.p99_ms:.2f} ms ({fits}, {evaluation.seconds:.1f} s)")

    return show


def start_point(model_spec) -> TunePoint:
    batching = model_spec.dynamic_batching
    sizes = list(batching.preferred_batch_size) if batching else []
    mbs = model_spec.max_batch_size
    named = {"none": [], "max": [mbs], "half+max": sorted({max(1, mbs // 2), mbs})}
    preferred = next((name for name, value in named.items() if value == sizes), ",".join(map(str, sizes)))
    instances = sum(group.count for group in model_spec.instance_group) if model_spec.instance_group else 1
    return TunePoint(mbs, preferred, batching.max_queue_delay_microseconds if batching else 0, instances)


def _min_batch_size(spec, model: str) -> int:
    """An ensemble step's max_batch_size must be >= the ensemble's: the floor for this model."""
    floors = [e.max_batch_size for e in spec.ensembles if any(step.model == model for step in e.steps)]
    return max(floors, default=1)


def fit_space(space: SearchSpace, start: TunePoint, min_batch_size: int) -> SearchSpace:
    """The space with the start point's own values in it, and batch sizes the ensembles allow."""
    preferred = list(space.preferred)
    if start.preferred not in preferred:
        preferred.append(start.preferred)
    sizes = sorted({s for s in space.max_batch_size if s >= min_batch_size} | {start.max_batch_size})
    return SearchSpace(max_batch_size=sizes, preferred=preferred,
                       max_queue_delay_us=sorted(set(space.max_queue_delay_us) | {start.max_queue_delay_us}),
                       instances=sorted(set(space.instances) | {start.instances}))


def _spec_settings(point: TunePoint, model_spec) -> dict[str, Any]:
    kind = model_spec.instance_group[0].kind if model_spec.instance_group else "cpu"
    batching: dict[str, Any] = {}
    if point.preferred_sizes():
        batching["preferred_batch_size"] = point.preferred_sizes()
    batching["max_queue_delay_microseconds"] = point.max_queue_delay_us
    return {"max_batch_size": point.max_batch_size, "dynamic_batching": batching,
            "instance_group": [{"count": point.instances, "kind": kind}]}


def _write_tune_report(result: TuneResult, report_dir: Path) -> None:
    from .report import render

    (report_dir / "tune.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    (report_dir / "tune.md").write_text(render("tune.md.j2", {"result": result}))


def _print_tune_summary(result: TuneResult, spec_path: Path, write: bool, terminal: Terminal) -> None:
    rows = [[i + 1, e.step, e.point.label(), f"{e.throughput:.1f}", e.concurrency, f"{e.p99_ms:.2f}",
             "yes" if e.feasible else "no", "best" if e is result.best else ""]
            for i, e in enumerate(result.explored)]
    terminal.table(f"tune {result.model}: {len(result.explored)} points in {result.seconds:.0f} s",
                   ["#", "step", "settings", "infer/s", "c", "p99 ms", "in budget", ""], rows)
    start, best = result.start, result.best
    gain = best.throughput / start.throughput - 1 if start.throughput else float("inf")
    terminal.success(f"best: {best.point.label()}: {best.throughput:.1f} infer/s vs {start.throughput:.1f} "
                     f"at the spec's settings ({gain:+.0%}); report {result.report_dir / 'tune.md'}")
    if result.written:
        terminal.success(f"wrote the winning settings into {spec_path}")
    elif write:
        terminal.info("the spec's settings are already the best found: nothing written")
    else:
        terminal.info(f"paste into {spec_path} (or rerun with --write):\n{result.yaml}")
