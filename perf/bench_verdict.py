"""Can the perf verdict be trusted as a CI gate? Same-build and slower-build comparisons under load.

Three repositories of one python model (FP32[4] in, out, one instance, no dynamic batching) whose
execute() sleeps: `base`, `same` (a byte-identical copy, served by its own server) and `slower`
(sleeps 25 % longer: at concurrency 2 the single instance is the bottleneck, so about 20 % less
throughput). Each comparison is `tritonize perf NEW --against OLD` through the Python API
(run_against: both servers at once, interleaved ABBA rounds, the rank-test verdict), with a
background process that burns one CPU in random bursts (0.2-2 s on, 0.2-2 s off) the whole time.

Counts: a `slower` verdict on `same` is a false regression; on `slower` a true one found.

    .venv/bin/python perf/bench_verdict.py [--comparisons 10] [--rounds 5] [--concurrency 2]
"""
from __future__ import annotations

import argparse
import multiprocessing
import random
import shutil
import tempfile
import textwrap
import time
from pathlib import Path

from _bench import REPORTS_DIR, save
from tritonize import manifest as manifest_file
from tritonize.manifest import Manifest
from tritonize.perf.against import run_against
from tritonize.perf.analyzer import MeasurementSettings
from tritonize.terminal import Terminal

CONFIG = """name: "sleeper"
backend: "python"
max_batch_size: 8
input { name: "INPUT" data_type: TYPE_FP32 dims: [ 4 ] }
output { name: "OUTPUT" data_type: TYPE_FP32 dims: [ 4 ] }
instance_group [ { count: 1, kind: KIND_CPU } ]
"""
MODEL = textwrap.dedent('''
    import time

    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                time.sleep({sleep_s})
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(
                    "OUTPUT", pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy())]))
            return responses
''')
SAMPLES = {"inputs": {"INPUT": {"datatype": "FP32", "shape": [2, 4],
                                "data": [[1.0, 2.0, 3.0, 4.0], [0.5, 0.25, 0.0, -1.0]]}}}


def write_repository(root: Path, sleep_ms: float) -> Path:
    (root / "sleeper" / "1").mkdir(parents=True)
    (root / "sleeper" / "config.pbtxt").write_text(CONFIG)
    (root / "sleeper" / "1" / "model.py").write_text(MODEL.format(sleep_s=sleep_ms / 1000))
    manifest_file.write(Manifest.model_validate({
        "tritonize": "0.1.0", "spec": "model.yaml", "input_hash": "sha256:0", "runtime": "embedded", "tools": {},
        "perf": {"tolerance": 0.1, "latency_tolerance": 0.25},
        "models": {"sleeper": {"kind": "python", "samples": SAMPLES}}}), root)
    return root


def background_load(seed: int) -> None:
    """One CPU busy in random bursts: the neighbour a shared CI runner has."""
    rng = random.Random(seed)
    while True:
        end = time.monotonic() + rng.uniform(0.2, 2.0)
        while time.monotonic() < end:
            pass
        time.sleep(rng.uniform(0.2, 2.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comparisons", type=int, default=10, help="of each kind (same build, slower build)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", default="2")
    parser.add_argument("--sleep-ms", type=float, default=4.0)
    parser.add_argument("--slowdown", type=float, default=0.25, help="extra sleep of the slower build (fraction)")
    parser.add_argument("--window-requests", type=int, default=60)
    parser.add_argument("--no-load", action="store_true")
    args = parser.parse_args()

    terminal = Terminal(quiet=True)
    settings = MeasurementSettings(window_requests=args.window_requests, stability_percent=25, max_trials=6,
                                   retries=1, timeout_s=120)
    load = None
    if not args.no_load:
        load = multiprocessing.Process(target=background_load, args=(1,), daemon=True)
        load.start()
    runs = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-verdict-") as work:
            work_dir = Path(work)
            base = write_repository(work_dir / "base", args.sleep_ms)
            same = work_dir / "same"
            shutil.copytree(base, same)
            slower = write_repository(work_dir / "slower", args.sleep_ms * (1 + args.slowdown))
            # Alternate the kinds so that a drift in load over the run hits both alike.
            for index in range(args.comparisons * 2):
                kind, new = ("same", same) if index % 2 == 0 else ("slower", slower)
                started = time.perf_counter()
                result = run_against(new, str(base), concurrency=args.concurrency, rounds=args.rounds,
                                     report_dir=REPORTS_DIR / "bench_verdict" / f"{index:02d}-{kind}",
                                     settings=settings, terminal=terminal)
                seconds = time.perf_counter() - started
                for point in result.verdict.points:
                    runs.append({"kind": kind, "concurrency": point.concurrency, "status": point.status,
                                 "throughput_change": round(point.throughput_delta, 4),
                                 "throughput_ci": [round(point.throughput_test.low, 4),
                                                   round(point.throughput_test.high, 4)],
                                 "throughput_p": point.throughput_test.p_value,
                                 "p99_change": round(point.p99_delta, 4), "p99_p": point.p99_test.p_value,
                                 "seconds": round(seconds, 1)})
                    print(f"{index + 1:2d}/{args.comparisons * 2} {kind:6} c={point.concurrency}: {point.status:12} "
                          f"throughput {point.throughput_delta:+.1%} (p={point.throughput_test.p_value:.2g}), "
                          f"p99 {point.p99_delta:+.1%} (p={point.p99_test.p_value:.2g}), {seconds:.0f} s", flush=True)
    finally:
        if load is not None:
            load.terminate()
            load.join()

    def count(kind: str, status: str) -> int:
        return sum(r["kind"] == kind and r["status"] == status for r in runs)

    summary = {
        "settings": {**vars(args), "alpha": 0.01, "tolerance": 0.10, "latency_tolerance": 0.25},
        "same_build": {status: count("same", status) for status in ("slower", "inconclusive", "same", "faster")},
        "slower_build": {status: count("slower", status) for status in ("slower", "inconclusive", "same", "faster")},
        "seconds_per_comparison": round(sum(r["seconds"] for r in runs) / max(len(runs), 1), 1),
        "runs": runs,
    }
    path = save("verdict", summary)
    print(f"same build: {summary['same_build']}; slower build: {summary['slower_build']}; "
          f"{summary['seconds_per_comparison']} s per comparison -> {path}")


if __name__ == "__main__":
    main()
