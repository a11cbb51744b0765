"""`tritonize serve` as an operator meets it: the real server behind the guard, supervised.

One `tritonize serve` process serves the module's repository: `double` (batched numpy), `spell`
(decoupled: streams its text back one character per 0.2 s, long enough to be killed mid-stream),
`spell_stream` (an ensemble over `spell`: Triton 2.51 never ends its streams when spell's stub
dies) and `iris_preprocess` (the demo's CSV step, with a dynamic batcher so bad rows share batches
with good ones). Tests run in file order: the server kill, then the stub kill (after which Triton
2.51 never finishes unloading the dead instance), then the stop.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from tritonize.triton.server import free_ports
from tritonize.triton.server.access import KEY_ENV, KEY_HEADER, RestrictedApis
from tritonize.triton.server.supervisor import python_stubs

pytestmark = [pytest.mark.server, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from test_server import DOUBLE_CONFIG, DOUBLE_MODEL, SPELL_CONFIG, _write_model  # noqa: E402

# Streams from a thread of its own after execute() returned, as the LLM engine does
# (python_backends/llm_cpu_engine): when its stub dies, Triton 2.51 is waiting for no execute()
# of it and never ends its streams (facts section 8), through an ensemble or not.
SLOW_SPELL_MODEL = """
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()[0].decode()
            threading.Thread(target=self._spell, args=(request.get_response_sender(), text), daemon=True).start()
        return None

    def _spell(self, sender, text):
        for char in text:
            time.sleep(0.2)
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("CHAR", np.array([char.encode()], dtype=object))]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
"""
IRIS_CONFIG = """
name: "iris_preprocess"
backend: "python"
max_batch_size: 64
input { name: "CSV" data_type: TYPE_STRING dims: [ 1 ] }
output { name: "FEATURES" data_type: TYPE_FP32 dims: [ 4 ] }
dynamic_batching { max_queue_delay_microseconds: 100000 }
instance_group { kind: KIND_CPU count: 1 }
"""
HANG_CONFIG = """
name: "hang"
backend: "python"
max_batch_size: 0
input { name: "X" data_type: TYPE_FP32 dims: [ 1 ] }
output { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }
instance_group { kind: KIND_CPU count: 1 }
"""
HANG_MODEL = """
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(120)  # an in-flight request no exit timeout can wait for
        return [pb_utils.InferenceResponse([pb_utils.get_input_tensor_by_name(r, "X")]) for r in requests]
"""
SPELL_STREAM_CONFIG = """
name: "spell_stream"
platform: "ensemble"
max_batch_size: 0
input { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }
output { name: "CHAR" data_type: TYPE_STRING dims: [ 1 ] }
ensemble_scheduling { step { model_name: "spell" model_version: -1
  input_map { key: "TEXT" value: "TEXT" } output_map { key: "CHAR" value: "CHAR" } } }
