"""perf: the pipeline end to end on a tiny repository (report + verdict), and its parsers and verdict
logic on fixed inputs. No assertion here depends on how fast anything ran."""
from __future__ import annotations

import json
import struct
import textwrap
from pathlib import Path

import pytest

from tritonize import manifest as manifest_file
from tritonize.errors import TritonizeError
from tritonize.manifest import Manifest
from tritonize.perf import parse_concurrency, run_perf
from tritonize.perf.analyzer import MeasurementSettings, find_perf_analyzer, parse_composing, parse_csv
from tritonize.perf.repository import load_repository, write_input_data
from tritonize.perf.results import load_results
from tritonize.perf.streaming import token_metrics
from tritonize.perf.verdict import compare

# Small windows: the test checks the pipeline, not the numbers (CI has 2 shared cores).
QUICK = MeasurementSettings(window_requests=20, stability_percent=50, max_trials=4, retries=1, timeout_s=120)

IDENTITY_MODEL = textwrap.dedent("""
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            return [pb_utils.InferenceResponse([pb_utils.Tensor(
                        "OUTPUT", pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy() * SCALE)])
                    for r in requests]
""")
STREAMING_MODEL = textwrap.dedent("""
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            for request in requests:
                sender = request.get_response_sender()
                count = int(pb_utils.get_input_tensor_by_name(request, "max_tokens").as_numpy().reshape(-1)[0])
                for i in range(count):
                    token = np.array([f"t{i}".encode()], dtype=np.object_)
                    sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("text_output", token)]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return None
""")
BATCHED_CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 8
input {{ name: "INPUT" data_type: TYPE_FP32 dims: [ 4 ] }}
output {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ 4 ] }}
dynamic_batching {{ max_queue_delay_microseconds: 100 }}
instance_group {{ count: 1 kind: KIND_CPU }}
"""
ENSEMBLE_CONFIG = """name: "pipe"
platform: "ensemble"
max_batch_size: 8
input { name: "X" data_type: TYPE_FP32 dims: [ 4 ] }
output { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] }
ensemble_scheduling {
  step { model_name: "identity" model_version: -1
         input_map { key: "INPUT" value: "X" } output_map { key: "OUTPUT" value: "middle" } }
  step { model_name: "double" model_version: -1
         input_map { key: "INPUT" value: "middle" } output_map { key: "OUTPUT" value: "Y" } }
}
"""
STREAMING_CONFIG = """name: "streamer"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] }
input { name: "max_tokens" data_type: TYPE_INT32 dims: [ 1 ] }
input { name: "stream" data_type: TYPE_BOOL dims: [ 1 ] optional: true }
output { name: "text_output" data_type: TYPE_STRING dims: [ -1 ] }
"""


@pytest.fixture(scope="module")
def tiny_repository(tmp_path_factory) -> Path:
    """identity and double (python, batched), their ensemble, a decoupled streamer, and a manifest
    with sample inputs as `tritonize build` writes it."""
    root = tmp_path_factory.mktemp("perf_repo")
    models = {"identity": (BATCHED_CONFIG.format(name="identity"), IDENTITY_MODEL.replace("SCALE", "1")),
              "double": (BATCHED_CONFIG.format(name="double"), IDENTITY_MODEL.replace("SCALE", "2")),
              "pipe": (ENSEMBLE_CONFIG, None),
              "streamer": (STREAMING_CONFIG, STREAMING_MODEL)}
    for name, (config, source) in models.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(config)
        if source:
            (root / name / "1" / "model.py").write_text(source)
    rows = {"datatype": "FP32", "shape": [2, 4], "data": [[1.0, 2.0, 3.0, 4.0], [0.5, 0.25, 0.0, -1.0]]}
    manifest = Manifest.model_validate({
        "tritonize": "0.1.0", "spec": "model.yaml", "input_hash": "sha256:0", "runtime": "embedded", "tools": {},
        "perf": {"tolerance": 0.1, "latency_tolerance": 0.25}, "models": {
            "identity": {"kind": "python", "samples": {"inputs": {"INPUT": rows}}},
            "pipe": {"kind": "ensemble", "samples": {"inputs": {"X": rows}}},
            "streamer": {"kind": "python", "samples": {"inputs": {
                "text_input": {"datatype": "STRING", "shape": [1], "data": ["hello"]},
                "max_tokens": {"datatype": "INT32", "shape": [1], "data": [4]}}}}}})
    manifest_file.write(manifest, root)
    return root


def _is_png(path: Path) -> bool:
    """PNG signature plus a non-empty IHDR (width, height > 0)."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return False
    width, height = struct.unpack(">II", data[16:24])
    return width > 0 and height > 0


