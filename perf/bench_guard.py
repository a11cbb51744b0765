"""Added latency of `tritonize serve`'s fronts: the HTTP guard (compiler/triton/server/guard.py)
and the gRPC relay (grpc_relay.py). The same sequential inference on a tiny python-backend model
(`double` of tests/test_server.py), direct to tritonserver's private port and through the front on
the public one (HTTP: keep-alive requests; gRPC: tritonclient unary calls on one channel).
Requests alternate (direct, fronted, fronted, direct, ...) so drift on the shared machine hits
both alike; the summary is the median of the paired differences and each side's p50 / p99.

    .venv/bin/python perf/bench_guard.py [--requests 3000] [--rounds 2]
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_serve_supervisor import Serve  # noqa: E402
from test_server import DOUBLE_CONFIG, DOUBLE_MODEL, _write_model  # noqa: E402

BODY = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def paired(direct: Callable[[], None], fronted: Callable[[], None], count: int) -> dict[str, float]:
    for _ in range(100):  # warm up both connections and the model
        direct()
        fronted()
    times: dict[str, list[float]] = {"direct": [], "fronted": []}
    for i in range(count):
        order = [("direct", direct), ("fronted", fronted)]
        for name, call in (order if i % 2 else order[::-1]):
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    added = sorted(g - d for g, d in zip(times["fronted"], times["direct"]))
    summary = {"added_p50_ms": statistics.median(added) * 1e3}
    for name, values in times.items():
        values.sort()
        summary[f"{name}_p50_ms"] = statistics.median(values) * 1e3
        summary[f"{name}_p99_ms"] = values[int(len(values) * 0.99)] * 1e3
    return summary


def http_call(session: requests.Session, url: str) -> Callable[[], None]:
    def call() -> None:
        assert session.post(url, json=BODY).status_code == 200
    return call


def grpc_call(client) -> Callable[[], None]:
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.array([[1, 2, 3, 4]], dtype=np.float32))

    def call() -> None:
        assert client.infer("double", [tensor]).as_numpy("OUTPUT0") is not None
    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-guard-"))
    _write_model(work / "repo", "double", DOUBLE_CONFIG, DOUBLE_MODEL)
    serving = Serve(work / "repo", work / "serve.out")
    try:
        serving.wait_ready()
        log = re.search(r"log\s+(\S+)", serving.out.read_text()).group(1)
        import tritonclient.grpc as grpcclient

        server_log = Path(log).read_text()
        private_http = int(re.search(r"--http-port=(\d+)", server_log).group(1))
        private_grpc = int(re.search(r"--grpc-port=(\d+)", server_log).group(1))
        with requests.Session() as direct, requests.Session() as guarded, \
                grpcclient.InferenceServerClient(f"127.0.0.1:{private_grpc}") as grpc_direct, \
                grpcclient.InferenceServerClient(f"127.0.0.1:{serving.grpc_port}") as grpc_relayed:
            for round_ in range(args.rounds):
                for front, calls in (
                        ("HTTP guard", (http_call(direct, f"http://127.0.0.1:{private_http}/v2/models/double/infer"),
                                        http_call(guarded, f"{serving.url}/v2/models/double/infer"))),
                        ("gRPC relay", (grpc_call(grpc_direct), grpc_call(grpc_relayed)))):
                    result = paired(*calls, args.requests)
                    print(f"round {round_} {front}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()))
    finally:
        serving.stop()


if __name__ == "__main__":
    main()