"""
KEY = "test-key-0123456789"
DOUBLE_BODY = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


class Serve:
    """One `tritonize serve` subprocess on free ports; its output in `out`."""

    def __init__(self, repository: Path, out: Path, *extra: str):
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.out = out
        command = [sys.executable, "-m", "tritonize", "serve", str(repository), "--http-port", str(self.http_port),
                   "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port), *extra]
        self._log = open(out, "w")  # noqa: SIM115 - open for the subprocess's lifetime, closed in stop()
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, KEY_ENV: KEY})
        self.url = f"http://127.0.0.1:{self.http_port}"

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while "press Ctrl-C to stop" not in self.out.read_text():
            assert self.process.poll() is None and time.monotonic() < deadline, self.out.read_text()
            time.sleep(0.2)

    def server_pid(self) -> int:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return int(children[0])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("supervised")
    _write_model(repo, "double", DOUBLE_CONFIG, DOUBLE_MODEL)
    _write_model(repo, "spell", SPELL_CONFIG, SLOW_SPELL_MODEL)
    (repo / "spell_stream" / "1").mkdir(parents=True)
    (repo / "spell_stream" / "config.pbtxt").write_text(SPELL_STREAM_CONFIG)
    _write_model(repo, "iris_preprocess", IRIS_CONFIG, (REPO_ROOT / "examples/iris_preprocess/model.py").read_text())
    return repo


@pytest.fixture(scope="module")
def serve(repository, tmp_path_factory):
    serving = Serve(repository, tmp_path_factory.mktemp("serve") / "serve.out", "--exit-timeout-secs", "5")
    try:
        serving.wait_ready()
        yield serving
    finally:
        serving.stop()


def _listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket process `pid` listens on (from /proc/net/tcp{,6})."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with_target = os.readlink(fd) if fd.is_symlink() else ""
        if with_target.startswith("socket:["):
            inodes.add(with_target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)
                if table == "tcp":
                    host = socket.inet_ntop(socket.AF_INET, raw[::-1])
                else:  # /proc writes IPv6 as four little-endian 32-bit words
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    host = socket.inet_ntop(socket.AF_INET6, words)
                found.append((host, int(port, 16)))
    return found


def test_serve_listens_on_loopback_only(serve):
    sockets = _listening(serve.process.pid) + _listening(serve.server_pid())
    ports = {port for _, port in sockets}
    assert {serve.http_port, serve.grpc_port, serve.metrics_port} <= ports
    assert all(host in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for host, _ in sockets), sockets


def test_restricted_apis_need_the_key(serve):
    json_type = {"Content-Type": "application/json"}
    region = {"key": "/tritonize_probe", "offset": 0, "byte_size": 64}
    for path, body in [("/v2/repository/models/double/load", {}), ("/v2/repository/index", {}),
                       ("/v2/systemsharedmemory/region/probe/register", region),
                       ("/v2/logging", {"log_verbose_level": 1}), ("/v2/trace/setting", {"trace_level": ["TIMESTAMPS"]})]:
        refused = requests.post(serve.url + path, json=body, headers=json_type, timeout=10)
        assert refused.status_code == 403 and KEY_HEADER in refused.text, (path, refused.text)
    # The same over gRPC, which tritonserver serves itself.
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{serve.grpc_port}")
    for call in (lambda: client.load_model("double"), lambda: client.update_log_settings({"log_verbose_level": 1}),
                 lambda: client.register_system_shared_memory("probe", "/tritonize_probe", 64)):
        with pytest.raises(InferenceServerException, match="restricted"):
            call()
    # With the key, the operator can (reading the log settings changes nothing).
    allowed = requests.get(serve.url + "/v2/logging", headers={KEY_HEADER: KEY}, timeout=10)
    assert allowed.status_code == 200 and "log_verbose_level" in allowed.json()
    assert "log_verbose_level" in client.get_log_settings(headers=RestrictedApis(KEY).grpc_headers, as_json=True)["settings"]
    # A wrong key is no key.
    wrong = requests.get(serve.url + "/v2/logging", headers={KEY_HEADER: KEY + "x"}, timeout=10)
    assert wrong.status_code == 403
    with pytest.raises(InferenceServerException, match="restricted"):
        client.get_log_settings(headers=RestrictedApis(KEY + "x").grpc_headers)
    client.close()


def test_the_key_is_on_no_command_line(serve):
    """tritonserver takes its restricted-API key only in argv (readable by any local user in
    /proc/PID/cmdline): it gets a key of its own, and the operator's stays in serve's fronts."""
    server_argv = Path(f"/proc/{serve.server_pid()}/cmdline").read_bytes().split(b"\0")
    setting = next(arg for arg in server_argv if arg.startswith(b"--http-restricted-api="))
    assert setting.startswith(b"--http-restricted-api=model-repository,shared-memory,logging,trace:triton-admin-key=")
    for pid in (serve.process.pid, serve.server_pid()):
        assert KEY.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes(), pid
    # ... and not the server's own key in the log serve writes either.
    server_key = setting.rpartition(b"=")[2].decode()
    log = next(line for line in serve.out.read_text().splitlines() if "  log " in line).split()[-1]
    assert server_key not in Path(log).read_text()


def test_urlencoded_6mb_post_is_refused_and_the_server_stays_up(serve):
    body = b"a" * (6 * 1024 * 1024 + 1)  # facts section 8: >= 6 MB of this type segfaults 2.51
    for path in ("/v2/models/double/infer", "/v2/health/ready"):
        answer = requests.post(serve.url + path, data=body, timeout=30,
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert answer.status_code == 415, answer.text
    ok = requests.post(serve.url + "/v2/models/double/infer", json=DOUBLE_BODY, timeout=10)
    assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
    assert "tritonserver exited" not in serve.out.read_text()


@pytest.mark.parametrize("body", [b'{"inputs": [{"name": "INPUT0",', b"{}",
                                  b'{"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", '
                                  b'"data": ["a", "b", "c", "d"]}]}'],
                         ids=["malformed", "no-inputs", "strings-as-fp32"])
def test_a_request_body_triton_cannot_read_is_a_400_not_a_500(serve, body):
    """tritonserver 2.51 answers these with 500 (its JSON reader's errors are INTERNAL): the
    guard relays its message as a 400, the client's mistake, and the next request is served."""
    answer = requests.post(serve.url + "/v2/models/double/infer", data=body, timeout=10,
                           headers={"Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"].startswith(("failed to parse the request JSON buffer", "Unable to parse ",
                                              "attempt to access JSON ")), answer.text
    ok = requests.post(serve.url + "/v2/models/double/infer", json=DOUBLE_BODY, timeout=10)
    assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]


def test_a_body_above_the_limit_gets_413(serve):
    huge = {"Content-Type": "application/json", "Content-Length": str(65 * 1024 * 1024)}
    with socket.create_connection(("127.0.0.1", serve.http_port), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/double/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     + "".join(f"{k}: {v}\r\n" for k, v in huge.items()).encode() + b"\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")
    # gRPC: the relay in front of Triton's gRPC port takes messages up to the same limit.
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    with grpcclient.InferenceServerClient(f"127.0.0.1:{serve.grpc_port}") as client:
        tensor = grpcclient.InferInput("INPUT0", [65 * 1024 * 256, 4], "FP32")  # 65 MB
        tensor.set_data_from_numpy(np.zeros((65 * 1024 * 256, 4), dtype=np.float32))
        with pytest.raises(InferenceServerException) as refused:
            client.infer("double", [tensor])
        assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED", refused.value
        tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.array([[1, 2, 3, 4]], dtype=np.float32))
        np.testing.assert_array_equal(client.infer("double", [tensor]).as_numpy("OUTPUT0"), [[2, 4, 6, 8]])


