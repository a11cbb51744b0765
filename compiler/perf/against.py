"""`tritonize perf REPO --against OLD`: the old and the new build measured side by side.

A stored baseline was recorded at another time, under another load, maybe on another machine;
on shared CI runners that difference is larger than most regressions. Here both repositories
are served at once (one tritonserver each) and measured interleaved per model and concurrency,
in ABBA order (old-new, new-old, ...) so that neither side always runs first, for `rounds`
rounds: load that comes and goes hits both sides alike. The verdict is verdict.compare on the
two runs' windows, the same statistics as against a stored baseline.

OLD is a repository directory, or a git ref: then the spec at that ref is built with this
tritonize into a temporary directory (the comparison isolates changes of the spec, its models
and sources; a change of tritonize itself shows only in a repository built by the old one).
"""
from __future__ import annotations

import contextlib
import io
import subprocess
import tarfile
import tempfile
from pathlib import Path

from .. import manifest as manifest_file
from ..errors import TritonizeError
from ..terminal import Terminal, default_terminal
from .analyzer import Measurement, MeasurementSettings, PerfAnalyzerFailed, find_perf_analyzer
from .repository import load_repository, select_models
from .results import ModelResult, PerfResult, aggregate
from .run import (
    PlannedModel,
    check_protocol,
    finish,
    fresh_raw_dir,
    measure_point,
    measurement_plan,
    new_result,
    parse_concurrency,
    tolerances,
)
from .streaming import TokenMetrics
from .verdict import DEFAULT_ALPHA, compare

REFERENCE_RESULTS = "reference.json"  # the old build's results, next to results.json


def run_against(repository: Path, against: str, *, models: list[str] | None = None, protocol: str = "grpc",
                concurrency: str = "1:8", rounds: int = 5, report_dir: Path = Path("perf_report"),
                tolerance: float | None = None, latency_tolerance: float | None = None,
                alpha: float = DEFAULT_ALPHA, summary_md: Path | None = None, junit: Path | None = None,
                save_baseline: Path | None = None, settings: MeasurementSettings = MeasurementSettings(),
                terminal: Terminal = default_terminal) -> PerfResult:
    check_protocol(protocol)
    if rounds < 2:
        raise TritonizeError("rounds must be at least 2 to compare interleaved runs", loc=("--rounds",),
                             fix="pass --rounds 5")
    levels = parse_concurrency(concurrency)
    repository = Path(repository)
    served = load_repository(repository)
    chosen = select_models(served, models)
    analyzer = find_perf_analyzer()
    report_dir = Path(report_dir)
    raw_dir = fresh_raw_dir(report_dir)

    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tritonize-against-")))
        old_repository = reference_repository(against, repository, work, terminal)
        old_served = load_repository(old_repository)
        from ..triton.server import TritonServer
        from .machine import server_version, tool_versions

        with terminal.status("starting tritonserver on both repositories"):
            new_server = stack.enter_context(TritonServer(repository, log_path=report_dir / "tritonserver.log"))
            old_server = stack.enter_context(TritonServer(old_repository,
                                                          log_path=report_dir / "reference.tritonserver.log"))
        endpoints: dict[str, dict[str, str | None]] = {
            "new": {"grpc": new_server.grpc_url, "http": new_server.http_url},
            "old": {"grpc": old_server.grpc_url, "http": old_server.http_url}}
        both = [m for m in chosen if m.name in old_served]
        for model in chosen:
            if model.name not in old_served:
                terminal.warning(f"'{model.name}' is not in {against}: measured, not judged")
        plans = {"new": measurement_plan(served, chosen, endpoints["new"], protocol, levels, settings,
                                         raw_dir / "new", terminal),
                 "old": measurement_plan(old_served, [old_served[m.name] for m in both], endpoints["old"], protocol,
                                         levels, settings, raw_dir / "old", terminal)}
        new_url = new_server.grpc_url if protocol == "grpc" else new_server.http_url
        tools = tool_versions(analyzer.version(), server_version(new_url, protocol))
        results = _measure_interleaved(analyzer, plans, levels, rounds, raw_dir, terminal)

    label = f"{against} (measured alongside, {rounds} rounds)"
    old_result = new_result(results["old"], old_repository, "embedded server", protocol, rounds, settings, tools,
                            report_dir)
    result = new_result(results["new"], repository, "embedded server", protocol, rounds, settings, tools,
                        report_dir, baseline=label)
    throughput_tolerance, p99_tolerance = tolerances(repository, tolerance, latency_tolerance)
    result.verdict = compare(result, old_result, tolerance=throughput_tolerance, latency_tolerance=p99_tolerance,
                             alpha=alpha, reference="old build")
    report_dir.mkdir(parents=True, exist_ok=True)
    old_result.repository = str(against)  # the temp dir of a git ref is gone by now
    old_result.write(report_dir / REFERENCE_RESULTS)
    finish(result, report_dir, save_baseline=save_baseline, summary_md=summary_md, junit=junit, terminal=terminal)
    return result