@pytest.mark.server
def test_perf_end_to_end_writes_report_plots_and_baseline(tiny_repository, tmp_path):
    report = tmp_path / "report"
    baseline = tmp_path / "baseline.json"
    result = run_perf(tiny_repository, models=["pipe", "streamer"], concurrency="1:2", repeats=2,
                      report_dir=report, save_baseline=baseline, settings=QUICK)

    assert result.exit_code == 0 and result.verdict is None
    for name in ("report.md", "report.html", "results.json", "tritonserver.log"):
        assert (report / name).is_file(), name
    plots = sorted(p.name for p in (report / "plots").glob("*.png"))
    assert plots == ["all.throughput_p99.png", "pipe.breakdown.png", "pipe.composing.png",
                     "pipe.throughput_p99.png", "streamer.breakdown.png", "streamer.throughput_p99.png",
                     "streamer.tokens.png"]
    assert all(_is_png(report / "plots" / name) for name in plots)

    pipe, streamer = result.model("pipe"), result.model("streamer")
    assert pipe.kind == "ensemble" and streamer.kind == "streaming"
    assert [p.concurrency for p in pipe.points] == [1, 2]
    assert all(len(p.repeats) == 2 and p.throughput > 0 and p.p99_ms > 0 for p in pipe.points)
    # Composing-model statistics come from perf_analyzer's stdout, one entry per ensemble step.
    assert {c["model"] for c in pipe.points[0].composing} == {"identity", "double"}
    # The streamer sends 4 token responses then a final empty one: 4 tokens per request, exactly.
    assert all(p.tokens["tokens_per_request"] == 4 for p in streamer.points)
    assert all(p.tokens["ttft_p50_ms"] > 0 and p.tokens["output_tokens_per_s"] > 0 for p in streamer.points)

    saved = load_results(baseline)
    assert [m.name for m in saved.models] == ["pipe", "streamer"]
    assert json.loads((report / "results.json").read_text())["models"][0]["settings"]["steps"] == ["identity", "double"]
    markdown = (report / "report.md").read_text()
    assert "## pipe (ensemble)" in markdown and "TTFT p50 ms" in markdown and "tritonserver | 2.51.0" in markdown


@pytest.fixture(scope="module")
def running_server(tiny_repository, triton_server):
    return triton_server(tiny_repository)


def _scaled_baseline(result, path: Path, factor: float) -> Path:
    """A baseline whose throughputs are `factor` times the measured ones and p99s 1/factor."""
    document = result.to_json()
    for model in document["models"]:
        for point in model["points"]:
            point["throughput"] *= factor
            point["p99_ms"] /= factor
            for repeat in point["repeats"]:
                repeat["throughput"] *= factor
                repeat["p99_ms"] /= factor
                for window in repeat["windows"]:
                    window["throughput"] *= factor
                    window["p99_ms"] /= factor
    path.write_text(json.dumps(document))
    return path