def test_a_chunked_request_body_is_relayed(serve):
    body = json.dumps(DOUBLE_BODY).encode()
    pieces = (body[i:i + 16] for i in range(0, len(body), 16))  # a generator: requests sends it chunked
    answer = requests.post(serve.url + "/v2/models/double/infer", data=pieces, timeout=10,
                           headers={"Content-Type": "application/json"})
    assert answer.status_code == 200 and answer.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]


BAD_CSV = {"empty": b"", "non-numeric": b"5.1,abc,1.4,0.2", "nan": b"5.1,nan,1.4,0.2", "inf": b"5.1,3.5,inf,0.2",
           "non-utf8": b"\xff\xfe,3.5,1.4,0.2", "three values": b"5.1,3.5,1.4", "five values": b"1,2,3,4,5"}


def test_each_bad_csv_row_gets_400_and_its_batch_neighbours_are_answered(serve):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{serve.grpc_port}")

    def infer(line: bytes):
        tensor = grpcclient.InferInput("CSV", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[line]], dtype=object))
        try:
            return client.infer("iris_preprocess", [tensor]).as_numpy("FEATURES")
        except InferenceServerException as error:
            return error

    # Good and bad rows sent together land in the same batches (100 ms queue delay).
    cases = [("good", b"5.1,3.5,1.4,0.2"), *BAD_CSV.items(), ("good", b"6.7,3.0,5.2,2.3")]
    with ThreadPoolExecutor(len(cases)) as pool:
        answers = list(pool.map(lambda case: infer(case[1]), cases))
    for (name, line), answer in zip(cases, answers):
        if name == "good":
            assert isinstance(answer, np.ndarray), answer
            # exact: the float32 of each parsed number
            np.testing.assert_array_equal(answer, np.array([[float(v) for v in line.split(b",")]], dtype=np.float32))
        else:
            assert isinstance(answer, InferenceServerException), (name, answer)
            assert answer.status() == "StatusCode.INVALID_ARGUMENT" and "input CSV" in answer.message(), (name, answer)
    http = requests.post(serve.url + "/v2/models/iris_preprocess/infer", timeout=10, json={
        "inputs": [{"name": "CSV", "shape": [1, 1], "datatype": "BYTES", "data": ["1,2,x,4"]}]})
    assert http.status_code == 400 and "input CSV" in http.text
    client.close()


