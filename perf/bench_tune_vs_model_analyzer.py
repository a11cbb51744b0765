"""`tritonize tune` against Model Analyzer's quick search, same model, same p99 budget.

For each model (the demo's digits_mlp, and a 300-tree random forest on the 64-pixel digits built
here: the same input width, far more compute per row):

1. `tritonize tune` (the library call) hill-climbs the model's batching and instance settings on
   its own explicit-mode server.
2. Model Analyzer 1.58 (`model-analyzer profile --run-config-search-mode quick`, remote launch
   mode) searches the same model against `tritonize serve --model-control-mode explicit
   --load-model MODEL`: it loads each config it tries through the repository API with a config
   override (model_analyzer r1.58 model_analyzer/record/metrics_manager.py, `_do_load_model_variant`).
   Serve leaves that API open in explicit mode: Model Analyzer's client sends no header
   (model_analyzer/triton/client/client.py `load_model` passes only the config).
3. Both winners are re-measured on one server, alternating, with the same sweep: a search's own
   figure favours its winner (the maximum of noisy measurements); the re-measurement does not.

Both searches measure with the same perf_analyzer windows (perf/_bench.py SETTINGS: 300-request
count windows, 25 % stability, 6 trials) over concurrency 1..16, instances up to 4 and
max_batch_size up to 128. Model Analyzer's smallest max_batch_size is raised to the model's
largest warmup batch: Triton refuses (2.51 here: once answered INVALID_ARG, once crashed) a
config whose warmup batch exceeds max_batch_size, and its quick search starts at 1. Its profiling
window cannot go below perf_analyzer's count windows either: what it adds is its default config
measured at concurrency 2 x max_batch_size x instances (256 for digits_mlp) and its concurrency
sweep of the top 3 configs.

Model Analyzer is not a project dependency (it pins numpy): install it in its own venv
(`make venv-ma` makes .venv-ma) or pass --model-analyzer.

    .venv/bin/python perf/bench_tune_vs_model_analyzer.py [--budget-ms 10] [--models digits_mlp,forest300]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from _bench import REPORTS_DIR, RESULTS_DIR, ROOT, SETTINGS, built_repository, evaluator, save, serving
from tritonize.perf import tune
from tritonize.perf.analyzer import find_perf_analyzer
from tritonize.perf.repository import load_repository, write_input_data
from tritonize.perf.run import parse_concurrency
from tritonize.perf.tune.space import TunePoint
from tritonize.terminal import Terminal

LEVELS = "1:16"
MAX_INSTANCES = 4
MAX_BATCH = 128
TUNE_MAX_POINTS = 24
FOREST = "forest300"
FOREST_SPEC = """\
repository: repo
models:
  - name: forest300
    source: {framework: sklearn, path: forest300.joblib}
    max_batch_size: 64
    dynamic_batching: {max_queue_delay_microseconds: 200}
    instance_group: [{count: 1, kind: cpu}]
    inputs:
      - {name: input, dtype: FP32, dims: [64], range: [0, 16]}
    verify: {samples: 32, max_label_mismatch: 0.0}
"""


def forest_spec(terminal: Terminal) -> tuple[Path, Path]:
    """A 300-tree random forest on sklearn's digits, its spec and built repository under perf/reports."""
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier

    from tritonize.pipeline import build

    work = REPORTS_DIR / "forest300"
    work.mkdir(parents=True, exist_ok=True)
    model_path = work / "forest300.joblib"
    if not model_path.exists():
        x, y = load_digits(return_X_y=True)
        joblib.dump(RandomForestClassifier(n_estimators=300, max_depth=12, random_state=0).fit(x.astype("float32"), y),
                    model_path)
    spec = work / "model.yaml"
    spec.write_text(FOREST_SPEC)
    return spec, build(spec, terminal=terminal).repository


def model_analyzer_binary(given: str | None) -> Path:
    for candidate in [given, shutil.which("model-analyzer"), str(ROOT / ".venv-ma" / "bin" / "model-analyzer")]:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    sys.exit("model-analyzer not found: run `make venv-ma` (installs it into .venv-ma) or pass --model-analyzer PATH")


@dataclass(frozen=True)
class SearchLimits:
    """What Model Analyzer may try; the defaults match tune's space and the bench's windows."""

    max_concurrency: int = int(LEVELS.split(":")[1])
    max_instances: int = MAX_INSTANCES
    max_batch: int = MAX_BATCH
    window_requests: int = SETTINGS.window_requests
    stability_percent: float = SETTINGS.stability_percent
    max_trials: int = SETTINGS.max_trials
    auto_adjusts: int = SETTINGS.retries + 1


