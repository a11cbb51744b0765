"""The real tritonserver on tiny hand-written python-backend repositories, and `tritonize check`.

One server serves the module's repository: `double` (numpy doubles a batch of 4-vectors and
reports each row's argmax) and `spell` (decoupled: streams its input text back one character per
response). numpy is absent from the system Python, so `double` loading at all shows the stub runs
model.py with this environment's packages.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tritonize import manifest as manifest_file
from tritonize.check import check_deployment
from tritonize.errors import TritonizeError
from tritonize.manifest import Manifest
from tritonize.terminal import Terminal
from tritonize.triton.server import ServerError, TritonServer, free_port

pytestmark = pytest.mark.server

DOUBLE_CONFIG = """
name: "double"
backend: "python"
max_batch_size: 8
input { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }
output { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }
output { name: "ARGMAX" data_type: TYPE_INT64 dims: [ 1 ] }
instance_group { kind: KIND_CPU count: 1 }
"""

DOUBLE_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", (x * 2).astype(np.float32)),
                pb_utils.Tensor("ARGMAX", np.argmax(x, axis=1).reshape(-1, 1).astype(np.int64)),
            ]))
        return responses
"""

SPELL_CONFIG = """
name: "spell"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }
output { name: "CHAR" data_type: TYPE_STRING dims: [ 1 ] }
instance_group { kind: KIND_CPU count: 1 }
"""

SPELL_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()[0].decode()
            for char in text:
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("CHAR", np.array([char.encode()], dtype=object))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

BROKEN_MODEL = """
class TritonPythonModel:
    def initialize(self, args):
        raise FileNotFoundError("weights.bin is missing")
"""

# Values exactly representable in float32, so doubling is exact and a +0.5 shift is exactly 0.5.
SAMPLE = [[1.0, 2.5, -3.0, 0.25], [4.0, -1.5, 8.0, 0.5]]