def _stream_events(serve, text: str, events: list, done: threading.Event) -> None:
    try:
        with requests.post(serve.url + "/v2/models/spell/generate_stream", json={"TEXT": text}, stream=True,
                           timeout=30) as response:
            for line in response.iter_lines(decode_unicode=True):
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
    except requests.RequestException as error:
        events.append({"error": f"connection: {error}"})
    finally:
        done.set()


def test_a_killed_tritonserver_is_restarted_and_counted(serve):
    os.kill(serve.server_pid(), signal.SIGKILL)
    killed = time.monotonic()
    time.sleep(0.5)
    while time.monotonic() - killed < 60:
        try:
            if requests.get(serve.url + "/v2/health/ready", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.2)
    assert requests.post(serve.url + "/v2/models/double/infer", json=DOUBLE_BODY, timeout=10).status_code == 200
    metrics = requests.get(f"http://127.0.0.1:{serve.metrics_port}/metrics", timeout=10).text
    assert "tritonize_server_restarts_total 1" in metrics
    assert "tritonserver restarted" in serve.out.read_text()


class GrpcStream:
    """One tritonclient gRPC stream of `model` spelling `text`: its characters and its error."""

    def __init__(self, serve, model: str, text: str):
        import tritonclient.grpc as grpcclient

        self.chars: list[str] = []
        self.error = None
        self.ended = threading.Event()
        self.client = grpcclient.InferenceServerClient(f"127.0.0.1:{serve.grpc_port}")
        self.client.start_stream(callback=self._received)
        tensor = grpcclient.InferInput("TEXT", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([text.encode()], dtype=object))
        self.client.async_stream_infer(model, [tensor], enable_empty_final_response=True)

    def _received(self, result, error) -> None:
        if error is not None:
            self.error = error
            self.ended.set()
        elif result.get_response().parameters["triton_final_response"].bool_param:
            self.ended.set()
        else:
            self.chars.append(result.as_numpy("CHAR")[0].decode())

    def close(self) -> None:
        self.client.stop_stream(cancel_requests=True)
        self.client.close()


