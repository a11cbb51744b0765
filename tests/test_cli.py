"""The CLI's contract: output and exit codes (0 ok, 2 user error in one line, 1 bug with a traceback)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tritonize.cli import main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("build", "validate", "serve", "check", "schema", "perf", "tune"):
        assert command in out


def test_schema_is_the_spec_json_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["required"] == ["models"]
    assert {"repository", "runtime", "container", "models", "ensembles"} <= set(schema["properties"])
    # Bounds in JSON Schema's keywords (pydantic wrote "ge"/"le" for some, which validators ignore):
    # the committed spec validates, and a negative max_batch_size does not.
    import jsonschema
    import yaml

    assert '"ge"' not in json.dumps(schema) and '"le"' not in json.dumps(schema)
    assert schema["$defs"]["ModelSpec"]["properties"]["max_batch_size"]["minimum"] == 0
    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "model.yaml").read_text())
    jsonschema.validate(spec, schema)
    spec["models"][0]["max_batch_size"] = -1
    with pytest.raises(jsonschema.ValidationError, match="less than the minimum of 0"):
        jsonschema.validate(spec, schema)


def test_build_output(spec: Path, capsys):
    assert main(["build", str(spec)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith(f"✓ built 3 models into {spec.parent / 'out'} in ")
    assert main(["build", str(spec)]) == 0
    assert capsys.readouterr().out.strip() == f"✓ {spec.parent / 'out'} is up to date (inputs unchanged), skipped"


def test_unknown_command_is_a_usage_error(capsys):
    assert main(["compile"]) == 2
    assert "No such command 'compile'" in capsys.readouterr().err


def test_unknown_runtime(spec: Path, capsys):
    assert main(["build", str(spec), "--runtime", "docker"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --runtime: unknown runtime 'docker' (fix: use one of: embedded, container)")


def test_validate_a_file_instead_of_a_directory(spec: Path, capsys):
    assert main(["validate", str(spec)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {spec}: not a directory (fix: pass the path of a model repository)"


def test_check_without_a_manifest(tmp_path: Path, capsys):
    assert main(["check", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no tritonize manifest" in err and "\n" not in err


def test_a_bug_gets_a_traceback_and_exit_1(spec: Path, capsys, monkeypatch):
    import tritonize.pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(tritonize.pipeline, "_compile", broken)
    assert main(["build", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: boom" in err and "internal error in tritonize" in err


def test_validate_warnings_exit_0_errors_exit_2(tmp_path: Path, capsys):
    # Triton loads a model beside a non-version directory (it logs "ignore version directory"):
    # a warning, exit 0. A KIND_CPU group with gpus it refuses: an error, exit 2.
    model = tmp_path / "repo" / "echo"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text("class TritonPythonModel:\n    pass\n")
    (model / "notes").mkdir()
    config = ('name: "echo" backend: "python" max_batch_size: 0 '
              'input [{ name: "X" data_type: TYPE_FP32 dims: [1] }] '
              'output [{ name: "Y" data_type: TYPE_FP32 dims: [1] }]')
    (model / "config.pbtxt").write_text(config)
    assert main(["validate", str(tmp_path / "repo")]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("warning: ") and "ignore version directory 'notes'" in captured.err
    assert "(1 warning)" in captured.out
    (model / "config.pbtxt").write_text(config + " instance_group [{ kind: KIND_CPU gpus: [0] }]")
    assert main(["validate", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "has kind KIND_CPU but specifies one or more GPUs" in err


def test_load_model_needs_explicit_model_control(spec: Path, capsys):
    code = main(["serve", str(spec.parent), "--load-model", "pre"])
    assert code == 2
    assert "--model-control-mode explicit" in capsys.readouterr().err


@pytest.mark.server
def test_serve_in_explicit_mode_loads_only_the_named_model(tmp_path: Path):
    """Model Analyzer's remote mode needs the server in explicit model-control mode."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from tritonize.triton.server import free_port

    repository = tmp_path / "repo"
    for name in ("pre", "post"):  # two python models that answer their input
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "config.pbtxt").write_text(
            f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
            'input [{ name: "X", data_type: TYPE_FP32, dims: [1] }]\n'
            'output [{ name: "Y", data_type: TYPE_FP32, dims: [1] }]\n')
        (repository / name / "1" / "model.py").write_text(
            "import triton_python_backend_utils as pb_utils\n\n\nclass TritonPythonModel:\n"
            "    def execute(self, requests):\n"
            "        return [pb_utils.InferenceResponse([pb_utils.Tensor('Y', pb_utils.get_input_tensor_by_name("
            "r, 'X').as_numpy())]) for r in requests]\n")
    http, grpc, metrics = free_port(), free_port(), free_port()
    serve = subprocess.Popen([sys.executable, "-m", "tritonize", "serve", str(repository), "--http-port", str(http),
                              "--grpc-port", str(grpc), "--metrics-port", str(metrics),
                              "--model-control-mode", "explicit", "--load-model", "pre"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        deadline, states = time.monotonic() + 120, {}
        while time.monotonic() < deadline and states.get("pre") != "READY":
            time.sleep(0.5)
            try:
                # JSON, not urllib's default form encoding: serve's guard answers that with 415.
                request = urllib.request.Request(f"http://localhost:{http}/v2/repository/index", data=b"{}",
                                                 headers={"Content-Type": "application/json"})
                states = {m["name"]: m.get("state") for m in json.load(urllib.request.urlopen(request, timeout=2))}
            except OSError:
                continue
        assert states.get("pre") == "READY"
        assert states.get("post") != "READY"
        # Model Analyzer's remote mode loads each config it tries through the repository API, with a
        # config override and no key (triton-inference-server/model_analyzer r1.58
        # model_analyzer/triton/client/client.py, `load_model`): explicit mode leaves that API open.
        import tritonclient.grpc as grpcclient

        override = {"name": "post", "backend": "python", "max_batch_size": 0,
                    "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [1]}],
                    "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [1]}],
                    "instance_group": [{"kind": "KIND_CPU", "count": 2}]}
        with grpcclient.InferenceServerClient(f"localhost:{grpc}") as client:
            client.load_model("post", config=json.dumps(override))
            assert client.get_model_config("post", as_json=True)["config"]["instance_group"][0]["count"] == 2
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