def _write_model(repo: Path, name: str, config: str, model_py: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(config)
    (repo / name / "1" / "model.py").write_text(model_py)


def _manifest(double_out: list, argmax: list, spelled: str) -> Manifest:
    return Manifest.model_validate({
        "tritonize": "0.1.0", "spec": "model.yaml", "input_hash": "", "runtime": "embedded", "tools": {},
        "perf": {"tolerance": 0.05, "latency_tolerance": 0.1}, "models": {
        "double": {"kind": "python", "framework": "python", "samples": {
            "inputs": {"INPUT0": {"datatype": "FP32", "shape": [2, 4], "data": SAMPLE}},
            "outputs": {"OUTPUT0": {"datatype": "FP32", "shape": [2, 4], "data": double_out},
                        "ARGMAX": {"datatype": "INT64", "shape": [2, 1], "data": argmax}},
            # The served model computes exactly what numpy computes here: a tight float tolerance.
            "tolerance": {"OUTPUT0": {"atol": 1e-6, "rtol": 1e-6}, "ARGMAX": {"atol": 0, "rtol": 0}}}},
        "spell": {"kind": "python", "framework": "python", "decoupled": True, "samples": {
            "inputs": {"TEXT": {"datatype": "STRING", "shape": [1], "data": ["hello"]}},
            "outputs": {"CHAR": {"datatype": "STRING", "shape": [1], "data": [spelled]}},
            "stream_join": "concat_strings"}},
        }})


CORRECT = dict(double_out=(np.array(SAMPLE) * 2).tolist(), argmax=[[1], [2]], spelled="hello")


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("tiny_repo")
    _write_model(repo, "double", DOUBLE_CONFIG, DOUBLE_MODEL)
    _write_model(repo, "spell", SPELL_CONFIG, SPELL_MODEL)
    manifest_file.write(_manifest(**CORRECT), repo)
    return repo


@pytest.fixture(scope="module")
def server(triton_server, tiny_repo) -> TritonServer:
    return triton_server(tiny_repo)


def _quiet() -> Terminal:
    return Terminal(quiet=True, stderr=True)


def _process_group(pgid: int) -> list[int]:
    """Live (not zombie) processes whose process group is pgid."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry))
    return members


def test_http_and_grpc_answer_the_sample(server):
    from tritonize.triton.client import GrpcClient, HttpClient

    x = np.array(SAMPLE, dtype=np.float32)
    for client in (HttpClient(server.http_url), GrpcClient(server.grpc_url)):
        with client:
            answer = client.infer("double", {"INPUT0": x}, ["OUTPUT0", "ARGMAX"])
        assert answer["OUTPUT0"][0] == "FP32"
        np.testing.assert_array_equal(answer["OUTPUT0"][1], x * 2)  # doubling is exact in float32
        np.testing.assert_array_equal(answer["ARGMAX"][1], [[1], [2]])


def test_repository_index_lists_ready_models(server):
    states = {m["name"]: m["state"] for m in server.repository_index()}
    assert states == {"double": "READY", "spell": "READY"}


def test_check_passes_over_http_grpc_and_streaming(server, tiny_repo):
    result = check_deployment(tiny_repo, server.http_url, "both", grpc_url=server.grpc_url, terminal=_quiet())
    assert result.passed, [c.detail for c in result.checks]
    assert {(c.model, c.protocol) for c in result.checks} == {
        ("double", "http"), ("double", "grpc"), ("spell", "grpc-stream")}
    assert all(c.max_abs_error == 0.0 for c in result.checks if c.model == "double")


def test_check_reports_wrong_expected_answers_with_numbers(server, tmp_path):
    # Only the manifest is read from the checked repository: serve the tiny one, check a copy.
    wrong_double = (np.array(SAMPLE) * 2).tolist()
    wrong_double[1][2] += 0.5
    manifest_file.write(_manifest(wrong_double, [[1], [3]], "help"), tmp_path)
    result = check_deployment(tmp_path, server.grpc_url, "grpc", terminal=_quiet())

    assert not result.passed
    double, spell = result.checks
    assert (double.status, spell.status) == ("failed", "failed")
    tensors = {t.name: t for t in double.tensors}  # the manifest keeps outputs in sorted order
    values, argmax = tensors["OUTPUT0"], tensors["ARGMAX"]
    assert values.max_abs_error == 0.5
    assert "1 of 8 values outside tolerance" in values.message and "max |error| 0.5 at [1, 2]" in values.message
    assert not argmax.passed and argmax.max_abs_error == 1.0 and "exact" in argmax.message
    assert "got 'hello', expected 'help'" in spell.detail


def test_check_http_only_skips_decoupled_models(server, tiny_repo):
    result = check_deployment(tiny_repo, server.http_url, "http", terminal=_quiet())
    assert result.passed
    assert {c.model: c.status for c in result.checks} == {"double": "passed", "spell": "skipped"}


def test_check_without_a_server_names_the_url_and_the_fix(tiny_repo):
    url = f"localhost:{free_port()}"
    with pytest.raises(TritonizeError) as error:
        check_deployment(tiny_repo, url, "http", terminal=_quiet())
    assert url in error.value.one_line() and "tritonize serve" in error.value.one_line()


def test_broken_model_fails_start_with_one_line_naming_it(tmp_path, triton_server):
    repo = tmp_path / "repo"
    _write_model(repo, "broken", DOUBLE_CONFIG.replace('"double"', '"broken"'), BROKEN_MODEL)
    with pytest.raises(ServerError) as error:
        triton_server(repo, startup_timeout_s=60)
    line = error.value.one_line()
    assert "model 'broken' failed to load" in line and "FileNotFoundError: weights.bin is missing" in line
    assert "\n" not in line


def test_every_model_that_cannot_load_is_named(tmp_path, triton_server):
    # A config that does not parse, and a model directory without model.py: the stub of the
    # latter dies before its model exists, which leaves tritonserver 2.51 waiting forever.
    repo = tmp_path / "repo"
    _write_model(repo, "unparsable", 'name: "unparsable"\nbackend: "python"\ninput { dims: [ 4 }\n', DOUBLE_MODEL)
    _write_model(repo, "no_code", DOUBLE_CONFIG.replace('"double"', '"no_code"'), DOUBLE_MODEL)
    (repo / "no_code" / "1" / "model.py").unlink()
    with pytest.raises(ServerError) as error:
        triton_server(repo, startup_timeout_s=120)
    line = error.value.one_line()
    assert "models 'unparsable', 'no_code' failed to load" in line
    assert "unparsable/config.pbtxt (line 3, column " in line and "no_code/1/model.py" in line


def test_a_taken_port_is_named_with_its_option(tmp_path, triton_server):
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "empty").mkdir()
        with pytest.raises(ServerError) as error:
            triton_server(tmp_path / "empty", grpc_port=port)
    assert f"the gRPC port {port} is already in use" in error.value.one_line()
    assert "--grpc-port" in error.value.one_line()


def test_stop_leaves_no_process(tmp_path, tiny_repo):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo / "double", repo / "double")
    server = TritonServer(repo, log_path=tmp_path / "server.log")
    with server:
        assert len(_process_group(server.pid)) >= 2  # the server and the model's python stub
    assert server.process.returncode == 0  # SIGTERM: a clean shutdown, not the SIGKILL fallback
    assert _process_group(server.pid) == []


SLOW_INIT_MODEL = """
import time


class TritonPythonModel:
    def initialize(self, args):
        time.sleep(60)

    def execute(self, requests):
        return []
"""


def test_a_repository_call_ends_as_soon_as_the_server_dies_under_it(tmp_path, tiny_repo):
    """A python stub started by a load through the repository API inherits tritonserver's sockets,
    that load's connection among them: when the server dies, the call must end then (ServerExited),
    not when the orphaned stub does, nor after its timeout."""
    import threading

    from tritonize.triton.server.process import ServerExited

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo / "double", repo / "double")
    _write_model(repo, "slow_init", DOUBLE_CONFIG.replace('"double"', '"slow_init"'), SLOW_INIT_MODEL)
    with TritonServer(repo, log_path=tmp_path / "server.log", model_control="explicit",
                      extra_args=["--load-model=double"]) as server:
        killer = threading.Timer(3.0, os.kill, (server.pid, signal.SIGKILL))  # the server alone: not its stubs
        killer.start()
        started = time.monotonic()
        with pytest.raises(ServerExited, match="exited \\(code -9\\) during load of 'slow_init'"):
            server.control("load", "slow_init", timeout_s=60)
        assert time.monotonic() - started < 3.0 + 2.0
        killer.join()


def _regions_mapped_by(pgid: int) -> set[str]:
    """The python backend's shared-memory regions the processes of group pgid map."""
    from tritonize.triton.server.process import regions_in_memory_map

    regions: set[str] = set()
    for pid in _process_group(pgid):
        with contextlib.suppress(OSError):
            regions |= regions_in_memory_map(Path(f"/proc/{pid}/maps").read_text())
    return regions


def test_a_killed_server_leaves_no_shared_memory(tmp_path, tiny_repo, monkeypatch):
    """SIGKILL leaves the python backend's /dev/shm regions behind (nothing unlinks them); stop()
    removes those no process maps, and leaves a running server's alone."""
    from tritonize.triton.server import process

    monkeypatch.setattr(process, "ORPHAN_MIN_AGE_S", 0.0)
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo / "double", repo / "double")
    with TritonServer(repo, log_path=tmp_path / "other.log") as other, \
            TritonServer(repo, log_path=tmp_path / "killed.log") as killed:
        others, regions = _regions_mapped_by(other.pid), _regions_mapped_by(killed.pid)
        assert regions and others and not regions & others
        os.killpg(killed.pid, signal.SIGKILL)
        assert killed.stop() == -9
        assert [name for name in regions if (process.SHM_DIR / name).exists()] == []
        assert all((process.SHM_DIR / name).exists() for name in others)  # mapped: in use
        assert other.metadata()["name"] == "triton"


