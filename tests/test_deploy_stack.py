"""`serve --stack` for real: tritonserver behind the emitted nginx gateway, scraped by Prometheus.

Traffic goes through nginx with tritonclient (HTTP and gRPC). "Never reaches Triton" is read from
Triton's own request counters, which count every request that reaches a model, failed or not.
"""
from __future__ import annotations

import contextlib
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.server, pytest.mark.slow]

FACTORY = '''\
def iris():
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    x, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=500).fit(x, y)
'''

COUNTER = '''\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Decoupled: answers N with the responses 0..N-1, then the final flag."""

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            count = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy().reshape(-1)[0])
            for i in range(count):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("I", np.array([i], dtype=np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''

# iris waits up to 2 ms in the queue for a batch, so any traffic shows queue time; iris_limited
# carries a per-model limit low enough to trip with a few sequential requests.
SPEC = '''\
repository: repo
models:
  - name: iris
    source: {framework: sklearn, factory: "iris_factory:iris"}
    max_batch_size: 64
    dynamic_batching: {max_queue_delay_microseconds: 2000}
    inputs: [{name: input, dtype: FP32, dims: [4], range: [0.1, 7.9]}]
  - name: iris_limited
    source: {framework: sklearn, factory: "iris_factory:iris"}
    max_batch_size: 64
    inputs: [{name: input, dtype: FP32, dims: [4], range: [0.1, 7.9]}]
  - name: counter
    source: {framework: python, path: counter.py}
    max_batch_size: 0
    decoupled: true
    inputs: [{name: N, dtype: INT32, dims: [1]}]
    outputs: [{name: I, dtype: INT32, dims: [1]}]
deploy:
  gateway:
    rate_limits: {per_key_rps: 100, per_key_burst: 20, per_model_rps: {iris_limited: 1}, per_model_burst: 1}
    max_body_size: 64k
