"""`tritonize perf`: measure every model of a repository, report, and judge against a baseline."""
from __future__ import annotations

import contextlib
import datetime
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .. import manifest as manifest_file
from ..errors import TritonizeError
from ..optional import optional
from ..terminal import Terminal, default_terminal
from .analyzer import (
    Measurement,
    MeasurementSettings,
    PerfAnalyzer,
    PerfAnalyzerFailed,
    PointRequest,
    find_perf_analyzer,
)
from .repository import ServedModel, load_repository, select_models, write_input_data
from .results import ModelResult, PerfResult, aggregate, load_results
from .streaming import TokenMetrics
from .verdict import DEFAULT_ALPHA, DEFAULT_LATENCY_TOLERANCE, DEFAULT_TOLERANCE, TABLE_COLUMNS, compare

PROTOCOLS = ("grpc", "http")


def parse_concurrency(text: str) -> list[int]:
    """'8' -> [8]; 'start:end' -> powers of two from start up to end (end included);
    'start:end:step' -> start, start+step, ... up to end."""
    parts = text.split(":")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if not 1 <= len(numbers) <= 3 or any(n < 1 for n in numbers) or (len(numbers) > 1 and numbers[1] < numbers[0]):
        raise TritonizeError(f"'{text}' is not a concurrency range", loc=("--concurrency",),
                             fix="write N, START:END (doubling) or START:END:STEP with 1 <= START <= END")
    if len(numbers) == 1:
        return numbers
    start, end = numbers[0], numbers[1]
    if len(numbers) == 3:
        return list(range(start, end + 1, numbers[2]))
    levels = []
    level = start
    while level < end:
        levels.append(level)
        level *= 2
    return levels + [end]


def run_perf(repository: Path, *, models: list[str] | None = None, url: str | None = None,
             protocol: str = "grpc", concurrency: str = "1:8", baseline: Path | None = None,
             save_baseline: Path | None = None, report_dir: Path = Path("perf_report"), repeats: int = 3,
             tolerance: float | None = None, latency_tolerance: float | None = None,
             alpha: float = DEFAULT_ALPHA, summary_md: Path | None = None, junit: Path | None = None,
             settings: MeasurementSettings = MeasurementSettings(),
             terminal: Terminal = default_terminal) -> PerfResult:
    """Profile `models` of `repository` (all by default) with perf_analyzer and write the report.

    Starts the embedded tritonserver on the repository unless `url` names a running server
    (host:port of the chosen protocol). Returns the result; `result.exit_code` is 3 when a
    `baseline` was given and some point got slower (the verdict table has then been printed).
    Tolerances not given come from the spec's `perf:` settings recorded in the manifest.
    """
    check_protocol(protocol)
    if repeats < 1:
        raise TritonizeError("repeats must be at least 1", loc=("--repeats",), fix="pass --repeats 3")
    levels = parse_concurrency(concurrency)
    repository = Path(repository)
    served = load_repository(repository)
    chosen = select_models(served, models)
    baseline_result = load_results(Path(baseline)) if baseline is not None else None  # fail early
    analyzer = find_perf_analyzer()
    raw_dir = fresh_raw_dir(Path(report_dir))

    with _server(repository, url, protocol, Path(report_dir), terminal) as endpoints:
        from .machine import server_version, tool_versions

        endpoint = endpoints[protocol]
        assert endpoint is not None  # the chosen protocol's endpoint is always known
        tools = tool_versions(analyzer.version(), server_version(endpoint, protocol))
        plan = measurement_plan(served, chosen, endpoints, protocol, levels, settings, raw_dir, terminal)
        results = _measure_all(analyzer, plan, levels, repeats, raw_dir, terminal)

    result = new_result(results, repository, url or "embedded server", protocol, repeats, settings, tools,
                        report_dir, baseline=str(baseline) if baseline is not None else None)
    if baseline_result is not None:
        throughput_tolerance, p99_tolerance = tolerances(repository, tolerance, latency_tolerance)
        result.verdict = compare(result, baseline_result, tolerance=throughput_tolerance,
                                 latency_tolerance=p99_tolerance, alpha=alpha)
    finish(result, report_dir, save_baseline=save_baseline, summary_md=summary_md, junit=junit, terminal=terminal)
    return result


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise TritonizeError(f"unknown protocol '{protocol}'", loc=("--protocol",), fix="use grpc or http")


def fresh_raw_dir(report_dir: Path) -> Path:
    raw_dir = report_dir / "raw"
    if raw_dir.exists():
        shutil.rmtree(raw_dir)  # raw files of an earlier run would mix with this one's
    raw_dir.mkdir(parents=True)
    return raw_dir


