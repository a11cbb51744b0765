"""The ONNX runner against the serving ceiling: every tabular model of the demo (root model.yaml)
and a 100-tree random forest on iris given as a joblib file, each next to a python model with the
same signature, batching and instances that computes nothing, on one server, in one run.

The ceiling model reads its input and answers zeros of the model's output dtypes and shapes, so
its throughput is what the server, the python backend and perf_analyzer cost by themselves for
that signature; the runner's distance to it is the runner's own cost (tensor handling and
onnxruntime inside the python backend). Points are measured runner and ceiling back to back (the
order alternating per repeat), so load from other processes hits both alike; the ratio
runner/ceiling is computed per repeat, and its median and spread are reported.

    .venv/bin/python perf/bench_serving_ceiling.py [--concurrency 1,4,16] [--protocols http,grpc]
        [--repeats 3] [--window-requests 1500] [--stability 25] [--runner model.py]
    # --runner: measure another runner source too, as MODEL__alt (e.g. the previous one, from git show)

The forest's spec leaves dynamic_batching, instances and thread settings unset, so it shows the
runner's defaults.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import yaml
from google.protobuf import text_format

from _bench import REPORTS_DIR, ROOT, SETTINGS, save

sys.path.insert(0, str(ROOT))  # the demo's factories (examples.*) import from the repository root

from tritonize.perf.analyzer import PointRequest, find_perf_analyzer  # noqa: E402
from tritonize.perf.machine import machine_info  # noqa: E402
from tritonize.perf.repository import load_repository, read_config, write_input_data  # noqa: E402
from tritonize.terminal import Terminal  # noqa: E402
from tritonize.triton.server import TritonServer  # noqa: E402

TABULAR_FRAMEWORKS = ("sklearn", "xgboost", "lightgbm", "pytorch")  # models with a converted ONNX graph
FOREST = "iris_forest100"
CEILING_SUFFIX = "__ceiling"
ALTERNATIVE_SUFFIX = "__alt"
CEILING_SOURCE = '''import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Answers zeros of the configured outputs: the cheapest model with this signature."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input = config["input"][0]["name"]
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"]),
                         tuple(int(d) for d in o["dims"]))
                        for o in config["output"]]
        self.zeros = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, self.input).as_numpy().shape[0]
            answers = self.zeros.get(rows)
            if answers is None:
                shape = (rows,) if self.batched else ()
                answers = self.zeros[rows] = [(name, np.zeros(shape + dims, dtype)) for name, dtype, dims in self.outputs]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(name, array) for name, array in answers]))
        return responses
'''


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a live process has used (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stub_pids(repository: Path, model: str) -> list[int]:
    """The python-backend stubs serving `model`: their first argument is the model's model.py."""
    marker = f"{repository}/{model}/"
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if len(argv) > 1 and argv[0].endswith(b"triton_python_backend_stub") and argv[1].decode().startswith(marker):
                pids.append(int(entry.name))
    return pids


class CpuMeter:
    """CPU time per inference of one model over one perf_analyzer run, on the server side
    (tritonserver's threads and the model's stubs), and perf_analyzer's own (a waited-for child).

    Throughput on this shared 2-core machine moves with other processes' load by far more than
    the runner's cost; CPU time per inference moves much less. The server-side CPU ratio
    (ceiling / runner) is a conservative estimate of the throughput ratio on an idle CPU-bound
    host: the client's cost, the same for both, would only add to both denominators."""

    def __init__(self, server_pid: int, stubs: list[int], stats: Callable[[], int]):
        self.pids = [server_pid, *stubs]
        self.stats = stats

    def __enter__(self) -> CpuMeter:
        self.start = (sum(process_cpu_s(pid) for pid in self.pids), self._children(), self.stats())
        return self

    def __exit__(self, *exc_info) -> None:
        server, client, count = self.start
        self.server_s = sum(process_cpu_s(pid) for pid in self.pids) - server
        self.client_s = self._children() - client
        self.inferences = self.stats() - count

    @staticmethod
    def _children() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    @property
    def us_per_inference(self) -> float:
        return self.server_s / max(self.inferences, 1) * 1e6


