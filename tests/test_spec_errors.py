"""Malformed specs: each gives exit 2, one line naming the file, field and fix, and leaves the
output directory untouched. Python-only specs keep these fast (no conversion runs); the few
factory cases convert nothing either (the factory fails, or the spec is refused before it runs)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from specs import MODEL_PY, VALID
from tritonize.cli import main


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
     ["models[0]", "must declare its inputs and outputs", "(fix: add inputs: and outputs: lists"]),
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
     ["models[1]", "dynamic_batching needs max_batch_size > 0", "(fix: set max_batch_size"]),
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



def _post(lines: str) -> str:
    """VALID with `lines` (indented keys) added to the model 'post' (models[1])."""
    return _variant("    max_batch_size: 8\n    inputs: [{name: X", f"    max_batch_size: 8\n{lines}    inputs: [{{name: X")


def _post_input(tensor: str) -> str:
    """VALID with the input of 'post' replaced by `tensor` (a flow mapping)."""
    return _variant("inputs: [{name: X, dtype: FP32, dims: [4]}]", f"inputs: [{tensor}]")


# A converted (sklearn) model whose factory module does not exist: these are refused before it is imported.
CONVERTED = "repository: out\nmodels:\n  - name: m\n    source: {framework: sklearn, factory: 'absent_module:make'}\n"
# "Billion laughs": nine levels of nine aliases each, 9**9 (387 million) strings once expanded.
BOMB = "a: &a [" + ", ".join(["lol"] * 9) + "]\n" + "".join(
    f"{c}: &{c} [" + ", ".join([f"*{p}"] * 9) + "]\n" for p, c in zip("abcdefgh", "bcdefghi")) + "models: *i\n"

# Numbers beyond the range of their field in Triton's model_config.proto, and other values it refuses.
NUMBER_CASES = [
    ("dims-beyond-int64", _post_input("{name: X, dtype: FP32, dims: [9223372036854775808]}"),
     ["models[1].inputs[0].dims[0]", "out of range", "int64"]),
    ("dims-float", _post_input("{name: X, dtype: FP32, dims: [1.5]}"), ["models[1].inputs[0].dims[0]", "fractional"]),
    ("dims-word", _post_input("{name: X, dtype: FP32, dims: [four]}"), ["models[1].inputs[0].dims[0]", "'four'"]),
    ("dims-bool", _post_input("{name: X, dtype: FP32, dims: [true]}"), ["models[1].inputs[0].dims[0]", "got true"]),
    ("reshape-beyond-int64", _post_input("{name: X, dtype: FP32, dims: [4], reshape: [-9223372036854775809]}"),
     ["models[1].inputs[0].reshape[0]", "int64"]),
    ("max-batch-beyond-int32", _variant("max_batch_size: 8\n    inputs: [{name: X", "max_batch_size: 2147483648\n    inputs: [{name: X"),
     ["models[1].max_batch_size", "int32 [-2147483648, 2147483647]"]),
    ("max-batch-bool", _variant("max_batch_size: 8\n    inputs: [{name: X", "max_batch_size: yes\n    inputs: [{name: X"),
     ["models[1].max_batch_size", "expected a number, got true"]),
    ("max-batch-nan", _variant("max_batch_size: 8\n    inputs: [{name: X", "max_batch_size: .nan\n    inputs: [{name: X"),
     ["spec.yaml:10", "'.nan'"]),
    ("ensemble-max-batch-beyond-int32", _variant("  - name: pipe\n    max_batch_size: 8", "  - name: pipe\n    max_batch_size: 99999999999"),
     ["ensembles[0].max_batch_size", "int32"]),
    ("instance-count-beyond-int32", _post("    instance_group: [{count: 2147483648}]\n"),
     ["models[1].instance_group[0].count", "int32"]),
    ("instance-count-zero", _post("    instance_group: [{count: 0}]\n"), ["models[1].instance_group[0].count", "greater than or equal to 1"]),
    ("instance-gpu-negative", _post("    instance_group: [{kind: gpu, gpus: [-1]}]\n"),
     ["models[1].instance_group[0].gpus[0]", "greater than or equal to 0"]),
    ("warmup-batch-beyond-uint32", _post("    warmup: [{batch_size: 4294967296}]\n"),
     ["models[1].warmup[0].batch_size", "uint32 [0, 4294967295]"]),
    ("warmup-above-max-batch", _post("    warmup: [{batch_size: 16}]\n"),
     ["models[1]", "warmup[0].batch_size 16 exceeds max_batch_size 8"]),
    ("warmup-count-zero", _post("    warmup: [{count: 0}]\n"), ["models[1].warmup[0].count", "greater than or equal to 1"]),
    ("warmup-batch-without-batching", _variant(
        "    max_batch_size: 8\n    inputs: [{name: X", "    max_batch_size: 0\n    warmup: [{batch_size: 2}]\n    inputs: [{name: X"),
     ["models[1]", "max_batch_size 0 takes no batches"]),
    ("version-beyond-int64", _post("    version: 9223372036854775808\n"), ["models[1].version", "int64"]),
    ("version-zero", _post("    version: 0\n"), ["models[1].version", "greater than or equal to 1"]),
    ("step-version-beyond-int64", _variant("{model: post, input_map", "{model: post, version: 18446744073709551616, input_map"),
     ["ensembles[0].steps[1].version", "int64"]),
    ("priority-negative", _post("    dynamic_batching: {priority_levels: -1}\n"),
     ["models[1].dynamic_batching.priority_levels", "uint64"]),
    ("queue-delay-beyond-uint64", _post("    dynamic_batching: {max_queue_delay_microseconds: 18446744073709551616}\n"),
     ["models[1].dynamic_batching.max_queue_delay_microseconds", "uint64 [0, 18446744073709551615]"]),
    ("queue-size-beyond-uint32", _post("    dynamic_batching: {default_queue_policy: {max_queue_size: 4294967296}}\n"),
     ["dynamic_batching.default_queue_policy.max_queue_size", "uint32"]),
    ("queue-timeout-negative", _post("    dynamic_batching: {default_queue_policy: {default_timeout_microseconds: -5}}\n"),
     ["default_queue_policy.default_timeout_microseconds", "uint64"]),
    ("preferred-beyond-int32", _post("    dynamic_batching: {preferred_batch_size: [2147483648]}\n"),
     ["models[1].dynamic_batching.preferred_batch_size[0]", "int32"]),
    ("version-latest-beyond-uint32", _post("    version_policy: {latest: 4294967296}\n"),
     ["models[1].version_policy.latest", "uint32"]),
    ("version-specific-zero", _post("    version_policy: {specific: [0]}\n"),
     ["models[1].version_policy.specific[0]", "greater than or equal to 1"]),
    ("verify-seed-negative", _post("    verify: {seed: -1}\n"), ["models[1].verify.seed", "uint64"]),
    ("verify-samples-zero", _post("    verify: {samples: 0}\n"), ["models[1].verify.samples", "greater than or equal to 1"]),
    ("verify-atol-inf", _post("    verify: {atol: .inf}\n"), ["models[1].verify.atol", "finite"]),
    ("range-inf", _post_input("{name: X, dtype: FP32, dims: [4], range: [-.inf, 1]}"),
     ["models[1].inputs[0].range[0]", "finite"]),
    ("range-reversed", _post_input("{name: X, dtype: FP32, dims: [4], range: [2, 1]}"),
     ["models[1].inputs[0]", "range low 2.0 is above high 1.0"]),
    ("perf-tolerance-zero", "perf: {tolerance: 0}\n" + VALID, ["perf.tolerance", "greater than 0"]),
    ("perf-latency-inf", "perf: {latency_tolerance: .inf}\n" + VALID, ["perf.latency_tolerance", "finite"]),
]

# sample_inputs that no request could carry: words for numbers, ragged rows, wrong shapes.
SAMPLE_CASES = [
    ("sample-words-for-fp32", _post("    sample_inputs: {X: [[a, b, c, d]]}\n"),
     ["spec.yaml:11", "models[1].sample_inputs.X: holds text, but input 'X' is FP32"]),
    ("sample-ragged", _post("    sample_inputs: {X: [[1, 2, 3, 4], [1, 2]]}\n"),
     ["models[1].sample_inputs.X", "ragged"]),
    ("sample-wrong-shape", _post("    sample_inputs: {X: [[1, 2, 3]]}\n"),
     ["models[1].sample_inputs.X", "shape [1, 3], expected [batch, 4]"]),
    ("sample-no-batch-dim", _post("    sample_inputs: {X: [1, 2, 3, 4]}\n"),
     ["models[1].sample_inputs.X", "shape [4], expected [batch, 4]"]),
    ("sample-too-many-rows", _post("    sample_inputs: {X: " + str([[1, 2, 3, 4]] * 9).replace(" ", "") + "}\n"),
     ["models[1].sample_inputs.X", "9 rows", "max_batch_size 8"]),
    ("sample-fraction-for-int", _post_input("{name: X, dtype: INT32, dims: [2]}").replace(
        "    inputs: [{name: X, dtype: INT32", "    sample_inputs: {X: [[1.5, 2]]}\n    inputs: [{name: X, dtype: INT32"),
     ["models[1].sample_inputs.X", "fractional numbers, but input 'X' is INT32"]),
    ("sample-int8-overflow", _post_input("{name: X, dtype: INT8, dims: [2]}").replace(
        "    inputs: [{name: X, dtype: INT8", "    sample_inputs: {X: [[300, 1]]}\n    inputs: [{name: X, dtype: INT8"),
     ["models[1].sample_inputs.X", "holds 300, outside INT8's range [-128, 127]"]),
    ("sample-numbers-for-bool", _post_input("{name: X, dtype: BOOL, dims: [2]}").replace(
        "    inputs: [{name: X, dtype: BOOL", "    sample_inputs: {X: [[1, 0]]}\n    inputs: [{name: X, dtype: BOOL"),
     ["models[1].sample_inputs.X", "but input 'X' is BOOL"]),
    ("ensemble-sample-shape", _variant("    outputs: [{name: Y, dtype: INT64, dims: [1]}]\n    steps:",
                                       "    outputs: [{name: Y, dtype: INT64, dims: [1]}]\n    sample_inputs: {TEXT: [a, b]}\n    steps:"),
     ["ensembles[0].sample_inputs.TEXT", "shape [2], expected [batch, 1]"]),
]

# What Triton would refuse, refused at build time.
TRITON_REFUSES_CASES = [
    ("names-differ-by-case", _variant("  - name: post\n", "  - name: PRE\n").replace("{model: post,", "{model: PRE,"),
     ["model names 'pre' and 'PRE' differ only by case", "case-insensitive filesystem"]),
    ("ensemble-name-differs-by-case", _variant("  - name: pipe\n", "  - name: Post\n"),
     ["'post' and 'Post' differ only by case"]),
    ("name-300-characters", _variant("  - name: pre\n", "  - name: " + "p" * 300 + "\n").replace("{model: pre,", "{model: " + "p" * 300 + ","),
     ["models[0].name", "300 characters long", "at most 200"]),
    ("llm-names-collide", "repository: out\nmodels:\n  - name: chat\n    source: {framework: huggingface, path: pre.py}\n"
     "    llm: {}\n  - name: chat_preprocessing\n    source: {framework: python, path: pre.py}\n"
     "    inputs: [{name: X, dtype: FP32, dims: [1]}]\n    outputs: [{name: Y, dtype: FP32, dims: [1]}]\n",
     ["model name 'chat_preprocessing' is used twice", "_preprocessing"]),
    ("decoupled-converted-model", CONVERTED + "    inputs: [{name: X, dtype: FP32, dims: [4]}]\n    decoupled: true\n",
     ["models[0]", "decoupled: true needs a python model", "sklearn"]),
    ("decoupled-onnx-file", "repository: out\nmodels:\n  - name: m\n    source: {framework: onnx, path: pre.py}\n    decoupled: true\n",
     ["models[0]", "decoupled: true needs a python model"]),
    ("runner-threads-word", CONVERTED + "    parameters: {intra_op_num_threads: two}\n",
     ["spec.yaml:5", "models[0].parameters.intra_op_num_threads", "'two'", "whole number"]),
    ("runner-threads-negative", CONVERTED + "    parameters: {inter_op_num_threads: -1}\n",
     ["models[0].parameters.inter_op_num_threads", "'-1'"]),
    ("onnxruntime-execution-mode", "runtime: container\n" + CONVERTED + "    parameters: {execution_mode: 2}\n",
     ["models[0].parameters.execution_mode", "0 (sequential) or 1 (parallel)"]),
    ("onnxruntime-thread-count-float", "runtime: container\n" + CONVERTED + "    parameters: {intra_op_thread_count: 1.5}\n",
     ["models[0].parameters.intra_op_thread_count", "'1.5'"]),
    ("parameter-mapping", _post("    parameters: {a: {b: c}}\n"), ["models[1].parameters.a", "valid string"]),
]

# YAML that is not a spec at all, or is hostile.
YAML_CASES = [
    ("alias-bomb", BOMB, ["more than 100000 values", "alias bomb"]),
    ("recursive-alias", "a: &a [*a]\nmodels: *a\n", ["recursive alias"]),
    ("python-tag", "models: !!python/object:os.system {}\n", ["spec.yaml:1", "tag tag:yaml.org,2002:python/object:os.system is not allowed"]),
    ("list-as-key", "? [a, b]\n: c\nmodels: []\n", ["spec.yaml:1", "mapping key must be a plain name"]),
    ("deep-nesting", "models: " + "[" * 80 + "]" * 80 + "\n", ["nests deeper than 64 levels"]),
    ("two-documents", VALID + "---\nmodels: []\n", ["spec.yaml:21", "invalid YAML", "another document"]),
    ("null-model", "models: [null]\n", ["models[0]", "valid dictionary"]),
    ("models-a-string", "models: pre\n", ["models", "valid list"]),
    ("name-a-date", _variant("  - name: pre\n", "  - name: 2001-12-14\n"), ["models[0].name", "valid string"]),
    ("binary-tag", _variant("  - name: pre\n", "  - name: !!binary aGVsbG8=\n"), ["spec.yaml:3", "binary data (!!binary) is not allowed"]),
]

# Cases that need files besides spec.yaml: (id, spec (text or bytes), {file: content}, expected fragments).
FILE_CASES = [
    ("latin-1-spec", VALID.replace("name: pre\n", "name: pr\xe9\n", 1).encode("latin-1"), {},
     ["spec.yaml:3", "not UTF-8 text (byte 0xe9 at line 3)", "save the file as UTF-8"]),
    ("binary-spec", bytes(range(256)) * 4, {}, ["spec.yaml", "binary (it contains NUL bytes)"]),
    ("utf16-spec", VALID.encode("utf-16"), {}, ["spec.yaml", "UTF-16", "UTF-8"]),
    ("model-py-syntax-error", VALID, {"pre.py": "class TritonPythonModel:\n    def execute(self, requests)\n"},
     ["spec.yaml:4", "models[0].source.path", "pre.py does not compile", "pre.py:2"]),
    ("model-py-not-python", VALID, {"pre.py": "#!/bin/sh\necho serving && exec ./server --port 8000\n"},
     ["models[0].source.path", "pre.py does not compile"]),
    ("model-py-binary", VALID, {"pre.py": b"\x7fELF\x02\x01\x01\x00" + bytes(64)},
     ["models[0].source.path", "pre.py is not Python source (it is binary"]),
    ("model-py-latin-1", VALID, {"pre.py": "# caf\xe9\nclass TritonPythonModel: pass\n".encode("latin-1")},
     ["models[0].source.path", "not UTF-8 text"]),
    ("model-py-no-class", VALID, {"pre.py": "def execute(requests):\n    return []\n"},
     ["models[0].source.path", "defines no TritonPythonModel class", "class TritonPythonModel:"]),
    ("model-py-class-in-function", VALID, {"pre.py": "def make():\n    class TritonPythonModel:\n        pass\n"},
     ["models[0].source.path", "defines no TritonPythonModel class"]),
    ("model-py-return-outside-function", VALID, {"pre.py": "class TritonPythonModel:\n    pass\nreturn 1\n"},
     ["models[0].source.path", "'return' outside function"]),
    ("model-py-a-directory", VALID, {"pre.py": None}, ["models[0].source.path", "pre.py is a directory"]),
]


def _factory_spec(module: str) -> str:
    return ("repository: out\nmodels:\n  - name: m\n"
            f"    source: {{framework: sklearn, factory: '{module}:make'}}\n")


# Factories are the user's code: what they raise is a one-line user error naming the factory, the
# exception and where in their code it came from.
FACTORY_CASES = [
    ("factory-raises", "fac_raises", "import math\n\n\ndef make():\n    return math.sqrt(-1)\n",
     ["spec.yaml:4", "models[0].source.factory", "factory fac_raises:make raised ValueError: math domain error",
      "at fac_raises.py:5", "--verbose"]),
    ("factory-raises-in-helper", "fac_helper", "def helper():\n    raise RuntimeError('no data')\n\n\ndef make():\n    return helper()\n",
     ["factory fac_helper:make raised RuntimeError: no data", "at fac_helper.py:2"]),
    ("factory-sys-exit-0", "fac_exit0", "import sys\n\n\ndef make():\n    sys.exit(0)\n",
     ["factory fac_exit0:make called sys.exit(0)", "at fac_exit0.py:5"]),
    ("factory-sys-exit-message", "fac_exitmsg", "def make():\n    raise SystemExit('bye')\n",
     ["factory fac_exitmsg:make called sys.exit('bye')"]),
    ("factory-syntax-error", "fac_syntax", "def make(:\n    pass\n",
     ["factory fac_syntax:make has a syntax error", "while importing fac_syntax", "at fac_syntax.py:1"]),
    ("factory-raises-on-import", "fac_import", "raise ImportError('libfoo.so not found')\n\n\ndef make():\n    pass\n",
     ["factory fac_import:make raised ImportError: libfoo.so not found while importing fac_import", "at fac_import.py:1"]),
    ("factory-exit-on-import", "fac_import_exit", "import sys\nsys.exit(1)\n", ["called sys.exit(1) while importing"]),
    ("factory-not-a-function", "fac_nofunc", "make = 3\n", ["module 'fac_nofunc' has no function 'make'"]),
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


TEXT_CASES = CASES + NUMBER_CASES + SAMPLE_CASES + TRITON_REFUSES_CASES + YAML_CASES


def test_there_are_at_least_100_malformed_specs():
    assert len(TEXT_CASES) + len(FILE_CASES) + len(FACTORY_CASES) + len(OS_CASES) >= 100


def _refused(workspace: Path, capsys, spec: str | bytes, expected: list[str], files: dict | None = None,
             args: tuple[str, ...] = ()) -> str:
    """Build spec.yaml in workspace: exit 2, one line with the expected fragments, nothing changed."""
    for name, content in (files or {}).items():
        path = workspace / name
        if path.is_file():
            path.unlink()
        if content is None:
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    path = workspace / "spec.yaml"
    path.write_bytes(spec) if isinstance(spec, bytes) else path.write_text(spec)
    before = _snapshot(workspace / "out")
    listing = sorted(p.name for p in workspace.iterdir())
    code = main(["build", str(path), *args])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    for fragment in expected:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert "Traceback" not in captured.err
    assert _snapshot(workspace / "out") == before
    assert sorted(p.name for p in workspace.iterdir()) == listing  # no staging, lock or work files left
    return lines[0]


@pytest.mark.parametrize("text, expected", [c[1:] for c in TEXT_CASES], ids=[c[0] for c in TEXT_CASES])
def test_malformed_spec(workspace: Path, capsys, text: str, expected: list[str]):
    line = _refused(workspace, capsys, text, expected)
    assert "spec.yaml" in line


@pytest.mark.parametrize("spec, files, expected", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_malformed_files(workspace: Path, capsys, spec: str | bytes, files: dict, expected: list[str]):
    line = _refused(workspace, capsys, spec, expected, files)
    assert "spec.yaml" in line


@pytest.mark.parametrize("module, source, expected", [c[1:] for c in FACTORY_CASES], ids=[c[0] for c in FACTORY_CASES])
def test_failing_factory(workspace: Path, capsys, module: str, source: str, expected: list[str]):
    _refused(workspace, capsys, _factory_spec(module), expected, {f"{module}.py": source})


def test_verbose_prints_the_factory_traceback(workspace: Path, capsys):
    (workspace / "fac_verbose.py").write_text("def make():\n    raise KeyError('weights')\n")
    (workspace / "spec.yaml").write_text(_factory_spec("fac_verbose"))
    assert main(["build", str(workspace / "spec.yaml"), "--verbose"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'fac_verbose.py", line 2, in make' in err
    assert ("spec.yaml:4: models[0].source.factory: factory fac_verbose:make raised KeyError: 'weights' at "
            "fac_verbose.py:2") in err.strip().splitlines()[-1]
    assert "internal error" not in err


def test_ctrl_c_in_a_factory_exits_130(workspace: Path, capsys):
    (workspace / "fac_interrupt.py").write_text("def make():\n    raise KeyboardInterrupt\n")
    (workspace / "spec.yaml").write_text(_factory_spec("fac_interrupt"))
    before = _snapshot(workspace / "out")
    assert main(["build", str(workspace / "spec.yaml")]) == 130
    assert capsys.readouterr().err.strip() == "error: interrupted"
    assert _snapshot(workspace / "out") == before


def test_the_alias_bomb_fails_within_2_seconds(workspace: Path, capsys):
    started = time.perf_counter()
    _refused(workspace, capsys, BOMB, ["alias bomb"])
    assert time.perf_counter() - started < 2.0


def _symlink_loop(workspace: Path) -> None:
    (workspace / "loop_a").symlink_to("loop_b")
    (workspace / "loop_b").symlink_to("loop_a")


# OS errors on the output path: named with the path and the fix. (id, repository, setup, expected)
OS_CASES = [
    ("repository-below-a-file", "pre.py/out", None,
     ["pre.py: not a directory, so nothing can be created below it", "whose parents are directories"]),
    ("repository-deep-below-a-file", "pre.py/a/b/out", None, ["pre.py: not a directory"]),
    ("repository-in-procfs", "/proc/tritonize-test", None, ["cannot create files in /proc", "regular filesystem"]),
    ("repository-below-procfs", "/proc/tritonize-test/out", None, ["cannot create directories in /proc", "regular filesystem"]),
    ("repository-name-too-long", "r" * 300, None, ["File name too long", "at most 255 bytes"]),
    ("repository-symlink-loop", "loop_a", _symlink_loop, ["loop_a", "loop of symbolic links", "remove the symbolic link loop"]),
    ("repository-below-symlink-loop", "loop_a/out", _symlink_loop, ["loop of symbolic links"]),
    ("repository-a-file", "pre.py", None, ["exists and was not built by tritonize"]),
]


@pytest.mark.parametrize("repository, setup, expected", [c[1:] for c in OS_CASES], ids=[c[0] for c in OS_CASES])
def test_unusable_output_path(workspace: Path, capsys, repository: str, setup, expected: list[str]):
    if setup is not None:
        setup(workspace)
    _refused(workspace, capsys, VALID.replace("repository: out", f"repository: {repository}"), expected)


def test_source_path_in_a_symlink_loop(workspace: Path, capsys):
    _symlink_loop(workspace)
    _refused(workspace, capsys, VALID.replace("path: pre.py}", "path: loop_a}", 1),
             ["spec.yaml:4", "models[0].source.path", "loop_a is a loop of symbolic links"])


def test_unknown_stage(workspace: Path, capsys):
    line = _refused(workspace, capsys, VALID, ["--stage", "unknown build stage 'bogus'"], args=("--stage", "bogus"))
    assert line == "error: --stage: unknown build stage 'bogus' (fix: use one of: all, engines)"
