"""The serving ceiling on this machine: served iris_classifier against a python model that returns
its input, same input signature, batching and instance settings, same run.

The identity model does no work, so its throughput and latency are what the server, the python
backend and perf_analyzer cost by themselves; iris_classifier's distance to it is the model's
own cost (ONNX Runtime inside the python backend).

    .venv/bin/python perf/bench_serving_ceiling.py [--concurrency 1:8] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from _bench import REPORTS_DIR, SETTINGS, built_repository, save
from google.protobuf import text_format
from tritonize.perf import run_perf
from tritonize.perf.repository import read_config
from tritonize.terminal import Terminal

MODEL = "iris_classifier"
IDENTITY = "identity"
IDENTITY_SOURCE = '''import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Returns its input: the cheapest model the python backend can serve."""

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
                    "output", pb_utils.get_input_tensor_by_name(request, "input").as_numpy())])
                for request in requests]
'''


def identity_like(repository: Path, target: Path) -> None:
    """A model directory `identity` with iris_classifier's input, batching and instances."""
    config = read_config(repository / MODEL / "config.pbtxt")
    config.name = IDENTITY
    config.backend = "python"
    del config.output[:]
    source = config.input[0]
    config.output.add(name="output", data_type=source.data_type, dims=source.dims)
    config.ClearField("parameters")
    config.ClearField("model_warmup")
    (target / IDENTITY / "1").mkdir(parents=True)
    (target / IDENTITY / "config.pbtxt").write_text(text_format.MessageToString(config))
    (target / IDENTITY / "1" / "model.py").write_text(IDENTITY_SOURCE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1:8")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    terminal = Terminal()
    repository = built_repository(terminal)
    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as work:
        bench_repo = Path(work) / "repository"
        shutil.copytree(repository / MODEL, bench_repo / MODEL, ignore=shutil.ignore_patterns("__pycache__"))
        identity_like(repository, bench_repo)
        manifest = json.loads((repository / "tritonize.manifest.json").read_text())
        samples = manifest["models"][MODEL]["samples"]
        (bench_repo / "tritonize.manifest.json").write_text(json.dumps({"models": {
            MODEL: {"samples": samples}, IDENTITY: {"samples": {"inputs": samples["inputs"]}}}}))
        result = run_perf(bench_repo, models=[MODEL, IDENTITY], concurrency=args.concurrency,
                          repeats=args.repeats, report_dir=REPORTS_DIR / "serving_ceiling", settings=SETTINGS,
                          terminal=terminal)
    rows = []
    for served, ceiling in zip(result.model(MODEL).points, result.model(IDENTITY).points):
        rows.append({"concurrency": served.concurrency,
                     "iris_throughput": served.throughput, "identity_throughput": ceiling.throughput,
                     "fraction_of_ceiling": served.throughput / ceiling.throughput,
                     "iris_p50_ms": served.p50_ms, "identity_p50_ms": ceiling.p50_ms,
                     "iris_p99_ms": served.p99_ms, "identity_p99_ms": ceiling.p99_ms,
                     "iris_compute_infer_us": served.breakdown_us["compute_infer"],
                     "identity_compute_infer_us": ceiling.breakdown_us["compute_infer"]})
    path = save("serving_ceiling", {"model": MODEL, "repeats": args.repeats, "points": rows,
                                    "tools": result.tools})
    terminal.table("iris_classifier against the identity ceiling",
                   ["c", "iris infer/s", "identity infer/s", "fraction", "iris p50 ms", "identity p50 ms"],
                   [[r["concurrency"], f"{r['iris_throughput']:.0f}", f"{r['identity_throughput']:.0f}",
                     f"{r['fraction_of_ceiling']:.0%}", f"{r['iris_p50_ms']:.2f}", f"{r['identity_p50_ms']:.2f}"]
                    for r in rows])
    terminal.success(f"summary: {path}")


if __name__ == "__main__":
    main()