def run_model_analyzer(binary: Path, repository: Path, model: str, budget_ms: float, work: Path,
                       endpoints: tuple[int, int, int], terminal: Terminal,
                       limits: SearchLimits = SearchLimits()) -> dict:
    """Model Analyzer's quick search in remote mode against the server at `endpoints` (http, grpc,
    metrics ports on 127.0.0.1): wall time, every measurement, its best under the budget."""
    analyzer = find_perf_analyzer()
    served = load_repository(repository)[model]
    shutil.rmtree(work, ignore_errors=True)  # a checkpoint left from an earlier run would be reused
    work.mkdir(parents=True)
    input_data, _ = write_input_data(served, work / "input_data.json")
    warmup = max((w.batch_size for w in served.config.model_warmup), default=1)
    flags: dict[str, object] = {"measurement-request-count": limits.window_requests,
                                "stability-percentage": int(limits.stability_percent), "max-trials": limits.max_trials}
    if input_data is not None:
        flags["input-data"] = str(input_data)
    config = {"profile_models": {model: {"cpu_only": True}}, "perf_analyzer_flags": flags}
    (work / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    http, grpc, metrics = endpoints
    command = [str(binary), "profile", "-f", str(work / "config.yaml"),
               "--triton-launch-mode", "remote", "--client-protocol", "grpc",
               "--triton-grpc-endpoint", f"127.0.0.1:{grpc}", "--triton-http-endpoint", f"127.0.0.1:{http}",
               "--triton-metrics-url", f"http://127.0.0.1:{metrics}/metrics",
               "--run-config-search-mode", "quick", "--latency-budget", f"{budget_ms:g}",
               "--run-config-search-max-concurrency", str(limits.max_concurrency),
               "--run-config-search-max-instance-count", str(limits.max_instances),
               "--run-config-search-max-model-batch-size", str(limits.max_batch),
               "--run-config-search-min-model-batch-size", str(warmup),
               "--perf-analyzer-max-auto-adjusts", str(limits.auto_adjusts),
               "--perf-analyzer-path", str(analyzer.path), "--dcgm-disable",
               "--output-model-repository-path", str(work / "output_repository"),
               "--override-output-model-repository", "--checkpoint-directory", str(work / "checkpoints"),
               "--export-path", str(work / "export"), "--skip-summary-reports", "--skip-detailed-reports"]
    terminal.step(f"Model Analyzer quick search on {model} (log {work / 'model-analyzer.log'})")
    began = time.perf_counter()
    with open(work / "model-analyzer.log", "w") as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=analyzer.env, cwd=work, check=False)
    seconds = time.perf_counter() - began
    measured = _checkpoint_measurements(work / "checkpoints" / "0.ckpt", model)
    fitting = [m for m in measured if m["p99_ms"] <= budget_ms]
    best = max(fitting, key=lambda m: m["throughput"], default=None)
    return {"exit_code": proc.returncode, "seconds": round(seconds, 1), "configs": len({m["variant"] for m in measured}),
            "measurements": len(measured), "best": best, "all": measured, "log": str(work / "model-analyzer.log")}


def _checkpoint_measurements(checkpoint: Path, model: str) -> list[dict]:
    """Every (config, concurrency) Model Analyzer measured, from its checkpoint file."""
    if not checkpoint.exists():
        return []
    results = json.loads(checkpoint.read_text())["ResultManager.results"]["_results"].get(model, {})
    rows = []
    for variant, (run_config, measurements) in results.items():
        model_config = run_config["_model_run_configs"][0]["_model_config_variant"]["model_config"]
        batching = model_config.get("dynamicBatching", {})
        point = TunePoint(int(model_config.get("maxBatchSize", 0)),
                          ",".join(map(str, batching.get("preferredBatchSize", []))) or "none",
                          int(batching.get("maxQueueDelayMicroseconds", 0)),
                          sum(int(g.get("count", 1)) for g in model_config.get("instanceGroup", [{}])))
        for measurement in measurements.values():
            entry = measurement["_model_config_measurements"][0]
            data = dict(entry["_non_gpu_data_from_tag"])
            rows.append({"variant": variant, "point": dataclasses.asdict(point),
                         "concurrency": entry["_model_specific_pa_params"]["concurrency-range"],
                         "throughput": data["perf_throughput"][1]["_value"],
                         "p99_ms": data["perf_latency_p99"][1]["_value"]})
    return rows