def tolerances(repository: Path, tolerance: float | None, latency_tolerance: float | None) -> tuple[float, float]:
    """(throughput, p99) tolerances: the given ones, else the spec's `perf:` settings recorded in
    the repository's manifest."""
    manifest = manifest_file.read(repository)
    recorded = manifest.perf if manifest is not None else None
    return (tolerance if tolerance is not None else recorded.tolerance if recorded is not None else DEFAULT_TOLERANCE,
            latency_tolerance if latency_tolerance is not None
            else recorded.latency_tolerance if recorded is not None else DEFAULT_LATENCY_TOLERANCE)


def new_result(models: list[ModelResult], repository: Path, url: str, protocol: str, repeats: int,
               settings: MeasurementSettings, tools: dict[str, str], report_dir: Path,
               baseline: str | None = None) -> PerfResult:
    from .machine import machine_info

    return PerfResult(
        models=models, repository=str(Path(repository).resolve()), url=url, protocol=protocol, repeats=repeats,
        measurement=asdict(settings), machine=machine_info(), tools=tools,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        report_dir=Path(report_dir), baseline=baseline)


def finish(result: PerfResult, report_dir: Path, *, save_baseline: Path | None, summary_md: Path | None,
           junit: Path | None, terminal: Terminal) -> None:
    """Write the report (and the CI files asked for), print the summary, save the baseline."""
    from .ci_output import junit_xml, summary_markdown
    from .report import write_report

    with terminal.status(f"writing the report to {report_dir}"):
        write_report(result, Path(report_dir))
    for path, text in ((summary_md, summary_markdown), (junit, junit_xml)):
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text(result))
    _print_summary(result, terminal)
    if save_baseline is not None:
        Path(save_baseline).parent.mkdir(parents=True, exist_ok=True)
        result.write(Path(save_baseline))
        terminal.success(f"baseline saved to {save_baseline}")


@contextlib.contextmanager
def _server(repository: Path, url: str | None, protocol: str, report_dir: Path,
            terminal: Terminal) -> Iterator[dict[str, str | None]]:
    """Endpoints by protocol: the given URL for its protocol only, or both of a server started here."""
    if url is not None:
        yield {protocol: url, "grpc" if protocol == "http" else "http": None}
        return
    from ..triton.server import TritonServer

    with contextlib.ExitStack() as stack:
        with terminal.status(f"starting tritonserver on {repository}"):
            server = stack.enter_context(TritonServer(repository, log_path=report_dir / "tritonserver.log"))
        yield {"grpc": server.grpc_url, "http": server.http_url}


def _streams(model: ServedModel, served: dict[str, ServedModel]) -> bool:
    """A decoupled model, or an ensemble with a decoupled step, answers through a gRPC stream."""
    if model.decoupled:
        return True
    return any(step in served and _streams(served[step], served) for step in model.composing)


tokenizers = optional("tokenizers", purpose="counting the tokens of a streamed LLM's text", extra="llm")


@dataclass
class PlannedModel:
    """One model to measure: its request (the concurrency is set per point) and window settings."""

    model: ServedModel
    request: PointRequest
    settings: MeasurementSettings

    @property
    def kind(self) -> str:
        return "streaming" if self.request.streaming else ("ensemble" if self.model.is_ensemble else "model")

    def result(self) -> ModelResult:
        return ModelResult(self.model.name, self.kind, self.model.settings(),
                           "manifest samples" if self.request.input_data else "random")