'''


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from tritonize import build
    from tritonize.deploy.stack import Stack
    from tritonize.terminal import Terminal

    root = tmp_path_factory.mktemp("stack")
    (root / "iris_factory.py").write_text(FACTORY)
    (root / "counter.py").write_text(COUNTER)
    (root / "model.yaml").write_text(SPEC)
    repository = build(root / "model.yaml", terminal=Terminal(quiet=True, stderr=True)).repository
    with Stack(repository, work_dir=root / "stack") as running:
        yield running


def _http(stack, **kwargs):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(stack.gateway_http_url, **kwargs)


def _inputs(module, rows: int = 2):
    tensor = module.InferInput("input", [rows, 4], "FP32")
    tensor.set_data_from_numpy(np.full((rows, 4), 1.5, dtype=np.float32))
    return [tensor]


def _triton_requests(stack, model: str = "iris") -> float:
    """Successful + failed requests Triton counted for a model (from its metrics endpoint)."""
    text = urllib.request.urlopen(f"http://{stack.server.metrics_url}", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(("nv_inference_request_success{", "nv_inference_request_failure{")) \
                and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.5)


def _hpa_value(stack) -> float | None:
    from tritonize.deploy.observability import hpa_query_for

    result = stack.query(hpa_query_for('job="triton"'))["result"]
    return float(result[0]["value"][1]) if result else None


def test_idle_queue_time_metric_is_zero(stack):
    # First: before any inference. Prometheus needs two scrapes for a rate (1 s apart, after its
    # ~5 s discovery delay). Idle is exactly 0: no request, no queue time (clamp_min avoids 0/0).
    value = _wait_for(lambda: (v := _hpa_value(stack)) is not None and [v], 30, "the HPA query to return data")[0]
    assert value == 0.0


def test_keys_are_checked_before_triton(stack):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    before = _triton_requests(stack)
    client = _http(stack)
    grpc = grpcclient.InferenceServerClient(stack.gateway_grpc_url)
    for headers, status, grpc_status in (({}, "401", "UNAUTHENTICATED"),
                                         ({"Authorization": "Bearer not-a-key"}, "403", "PERMISSION_DENIED")):
        with pytest.raises(InferenceServerException, match=status):
            client.infer("iris", _inputs(httpclient), headers=dict(headers))  # it adds to the dict
        grpc_headers = {k.lower(): v for k, v in headers.items()}
        with pytest.raises(InferenceServerException, match=grpc_status):
            grpc.infer("iris", _inputs(grpcclient), headers=grpc_headers)
    assert _triton_requests(stack) == before  # none of the four reached the model

    result = client.infer("iris", _inputs(httpclient), headers=stack.auth_headers)
    assert result.as_numpy("label").shape == (2, 1)
    result = grpc.infer("iris", _inputs(grpcclient), headers={"authorization": stack.auth_headers["Authorization"]})
    assert result.as_numpy("label").shape == (2, 1)
    assert _triton_requests(stack) == before + 2


def test_model_control_is_refused(stack):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    admin = {"triton-admin-key": stack.admin_key}
    # Through the gateway: refused even with a valid API key and the admin key.
    for path, method in (("/v2/repository/index", "POST"), ("/v2/repository/models/iris/unload", "POST"),
                         ("/v2/models/iris/config", "GET"), ("/v2/logging", "GET")):
        request = urllib.request.Request(f"http://{stack.gateway_http_url}{path}", method=method,
                                         data=b"{}" if method == "POST" else None,
                                         headers={**stack.auth_headers, **admin})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 403, path
    grpc = grpcclient.InferenceServerClient(stack.gateway_grpc_url)
    with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
        grpc.unload_model("iris", headers={"authorization": stack.auth_headers["Authorization"],
                                           "triton-grpc-protocol-triton-admin-key": stack.admin_key})
    # Triton itself (in-cluster traffic that skips the gateway): only with the admin key.
    direct = f"http://{stack.server.http_url}/v2/repository/index"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(direct, data=b"{}", method="POST"), timeout=5)
    assert refused.value.code == 403
    with urllib.request.urlopen(urllib.request.Request(direct, data=b"{}", method="POST", headers=admin),
                                timeout=5) as response:
        assert response.status == 200
    assert grpc.is_model_ready("iris", headers={"authorization": stack.auth_headers["Authorization"]})


def test_unknown_model_and_large_body_stop_at_the_gateway(stack):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="404"):
        _http(stack).infer("no_such_model", _inputs(httpclient), headers=stack.auth_headers)
    before = _triton_requests(stack)
    with pytest.raises(InferenceServerException, match="413"):
        _http(stack).infer("iris", _inputs(httpclient, rows=4096), headers=stack.auth_headers)  # 64 KiB+
    assert _triton_requests(stack) == before


def test_bursts_over_the_limits_get_429(stack):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    def statuses(model: str, count: int, threads: int) -> list[str]:
        results: list[str] = []
        lock = threading.Lock()

        def worker():
            client = _http(stack)
            for _ in range(count // threads):
                try:
                    client.infer(model, _inputs(httpclient), headers=dict(stack.auth_headers))
                    status = "200"
                except InferenceServerException as error:
                    status = str(error.status())
                with lock:
                    results.append(status)
            client.close()  # in its own thread: gevent's pool cannot be closed from another one

        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        return results

    # Per model: 1 request/s with a burst of 1 -> of 6 back-to-back requests at most 2-3 pass.
    limited = statuses("iris_limited", 6, 1)
    assert limited.count("429") >= 3 and set(limited) <= {"200", "429"}, limited
    # Per key: 100 requests/s with a burst of 20; 300 requests from 8 clients arrive far faster.
    time.sleep(1)
    burst = statuses("iris", 300, 8)
    assert burst.count("429") > 0 and burst.count("200") >= 20 and set(burst) <= {"200", "429"}, \
        {s: burst.count(s) for s in set(burst)}
    # gRPC shares the per-key limit; a 429 reaches a gRPC client as UNAVAILABLE (HTTP 429 mapped).
    import tritonclient.grpc as grpcclient

    time.sleep(1)
    codes: list[str] = []

    def grpc_worker():
        client = grpcclient.InferenceServerClient(stack.gateway_grpc_url)
        for _ in range(300 // 8):
            try:
                client.infer("iris", _inputs(grpcclient), headers={"authorization": stack.auth_headers["Authorization"]})
                codes.append("OK")
            except InferenceServerException as error:
                codes.append("429" if "429" in str(error) else str(error))

    pool = [threading.Thread(target=grpc_worker) for _ in range(8)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert "429" in codes and codes.count("OK") >= 20 and set(codes) <= {"OK", "429"}, \
        {c: codes.count(c) for c in set(codes)}


def _load(stack, seconds: float, threads: int = 4) -> None:
    """Steady traffic just under the per-key limit (4 clients, ~20 requests/s each)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    stop = time.monotonic() + seconds

    def worker():
        client = _http(stack)
        while time.monotonic() < stop:
            with contextlib.suppress(InferenceServerException):  # a 429 now and then is fine for load
                client.infer("iris", _inputs(httpclient), headers=stack.auth_headers)
            time.sleep(0.05)
        client.close()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    return pool


def test_hpa_metric_and_every_dashboard_query_under_load(stack):
    import json

    from tritonize.deploy.observability import dashboard_json

    pool = _load(stack, seconds=12)
    try:
        # The adapter's exact query, for this server's series: mean queue time per request, in
        # us. With a 2 ms batching delay it is well above 0 (at least ~100 us; the delay ends
        # early when a batch fills, so no tighter bound holds).
        value = _wait_for(lambda: (v := _hpa_value(stack)) and v > 100 and v, 20, "queue time under load")
        assert value < 1e6, value
        recorded = _wait_for(lambda: stack.query("tritonize:queue_time_us_per_request:rate1m")["result"], 10,
                             "the recording rule")
        assert {r["metric"]["model"] for r in recorded} >= {"iris"}
        empty = []
        panels = json.loads(dashboard_json(stack.context))["panels"]  # the JSON Grafana loads
        for panel in panels:
            for target in panel["targets"]:
                result = stack.query(target["expr"])["result"]  # raises on any parse/eval error
                if not result:
                    empty.append((panel["title"], target["expr"]))
        from tritonize.deploy.stack import StackError

        with pytest.raises(StackError, match="bad_data"):  # the check above can fail
            stack.query("sum(rate(nv_inference_count[1m])")
        # Only the GPU panel may be empty: the CPU-only embedded server exports no nv_gpu_* series.
        assert all(title.startswith("GPU") for title, _ in empty), empty
        # The stack runs no OpenAI frontend: its LLM queries are evaluated for errors only.
        from tritonize.deploy.observability import LLM_RECORDING_RULES, llm_dashboard_panels

        for expr in [e for *_, queries in llm_dashboard_panels() for e in queries] + [e for _, e in LLM_RECORDING_RULES]:
            stack.query(expr)
    finally:
        for thread in pool:
            thread.join()


def test_streams_pass_through_the_gateway(stack):
    """Decoupled models: server-sent events over HTTP generate_stream (nginx must not buffer them)
    and a bidirectional gRPC stream (ModelStreamInfer via grpc_pass)."""
    import json
    import queue

    import tritonclient.grpc as grpcclient

    request = urllib.request.Request(f"http://{stack.gateway_http_url}/v2/models/counter/generate_stream",
                                     data=json.dumps({"N": 3}).encode(), headers=stack.auth_headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        events = [json.loads(line[len(b"data: "):]) for line in response.read().splitlines()
                  if line.startswith(b"data: ")]
    assert [event["I"] for event in events if "I" in event] == [0, 1, 2]

    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(stack.gateway_grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)),
                        headers={"authorization": stack.auth_headers["Authorization"]})
    try:
        count = grpcclient.InferInput("N", [1], "INT32")
        count.set_data_from_numpy(np.array([4], dtype=np.int32))
        client.async_stream_infer("counter", [count], enable_empty_final_response=True)
        got = []
        while True:
            result, error = responses.get(timeout=10)
            assert error is None, error
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
            got.append(int(result.as_numpy("I")[0]))
        assert got == [0, 1, 2, 3]
    finally:
        client.stop_stream()


def test_access_log_names_client_model_and_latency(stack):
    import json

    entries = [json.loads(line) for line in stack.access_log.read_text().splitlines()]
    served = [e for e in entries if e["model"] == "iris" and e["status"] == 200]
    assert served and all(e["client"] == "stack-client" for e in served)
    assert all(float(e["request_time_s"]) >= 0 and e["upstream_time_s"] for e in served)
    assert any(e["status"] == 401 and e["client"] == "" for e in entries)


SLEEPER = '''\
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(2.0)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())])
                for r in requests]