def bench_spec(work: Path) -> Path:
    """model.yaml with the root spec's tabular models and the 100-tree forest (saved with joblib)."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    work.mkdir(parents=True, exist_ok=True)
    forest_path = work / f"{FOREST}.joblib"
    if not forest_path.exists():
        features, species = load_iris(return_X_y=True)
        forest = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1).fit(features, species)
        joblib.dump(forest, forest_path)
    root = yaml.safe_load((ROOT / "model.yaml").read_text())
    models = [m for m in root["models"] if m["source"]["framework"] in TABULAR_FRAMEWORKS]
    models.append({"name": FOREST, "source": {"framework": "sklearn", "path": forest_path.name},
                   "max_batch_size": 64,
                   "inputs": [{"name": "input", "dtype": "FP32", "dims": [4], "range": [0.1, 7.9]}]})
    spec = work / "model.yaml"
    text = yaml.safe_dump({"repository": "model_repo", "runtime": "embedded", "models": models}, sort_keys=False)
    if not spec.exists() or spec.read_text() != text:
        spec.write_text(text)
    return spec


def ceiling_like(model_dir: Path, target: Path, name: str, source: str) -> None:
    """A python model `name` with model_dir's signature, batching and instances, serving `source`."""
    config = read_config(model_dir / "config.pbtxt")
    config.name = name
    config.backend = "python"
    if source == CEILING_SOURCE:
        config.ClearField("parameters")
        config.ClearField("model_warmup")
    (target / name / "1").mkdir(parents=True)
    (target / name / "config.pbtxt").write_text(text_format.MessageToString(config))
    (target / name / "1" / "model.py").write_text(source)
    if source != CEILING_SOURCE:
        for version in model_dir.iterdir():
            if version.is_dir() and (version / "model.onnx").exists():
                shutil.copy(version / "model.onnx", target / name / "1" / "model.onnx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--protocols", default="http,grpc")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window-requests", type=int, default=1500)
    parser.add_argument("--stability", type=float, default=SETTINGS.stability_percent,
                        help="perf_analyzer's -s: on a busy machine a wider bound saves retries; the "
                             "ratio is taken per repeat from back-to-back points either way")
    parser.add_argument("--models", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--runner", type=Path, help="another runner model.py, measured as MODEL__alt too")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    protocols = args.protocols.split(",")
    terminal = Terminal()
    from tritonize.pipeline import build

    work = REPORTS_DIR / "serving_ceiling"
    repository = build(bench_spec(work / "spec"), work / "model_repo", terminal=terminal).repository
    built = load_repository(repository)
    names = [n for n in built if not args.models or n in args.models.split(",")]
    settings = replace(SETTINGS, window_requests=args.window_requests, stability_percent=args.stability)
    analyzer = find_perf_analyzer()
    variants = ["runner", "ceiling"] + (["alt"] if args.runner else [])
    suffix = {"runner": "", "ceiling": CEILING_SUFFIX, "alt": ALTERNATIVE_SUFFIX}
    # ratios[(model, protocol, c)][variant] -> per-repeat throughputs
    throughput: dict[tuple[str, str, int], dict[str, list[float]]] = {}
    p50: dict[tuple[str, str, int], dict[str, list[float]]] = {}
    cpu: dict[tuple[str, str, int], dict[str, list[float]]] = {}  # CPU microseconds per inference
    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as scratch:
        bench_repo = Path(scratch) / "repository"
        inputs = {}
        for name in names:
            shutil.copytree(repository / name, bench_repo / name, ignore=shutil.ignore_patterns("__pycache__"))
            ceiling_like(repository / name, bench_repo, name + CEILING_SUFFIX, CEILING_SOURCE)
            if args.runner:
                ceiling_like(repository / name, bench_repo, name + ALTERNATIVE_SUFFIX, args.runner.read_text())
            inputs[name] = write_input_data(built[name], Path(scratch) / f"{name}.input.json")
        loads = [machine_info()["load_average_1m"]]
        with TritonServer(bench_repo, log_path=work / "tritonserver.log") as server:
            import tritonclient.http as httpclient

            urls = {"http": server.http_url, "grpc": server.grpc_url}
            statistics_client = httpclient.InferenceServerClient(server.http_url)
            assert server.pid is not None

            def inference_count(model: str) -> int:
                stats = statistics_client.get_inference_statistics(model)["model_stats"]
                return sum(int(entry.get("inference_count", 0)) for entry in stats)

            stubs = {name + suffix[variant]: stub_pids(bench_repo, name + suffix[variant])
                     for name in names for variant in variants}
            total = args.repeats * len(protocols) * len(levels) * len(names) * len(variants)
            with terminal.progress(f"measuring {total} points", total=total) as advance:
                for repeat in range(args.repeats):
                    order = variants if repeat % 2 == 0 else variants[::-1]
                    for protocol in protocols:
                        for level in levels:
                            for name in names:
                                key = (name, protocol, level)
                                for variant in order:
                                    input_data, shapes = inputs[name]
                                    point = PointRequest(name + suffix[variant], level, urls[protocol], protocol,
                                                         input_data, shapes)
                                    meter = CpuMeter(server.pid, stubs[point.model],
                                                     lambda model=point.model: inference_count(model))
                                    with meter:
                                        measured = analyzer.measure(point, settings, work / "raw" / point.model,
                                                                    f"{protocol}.c{level}.r{repeat}")
                                    throughput.setdefault(key, {}).setdefault(variant, []).append(measured.throughput)
                                    cpu.setdefault(key, {}).setdefault(variant, []).append(meter.us_per_inference)
                                    p50.setdefault(key, {}).setdefault(variant, []).append(measured.p50_us / 1000)
                                    advance(f"{point.model} {protocol} c={level}: {measured.throughput:.0f} infer/s")
                    loads.append(machine_info()["load_average_1m"])
    rows = []
    for (name, protocol, level), by_variant in throughput.items():
        ratios = [r / c for r, c in zip(by_variant["runner"], by_variant["ceiling"])]
        row = {"model": name, "protocol": protocol, "concurrency": level,
               "runner_throughput": statistics.median(by_variant["runner"]),
               "ceiling_throughput": statistics.median(by_variant["ceiling"]),
               "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
               "ratios": ratios,
               "runner_cpu_us": statistics.median(cpu[(name, protocol, level)]["runner"]),
               "ceiling_cpu_us": statistics.median(cpu[(name, protocol, level)]["ceiling"]),
               "cpu_ratios": [c / r for r, c in zip(cpu[(name, protocol, level)]["runner"],
                                                    cpu[(name, protocol, level)]["ceiling"])],
               "runner_p50_ms": statistics.median(p50[(name, protocol, level)]["runner"]),
               "ceiling_p50_ms": statistics.median(p50[(name, protocol, level)]["ceiling"])}
        row["cpu_ratio"] = statistics.median(row["cpu_ratios"])
        if "alt" in by_variant:
            alt = [a / c for a, c in zip(by_variant["alt"], by_variant["ceiling"])]
            alt_cpu = [c / a for a, c in zip(cpu[(name, protocol, level)]["alt"], cpu[(name, protocol, level)]["ceiling"])]
            row.update(alt_throughput=statistics.median(by_variant["alt"]), alt_ratio=statistics.median(alt),
                       alt_ratios=alt, alt_cpu_us=statistics.median(cpu[(name, protocol, level)]["alt"]),
                       alt_cpu_ratio=statistics.median(alt_cpu))
        rows.append(row)
    path = save("serving_ceiling", {"repeats": args.repeats, "window_requests": args.window_requests,
                                    "stability_percent": args.stability,
                                    "load_average_1m": loads, "alternative_runner": str(args.runner or ""),
                                    "points": rows})
    headers = ["model", "protocol", "c", "runner infer/s", "ceiling infer/s", "ratio (median)", "ratio min-max",
               "CPU µs/inf runner", "ceiling", "CPU ratio (min-max)"]
    if args.runner:
        headers += ["alt ratio", "alt CPU µs/inf", "alt CPU ratio"]
    terminal.table("ONNX runner against the ceiling (same signature, batching and instances)", headers,
                   [[r["model"], r["protocol"], r["concurrency"], f"{r['runner_throughput']:.0f}",
                     f"{r['ceiling_throughput']:.0f}", f"{r['ratio']:.3f}", f"{r['ratio_min']:.3f}-{r['ratio_max']:.3f}",
                     f"{r['runner_cpu_us']:.0f}", f"{r['ceiling_cpu_us']:.0f}",
                     f"{r['cpu_ratio']:.3f} ({min(r['cpu_ratios']):.3f}-{max(r['cpu_ratios']):.3f})"]
                    + ([f"{r['alt_ratio']:.3f}", f"{r['alt_cpu_us']:.0f}", f"{r['alt_cpu_ratio']:.3f}"] if args.runner else [])
                    for r in rows])
    terminal.info(f"load average (1 min) before and after each repeat: {', '.join(f'{x:.2f}' for x in loads)}")
    terminal.success(f"summary: {path}")


if __name__ == "__main__":
    main()