def measurement_plan(served: dict[str, ServedModel], chosen: list[ServedModel], endpoints: dict[str, str | None],
                     protocol: str, levels: list[int], settings: MeasurementSettings, raw_dir: Path,
                     terminal: Terminal) -> list[PlannedModel]:
    """What to measure and how; models that cannot be measured are skipped with a warning.
    Each model's perf_analyzer input file is written to raw_dir/MODEL/."""
    plan = []
    for model in chosen:
        streaming = _streams(model, served)
        if streaming and endpoints["grpc"] is None:
            terminal.warning(f"skipping '{model.name}': a streaming model is measured over gRPC "
                             f"(pass --protocol grpc and the server's gRPC address)")
            continue
        if streaming and not model.samples:
            terminal.warning(f"skipping '{model.name}': no sample inputs in the repository manifest, and "
                             "random inputs could ask a generator for billions of tokens (build it with "
                             "`tritonize build`, which records samples)")
            continue
        model_dir = raw_dir / model.name
        model_dir.mkdir(parents=True, exist_ok=True)
        input_data, shapes = write_input_data(model, model_dir / "input_data.json", streaming=streaming)
        url = endpoints["grpc"] if streaming else endpoints[protocol]
        assert url is not None  # streaming models without a gRPC endpoint were skipped above
        request = PointRequest(model.name, levels[0], url, "grpc" if streaming else protocol, input_data, shapes, streaming=streaming,
                               profile_export=streaming, bls_composing=tuple(model.bls_composing))
        point_settings = settings
        if streaming:
            # A generation takes far longer than a classifier call: smaller windows, same stability rule.
            point_settings = replace(settings, window_requests=max(8, settings.window_requests // 20))
        plan.append(PlannedModel(model, request, point_settings))
    return plan


def measure_point(analyzer: PerfAnalyzer, planned: PlannedModel, level: int, model_dir: Path,
                  tag: str) -> tuple[Measurement, TokenMetrics | None]:
    """One perf_analyzer run of one model at one concurrency, with its token metrics when streaming."""
    from .streaming import token_metrics

    point = replace(planned.request, concurrency=level)
    measurement = analyzer.measure(point, planned.settings, model_dir, tag)
    profile = model_dir / f"{tag}.attempt{measurement.attempts}.profile.json"
    tokens = (token_metrics(profile, _token_counter(planned.model.tokenizer))
              if point.streaming and profile.exists() else None)
    return measurement, tokens


def _token_counter(tokenizer_json: Path | None) -> Callable[[str], int] | None:
    """Tokens of a text by the model's own tokenizer."""
    if tokenizer_json is None:
        return None
    tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_json))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def _measure_all(analyzer: PerfAnalyzer, plan: list[PlannedModel], levels: list[int], repeats: int,
                 raw_dir: Path, terminal: Terminal) -> list[ModelResult]:
    results = []
    with terminal.progress(f"measuring {len(plan)} models x {len(levels)} concurrency levels x {repeats} repeats",
                           total=len(plan) * len(levels) * repeats) as advance:
        for planned in plan:
            result = planned.result()
            try:
                for level in levels:
                    measurements, tokens = [], []
                    for repeat in range(1, repeats + 1):
                        measurement, token = measure_point(analyzer, planned, level, raw_dir / result.name,
                                                           f"c{level}.r{repeat}")
                        measurements.append(measurement)
                        tokens.append(token)
                        advance(f"{result.name} c={level} repeat {repeat}: {measurement.throughput:.1f} infer/s, "
                                f"p99 {measurement.p99_us / 1000:.2f} ms")
                    result.points.append(aggregate(level, measurements, tokens))
            except PerfAnalyzerFailed as exc:
                # One model that cannot be measured must not lose the others' numbers; the report
                # and the verdict show it as failed.
                result.error = exc.one_line()
                terminal.error(f"{result.name}: {result.error}")
            results.append(result)
    return results


def _print_summary(result: PerfResult, terminal: Terminal) -> None:
    rows: list[list[object]] = []
    for model in result.models:
        if model.error:
            rows.append([model.name, "–", "–", "–", "–", "–", f"FAILED: {model.error}"])
        for point in model.points:
            extra = ""
            if point.tokens:
                extra = (f"TTFT p50 {point.tokens['ttft_p50_ms']:.1f} ms, "
                         f"{point.tokens['output_tokens_per_s']:.1f} tok/s")
            rows.append([model.name, point.concurrency, f"{point.throughput:.1f}", f"{point.p50_ms:.2f}",
                         f"{point.p99_ms:.2f}", "yes" if point.stable else "NO", extra])
    terminal.table("perf results (median of repeats)",
                   ["model", "concurrency", "infer/s", "p50 ms", "p99 ms", "stable", "notes"], rows)
    if result.verdict is not None:
        verdict = result.verdict
        terminal.table(f"verdict against {result.baseline} (rank test over windows, alpha {verdict.alpha:g})",
                       TABLE_COLUMNS, verdict.table_rows())
        if verdict.missing:
            models = dict.fromkeys(point.split("@")[0] for point in verdict.missing)
            terminal.warning(f"in the baseline but not measured this time (not judged): {', '.join(models)}")
        if verdict.inconclusive:
            terminal.warning("inconclusive (not failed): " + ", ".join(
                f"{p.model}@{p.concurrency}" for p in verdict.inconclusive)
                + "; the windows spread more than the tolerance: measure more rounds or on a quieter machine")
        if verdict.regressed:
            terminal.error(verdict.summary)
        else:
            terminal.success(verdict.summary)
    terminal.success(f"report: {Path(result.report_dir or '.') / 'report.html'}")