'''
SLEEPER_SPEC = '''\
repository: repo
models:
  - name: sleeper
    source: {framework: python, path: sleeper.py}
    max_batch_size: 8
    instance_group: [{count: 3, kind: cpu}]
    inputs: [{name: X, dtype: FP32, dims: [2]}]
    outputs: [{name: Y, dtype: FP32, dims: [2]}]
deploy:
  drain_timeout_s: 15
'''


def test_sigterm_finishes_in_flight_requests_and_refuses_new_ones(tmp_path):
    """What a scale-down does to a pod: the gateway quits gracefully and Triton gets SIGTERM while
    requests (2 s each) are in flight. They complete with their answers; new ones are refused;
    Triton exits by itself (code 0) within --exit-timeout-secs."""
    import json
    import signal

    from tritonize import build
    from tritonize.deploy.stack import Stack
    from tritonize.terminal import Terminal

    (tmp_path / "sleeper.py").write_text(SLEEPER)
    (tmp_path / "model.yaml").write_text(SLEEPER_SPEC)
    repository = build(tmp_path / "model.yaml", terminal=Terminal(quiet=True, stderr=True)).repository
    body = json.dumps({"inputs": [{"name": "X", "shape": [1, 2], "datatype": "FP32", "data": [1.5, 2.5]}]}).encode()
    with Stack(repository, work_dir=tmp_path / "stack") as stack:
        answers: dict[int, object] = {}

        def infer(index: int) -> None:
            request = urllib.request.Request(f"http://{stack.gateway_http_url}/v2/models/sleeper/infer", data=body,
                                             headers=stack.auth_headers)
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    answers[index] = json.load(response)["outputs"][0]["data"]
            except OSError as error:  # HTTPError included
                answers[index] = error

        in_flight = [threading.Thread(target=infer, args=(i,)) for i in range(3)]
        for thread in in_flight:
            thread.start()
        time.sleep(0.7)  # all three are executing now (2 s each, three instances)
        stopped_at = time.monotonic()
        stack.nginx_process.send_signal(signal.SIGQUIT)   # the gateway's preStop: nginx -s quit
        stack.server.process.send_signal(signal.SIGTERM)  # then the kubelet's SIGTERM
        time.sleep(0.3)
        with pytest.raises(OSError):  # refused or reset: Triton takes no new connection
            urllib.request.urlopen(urllib.request.Request(
                f"http://{stack.server.http_url}/v2/models/sleeper/infer", data=body), timeout=5)
        for thread in in_flight:
            thread.join()
        assert answers == {0: [1.5, 2.5], 1: [1.5, 2.5], 2: [1.5, 2.5]}
        code = stack.server.process.wait(timeout=30)
        elapsed = time.monotonic() - stopped_at
        assert code == 0, stack.server.log_text()[-1000:]
        assert elapsed < 15, elapsed  # within the drain timeout (exit-timeout-secs)


def test_serve_stack_command_serves_and_stops_everything(stack, tmp_path):
    """The CLI: `tritonize serve REPO --stack` prints the gateway and its key, serves through it,
    and on SIGTERM stops tritonserver, nginx and Prometheus (no process of its groups is left)."""
    import os
    import re
    import signal
    import subprocess
    import sys

    command = [sys.executable, "-c", "import sys; from tritonize.cli import run; sys.argv[0] = 'tritonize'; run()",
               "serve", str(stack.repository), "--stack"]
    env = {**os.environ, "COLUMNS": "200"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while not any("Press Ctrl-C" in line for line in lines):
            assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
            lines.append(process.stdout.readline())
        text = "".join(lines)
        url, key = re.search(r"gateway HTTP\s+http://(\S+)\s+\(Authorization: Bearer (\w+)\)", text).groups()
        work_dir = Path(re.search(r"files, logs\s+(\S+)", text).group(1))
        others = [re.search(r"Prometheus\s+(http://\S+)", text).group(1) + "/-/ready",
                  re.search(r"tritonserver\s+(http://\S+)", text).group(1) + "/v2/health/live"]
        request = urllib.request.Request(f"http://{url}/v2/models/iris/ready", headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        pids = [int((work_dir / "gateway" / "nginx.pid").read_text())]
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    assert code == 0, "".join(lines) + process.stdout.read()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    for endpoint in (f"http://{url}/v2/health/ready", *others):  # gateway, Prometheus, Triton: all gone
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(endpoint, timeout=2)