def _measure_interleaved(analyzer, plans: dict[str, list[PlannedModel]], levels: list[int], rounds: int,
                         raw_dir: Path, terminal: Terminal) -> dict[str, list[ModelResult]]:
    old_plan = {p.model.name: p for p in plans["old"]}
    results: dict[str, list[ModelResult]] = {"new": [], "old": []}
    sides_total = sum(2 if p.model.name in old_plan else 1 for p in plans["new"])
    with terminal.progress(f"measuring {len(plans['new'])} models x {len(levels)} concurrency levels x {rounds} "
                           "rounds, old and new interleaved", total=sides_total * len(levels) * rounds) as advance:
        for planned_new in plans["new"]:
            name = planned_new.model.name
            sides = {"new": planned_new, **({"old": old_plan[name]} if name in old_plan else {})}
            model_results = {side: planned.result() for side, planned in sides.items()}
            for level in levels:
                collected: dict[str, tuple[list[Measurement], list[TokenMetrics | None]]] = {
                    side: ([], []) for side in sides}
                for round_number in range(1, rounds + 1):
                    # ABBA: odd rounds old first, even rounds new first.
                    order = ["old", "new"] if round_number % 2 else ["new", "old"]
                    for side in [s for s in order if s in sides and not model_results[s].error]:
                        try:
                            measurement, token = measure_point(analyzer, sides[side], level, raw_dir / side / name,
                                                               f"c{level}.round{round_number}")
                        except PerfAnalyzerFailed as exc:
                            model_results[side].error = exc.one_line()
                            terminal.error(f"{name} ({side} build): {model_results[side].error}")
                            continue
                        collected[side][0].append(measurement)
                        collected[side][1].append(token)
                        advance(f"{name} c={level} round {round_number} {side}: {measurement.throughput:.1f} infer/s")
                for side, (measurements, tokens) in collected.items():
                    if measurements and not model_results[side].error:
                        model_results[side].points.append(aggregate(level, measurements, tokens))
            for side, model_result in model_results.items():
                results[side].append(model_result)
    return results


def reference_repository(against: str, repository: Path, work: Path, terminal: Terminal) -> Path:
    """OLD as a repository directory: itself; as a git ref: its spec built into `work`."""
    path = Path(against)
    if path.is_dir():
        return path
    git_root = _git(["rev-parse", "--show-toplevel"], cwd=repository.resolve().parent)
    root = Path(git_root) if git_root is not None else None
    if root is None or _git(["rev-parse", "--verify", "--quiet", f"{against}^{{commit}}"], cwd=root) is None:
        raise TritonizeError(f"'{against}' is neither a repository directory nor a git commit",
                             loc=("--against",),
                             fix="pass the old build's repository directory, or a branch, tag or commit of this "
                                 "git repository (e.g. origin/main)")
    spec_relative = _spec_in_tree(repository.resolve(), root)
    archive = subprocess.run(["git", "archive", "--format=tar", against], cwd=root, capture_output=True,
                             check=True).stdout
    tree = work / "tree"
    with tarfile.open(fileobj=io.BytesIO(archive)) as handle:
        handle.extractall(tree, filter="data")
    spec = tree / spec_relative
    if not spec.is_file():
        raise TritonizeError(f"{against} has no {spec_relative.as_posix()}", loc=("--against",),
                             fix="pass a ref that has the spec, or the old repository directory")
    from ..pipeline import build

    with terminal.status(f"building {spec_relative.as_posix()} at {against}"):
        built = build(spec, terminal=Terminal(quiet=True))
    return built.repository


def _spec_in_tree(repository: Path, root: Path) -> Path:
    """The spec's path inside the git tree: the manifest names the spec file, which sits next to
    the repository in the usual layout; otherwise model.yaml at the root."""
    manifest = manifest_file.read(repository)
    name = manifest.spec if manifest is not None else None
    if name and (repository.parent / name).is_file():
        try:
            return (repository.parent / name).resolve().relative_to(root)
        except ValueError:
            pass
    return Path("model.yaml")


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None
