"""`make demo`: build the root model.yaml, serve it with the real tritonserver, query every model
over HTTP and gRPC and print the answers, stream a generation from the LLM, and profile it.

Everything goes through tritonize's Python API, the same code the CLI runs.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import tritonize
from tritonize import manifest as manifest_file
from tritonize.check import check_deployment
from tritonize.errors import TritonizeError
from tritonize.manifest import Manifest
from tritonize.terminal import Terminal
from tritonize.triton.rules import check_repository
from tritonize.triton.server import TritonServer

ROOT = Path(__file__).resolve().parents[1]
terminal = Terminal()


def main() -> int:
    result = tritonize.build(ROOT / "model.yaml", terminal=terminal)
    repository = result.repository
    violations = check_repository(repository)
    if violations:
        for violation in violations:
            terminal.error(violation.one_line())
        return 1
    terminal.success(f"{repository.name}: every config passes Triton's schema and load rules")

    manifest = manifest_file.load(repository)
    with TritonServer(repository) as server:
        with terminal.status("starting tritonserver"):
            server.wait_ready()
        terminal.success(f"tritonserver ready: HTTP {server.http_url}, gRPC {server.grpc_url}")
        check = check_deployment(repository, server.http_url, protocol="both", grpc_url=server.grpc_url,
                                 terminal=terminal)
        show_answers(manifest, check)
        if not check.passed:
            return 1
        stream_llm(manifest, server)
        profile(repository, server)
    return 0


def show_answers(manifest: Manifest, check) -> None:
    """What the server answered to the first recorded sample of every model, per protocol."""
    rows = []
    for model_check in check.checks:
        samples = manifest.models[model_check.model].samples
        inputs = samples.inputs if samples is not None else {}
        question = ", ".join(f"{name}={_first(tensor.data)}" for name, tensor in inputs.items())
        answer = ", ".join(f"{t.name}={_first(t.served)}" for t in model_check.tensors if t.served is not None)
        rows.append([model_check.model, model_check.protocol, question, answer, model_check.status])
    terminal.table("served answers (first recorded sample)", ["model", "protocol", "input", "output", "check"], rows)


def stream_llm(manifest: Manifest, server: TritonServer) -> None:
    """Stream a generation from every LLM ensemble over gRPC, printing tokens as they arrive."""
    from tritonize.triton.client import stream

    for name, entry in manifest.models.items():
        if entry.kind != "llm-ensemble" or entry.samples is None:
            continue
        prompt = entry.samples.inputs["text_input"].data[0][0]
        terminal.step(f"{name}: streaming a generation over gRPC")
        terminal.out.print(prompt, end="", markup=False)
        request = {"text_input": np.array([[prompt]], dtype=object), "max_tokens": np.array([[24]], dtype=np.int32),
                   "stream": np.array([[True]])}
        pieces = 0
        for response in stream(server.grpc_url, name, request, outputs=["text_output"]):
            terminal.out.print(response.as_numpy("text_output").reshape(-1)[0].decode(), end="", markup=False)
            pieces += 1
        terminal.out.print()
        terminal.success(f"{name}: {pieces} streamed responses")


def profile(repository: Path, server: TritonServer) -> None:
    from tritonize.perf import run_perf

    run_perf(repository, models=None, url=server.grpc_url, protocol="grpc", concurrency="1:2",
             baseline=None, save_baseline=None, report_dir=ROOT / "perf" / "reports" / "demo", repeats=1,
             terminal=terminal)


def _first(values) -> str:
    """The first row of a batch, shortened for a table cell."""
    row = np.asarray(values, dtype=object)[0] if len(values) else values
    flat = np.asarray(row, dtype=object).ravel()
    cells = [f"{v:.4g}" if isinstance(v, (float, np.floating)) else (v.decode() if isinstance(v, bytes) else str(v)) for v in flat[:4]]
    return "[" + " ".join(cells) + (" ...]" if flat.size > 4 else "]")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TritonizeError as error:
        terminal.error(error.one_line())
        sys.exit(2)
