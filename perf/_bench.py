"""Shared pieces of the perf/ benchmark scripts: the built repository and a config evaluator."""
from __future__ import annotations

import contextlib
import json
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tritonize.perf.analyzer import MeasurementSettings, find_perf_analyzer
from tritonize.perf.machine import machine_info
from tritonize.perf.repository import load_repository, write_input_data
from tritonize.perf.tune.evaluate import ConfigEvaluator
from tritonize.terminal import Terminal
from tritonize.triton.server import free_ports

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "perf" / "results"      # committed summaries the README/note quote
REPORTS_DIR = ROOT / "perf" / "reports"      # full reports (gitignored)
# Benchmarks measure at a wider stability bound than the default: on 2 shared cores a 15 % bound
# makes perf_analyzer retry for minutes; medians over repeats absorb the rest.
SETTINGS = MeasurementSettings(window_requests=300, stability_percent=25, max_trials=6, retries=1)


def built_repository(terminal: Terminal) -> Path:
    """The root model.yaml built into perf/reports/model_repo (skipped when up to date): a private
    copy, so a benchmark never swaps the repository another process is serving."""
    from tritonize.pipeline import build

    return build(ROOT / "model.yaml", REPORTS_DIR / "model_repo", terminal=terminal).repository


@contextlib.contextmanager
def evaluator(repository: Path, model: str, levels: list[int], budget_ms: float | None,
              terminal: Terminal) -> Iterator[ConfigEvaluator]:
    served = load_repository(repository)
    with tempfile.TemporaryDirectory(prefix=f"bench-{model}-") as work:
        work_dir = Path(work)
        input_data, shapes = write_input_data(served[model], work_dir / "input_data.json")
        with ConfigEvaluator(repository / model, find_perf_analyzer(), levels, budget_ms, SETTINGS, work_dir,
                             input_data, shapes, terminal) as running:
            yield running


def save(name: str, summary: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    summary = {"benchmark": name, "machine": machine_info(), "python": platform.python_version(), **summary}
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


@contextlib.contextmanager
def serving(repository: Path, models: list[str], log: Path) -> Iterator[tuple[int, int, int]]:
    """`tritonize serve REPOSITORY --model-control-mode explicit --load-model M...` on free ports
    (http, grpc, metrics), ready to answer the first model; stopped (SIGTERM) on exit."""
    http, grpc, metrics = free_ports(3)
    command = [sys.executable, "-m", "tritonize", "serve", str(repository), "--http-port", str(http),
               "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--model-control-mode", "explicit",
               *(arg for model in models for arg in ("--load-model", model))]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/{models[0]}/ready", timeout=5):
                        break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"tritonize serve did not get ready: see {log}") from None
                    time.sleep(0.5)
            yield http, grpc, metrics
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class GrpcStream:
    """One tritonclient gRPC ModelStreamInfer call that carries one request after another, as
    perf_analyzer's and genai-perf's streaming clients keep a stream per concurrency slot (and the
    OpenAI frontend pools its streams, on the same tritonize.openai.backend.RequestStream): a call's
    set-up (~1-2 ms of Python on 2 cores) is the client's cost, not the server's, and stays out of
    the time to first token.

        stream = GrpcStream(client)              # client: tritonclient.grpc.aio.InferenceServerClient
        async for result in stream.generate(request):   # until the request's final response
    """

    def __init__(self, client):
        from tritonize.openai.backend import RequestStream

        self._stream = RequestStream(client)

    async def generate(self, request: dict):
        """The request's results (it must ask for triton_enable_empty_final_response)."""
        self._stream.send(request)
        while True:
            result, error = await self._stream.receive(request["model_name"])
            if error is not None:
                raise SystemExit(f"{request['model_name']}: {error}")
            yield result
            if result.get_response().parameters["triton_final_response"].bool_param:
                return

    def close(self) -> None:
        self._stream.end()
