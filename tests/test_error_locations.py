"""One spelling of where a user error is, whatever stage finds it: `file:line: field.path: message
(fix: ...)`. Each test pins one whole line the CLI prints (the engine stage's is in
test_llm_container.py, next to the container build it needs)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tritonize.cli import main

SKLEARN_FACTORY = """\
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression


def iris():
    x, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=200).fit(x, y)
"""


def _error_line(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch) -> Path:
    (tmp_path / "factories.py").write_text(SKLEARN_FACTORY)
    monkeypatch.chdir(tmp_path)  # the spec is named as a user types it: relative
    return tmp_path


def test_spec_stage(workdir: Path, capsys):
    (workdir / "model.yaml").write_text("models:\n  - name: iris\n    source: {framework: sklearn, factory: 'factories:iris'}\n"
                                        "    max_batch: 8\n")
    assert _error_line(capsys, ["build", "model.yaml"]) == (
        "error: model.yaml:4: models[0].max_batch: unknown key 'max_batch' (fix: use one of: name, source, version, "
        "inputs, outputs, max_batch_size, dynamic_batching, instance_group, warmup, version_policy, parameters, "
        "decoupled, response_cache, verify, sample_inputs, llm, encoder)")


def test_convert_stage(workdir: Path, capsys):
    (workdir / "other.py").write_text("class TritonPythonModel:\n    pass\n")
    (workdir / "model.yaml").write_text(
        "models:\n  - name: other\n    source: {framework: python, path: other.py}\n"
        "    inputs: [{name: A, dtype: FP32, dims: [1]}]\n    outputs: [{name: B, dtype: FP32, dims: [1]}]\n"
        "  - name: iris\n    source: {framework: sklearn, factory: 'factories:iris'}\n"
        "    inputs:\n      - {name: input, dtype: FP16, dims: [4]}\n")
    assert _error_line(capsys, ["build", "model.yaml"]) == (
        "error: model.yaml:9: models[1].inputs[0].dtype: model 'iris': a sklearn model takes FP32 (or FP64) "
        "features, not FP16 (fix: write dtype: FP32)")


def test_verify_stage(workdir: Path, capsys):
    (workdir / "model.yaml").write_text(
        "models:\n  - name: iris\n    source: {framework: sklearn, factory: 'factories:iris'}\n"
        "    inputs: [{name: input, dtype: FP32, dims: [4]}]\n"
        "    sample_inputs:\n      input: [[1.0, 2.0, 3.0]]\n")
    assert _error_line(capsys, ["build", "model.yaml"]) == (
        "error: model.yaml:6: models[0].sample_inputs.input: has shape [1, 3], expected "
        "[batch, 4] (fix: give one row per sample, each shaped like the input's dims)")


def test_numeric_check_stage(workdir: Path, capsys):
    # Exact tolerances: float32 ONNX kernels can never match float64 sklearn probabilities, so the
    # real onnxruntime-vs-sklearn comparison fails; the error values are the measured ones.
    (workdir / "model.yaml").write_text(
        "models:\n  - name: iris\n    source: {framework: sklearn, factory: 'factories:iris'}\n"
        "    verify:\n      atol: 0\n      rtol: 0\n")
    line = _error_line(capsys, ["build", "model.yaml"])
    number = r"[0-9.]+(?:e-?[0-9]+)?"
    assert re.fullmatch(
        rf"error: model.yaml:4: models\[0\]\.verify: model 'iris' output 'probabilities': ONNX differs from sklearn "
        rf"by max abs error {number} / max rel error {number} on 64 samples, above tolerance atol 0 \+ rtol "
        rf"0\*\|expected\| \(fix: if that error is acceptable, raise verify\.atol to {number} \(or verify\.rtol\); "
        r"otherwise the conversion is wrong\)", line), line


def test_llm_stage(workdir: Path, capsys):
    (workdir / "not_a_model").mkdir()
    (workdir / "model.yaml").write_text(
        "models:\n  - name: chat\n    source: {framework: huggingface, path: not_a_model}\n    llm: {}\n")
    resolved = (workdir / "not_a_model").resolve()
    assert _error_line(capsys, ["build", "model.yaml"]) == (
        f"error: model.yaml:3: models[0].source: {resolved} is not a HuggingFace model directory (no config.json) "
        "(fix: point source.path at a directory written by save_pretrained)")


def test_command_line_option(workdir: Path, capsys):
    (workdir / "model.yaml").write_text("models:\n  - name: iris\n    source: {framework: sklearn, factory: 'factories:iris'}\n")
    assert _error_line(capsys, ["build", "model.yaml", "--stage", "everything"]) == (
        "error: --stage: unknown build stage 'everything' (fix: use one of: all, engines)")