@pytest.mark.server
def test_forced_regression_exits_3_and_improvement_exits_0(running_server, tmp_path):
    from tritonize.cli import main

    # 2 repeats x 3 stable windows: 6 samples a side, enough for p < 0.01 (3 a side never is).
    measured = run_perf(Path(running_server.repository), models=["identity"], url=running_server.grpc_url,
                        concurrency="1", repeats=2, report_dir=tmp_path / "first", settings=QUICK)
    assert all(len(r.windows) == 3 for r in measured.model("identity").points[0].repeats)
    # Ten times the throughput at a tenth of the latency is far outside any noise: a recorded
    # "faster config" the current one must lose against; the inverse must win.
    faster = _scaled_baseline(measured, tmp_path / "faster.json", 10.0)
    slower = _scaled_baseline(measured, tmp_path / "slower.json", 0.1)
    common = ["perf", str(running_server.repository), "--model", "identity", "--url", running_server.grpc_url,
              "--concurrency", "1", "--repeats", "2"]

    junit, summary = tmp_path / "junit.xml", tmp_path / "summary.md"
    assert main([*common, "--baseline", str(faster), "--report", str(tmp_path / "regressed"),
                 "--junit", str(junit), "--summary-md", str(summary)]) == 3
    verdict = json.loads((tmp_path / "regressed" / "results.json").read_text())["verdict"]
    assert verdict["regressed"] and [p["status"] for p in verdict["points"]] == ["slower"]
    assert "REGRESSION" in (tmp_path / "regressed" / "report.md").read_text()
    assert '<failure type="slower"' in junit.read_text() and "REGRESSION" in summary.read_text()

    assert main([*common, "--baseline", str(slower), "--report", str(tmp_path / "improved")]) == 0
    verdict = json.loads((tmp_path / "improved" / "results.json").read_text())["verdict"]
    assert not verdict["regressed"] and [p["status"] for p in verdict["points"]] == ["faster"]

    # A 2x faster baseline passes when the tolerances allow any throughput drop (1.0) and a p99 up
    # to 11x (10.0): --tolerance reaches the verdict. (Tighter numbers would flake: a window's p99
    # on a shared 2-core machine moves by 2x between runs.)
    twice = _scaled_baseline(measured, tmp_path / "twice.json", 2.0)
    assert main([*common, "--baseline", str(twice), "--report", str(tmp_path / "lenient"),
                 "--tolerance", "1", "--latency-tolerance", "10"]) == 0


# --- no server ---------------------------------------------------------------------------------

def test_concurrency_ranges():
    assert parse_concurrency("4") == [4]
    assert parse_concurrency("1:32") == [1, 2, 4, 8, 16, 32]
    assert parse_concurrency("1:12") == [1, 2, 4, 8, 12]
    assert parse_concurrency("2:10:4") == [2, 6, 10]
    for bad in ("0:4", "8:2", "a:b", "1:2:3:4", ""):
        with pytest.raises(TritonizeError, match="--concurrency"):
            parse_concurrency(bad)


# A CSV and stdout excerpt as perf_analyzer 2.51.0 wrote them for an ensemble on this machine.
ENSEMBLE_CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
    "2,2356.73,2,456,0,30,199,153,1,829,960,1008,1316\n")
ENSEMBLE_STDOUT = """
  Composing models: 
  double, version: 1
      Inference count: 7093
      Execution count: 3834
      Successful request count: 7093
      Avg request latency: 403 usec (overhead 2 usec + queue 158 usec + compute input 14 usec + compute infer 101 usec + compute output 126 usec)

  identity, version: 1
      Inference count: 7095
      Execution count: 4140
      Successful request count: 7095
      Avg request latency: 292 usec (overhead 2 usec + queue 150 usec + compute input 16 usec + compute infer 97 usec + compute output 26 usec)

Inferences/Second vs. Client Average Batch Latency
"""


def test_parse_csv_and_composing_stats(tmp_path):
    (tmp_path / "out.csv").write_text(ENSEMBLE_CSV)
    measurement = parse_csv(tmp_path / "out.csv")
    assert (measurement.concurrency, measurement.throughput, measurement.p99_us) == (2, 2356.73, 1316)
    assert measurement.breakdown.compute_infer == 199 and measurement.response_throughput is None
    double, identity = parse_composing(ENSEMBLE_STDOUT)
    assert (double.model, double.inference_count, double.execution_count) == ("double", 7093, 3834)
    assert (identity.queue_us, identity.compute_infer_us, identity.compute_output_us) == (150, 97, 26)
    assert parse_composing("Request concurrency: 1\n") == []