def test_serve_runs_until_sigterm_then_stops_the_server(tiny_repo, tmp_path):
    with socket.socket() as a, socket.socket() as b, socket.socket() as c:  # held together: 3 distinct ports
        for sock in (a, b, c):
            sock.bind(("", 0))
        http_port, grpc_port, metrics_port = (sock.getsockname()[1] for sock in (a, b, c))
    command = [sys.executable, "-m", "tritonize", "serve", str(tiny_repo), "--http-port", str(http_port),
               "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)]
    with open(tmp_path / "serve.out", "w+") as out:
        serve = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while "press Ctrl-C to stop" not in (tmp_path / "serve.out").read_text():
                assert serve.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.out").read_text()
                time.sleep(0.2)
            children = [int(pid) for pid in Path(f"/proc/{serve.pid}/task/{serve.pid}/children").read_text().split()]
            result = check_deployment(tiny_repo, f"localhost:{http_port}", "both",
                                      grpc_url=f"localhost:{grpc_port}", terminal=_quiet())
            assert result.passed
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(timeout=60) == 0
        finally:
            if serve.poll() is None:
                serve.kill()
                serve.wait()
    printed = (tmp_path / "serve.out").read_text()
    assert f"http://localhost:{http_port}" in printed and "tritonserver stopped" in printed
    assert len(children) == 1 and _process_group(children[0]) == []


def test_backend_directory_is_prepared_once_under_concurrency(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from tritonize.triton.server import find_tritonserver

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with ThreadPoolExecutor(4) as pool:
        installs = list(pool.map(lambda _: find_tritonserver(), range(4)))
    backend_dirs = {install.backend_dir for install in installs}
    assert len(backend_dirs) == 1
    (backend_dir,) = backend_dirs
    assert (backend_dir / "python" / "triton_python_backend_stub").stat().st_mode & 0o111  # still executable
    # The losers' staging copies are gone: only the finished directory is left.
    assert [p.name for p in backend_dir.parent.parent.iterdir()] == [backend_dir.parent.name]