def test_a_stub_in_the_middle_of_exiting_is_listed_as_exiting_not_dropped(tmp_path):
    """A killed stub spends a few ms exiting (state R or D, its cmdline already empty) before it is
    a zombie. Listed as nothing, it fell out of the supervisor's known stubs, and the zombie that
    followed was never taken for a death. Real processes named like the stub, children of this one."""
    stub = tmp_path / "triton_python_backend_stub"  # cat, blocked reading, with the stub's name
    stub.write_bytes(Path("/bin/cat").read_bytes())
    stub.chmod(0o755)
    model_py = tmp_path / "repo" / "engine" / "1" / "model.py"
    model_py.parent.mkdir(parents=True)
    os.mkfifo(model_py)  # cat waits in open() for a writer
    # argv as the python backend starts a stub (argv[1], the model's file, names the model), and
    # one with no argv at all, as the kernel shows an exiting process (comm is still the stub's).
    running = subprocess.Popen([str(stub), str(model_py)])
    exiting = subprocess.Popen(["bash", "-c", f'exec -a "" "{stub}"'], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stubs = python_stubs(os.getpid(), tmp_path / "repo")
            if running.pid in stubs and exiting.pid in stubs:
                break
            time.sleep(0.05)
        assert stubs[running.pid].model == "engine" and not stubs[running.pid].zombie, stubs
        # Exiting, not dead (a stub Triton stops exits so too): the supervisor keeps its earlier entry.
        assert stubs[exiting.pid].exiting and not stubs[exiting.pid].zombie, stubs
        running.kill()
        running.wait()  # reaped: a stub Triton stopped itself, which vanishes
        assert running.pid not in python_stubs(os.getpid(), tmp_path / "repo")
    finally:
        for process in (running, exiting):
            process.kill()
            process.wait()


def test_a_reload_through_the_repository_api_is_not_taken_for_a_dead_stub(serve):
    """Model Analyzer's remote mode reloads a model with a config override for every config it
    tries: Triton finalizes and reaps the old instance's stub (and the load's model-level stub).
    Those stubs vanish; only a stub that stays a zombie died. Seen before the fix: each reload was
    taken for a stub death, the model reloaded from the repository (undoing the override), which
    retired its stub again: an endless loop."""
    import tritonclient.grpc as grpcclient

    override = json.dumps({"name": "double", "backend": "python", "max_batch_size": 4,
                           "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
                           "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]},
                                      {"name": "ARGMAX", "data_type": "TYPE_INT64", "dims": [1]}],
                           "instance_group": [{"kind": "KIND_CPU", "count": 2}]})
    headers = RestrictedApis(KEY).grpc_headers
    before = serve.out.read_text()
    with grpcclient.InferenceServerClient(f"127.0.0.1:{serve.grpc_port}") as client:
        client.load_model("double", config=override, headers=headers)
        time.sleep(2.0)  # ten supervisor polls
        served = client.get_model_config("double", as_json=True)["config"]
        # Back to the repository's config for the tests below: a load without config of a model
        # loaded with an override keeps the override (Triton 2.51, seen), so unload first.
        client.unload_model("double", headers=headers, unload_dependents=False)
        client.load_model("double", headers=headers)
        time.sleep(2.0)
        assert client.get_model_config("double", as_json=True)["config"]["max_batch_size"] == 8
    assert served["max_batch_size"] == 4 and served["instance_group"][0]["count"] == 2, served
    printed = serve.out.read_text()[len(before):]
    assert "died" not in printed, printed
    metrics = requests.get(f"http://127.0.0.1:{serve.metrics_port}/metrics", timeout=10).text
    assert 'tritonize_model_recoveries_total{model="double"}' not in metrics