def test_token_metrics_from_profile_export(tmp_path):
    ms = 1_000_000  # profile export timestamps are nanoseconds
    export = {"experiments": [{"experiment": {"mode": "concurrency", "value": 1}, "requests": [
        {"timestamp": 0, "response_timestamps": [10 * ms, 12 * ms, 14 * ms, 15 * ms],
         "response_outputs": [{"text_output": "a"}, {"text_output": "b"}, {"text_output": "c"}, {"text_output": ""}]},
        {"timestamp": 20 * ms, "response_timestamps": [40 * ms, 44 * ms, 45 * ms],
         "response_outputs": [{"text_output": "a"}, {"text_output": "b"}, {}]},
    ]}]}
    (tmp_path / "export.json").write_text(json.dumps(export))
    metrics = token_metrics(tmp_path / "export.json")
    assert metrics.output_tokens == 5 and metrics.requests == 2
    assert metrics.ttft_p50_ms == pytest.approx(15.0)       # median of 10 and 20 ms
    assert metrics.itl_mean_ms == pytest.approx(3.0)        # (2 ms + 4 ms) / 2
    assert metrics.output_tokens_per_s == pytest.approx(5 / 0.045)  # 5 tokens from t=0 to the last response at 45 ms


def test_token_metrics_count_the_tokens_of_the_text_when_responses_carry_several(tmp_path):
    """A paced stream: 2 responses carrying 5 tokens (words here) count 5, and ITL spreads over them."""
    ms = 1_000_000
    export = {"experiments": [{"experiment": {"mode": "concurrency", "value": 1}, "requests": [
        {"timestamp": 0, "response_timestamps": [10 * ms, 18 * ms, 19 * ms],
         "response_outputs": [{"text_output": "one two "}, {"text_output": "three four five"}, {}]}]}]}
    (tmp_path / "export.json").write_text(json.dumps(export))
    metrics = token_metrics(tmp_path / "export.json", count_tokens=lambda text: len(text.split()))
    assert metrics.output_tokens == 5 and metrics.tokens_per_request == 5
    assert metrics.itl_mean_ms == pytest.approx(2.0)  # 8 ms over 4 gaps
    assert token_metrics(tmp_path / "export.json").output_tokens == 2  # one a response without a tokenizer


def test_a_model_that_fails_to_measure_is_a_regression():
    from tritonize.perf.results import ModelResult, PerfResult, PointResult, RepeatResult

    point = PointResult(1, 100.0, 1, 1, 1, 1.0, {}, [RepeatResult(100.0, 1.0, True, 1, 20, [])])
    baseline = PerfResult([ModelResult("m", "model", {}, "random", [point])], "repo", "url", "grpc", 1, {}, {}, {}, "t")
    broken = PerfResult([ModelResult("m", "model", {}, "random", [], error="perf_analyzer failed")],
                        "repo", "url", "grpc", 1, {}, {}, {}, "t")
    verdict = compare(broken, baseline)
    assert verdict.regressed and verdict.points[0].status == "failed"


def test_default_selection_measures_steps_only_with_their_own_samples(tiny_repository):
    from tritonize.perf.repository import select_models

    # `double` is an ensemble step without samples: measured through `pipe`, not on its own.
    assert [m.name for m in select_models(load_repository(tiny_repository), None)] == ["identity", "pipe", "streamer"]


def test_input_data_from_manifest_samples(tiny_repository, tmp_path):
    models = load_repository(tiny_repository)
    path, shapes = write_input_data(models["identity"], tmp_path / "identity.json")
    data = json.loads(path.read_text())["data"]
    # One entry per sample row, batch dim dropped; floats stay floats for perf_analyzer's reader.
    assert data == [{"INPUT": {"content": [1.0, 2.0, 3.0, 4.0], "shape": [4]}},
                    {"INPUT": {"content": [0.5, 0.25, 0.0, -1.0], "shape": [4]}}] and shapes == ()
    path, _ = write_input_data(models["streamer"], tmp_path / "streamer.json")
    assert json.loads(path.read_text())["data"] == [{"text_input": {"content": ["hello"], "shape": [1]},
                                                     "max_tokens": {"content": [4], "shape": [1]}}]
    # Measured as streaming, its optional `stream` input is set: an LLM ensemble would otherwise
    # answer in one response.
    path, _ = write_input_data(models["streamer"], tmp_path / "streamer_stream.json", streaming=True)
    assert json.loads(path.read_text())["data"][0]["stream"] == {"content": [True], "shape": [1]}
    # No samples in the manifest: perf_analyzer's random data.
    assert write_input_data(models["double"], tmp_path / "double.json") == (None, ())


