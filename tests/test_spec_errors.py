"""Malformed specs: each gives exit 2, one line naming the file, field and fix, and leaves the
output directory untouched. Python-only specs keep these fast (no conversion runs)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tritonize.cli import main

from specs import MODEL_PY, VALID

def _variant(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new, 1)


# (id, spec text, substrings the one-line error must contain: file/line, field, fix)
CASES = [
    ("yaml-syntax", VALID + "  - name: [unclosed\n", ["spec.yaml:", "invalid YAML", "fix:"]),
    ("yaml-tab-indent", "models:\n\t- name: x\n", ["spec.yaml:2", "invalid YAML"]),
    ("empty-file", "", ["spec file is empty", "models"]),
    ("top-level-list", "- a\n- b\n", ["mapping at the top level"]),
    ("duplicate-key", _variant("    max_batch_size: 8\n    inputs: [{name: TEXT",
                               "    max_batch_size: 8\n    max_batch_size: 4\n    inputs: [{name: TEXT"),
     ["spec.yaml:6", "models[0].max_batch_size", "duplicate key", "remove one"]),
    ("unknown-top-key", "colour: blue\n" + VALID, ["spec.yaml:1", "unknown key 'colour'", "repository, runtime"]),
    ("unknown-model-key", _variant("    max_batch_size: 8\n    inputs: [{name: TEXT", "    max_batch: 8\n    inputs: [{name: TEXT"),
     ["spec.yaml:5", "models[0].max_batch", "unknown key", "max_batch_size"]),
    ("unknown-tensor-key", _variant("{name: TEXT, dtype: STRING, dims: [1]}]\n    outputs: [{name: VEC",
                                    "{name: TEXT, dtype: STRING, dims: [1], shape: [1]}]\n    outputs: [{name: VEC"),
     ["models[0].inputs[0].shape", "unknown key", "dtype"]),
    ("unknown-source-key", _variant("{framework: python, path: pre.py}", "{framework: python, path: pre.py, file: x}"),
     ["models[0].source.file", "framework, path, factory"]),
    ("missing-models", "repository: out\n", ["required key 'models'", "add `models:`"]),
    ("empty-models", "models: []\n", ["models", "at least 1"]),
    ("missing-name", _variant("  - name: pre\n", "  - \n"), ["models[0]", "required key 'name'"]),
    ("wrong-type-batch", _variant("max_batch_size: 8\n    inputs: [{name: TEXT", "max_batch_size: eight\n    inputs: [{name: TEXT"),
     ["models[0].max_batch_size", "integer", "'eight'"]),
    ("negative-batch", _variant("max_batch_size: 8\n    inputs: [{name: TEXT", "max_batch_size: -1\n    inputs: [{name: TEXT"),
     ["models[0].max_batch_size", "greater than or equal to 0"]),
    ("bad-dtype", _variant("dtype: STRING, dims: [1]}]\n    outputs: [{name: VEC", "dtype: FLOAT, dims: [1]}]\n    outputs: [{name: VEC"),
     ["models[0].inputs[0].dtype", "'FLOAT' is not allowed", "FP32"]),
    ("bad-framework", _variant("{framework: python, path: pre.py}", "{framework: caffe, path: pre.py}"),
     ["models[0].source.framework", "'caffe' is not allowed", "sklearn"]),
    ("bad-runtime", "runtime: docker\n" + VALID, ["runtime", "'docker' is not allowed", "embedded"]),
    ("zero-dim", _variant("dtype: FP32, dims: [4]}]\n    outputs: [{name: Y", "dtype: FP32, dims: [0]}]\n    outputs: [{name: Y"),
     ["models[1].inputs[0].dims", "dimension 0 is invalid"]),
    ("empty-dims", _variant("dtype: FP32, dims: [4]}]\n    outputs: [{name: Y", "dtype: FP32, dims: []}]\n    outputs: [{name: Y"),
     ["models[1].inputs[0].dims", "at least 1"]),
    ("missing-file", _variant("{framework: python, path: pre.py}", "{framework: python, path: missing.py}"),
     ["spec.yaml:4", "models[0].source.path", "file not found: missing.py"]),
    ("path-and-factory", _variant("{framework: python, path: pre.py}\n    max_batch_size: 8\n    inputs: [{name: X",
                                  "{framework: sklearn, path: pre.py, factory: 'a:b'}\n    max_batch_size: 8\n    inputs: [{name: X"),
     ["models[1].source", "exactly one of 'path'", "'factory'"]),
    ("bad-factory", _variant("{framework: python, path: pre.py}\n    max_batch_size: 8\n    inputs: [{name: X",
                             "{framework: sklearn, factory: 'not a ref'}\n    max_batch_size: 8\n    inputs: [{name: X"),
     ["models[1].source.factory", "package.module:function"]),
    ("unknown-builtin", _variant("{framework: python, path: pre.py}", "{framework: python, builtin: nope}"),
     ["models[0].source.builtin", "unknown builtin", "onnx_runner"]),
    ("python-without-io", _variant("    outputs: [{name: VEC, dtype: FP32, dims: [4]}]\n", ""),
     ["models[0]", "must declare its inputs and outputs"]),
    ("name-traversal", _variant("  - name: pre\n", "  - name: ../x\n"),
     ["models[0].name", "not a valid model name"]),
    ("name-slash", _variant("  - name: post\n", "  - name: a/b\n"), ["models[1].name", "not a valid model name"]),
    ("duplicate-names", _variant("  - name: post\n", "  - name: pre\n"), ["used twice", "unique"]),
    ("duplicate-tensor", _variant("outputs: [{name: VEC, dtype: FP32, dims: [4]}]",
                                  "outputs: [{name: VEC, dtype: FP32, dims: [4]}, {name: VEC, dtype: FP32, dims: [4]}]"),
     ["models[0]", "duplicate outputs name(s): VEC"]),
    ("preferred-above-max", _variant("    max_batch_size: 8\n    inputs: [{name: X", "    max_batch_size: 8\n    dynamic_batching: {preferred_batch_size: [16]}\n    inputs: [{name: X"),
     ["models[1]", "preferred_batch_size 16 exceeds max_batch_size 8"]),
    ("batching-without-batch", _variant("    max_batch_size: 8\n    inputs: [{name: X", "    max_batch_size: 0\n    dynamic_batching: {}\n    inputs: [{name: X"),
     ["models[1]", "dynamic_batching needs max_batch_size > 0"]),
    ("cache-with-decoupled", _variant("    max_batch_size: 8\n    inputs: [{name: X", "    max_batch_size: 8\n    decoupled: true\n    response_cache: true\n    inputs: [{name: X"),
     ["models[1]", "response_cache cannot be used with a decoupled model"]),
    ("version-policy", _variant("    max_batch_size: 8\n    inputs: [{name: X", "    max_batch_size: 8\n    version_policy: {all: true, latest: 2}\n    inputs: [{name: X"),
     ["models[1].version_policy", "exactly one of"]),
    ("bad-release", "container: {release: latest}\n" + VALID, ["container.release", "YY.MM"]),
    ("sample-unknown-input", _variant("    outputs: [{name: Y, dtype: INT64, dims: [1]}]\n    steps:",
                                      "    outputs: [{name: Y, dtype: INT64, dims: [1]}]\n    sample_inputs: {TXT: [[a]]}\n    steps:"),
     ["ensembles[0]", "unknown input(s) TXT", "the inputs are: TEXT"]),
    ("step-unknown-model", _variant("{model: post, input_map", "{model: postt, input_map"),
     ["unknown model 'postt'", "declared models: post, pre"]),
    # Ensemble graph errors: found by the same rule checker as `tritonize validate`.
    ("ensemble-dtype-mismatch", _variant("inputs: [{name: X, dtype: FP32", "inputs: [{name: X, dtype: FP64"),
     ["spec.yaml:20", "ensembles[0].steps[1]", "FP32", "FP64"]),
    ("ensemble-shape-mismatch", _variant("inputs: [{name: X, dtype: FP32, dims: [4]}]", "inputs: [{name: X, dtype: FP32, dims: [5]}]"),
     ["spec.yaml:20", "ensembles[0].steps[1].input_map.X", "[-1, 4]", "[-1, 5]"]),
    ("ensemble-unmapped-tensor", _variant("input_map: {X: vec}", "input_map: {X: vecc}"),
     ["ensembles[0].steps[1].input_map", "vecc"]),
    ("ensemble-unused-input", _variant("    inputs: [{name: TEXT, dtype: STRING, dims: [1]}]\n    outputs: [{name: Y, dtype: INT64",
                                       "    inputs: [{name: TEXT, dtype: STRING, dims: [1]}, {name: EXTRA, dtype: FP32, dims: [1]}]\n    outputs: [{name: Y, dtype: INT64"),
     ["ensembles[0]", "EXTRA"]),
    ("ensemble-unproduced-output", _variant("output_map: {Y: Y}", "output_map: {Y: Z}"),
     ["ensembles[0]", "'Y'"]),
    ("ensemble-cycle", _variant("{model: pre, input_map: {TEXT: TEXT}, output_map: {VEC: vec}}",
                                "{model: pre, input_map: {TEXT: TEXT}, output_map: {VEC: vec}}\n      - {model: post, input_map: {X: loop}, output_map: {Y: loop2}}\n      - {model: post, input_map: {X: loop2}, output_map: {Y: loop}}"),
     ["ensembles[0]", "cycle"]),
]


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "pre.py").write_text(MODEL_PY)
    out = tmp_path / "out"
    out.mkdir()
    # A previous good build that a failing build must leave alone.
    (out / "tritonize.manifest.json").write_text(json.dumps({"models": {}}))
    (out / "keep.txt").write_text("previous build")
    return tmp_path


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_valid_spec_builds(workspace: Path):
    (workspace / "spec.yaml").write_text(VALID)
    assert main(["build", str(workspace / "spec.yaml")]) == 0
    assert (workspace / "out" / "pipe" / "config.pbtxt").is_file()
    assert not (workspace / "out" / "keep.txt").exists()


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("text, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_spec(workspace: Path, capsys, text: str, expected: list[str]):
    spec = workspace / "spec.yaml"
    spec.write_text(text)
    before = _snapshot(workspace / "out")
    code = main(["build", str(spec)])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ") and "spec.yaml" in lines[0]
    for fragment in expected:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert "Traceback" not in captured.err
    assert _snapshot(workspace / "out") == before
    assert sorted(p.name for p in workspace.iterdir()) == ["out", "pre.py", "spec.yaml"]  # no staging left
