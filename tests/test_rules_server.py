"""Load rules against the real tritonserver 2.51: every case is one small repository with the
verdict Triton gives it. `test_rules_verdict` checks that `check_repository` gives the same
verdict (no server needed); `test_tritonserver_verdict` checks, on one server that loads all
cases at once (model control "none" with --exit-on-error=false, so a refused model leaves the
others loading), that Triton really gives it.

Each rule has a case Triton refuses (an error from the rules, whose message names the same
problem as Triton's: `says` is a phrase both contain) and shares a case Triton loads (no error
from the rules; warnings allowed where Triton only logs).
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tritonize.triton.rules import WARNING, check_repository
from tritonize.triton.rules.instances import local_gpu_ids
from tritonize.triton.server.process import ServerError

MODEL_PY = '''import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[]) for _ in requests]
'''
PY_FILES = {"1/model.py": MODEL_PY}
IO = '''input [{ name: "X" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "Y" data_type: TYPE_FP32 dims: [1] }, { name: "Z" data_type: TYPE_FP32 dims: [1] }]'''


def python_model(name: str, extra: str = "", io: str = IO) -> str:
    return f'name: "{name}"\nbackend: "python"\nmax_batch_size: 8\n{io}\n{extra}\n'


def ensemble(name: str, steps: str, outputs: str = '{ name: "A" data_type: TYPE_FP32 dims: [1] }') -> str:
    return (f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: 8\n'
            f'input [{{ name: "X" data_type: TYPE_FP32 dims: [1] }}]\noutput [{outputs}]\n'
            f'ensemble_scheduling {{ step [{steps}] }}\n')


def step(model: str, outputs: str = '{ key: "Y" value: "A" }', version: str = "model_version: -1",
         inputs: str = '{ key: "X" value: "X" }') -> str:
    return f'{{ model_name: "{model}" {version} input_map [{inputs}] output_map [{outputs}] }}'


# Step models shared by the ensemble cases (each python model costs the server a stub).
STEP_PLAIN = ("step_plain", python_model("step_plain"), PY_FILES)
STEP_DECOUPLED = ("step_decoupled", python_model("step_decoupled", "model_transaction_policy { decoupled: true }"),
                  PY_FILES)


@dataclass
class Case:
    name: str  # the model whose load decides the case
    rules: tuple[str, ...]  # rules it exercises
    config: str | None  # config.pbtxt of `name` (None: no config.pbtxt)
    files: dict[str, str] = field(default_factory=lambda: dict(PY_FILES))
    says: str = ""  # refused: a phrase of Triton's error that the rules' message names too
    uses: tuple[tuple[str, str, dict[str, str]], ...] = ()  # other models: (name, config, files)

    @property
    def loads(self) -> bool:
        return not self.says


def seq(controls: str) -> str:
    return f"sequence_batching {{ control_input [{controls}] }}"


WARMUP = 'model_warmup [{ name: "w" batch_size: %d inputs { key: "X" value: { data_type: TYPE_FP32 dims: [1] zero_data: true } } }]'
START = '{ name: "START" control [{ kind: CONTROL_SEQUENCE_START fp32_false_true: [0, 1] }] }'

CASES = [
    # --- loads ------------------------------------------------------------------------------
    Case("ok_batch_io", ("batch-input", "batch-output"), python_model("ok_batch_io", '''
batch_input [{ kind: BATCH_ELEMENT_COUNT target_name: "COUNT" data_type: TYPE_INT32 source_input: "X" }]
batch_output [{ target_name: "Y" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "X" }]''')),
    Case("ok_sequence", ("sequence-control",), python_model("ok_sequence", seq(
        START + ''', { name: "END" control [{ kind: CONTROL_SEQUENCE_END int32_false_true: [0, 1] }] },
        { name: "READY" control [{ kind: CONTROL_SEQUENCE_READY bool_false_true: [false, true] }] },
        { name: "CORRID" control [{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_STRING }] }'''))),
    Case("ok_instances", ("instance-group", "runtime", "python-model-file"), python_model("ok_instances", '''
runtime: "libtriton_python.so"
instance_group [{ kind: KIND_CPU count: 1 }, { kind: KIND_AUTO }]''')),
    Case("ok_directories", ("version-dir", "version-policy"),
         python_model("ok_directories", "version_policy { specific { versions: [1, 3] } }"),
         {"1/model.py": MODEL_PY, "01/model.py": MODEL_PY, "scripts/setup.sh": "true\n"}),
    Case("ok_no_config", ("config-missing",), None),
    Case("ok_ensemble", ("ensemble-step-version", "ensemble-decoupled"), ensemble(
        "ok_ensemble", step("step_decoupled", '{ key: "Y" value: "A" }, { key: "Z" value: "B" }', "model_version: 1"),
        '{ name: "A" data_type: TYPE_FP32 dims: [1] }, { name: "B" data_type: TYPE_FP32 dims: [1] }'),
         {"1/.keep": ""}, uses=(STEP_DECOUPLED,)),
    Case("ok_ensemble_writes_input", ("ensemble-input-overwritten",), ensemble(
        "ok_ensemble_writes_input", step("step_plain", '{ key: "Y" value: "A" }, { key: "Z" value: "X" }')),
         {"1/.keep": ""}, uses=(STEP_PLAIN,)),
    # --- refused: batch_input / batch_output ------------------------------------------------
    Case("batch_input_no_source", ("batch-input",), python_model("batch_input_no_source", '''
batch_input [{ kind: BATCH_ELEMENT_COUNT target_name: "COUNT" data_type: TYPE_INT32 }]'''),
         says="expects 1 source input, got 0"),
    Case("batch_input_unknown_source", ("batch-input",), python_model("batch_input_unknown_source", '''
batch_input [{ kind: BATCH_ITEM_SHAPE target_name: "SHAPE" data_type: TYPE_INT32 source_input: "W" }]'''),
         says="unknown source input name 'W'"),
    Case("batch_input_data_type", ("batch-input",), python_model("batch_input_data_type", '''
batch_input [{ kind: BATCH_ELEMENT_COUNT target_name: "COUNT" data_type: TYPE_INT64 source_input: "X" }]'''),
         says="batch input data type must be TYPE_INT32 or TYPE_FP32"),
    Case("batch_output_unknown_target", ("batch-output",), python_model("batch_output_unknown_target", '''
batch_output [{ target_name: "W" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "X" }]'''),
         says="unknown target output name 'W'"),
    Case("batch_output_target_twice", ("batch-output",), python_model("batch_output_target_twice", '''
batch_output [{ target_name: ["Y", "Y"] kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "X" }]'''),
         says="target output name 'Y' can only be specified once"),
    # --- refused: sequence batching controls ------------------------------------------------
    Case("sequence_tensor_twice", ("sequence-control",), python_model("sequence_tensor_twice", seq(
        START + ', { name: "START" control [{ kind: CONTROL_SEQUENCE_END fp32_false_true: [0, 1] }] }')),
         says="control tensor 'START' is specified for multiple control kinds"),
    Case("sequence_kind_twice", ("sequence-control",), python_model("sequence_kind_twice", seq(
        START + ', { name: "BEGIN" control [{ kind: CONTROL_SEQUENCE_START fp32_false_true: [0, 1] }] }')),
         says="specifies multiple CONTROL_SEQUENCE_START tensors"),
    Case("sequence_no_values", ("sequence-control",), python_model("sequence_no_values", seq(
        '{ name: "START" control [{ kind: CONTROL_SEQUENCE_START }] }')),
         says="must specify either 'int32_false_true', 'fp32_false_true' or 'bool_false_true' for "
              "CONTROL_SEQUENCE_START"),
    Case("sequence_two_value_kinds", ("sequence-control",), python_model("sequence_two_value_kinds", seq(
        '{ name: "END" control [{ kind: CONTROL_SEQUENCE_END int32_false_true: [0, 1] fp32_false_true: [0, 1] }] }')),
         says="specifies more than one from 'int32_false_true', 'fp32_false_true' and 'bool_false_true'"),
    Case("sequence_three_values", ("sequence-control",), python_model("sequence_three_values", seq(
        '{ name: "READY" control [{ kind: CONTROL_SEQUENCE_READY int32_false_true: [0, 1, 1] }] }')),
         says="control 'int32_false_true' must have exactly 2 entries for CONTROL_SEQUENCE_READY"),
    Case("sequence_corrid_type", ("sequence-control",), python_model("sequence_corrid_type", seq(
        '{ name: "CORRID" control [{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_FP32 }] }')),
         says="Allowed data types are TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 and TYPE_STRING"),
    Case("sequence_corrid_values", ("sequence-control",), python_model("sequence_corrid_values", seq(
        '{ name: "CORRID" control [{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_INT64 int32_false_true: [0, 1] }] }')),
         says="must not specify either 'int32_false_true', 'fp32_false_true' or 'bool_false_true' for "
              "CONTROL_SEQUENCE_CORRID"),
    Case("sequence_unnamed", ("sequence-control",), python_model("sequence_unnamed", seq(
        '{ control [{ kind: CONTROL_SEQUENCE_START fp32_false_true: [0, 1] }] }')),
         says="sequence batching control tensor must have a name"),
    # --- refused: instance groups, runtime ----------------------------------------------------
    Case("cpu_with_gpus", ("instance-group",), python_model("cpu_with_gpus", "instance_group [{ kind: KIND_CPU gpus: [0] }]"),
         says="has kind KIND_CPU but specifies one or more GPUs"),
    Case("model_kind_with_gpus", ("instance-group",),
         python_model("model_kind_with_gpus", "instance_group [{ kind: KIND_MODEL gpus: [0] }]"),
         says="has kind KIND_MODEL but specifies one or more GPUs"),
    Case("negative_gpu", ("instance-group",), python_model("negative_gpu", "instance_group [{ kind: KIND_GPU gpus: [-1] }]"),
         says="specifies invalid or unsupported gpu id -1"),
    Case("profile_outside_tensorrt", ("instance-group",),
         python_model("profile_outside_tensorrt", 'instance_group [{ kind: KIND_CPU profile: ["0"] }]'),
         says="specifies profile field which is only supported for TensorRT models"),
    Case("runtime_unknown", ("runtime",), python_model("runtime_unknown", 'runtime: "libtriton_nope.so"'),
         says="unable to find backend library 'libtriton_nope.so' for model 'runtime_unknown'"),
    Case("runtime_python_based", ("runtime",), python_model("runtime_python_based", 'runtime: "model.py"'),
         says="unable to find Python backend based backend library 'model.py' for model 'runtime_python_based'"),
    # --- refused: the backend from the model name, the python model file ----------------------
    Case("no_backend", ("platform-backend",), IO.join(['name: "no_backend"\nmax_batch_size: 8\n', "\n"]),
         {"1/weights.bin": "0"}, says="Could not determine backend for model 'no_backend'"),
    Case("named.python", ("python-model-file",), IO.join(['name: "named.python"\nmax_batch_size: 8\n', "\n"]),
         {"1/model.python": MODEL_PY}, says="Model name must end with '.py'. Model name is \"model.python\""),
    Case("no_config_no_model", ("config-missing",), None, {"1/weights.bin": "0"},
         says="Could not determine backend for model 'no_config_no_model'"),
    # --- refused: ensembles -------------------------------------------------------------------
    Case("step_version_missing", ("ensemble-step-version",),
         ensemble("step_version_missing", step("step_plain", version="model_version: 2")), {"1/.keep": ""},
         says="depends on 'step_plain' whose required version 2 is not loaded", uses=(STEP_PLAIN,)),
    Case("step_version_omitted", ("ensemble-step-version",),
         ensemble("step_version_omitted", step("step_plain", version="")), {"1/.keep": ""},
         says="depends on 'step_plain' whose required version 0 is not loaded", uses=(STEP_PLAIN,)),
    Case("decoupled_outputs", ("ensemble-decoupled",), ensemble(
        "decoupled_outputs", step("step_decoupled") + ", " + step("step_plain", '{ key: "Y" value: "B" }'),
        '{ name: "A" data_type: TYPE_FP32 dims: [1] }, { name: "B" data_type: TYPE_FP32 dims: [1] }'),
         {"1/.keep": ""}, says="receives inputs originated from different decoupled models",
         uses=(STEP_DECOUPLED, STEP_PLAIN)),
]
# The rules that were there before issue 9, against the same server.
IO_X = 'output [{ name: "Y" data_type: TYPE_FP32 dims: [1] }]'
EXISTING_CASES = [
    Case("ok_duplicates", ("duplicate-tensor", "ensemble-input-mapped-once", "ensemble-output-mapped-once"), ensemble(
        "ok_duplicates", step("step_plain", '{ key: "Y" value: "A" }, { key: "Y" value: "A" }',
                              inputs='{ key: "X" value: "X" }, { key: "X" value: "X" }')),
         {"1/.keep": ""}, uses=(STEP_PLAIN, ("step_duplicate_output", python_model(
             "step_duplicate_output", io=IO + '\noutput [{ name: "Y" data_type: TYPE_FP32 dims: [1] }]'), PY_FILES))),
    Case("config_unparsable", ("parse",), 'name: "config_unparsable"\nmax_batch_sise: 8\n',
         says="failed to read text proto"),
    Case("dir_name_differs", ("dir-name",), python_model("other_name"),
         says="unexpected directory name 'dir_name_differs' for model 'other_name', directory name must equal model name"),
    Case("platform_backend_pair", ("platform-backend",),
         python_model("platform_backend_pair", 'platform: "tensorrt_plan"').replace('"python"', '"onnxruntime"'),
         {"1/model.onnx": ""}, says="unexpected 'platform' and 'backend' pair"),
    Case("ensemble_with_backend", ("platform-backend",),
         ensemble("ensemble_with_backend", step("step_plain")) + 'backend: "python"\n', {"1/.keep": ""},
         says="Ensemble model 'ensemble_with_backend' must have platform type 'ensemble' and empty backend type",
         uses=(STEP_PLAIN,)),
    Case("negative_batch", ("max-batch-size",), python_model("negative_batch").replace("max_batch_size: 8", "max_batch_size: -1"),
         says="'max_batch_size' must be non-negative value"),
    Case("tensor_unnamed", ("tensor-name",), python_model("tensor_unnamed", io='input [{ data_type: TYPE_FP32 dims: [1] }]\n' + IO_X),
         says="model input must specify 'name'"),
    Case("tensor_untyped", ("data-type",), python_model("tensor_untyped", io='input [{ name: "X" dims: [1] }]\n' + IO_X),
         says="model input 'X' must specify 'data_type'"),
    Case("tensor_without_dims", ("dims",), python_model("tensor_without_dims", io='input [{ name: "X" data_type: TYPE_FP32 }]\n' + IO_X),
         says="model input 'X' must specify 'dims'"),
    Case("tensor_dim_zero", ("dims",),
         python_model("tensor_dim_zero", io='input [{ name: "X" data_type: TYPE_FP32 dims: [0] }]\n' + IO_X),
         says="model input 'X' dimension must be integer >= 1, or -1 to indicate a variable-size dimension"),
    Case("reshape_size", ("reshape",), python_model(
        "reshape_size", io='input [{ name: "X" data_type: TYPE_FP32 dims: [4] reshape { shape: [3] } }]\n' + IO_X),
         says="model input 'X' has different size for dims and reshape"),
    Case("format_dims", ("input-format",), python_model(
        "format_dims", io='input [{ name: "X" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [1] }]\n' + IO_X),
         says="NHWC/NCHW require 3 dims"),
    Case("shape_tensor", ("shape-tensor",), python_model(
        "shape_tensor", io='input [{ name: "X" data_type: TYPE_INT32 is_shape_tensor: true dims: [1] }]\n' + IO_X),
         says="shape tensors are only supported for TensorRT platform"),
    Case("preferred_size", ("preferred-batch-size",), python_model("preferred_size", "dynamic_batching { preferred_batch_size: [16] }"),
         says="dynamic batching preferred size must be <= max batch size"),
    Case("priority_level", ("priority",),
         python_model("priority_level", "dynamic_batching { priority_levels: 2 default_priority_level: 3 }"),
         says="default priority level must be in range [1, 2]"),
    Case("ordered_priorities", ("preserve-ordering",), python_model(
        "ordered_priorities", "dynamic_batching { priority_levels: 2 default_priority_level: 1 preserve_ordering: true }"),
         says="Only one priority level is allowed when 'preserve_ordering' is true"),
    Case("cached_decoupled", ("response-cache",), python_model(
        "cached_decoupled", "model_transaction_policy { decoupled: true }\nresponse_cache { enable: true }"),
         says="Response Cache does not currently support model cached_decoupled with 'decoupled' transaction policy"),
    Case("ensemble_no_version", ("version-dir",), ensemble("ensemble_no_version", step("step_plain")), {}, uses=(STEP_PLAIN,),
         says="at least one version must be available under the version policy of model 'ensemble_no_version'"),
    Case("ensemble_no_steps", ("ensemble-steps",), ensemble("ensemble_no_steps", "").replace(
        "ensemble_scheduling { step [] }", "ensemble_scheduling { }"), {"1/.keep": ""},
         says="must specify 'step' for ensemble 'ensemble_no_steps'"),
    Case("ensemble_unscheduled", ("ensemble-scheduling",), ensemble("ensemble_unscheduled", "").replace(
        "ensemble_scheduling { step [] }", ""), {"1/.keep": ""},
         says="ensemble scheduling must be set for ensemble ensemble_unscheduled"),
    Case("scheduled_python", ("ensemble-platform",), python_model(
        "scheduled_python", 'ensemble_scheduling { step [{ model_name: "step_plain" model_version: -1 '
        'input_map { key: "X" value: "X" } output_map [{ key: "Y" value: "Y" }, { key: "Z" value: "Z" }] }] }'),
         uses=(STEP_PLAIN,),
         says="ensemble scheduling cannot be set for model 'scheduled_python' whose platform is not ensemble"),
    Case("ensemble_instance_group", ("ensemble-forbidden-field",),
         ensemble("ensemble_instance_group", step("step_plain")) + "instance_group [{ kind: KIND_CPU }]\n",
         {"1/.keep": ""}, uses=(STEP_PLAIN,), says="instance group should not be specified for ensemble"),
    Case("ensemble_unused_input", ("ensemble-unused-input",), ensemble("ensemble_unused_input", step("step_plain")).replace(
        'input [{ name: "X" data_type: TYPE_FP32 dims: [1] }]',
        'input [{ name: "X" data_type: TYPE_FP32 dims: [1] }, { name: "W" data_type: TYPE_FP32 dims: [1] }]'),
         {"1/.keep": ""}, uses=(STEP_PLAIN,), says="ensemble input 'W' for ensemble"),
    Case("ensemble_unwritten_output", ("ensemble-unproduced-output",), ensemble(
        "ensemble_unwritten_output", step("step_plain"),
        '{ name: "A" data_type: TYPE_FP32 dims: [1] }, { name: "Q" data_type: TYPE_FP32 dims: [1] }'),
         {"1/.keep": ""}, uses=(STEP_PLAIN,), says="ensemble output 'Q' for ensemble"),
    Case("ensemble_unused_tensor", ("ensemble-unused-tensor",), ensemble(
        "ensemble_unused_tensor", step("step_plain", '{ key: "Y" value: "A" }, { key: "Z" value: "junk" }')),
         {"1/.keep": ""}, uses=(STEP_PLAIN,), says="ensemble tensor 'junk' is unused in ensemble 'ensemble_unused_tensor'"),
    Case("ensemble_output_twice", ("ensemble-tensor-produced-once",), ensemble(
        "ensemble_output_twice", step("step_plain", '{ key: "Y" value: "A" }, { key: "Z" value: "A" }')),
         {"1/.keep": ""}, uses=(STEP_PLAIN,), says="ensemble tensor 'A' can appear in an output map only once"),
    Case("ensemble_unknown_model", ("ensemble-unknown-model",), ensemble("ensemble_unknown_model", step("absent_model")),
         {"1/.keep": ""}, says="contains models that are not available or ambiguous: absent_model"),
    Case("ensemble_unknown_input", ("ensemble-step-input",), ensemble(
        "ensemble_unknown_input", step("step_plain", inputs='{ key: "X" value: "X" }, { key: "XX" value: "X" }')),
         {"1/.keep": ""}, uses=(STEP_PLAIN,), says="is mapping to non-existing input"),
    Case("ensemble_unknown_output", ("ensemble-step-output",), ensemble(
        "ensemble_unknown_output", step("step_plain", '{ key: "YY" value: "A" }')),
         {"1/.keep": ""}, uses=(STEP_PLAIN,), says="is mapped from non-existing output"),
    Case("ensemble_unmapped_input", ("ensemble-input-mapped-once",), ensemble(
        "ensemble_unmapped_input", step("step_two_inputs")), {"1/.keep": ""},
         uses=(("step_two_inputs", python_model("step_two_inputs", io=IO.replace(
             'dims: [1] }]', 'dims: [1] }, { name: "W" data_type: TYPE_FP32 dims: [1] }]', 1)), PY_FILES),),
         says="is not mapped to any ensemble tensors"),
    Case("ensemble_step_unnamed", ("ensemble-step",), ensemble("ensemble_step_unnamed", step("")), {"1/.keep": ""},
         says="must specify 'model_name' in step 0 of ensemble 'ensemble_step_unnamed'"),
    Case("ensemble_unconnected", ("ensemble-unconnected-tensor",), ensemble(
        "ensemble_unconnected", step("step_plain") + ", " + step("step_plain", '{ key: "Y" value: "B" }', inputs='{ key: "X" value: "nowhere" }'),
        '{ name: "A" data_type: TYPE_FP32 dims: [1] }, { name: "B" data_type: TYPE_FP32 dims: [1] }'),
         {"1/.keep": ""}, uses=(STEP_PLAIN,), says="is not connected"),
    Case("ensemble_step_cycle", ("ensemble-cycle",), ensemble(
        "ensemble_step_cycle", ", ".join([
            step("step_plain", '{ key: "Y" value: "a" }, { key: "Z" value: "A" }', inputs='{ key: "X" value: "b" }'),
            step("step_plain", '{ key: "Y" value: "b" }, { key: "Z" value: "B" }', inputs='{ key: "X" value: "a" }'),
            step("step_plain", '{ key: "Y" value: "C" }')]),
        ", ".join(f'{{ name: "{n}" data_type: TYPE_FP32 dims: [1] }}' for n in "ABC")),
         {"1/.keep": ""}, uses=(STEP_PLAIN,), says="output 'A' for ensemble 'ensemble_step_cycle' is not written"),
    Case("ensemble_data_type", ("ensemble-edge-dtype",), ensemble(
        "ensemble_data_type", step("step_plain"), '{ name: "A" data_type: TYPE_INT32 dims: [1] }'),
         {"1/.keep": ""}, uses=(STEP_PLAIN,), says="inconsistent data type"),
    Case("ensemble_shape", ("ensemble-edge-shape",), ensemble(
        "ensemble_shape", step("step_plain"), '{ name: "A" data_type: TYPE_FP32 dims: [2] }'),
         {"1/.keep": ""}, uses=(STEP_PLAIN,), says="inconsistent shape"),
    Case("ensemble_batch", ("ensemble-batch-size",),
         ensemble("ensemble_batch", step("step_plain")).replace("max_batch_size: 8", "max_batch_size: 16"),
         {"1/.keep": ""}, uses=(STEP_PLAIN,),
         says="ensemble ensemble_batch allows maximum batch size 16, but it contains model step_plain which only "
              "allows maximum batch size to be 8"),
]
CASES += EXISTING_CASES
# On a server of their own: a warmup that fails while the many other cases load crashed
# tritonserver 2.51 here (killed mid-load, no log line); alone it refuses the model and stays up.
WARMUP_CASES = [
    Case("ok_warmup", ("warmup-batch-size",), python_model("ok_warmup", WARMUP % 8)),
    Case("warmup_too_large", ("warmup-batch-size",), python_model("warmup_too_large", WARMUP % 16),
         says="max allowed is 8"),
]

# Machine-dependent: a server without GPUs refuses KIND_GPU; the rules warn when this machine has none.
GPU_CASE = Case("gpu_kind", ("instance-group",), python_model("gpu_kind", "instance_group [{ kind: KIND_GPU }]"),
                says="has kind KIND_GPU but no GPUs are available")


def write_model(repo: Path, name: str, config: str | None, files: dict[str, str]) -> None:
    directory = repo / name
    directory.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (directory / "config.pbtxt").write_text(config)
    for relative, text in files.items():
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        (directory / relative).write_text(text)


def case_repository(root: Path, case: Case) -> Path:
    repo = root / case.name
    write_model(repo, case.name, case.config, case.files)
    for name, config, files in case.uses:
        write_model(repo, name, config, files)
    return repo


# tritonserver 2.51 dies of SIGSEGV on about one load in four of a python model whose warmup
# batch is over max_batch_size (5 of 20 loads of warmup_too_large alone here, 7 of 20 next to
# ok_warmup) instead of refusing it: that case runs on a server of its own, started again while it
# crashes, until the refusal it logs otherwise is seen (8 tries: all crash with p < 1e-4).
CRASHES_ON_LOAD = {"warmup_too_large"}
CRASH_TRIES = 8


@pytest.fixture(scope="module")
def server_verdicts(tmp_path_factory, triton_server) -> dict[str, str]:
    """model name -> "" (loaded) or its log lines, from one server on every case at once (and
    one per case that can crash the server)."""
    crashing = [case for case in WARMUP_CASES if case.name in CRASHES_ON_LOAD]
    verdicts = _verdicts([*CASES, *(c for c in WARMUP_CASES if c not in crashing), GPU_CASE],
                         tmp_path_factory, triton_server)
    for case in crashing:
        for attempt in range(1, CRASH_TRIES + 1):
            try:
                verdicts.update(_verdicts([case], tmp_path_factory, triton_server))
                break
            except ServerError as error:
                if "code -11" not in error.one_line() or attempt == CRASH_TRIES:
                    raise
    return verdicts


def _verdicts(cases: list[Case], tmp_path_factory, triton_server) -> dict[str, str]:
    repo = tmp_path_factory.mktemp("all_cases")
    for case in cases:
        case_repo = case_repository(tmp_path_factory.mktemp("case"), case)
        for model in case_repo.iterdir():
            if not (repo / model.name).exists():
                shutil.copytree(model, repo / model.name)
    # Without strict readiness the server answers ready once every load has finished or failed.
    server = triton_server(repo, extra_args=["--exit-on-error=false", "--strict-readiness=false"])
    states = {entry["name"]: entry.get("state", "") for entry in server.repository_index()}
    log = server.log_text().replace('\\"', '"')  # the log quotes messages and escapes their quotes
    verdicts = {}
    for case in cases:
        lines = [line for line in log.splitlines() if re.search(rf"'{re.escape(case.name)}'|\b{re.escape(case.name)}\b", line)
                 and line.startswith("E")]
        verdicts[case.name] = "" if states.get(case.name) == "READY" else "\n".join(lines) or "refused"
    return verdicts


@pytest.mark.parametrize("case", CASES + WARMUP_CASES, ids=[c.name for c in CASES + WARMUP_CASES])
def test_rules_verdict(tmp_path, case):
    violations = check_repository(case_repository(tmp_path, case))
    errors = [v for v in violations if v.is_error]
    if case.loads:
        assert errors == [], [v.one_line() for v in errors]
        assert {v.rule for v in violations} <= set(case.rules)
    else:
        assert {v.rule for v in errors} == set(case.rules), [v.one_line() for v in errors]
        assert any(case.says in v.message for v in errors), [v.one_line() for v in errors]


@pytest.mark.server
@pytest.mark.parametrize("case", CASES + WARMUP_CASES, ids=[c.name for c in CASES + WARMUP_CASES])
def test_tritonserver_verdict(server_verdicts, case):
    verdict = server_verdicts[case.name]
    if case.loads:
        assert verdict == "", f"tritonserver refused {case.name}: {verdict}"
    else:
        assert case.says in verdict, f"tritonserver: {verdict or 'loaded'}"


@pytest.mark.server
def test_gpu_kind_depends_on_this_machine(tmp_path, server_verdicts):
    violations = check_repository(case_repository(tmp_path, GPU_CASE))
    if local_gpu_ids():
        assert server_verdicts[GPU_CASE.name] == "" and violations == []
        return
    assert GPU_CASE.says in server_verdicts[GPU_CASE.name]
    assert [(v.rule, v.severity) for v in violations] == [("instance-group", WARNING)]
    assert GPU_CASE.says in violations[0].message


def test_loads_cases_warn_where_triton_logs(tmp_path):
    """Triton loads these and only logs the problem: the rules say it as warnings."""
    expected = {"ok_directories": {"version-dir", "version-policy"}, "ok_no_config": {"config-missing"},
                "ok_ensemble_writes_input": {"ensemble-input-overwritten"}}
    for case in CASES:
        if case.name in expected:
            violations = check_repository(case_repository(tmp_path / case.name, case))
            assert {v.rule for v in violations} == expected[case.name]
            assert all(v.severity == WARNING for v in violations)