def test_missing_perf_analyzer_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TritonizeError, match="perf_analyzer is not installed.*tritonclient"):
        find_perf_analyzer()


def test_unknown_model_and_bad_baseline_are_user_errors(tiny_repository, tmp_path):
    with pytest.raises(TritonizeError, match="unknown model.*nope"):
        run_perf(tiny_repository, models=["nope"], report_dir=tmp_path / "r")
    (tmp_path / "baseline.json").write_text("{}")
    with pytest.raises(TritonizeError, match="not a tritonize perf results file"):
        run_perf(tiny_repository, baseline=tmp_path / "baseline.json", report_dir=tmp_path / "r")


@pytest.mark.server
def test_against_an_old_build_measures_both_interleaved_and_judges(tiny_repository, tmp_path):
    """The new build sleeps 5 ms per batch (identity answers in well under 1 ms here): a
    regression far beyond any noise, found by measuring both side by side."""
    import shutil

    from tritonize.perf.against import REFERENCE_RESULTS, run_against

    slow = tmp_path / "slow_repo"
    shutil.copytree(tiny_repository, slow)
    model_py = slow / "identity" / "1" / "model.py"
    sleep = "    def execute(self, requests):\n        import time; time.sleep(0.005)\n"
    model_py.write_text(model_py.read_text().replace("    def execute(self, requests):\n", sleep, 1))
    junit = tmp_path / "junit.xml"
    result = run_against(slow, str(tiny_repository), models=["identity"], concurrency="1", rounds=2,
                         report_dir=tmp_path / "report", junit=junit, settings=QUICK)

    assert result.exit_code == 3 and [p.status for p in result.verdict.points] == ["slower"]
    point = result.verdict.points[0]
    assert point.throughput_test.samples == (6, 6)   # 2 rounds x 3 windows a side
    assert point.throughput_delta < -0.5             # 5 ms of sleep at least halves the rate
    reference = load_results(tmp_path / "report" / REFERENCE_RESULTS)
    assert reference.model("identity").point(1).throughput > result.model("identity").point(1).throughput
    # Both servers ran, each logging next to the report.
    assert (tmp_path / "report" / "reference.tritonserver.log").is_file()
    assert '<failure type="slower"' in junit.read_text()


def test_against_a_git_ref_builds_that_refs_spec(tmp_path):
    import subprocess

    from specs import MODEL_PY, VALID
    from tritonize.perf.against import reference_repository
    from tritonize.terminal import Terminal

    project = tmp_path / "project"
    project.mkdir()
    (project / "pre.py").write_text(MODEL_PY)
    (project / "model.yaml").write_text(VALID)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(project)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "old"], check=True)
    (project / "model.yaml").write_text(VALID.replace("max_batch_size: 8", "max_batch_size: 4"))
    current = _build(project / "model.yaml")

    old = reference_repository("HEAD", current, tmp_path / "work", Terminal(quiet=True))
    assert "max_batch_size: 8" in (old / "pre" / "config.pbtxt").read_text()
    assert "max_batch_size: 4" in (current / "pre" / "config.pbtxt").read_text()
    with pytest.raises(TritonizeError, match="neither a repository directory nor a git commit"):
        reference_repository("no-such-ref", current, tmp_path / "work2", Terminal(quiet=True))


def _build(spec: Path) -> Path:
    from tritonize import build
    from tritonize.terminal import Terminal

    return build(spec, terminal=Terminal(quiet=True)).repository


def test_an_llm_ensemble_is_measured_with_its_steps_tokenizer(repo_root):
    models = load_repository(repo_root / "model_repo")
    assert models["tiny_llm"].tokenizer == repo_root / "model_repo" / "tiny_llm_preprocessing" / "1" / "tokenizer" / "tokenizer.json"
    assert models["iris_classifier"].tokenizer is None