def compare(name: str, spec: Path, repository: Path, budget_ms: float, binary: Path, rounds: int,
            terminal: Terminal) -> dict:
    terminal.step(f"tritonize tune on {name}")
    result = tune(spec, model=name, latency_budget_ms=budget_ms, write=False, concurrency=LEVELS,
                  repository=repository, settings=SETTINGS, max_points=TUNE_MAX_POINTS,
                  report_dir=REPORTS_DIR / f"tune-vs-ma-{name}", terminal=terminal)
    work = REPORTS_DIR / f"model-analyzer-{name}"
    work.mkdir(parents=True, exist_ok=True)
    with serving(repository, [name], REPORTS_DIR / f"model-analyzer-{name}.serve.log") as endpoints:
        analyzed = run_model_analyzer(binary, repository, name, budget_ms, work, endpoints, terminal)
    remeasured: dict[str, list[float]] = {"tune": [], "model_analyzer": []}
    if analyzed["best"] is not None:
        ma_point = TunePoint(**analyzed["best"]["point"])
        with evaluator(repository, name, parse_concurrency(LEVELS), budget_ms, terminal) as running:
            for _ in range(rounds):  # alternating, so slow spells of the machine hit both alike
                remeasured["tune"].append(running.evaluate(result.best.point, 0).throughput)
                remeasured["model_analyzer"].append(running.evaluate(ma_point, 0).throughput)
    median = {k: sorted(v)[len(v) // 2] if v else None for k, v in remeasured.items()}
    ma_best = analyzed["best"]["throughput"] if analyzed["best"] else 0.0
    summary = {
        "tune": {"seconds": round(result.seconds, 1), "points": len(result.explored),
                 "best": result.best.point.label(), "best_throughput": result.best.throughput,
                 "best_p99_ms": result.best.p99_ms, "best_concurrency": result.best.concurrency},
        "model_analyzer": {k: v for k, v in analyzed.items() if k != "all"} | {"measured": analyzed["all"]},
        "remeasured_throughput": remeasured, "remeasured_median": median,
        "throughput_ratio_search": result.best.throughput / ma_best if ma_best else None,
        "throughput_ratio_remeasured": (median["tune"] / median["model_analyzer"]
                                        if median["tune"] and median["model_analyzer"] else None),
        "wall_time_ratio": result.seconds / analyzed["seconds"] if analyzed["seconds"] else None,
    }
    summary["done"] = bool(summary["throughput_ratio_remeasured"] and summary["throughput_ratio_remeasured"] >= 1.0
                           and summary["wall_time_ratio"] is not None and summary["wall_time_ratio"] <= 0.5)
    ma_text = (f"{ma_best:.1f} infer/s ({TunePoint(**analyzed['best']['point']).label()} c={analyzed['best']['concurrency']})"
               if analyzed["best"] else "nothing within the budget")
    terminal.success(f"{name}: tune {result.best.throughput:.1f} infer/s in {result.seconds:.0f} s; "
                     f"Model Analyzer {ma_text} in {analyzed['seconds']:.0f} s; re-measured medians {median}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-ms", type=float, default=10.0, help="p99 latency budget (ms)")
    parser.add_argument("--models", default=f"digits_mlp,{FOREST}", help="comma-separated: digits_mlp, forest300")
    parser.add_argument("--rounds", type=int, default=3, help="alternating re-measurements of both winners")
    parser.add_argument("--model-analyzer", default=None, help="model-analyzer executable (default: PATH, .venv-ma)")
    args = parser.parse_args()
    terminal = Terminal()
    binary = model_analyzer_binary(args.model_analyzer)
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False)
    # A run on some of the models keeps the others' earlier entries; each entry says when it ran.
    previous = RESULTS_DIR / "tune_vs_model_analyzer.json"
    results = json.loads(previous.read_text()).get("models", {}) if previous.is_file() else {}
    for name in args.models.split(","):
        if name == FOREST:
            spec, repository = forest_spec(terminal)
        else:
            spec, repository = ROOT / "model.yaml", built_repository(terminal)
        started, load_before = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.getloadavg()
        entry = compare(name, spec, repository, args.budget_ms, binary, args.rounds, terminal)
        results[name] = {"measured_at": started, "p99_budget_ms": args.budget_ms, "rounds": args.rounds,
                         "load_average_before": load_before, "load_average_after": os.getloadavg(), **entry}
    summary = {"concurrency": LEVELS, "model_analyzer_version": (version.stdout + version.stderr).strip()[-40:],
               "models": results}
    path = save("tune_vs_model_analyzer", summary)
    terminal.success(f"-> {path}")


if __name__ == "__main__":
    main()