def test_killed_stubs_under_load_are_reported_failed_fast_and_reloaded(serve, repository):
    failures: list[tuple[float, float, int]] = []  # (sent at, duration, status) of failed requests
    stop = threading.Event()

    def load() -> None:
        with requests.Session() as session:  # keep-alive, as a real client
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    status = session.post(serve.url + "/v2/models/double/infer", json=DOUBLE_BODY, timeout=10).status_code
                except requests.RequestException:
                    status = -1
                if status != 200:
                    failures.append((sent, time.monotonic() - sent, status))
                    time.sleep(0.01)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    events: list[dict] = []
    stream_done = threading.Event()
    threading.Thread(target=_stream_events, args=(serve, "abcdefghijklmnopqrstuvwxyz" * 3, events, stream_done)).start()
    grpc_stream = GrpcStream(serve, "spell_stream", "abcdefghijklmnopqrstuvwxyz" * 3)  # through the ensemble
    try:
        time.sleep(1.0)
        assert len(events) >= 2 and len(grpc_stream.chars) >= 2 and not failures, (events, grpc_stream.chars, failures)
        stubs = python_stubs(serve.server_pid(), repository.resolve())
        victims = [stub.pid for stub in stubs.values() if stub.model in ("double", "spell") and not stub.zombie]
        assert len(victims) == 2, stubs
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        unready_at = None
        while time.monotonic() - killed < 30:
            ready = requests.get(serve.url + "/v2/models/double/ready", timeout=5).status_code == 200
            if not ready and unready_at is None:
                unready_at = time.monotonic()
                health = requests.get(serve.url + "/v2/health/ready", timeout=5).status_code
            if ready and unready_at is not None:
                break
            time.sleep(0.05)
        serving_again = time.monotonic()
        assert stream_done.wait(10), f"the stream of the killed stub hangs: {events}"
        assert grpc_stream.ended.wait(10), f"the gRPC stream of the killed stub hangs: {grpc_stream.chars}"
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=20)
        grpc_stream.close()
    assert unready_at is not None and unready_at - killed < 2.0, \
        f"the model did not report unready within 2 s ({unready_at and unready_at - killed}): {serve.out.read_text()[-1500:]}"
    assert health != 200
    assert serving_again - killed < 30, "the model did not serve again within 30 s"
    # Requests sent once the model reported unready fail fast (the guard, then Triton's unknown
    # model); only those already queued on the dead stub took Triton's 1 s.
    late = [f for f in failures if f[0] >= unready_at]
    # Tolerance: 90 % within 100 ms and none near Triton's 1 s stub-health wait. The guard's 503 takes
    # about 1 ms; on this shared 2-core machine (load average ~17 while other suites run) the
    # client and guard threads wait for a core, which stretches a few answers past 100 ms.
    durations = sorted(duration for _, duration, _ in late)
    assert late and durations[int(len(durations) * 0.9)] < 0.1 and durations[-1] < 0.5, durations
    assert all(status in (503, 400, 404) for _, _, status in late), late
    # Those already waiting on the dead stub when it died are answered by the guard at detection
    # too, not after Triton's 1 s (poll 0.2 s, the second look for stubs dying together 0.2 s, and the
    # same scheduling slack as above).
    assert max(duration for _, duration, _ in failures) < 0.6, sorted(d for _, d, _ in failures)[-5:]
    assert "error" in events[-1] and 2 <= len(events) < 78, events
    # The gRPC stream of the ensemble over the killed stub ends with an error naming the model.
    assert grpc_stream.error is not None and 2 <= len(grpc_stream.chars) < 78, grpc_stream.chars
    assert grpc_stream.error.status() == "StatusCode.UNAVAILABLE", grpc_stream.error
    assert "'spell_stream' is being reloaded" in grpc_stream.error.message(), grpc_stream.error
    after = requests.post(serve.url + "/v2/models/double/infer", json=DOUBLE_BODY, timeout=10)
    assert after.status_code == 200 and after.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
    spelled: list[dict] = []
    _stream_events(serve, "ok", spelled, threading.Event())
    assert [e.get("CHAR") for e in spelled] == ["o", "k"], spelled
    again = GrpcStream(serve, "spell_stream", "ok")
    try:
        assert again.ended.wait(10) and again.error is None and again.chars == ["o", "k"], (again.chars, again.error)
    finally:
        again.close()
    printed = serve.out.read_text()
    assert "of model 'double' died" in printed and "model 'spell' serves again" in printed
    metrics = requests.get(f"http://127.0.0.1:{serve.metrics_port}/metrics", timeout=10).text
    assert 'tritonize_model_recoveries_total{model="double"} 1' in metrics
    assert "nv_inference_request_success" in metrics  # Triton's own metrics are relayed too


