"""`tritonize tune`: hill-climb one model's batching and instance settings against the real server.

The search space has four ordered dimensions: max_batch_size, preferred batch sizes (none, the
max, or half and max), max queue delay and instance count. Starting from the spec's own
settings, each step measures every unexplored neighbour (one dimension one notch up or down) and
moves to the best one if it beats the current point by more than `min_gain` and by more than
two standard errors of their window throughputs (search.py `Evaluation.beats`); it stops when none
does (or after `max_points`). A point is scored by the highest throughput over a concurrency
sweep whose p99 stays within the latency budget. The start point is swept from the lowest level
and stops once p99 passes the budget, or throughput stops growing, for two levels in a row. A
neighbour is swept from the level where the current point did best (one notch away in one
setting, its best level is near) and stops at the first such level, which skips the low levels
that Model Analyzer's quick search skips too by measuring each config at one concurrency. A level
whose throughput is known (measured before, for any point) is measured in time windows sized for
it (evaluate.py `_settings_at`): perf_analyzer's count windows would take >= 1 s each.

Every point is served by one tritonserver in explicit model-control mode: the model's
config.pbtxt (a copy, edited through model_config_pb2) is rewritten and the model reloaded, so
nothing is reconverted between points.

`space` holds the points and their neighbours, `search` the climb, `evaluate` the server and the
measurement of one point; this module runs a tune and reports it.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import TritonizeError
from ...terminal import Terminal, default_terminal
from ..analyzer import MeasurementSettings, find_perf_analyzer
from .evaluate import ConfigEvaluator, served_model
from .search import Evaluation, best_of, hill_climb
from .space import SearchSpace, TunePoint, fit_space, min_batch_size, start_point

__all__ = ["SearchSpace", "TuneResult", "tune"]


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
    from ...spec import load_spec
    from ..repository import write_input_data
    from ..run import parse_concurrency
    from ..specedit import model_settings_yaml, write_model_settings

    started = time.perf_counter()
    spec_path = Path(spec_path)
    spec = load_spec(spec_path)
    names = [m.name for m in spec.models]
    if model not in names:
        raise TritonizeError(f"unknown model '{model}'", file=spec_path, loc=("--model",),
                             fix=f"use one of: {', '.join(names)}")
    model_spec = spec.model(model)
    if model_spec.max_batch_size == 0 or model_spec.decoupled:
        raise TritonizeError(f"model '{model}' cannot be tuned: tune searches dynamic batching, which needs "
                             "max_batch_size > 0 and a non-decoupled model", file=spec_path, loc=("--model",),
                             fix="tune a batching model")
    if latency_budget_ms is not None and latency_budget_ms <= 0:
        raise TritonizeError("the latency budget must be positive", loc=("--latency-budget-ms",),
                             fix="pass milliseconds, e.g. --latency-budget-ms 10")
    levels = parse_concurrency(concurrency)
    analyzer = find_perf_analyzer()
    repository, served = served_model(spec_path, model, repository, terminal)
    start = start_point(model_spec)
    space = fit_space(space or SearchSpace(), start, min_batch_size(spec, model))
    report_dir = Path(report_dir) if report_dir is not None else spec_path.parent / "perf" / "reports" / f"tune-{model}"
    report_dir.mkdir(parents=True, exist_ok=True)
    budget_text = f"p99 <= {latency_budget_ms:g} ms" if latency_budget_ms is not None else "no latency budget"
    terminal.step(f"tuning {model}: hill climb from {start.label()}, {budget_text}, concurrency {levels}")

    with tempfile.TemporaryDirectory(prefix="tritonize-tune-") as work:
        work_dir = Path(work)
        input_data, shapes = write_input_data(served, work_dir / "input_data.json")
        evaluator = ConfigEvaluator(repository / model, analyzer, levels, latency_budget_ms, settings,
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


def _spec_settings(point: TunePoint, model_spec) -> dict[str, Any]:
    kind = model_spec.instance_group[0].kind if model_spec.instance_group else "cpu"
    batching: dict[str, Any] = {}
    if point.preferred_sizes():
        batching["preferred_batch_size"] = point.preferred_sizes()
    batching["max_queue_delay_microseconds"] = point.max_queue_delay_us
    return {"max_batch_size": point.max_batch_size, "dynamic_batching": batching,
            "instance_group": [{"count": point.instances, "kind": kind}]}


def _write_tune_report(result: TuneResult, report_dir: Path) -> None:
    from ..report import render

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
                     f"at the spec's settings ({gain:+.0%}); report {Path(result.report_dir or '.') / 'tune.md'}")
    if result.written:
        terminal.success(f"wrote the winning settings into {spec_path}")
    elif write:
        terminal.info("the spec's settings are already the best found: nothing written")
    else:
        terminal.info(f"paste into {spec_path} (or rerun with --write):\n{result.yaml}")