def _keep_alive_load(url: str, stop: threading.Event) -> None:
    with requests.Session() as session:
        while not stop.is_set():
            try:
                session.post(url + "/v2/models/double/infer", json=DOUBLE_BODY, timeout=10)
            except requests.RequestException:
                time.sleep(0.05)


def test_stop_after_a_stub_recovery_under_keep_alive_load_exits_zero_within_the_timeout(serve):
    """After the stub kill above, Triton 2.51 never finishes unloading the dead instance (the
    stream it held is never answered) and would report failing to stop at its exit timeout:
    serve ends it once nothing else is left, and says so."""
    stop = threading.Event()
    workers = [threading.Thread(target=_keep_alive_load, args=(serve.url, stop)) for _ in range(4)]
    for worker in workers:
        worker.start()
    idle = requests.Session()  # a keep-alive connection that stays open, idle, through the stop
    try:
        assert idle.post(serve.url + "/v2/models/double/infer", json=DOUBLE_BODY, timeout=10).status_code == 200
        time.sleep(1.0)
        asked = time.monotonic()
        serve.process.send_signal(signal.SIGTERM)
        code = serve.process.wait(timeout=30)
        took = time.monotonic() - asked
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=20)
        idle.close()
    assert code == 0, serve.out.read_text()[-2000:]
    # Within the exit timeout: the guard closes its idle connections to Triton, which would
    # otherwise wait for them until the timeout; 3 s for the process to exit and reap.
    assert took < 5 + 3, f"stop took {took:.1f} s with --exit-timeout-secs 5"
    assert "never finishes unloading" in serve.out.read_text()


def _hang_request(url: str) -> None:
    with contextlib.suppress(requests.RequestException):  # the server is stopped under it
        requests.post(url + "/v2/models/hang/infer", timeout=60,
                      json={"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [1]}]})


def test_a_stop_triton_reports_failed_exits_nonzero_within_the_timeout(tmp_path):
    repo = tmp_path / "repo"
    _write_model(repo, "double", DOUBLE_CONFIG, DOUBLE_MODEL)
    _write_model(repo, "hang", HANG_CONFIG, HANG_MODEL)
    serving = Serve(repo, tmp_path / "serve.out", "--exit-timeout-secs", "3")
    stop = threading.Event()
    workers = [threading.Thread(target=_keep_alive_load, args=(serving.url, stop)) for _ in range(2)]
    try:
        serving.wait_ready()
        for worker in workers:
            worker.start()
        hanging = threading.Thread(target=_hang_request, args=(serving.url,), daemon=True)
        hanging.start()
        time.sleep(1.0)
        asked = time.monotonic()
        serving.process.send_signal(signal.SIGTERM)
        code = serving.process.wait(timeout=30)
        took = time.monotonic() - asked
    finally:
        stop.set()
        for worker in workers:
            if worker.is_alive():
                worker.join(timeout=20)
        serving.stop()
    assert code == 1, serving.out.read_text()[-2000:]
    assert took < 3 + 3, f"stop took {took:.1f} s with --exit-timeout-secs 3"
    assert "did not stop cleanly" in serving.out.read_text()


def test_restart_no_ends_serve_when_the_server_dies(tmp_path):
    repo = tmp_path / "repo"
    _write_model(repo, "double", DOUBLE_CONFIG, DOUBLE_MODEL)
    serving = Serve(repo, tmp_path / "serve.out", "--restart", "no")
    try:
        serving.wait_ready()
        os.kill(serving.server_pid(), signal.SIGKILL)
        code = serving.process.wait(timeout=30)
    finally:
        serving.stop()
    assert code == 2 and "exited unexpectedly with code -9" in serving.out.read_text()
