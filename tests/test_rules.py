"""Triton load rules (tritonize.triton.rules): each test starts from a valid repository, breaks one thing and
expects exactly that rule to fire, with a one-line message naming the offending thing."""
from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from tritonize.triton.config import parse_pbtxt, to_pbtxt
from tritonize.triton.rules import ERROR, WARNING, Violation, check_configs, check_repository

PREPROCESS = """
name: "preprocess"
backend: "python"
max_batch_size: 8
input [{ name: "RAW" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "FEATURES" data_type: TYPE_FP32 dims: [4] }]
dynamic_batching { preferred_batch_size: [4, 8] max_queue_delay_microseconds: 100 }
instance_group [{ count: 1 kind: KIND_CPU }]
"""

CLASSIFIER = """
name: "classifier"
platform: "onnxruntime_onnx"
backend: "onnxruntime"
max_batch_size: 8
input [{ name: "float_input" data_type: TYPE_FP32 dims: [4] }]
output [
  { name: "label" data_type: TYPE_INT64 dims: [1] },
  { name: "probabilities" data_type: TYPE_FP32 dims: [3] }
]
"""

PIPELINE = """
name: "pipeline"
platform: "ensemble"
max_batch_size: 8
input [{ name: "RAW" data_type: TYPE_FP32 dims: [4] }]
output [
  { name: "LABEL" data_type: TYPE_INT64 dims: [1] },
  { name: "PROBS" data_type: TYPE_FP32 dims: [3] }
]
ensemble_scheduling {
  step [
    {
      model_name: "preprocess"
      model_version: -1
      input_map { key: "RAW" value: "RAW" }
      output_map { key: "FEATURES" value: "features" }
    },
    {
      model_name: "classifier"
      model_version: -1
      input_map { key: "float_input" value: "features" }
      output_map { key: "label" value: "LABEL" }
      output_map { key: "probabilities" value: "PROBS" }
    }
  ]
}
"""

MODEL_FILES = {"preprocess": "model.py", "classifier": "model.onnx"}


@pytest.fixture
def configs() -> dict[str, mc.ModelConfig]:
    """A valid python -> onnx ensemble, fresh for each test to break one thing in."""
    return {"preprocess": parse_pbtxt(PREPROCESS), "classifier": parse_pbtxt(CLASSIFIER),
            "pipeline": parse_pbtxt(PIPELINE)}


def write_repo(root: Path, configs: dict[str, mc.ModelConfig]) -> Path:
    """Write configs as a model repository; model files are empty placeholders (only the directory
    rules look at them)."""
    repo = root / "model_repo"
    for name, config in configs.items():
        version = repo / name / "1"
        version.mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(to_pbtxt(config))
        if name in MODEL_FILES:
            (version / MODEL_FILES[name]).write_bytes(b"")
    return repo


def only(violations: list[Violation], rule: str, *names: str) -> Violation:
    """Exactly one violation, of this rule, one line, naming each of `names`."""
    assert [v.rule for v in violations] == [rule], [v.one_line() for v in violations]
    violation = violations[0]
    line = violation.one_line()
    assert "\n" not in line and "(fix: " in line
    for name in names:
        assert name in line, line
    return violation


# --- valid repositories -------------------------------------------------------------------------


def test_valid_configs_pass(configs):
    assert check_configs(configs) == []


def test_valid_repository_passes(tmp_path, configs):
    assert check_repository(write_repo(tmp_path, configs)) == []


def test_config_name_may_be_empty(configs):
    configs["classifier"].name = ""  # Triton fills it in from the directory
    assert check_configs(configs) == []


def test_backend_found_from_model_file(tmp_path, configs):
    configs["classifier"].ClearField("platform")
    configs["classifier"].ClearField("backend")
    repo = write_repo(tmp_path, configs)
    assert check_repository(repo) == []  # model.onnx in 1/ tells Triton: onnxruntime
    (repo / "classifier" / "1" / "model.onnx").unlink()
    only(check_repository(repo), "platform-backend")


def test_non_batching_step_in_batching_ensemble(configs):
    # A non-batching step's dims include the batch dimension: [-1, 4] matches the ensemble's [4].
    classifier = configs["classifier"]
    classifier.max_batch_size = 0
    for io in (*classifier.input, *classifier.output):
        io.dims.insert(0, -1)
    assert check_configs(configs) == []


def test_optional_step_input_may_stay_unmapped(configs):
    configs["classifier"].input.add(name="mask", data_type=mc.TYPE_BOOL, dims=[4], optional=True)
    assert check_configs(configs) == []


# --- model rules --------------------------------------------------------------------------------


def test_dir_name(configs):
    configs["classifier"].name = "clf"
    v = only(check_configs(configs), "dir-name", "'clf'", "'classifier'")
    assert v.one_line("model_repo/classifier/config.pbtxt") == (
        "model_repo/classifier/config.pbtxt: name: unexpected directory name 'classifier' for model "
        "'clf', directory name must equal model name (fix: set name: \"classifier\" (or leave name empty), or rename the directory "
        "to 'clf')")


def test_platform_backend_mismatch(configs):
    configs["classifier"].platform = "tensorrt_plan"
    v = only(check_configs(configs), "platform-backend", "tensorrt_plan", "onnxruntime")
    assert v.loc == ("platform",)


def test_platform_backend_missing(configs):
    configs["classifier"].ClearField("platform")
    configs["classifier"].ClearField("backend")
    only(check_configs(configs), "platform-backend")


def test_ensemble_with_backend(configs):
    configs["pipeline"].backend = "python"
    only(check_configs(configs), "platform-backend", "python")


def test_max_batch_size_negative():
    config = parse_pbtxt(CLASSIFIER)
    config.max_batch_size = -1
    only(check_configs({"classifier": config}), "max-batch-size", "-1")


def test_tensor_without_name():
    config = parse_pbtxt(CLASSIFIER)
    config.output[1].name = ""
    v = only(check_configs({"classifier": config}), "tensor-name", "output 1")
    assert v.loc == ("output", 1, "name")


def test_duplicate_tensor_name():
    config = parse_pbtxt(CLASSIFIER)
    config.output[1].name = "label"
    v = only(check_configs({"classifier": config}), "duplicate-tensor", "'label'")
    assert v.field == "output[1].name"
    assert v.severity == WARNING  # Triton loads it


def test_data_type_missing():
    config = parse_pbtxt(CLASSIFIER)
    config.input[0].data_type = mc.TYPE_INVALID
    only(check_configs({"classifier": config}), "data-type", "'float_input'")


def test_dims_empty():
    config = parse_pbtxt(CLASSIFIER)
    del config.input[0].dims[:]
    v = only(check_configs({"classifier": config}), "dims", "'float_input'")
    assert v.loc == ("input", 0, "dims")


def test_dims_zero():
    config = parse_pbtxt(CLASSIFIER)
    config.output[1].dims[:] = [0]
    v = only(check_configs({"classifier": config}), "dims", "'probabilities'")
    assert v.one_line() == (
        "classifier: output[1].dims: model output 'probabilities' dimension must be integer >= 1, or "
        "-1 to indicate a variable-size dimension (dims [0] contain 0) (fix: replace the dimension "
        "with its size or -1)")


def test_reshape_element_count():
    config = parse_pbtxt(CLASSIFIER)
    config.input[0].reshape.shape[:] = [2, 3]
    only(check_configs({"classifier": config}), "reshape", "[2, 3]", "[4]")


def test_reshape_with_variable_dims():
    config = parse_pbtxt(CLASSIFIER)
    config.input[0].dims[:] = [2, 4, -1, 6]
    config.input[0].reshape.shape[:] = [8, -1, 1, 6]  # 2*4 = 8 and 6 = 1*6: allowed
    assert check_configs({"classifier": config}) == []
    config.input[0].reshape.shape[:] = [8, -1, 2, 6]
    only(check_configs({"classifier": config}), "reshape")


def test_empty_reshape_without_batching():
    config = parse_pbtxt(CLASSIFIER)
    config.max_batch_size = 0
    config.output[0].reshape.SetInParent()  # reshape { shape: [] }
    only(check_configs({"classifier": config}), "reshape", "'label'")
    config.max_batch_size = 8  # with batching, [1] -> [] is how scalars are declared
    assert check_configs({"classifier": config}) == []


def test_input_format_needs_three_dims():
    config = parse_pbtxt(CLASSIFIER)
    config.input[0].format = mc.ModelInput.FORMAT_NCHW
    only(check_configs({"classifier": config}), "input-format", "FORMAT_NCHW")


def test_shape_tensor_outside_tensorrt():
    config = parse_pbtxt(CLASSIFIER)
    config.input[0].is_shape_tensor = True
    only(check_configs({"classifier": config}), "shape-tensor", "'float_input'")


def test_preferred_batch_size_above_max(configs):
    configs["preprocess"].dynamic_batching.preferred_batch_size.append(16)
    v = only(check_configs(configs), "preferred-batch-size", "16", "8")
    assert v.loc == ("dynamic_batching", "preferred_batch_size", 2)
    assert v.one_line() == (
        "preprocess: dynamic_batching.preferred_batch_size[2]: dynamic batching preferred size must "
        "be <= max batch size (16 is outside 1..8) (fix: use sizes between 1 and 8, or raise max_batch_size)")


def test_preferred_batch_size_without_batching():
    config = parse_pbtxt(PREPROCESS)
    config.max_batch_size = 0
    for io in (*config.input, *config.output):
        io.dims.insert(0, -1)
    violations = check_configs({"preprocess": config})
    assert [v.rule for v in violations] == ["preferred-batch-size"] * 2
    assert "max_batch_size > 0" in violations[0].fix


def test_dynamic_batching_without_preferred_sizes_needs_no_batching():
    # Triton accepts dynamic_batching on a non-batching model (its queue policies still apply).
    config = parse_pbtxt(PREPROCESS)
    config.max_batch_size = 0
    config.dynamic_batching.ClearField("preferred_batch_size")
    config.dynamic_batching.default_queue_policy.max_queue_size = 4
    assert check_configs({"preprocess": config}) == []


def test_default_priority_level(configs):
    configs["preprocess"].dynamic_batching.priority_levels = 2
    configs["preprocess"].dynamic_batching.default_priority_level = 3
    only(check_configs(configs), "priority", "3", "2")


def test_preserve_ordering_with_priorities(configs):
    batching = configs["preprocess"].dynamic_batching
    batching.priority_levels = 2
    batching.default_priority_level = 1
    batching.preserve_ordering = True
    only(check_configs(configs), "preserve-ordering", "2 priority levels")


def test_response_cache_on_decoupled(configs):
    configs["preprocess"].model_transaction_policy.decoupled = True
    configs["preprocess"].response_cache.enable = True
    only(check_configs(configs), "response-cache", "decoupled")


def test_response_cache_with_sequence_batching():
    config = parse_pbtxt(PREPROCESS)
    config.sequence_batching.SetInParent()  # replaces dynamic_batching (one scheduler per model)
    config.response_cache.enable = True
    only(check_configs({"preprocess": config}), "response-cache", "sequence batching")


# --- ensemble rules -----------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["instance_group", "optimization", "model_warmup", "dynamic_batching"])
def test_ensemble_forbidden_field(configs, field):
    pipeline = configs["pipeline"]
    if field == "instance_group":
        pipeline.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    elif field == "optimization":
        pipeline.optimization.priority = mc.ModelOptimizationPolicy.PRIORITY_MAX
    elif field == "model_warmup":
        pipeline.model_warmup.add(name="zero", batch_size=1)
    else:
        pipeline.dynamic_batching.SetInParent()  # clears ensemble_scheduling (same oneof)
    v = only(check_configs(configs), "ensemble-forbidden-field", field)
    assert v.loc == (field,)


def test_ensemble_needs_scheduling(configs):
    configs["pipeline"].ClearField("ensemble_scheduling")
    only(check_configs(configs), "ensemble-scheduling")


def test_ensemble_scheduling_needs_ensemble_platform(configs):
    configs["pipeline"].platform = ""
    configs["pipeline"].backend = "python"
    only(check_configs(configs), "ensemble-platform", "python")


def test_ensemble_without_steps(configs):
    del configs["pipeline"].ensemble_scheduling.step[:]
    only(check_configs(configs), "ensemble-steps")


def test_ensemble_step_without_model_name(configs):
    configs["pipeline"].ensemble_scheduling.step[1].model_name = ""
    v = only(check_configs(configs), "ensemble-step", "step 1")
    assert v.field == "ensemble_scheduling.step[1].model_name"


def test_ensemble_unused_input(configs):
    configs["pipeline"].input.add(name="EXTRA", data_type=mc.TYPE_FP32, dims=[1])
    v = only(check_configs(configs), "ensemble-unused-input", "'EXTRA'")
    assert v.loc == ("input", 1)


def test_ensemble_unproduced_output(configs):
    configs["pipeline"].output.add(name="SCORE", data_type=mc.TYPE_FP32, dims=[1])
    v = only(check_configs(configs), "ensemble-unproduced-output", "'SCORE'")
    assert v.one_line("model_repo/pipeline/config.pbtxt") == (
        "model_repo/pipeline/config.pbtxt: output[2]: ensemble output 'SCORE' for ensemble "
        "'pipeline' is not used (no step writes it) (fix: map a step output to it in that step's output_map, or remove the output)")


def test_ensemble_required_step_input_unmapped(configs):
    configs["classifier"].input.add(name="mask", data_type=mc.TYPE_BOOL, dims=[4])
    v = only(check_configs(configs), "ensemble-input-mapped-once", "'mask'", "'classifier'")
    assert v.loc == ("ensemble_scheduling", "step", 1, "input_map")


def test_ensemble_input_map_key_twice(tmp_path, configs):
    repo = write_repo(tmp_path, configs)
    config_file = repo / "pipeline" / "config.pbtxt"
    # The protobuf map keeps only the last entry, so only the text shows the duplicate.
    entry = 'input_map {\n      key: "float_input"'
    twice = entry + '\n      value: "RAW"\n    }\n    ' + entry
    assert config_file.read_text().count(entry) == 1
    config_file.write_text(config_file.read_text().replace(entry, twice))
    v = only(check_repository(repo), "ensemble-input-mapped-once", "'float_input'", "2 times")
    assert v.field == 'ensemble_scheduling.step[1].input_map["float_input"]'
    assert v.one_line() == (
        "pipeline: ensemble_scheduling.step[1].input_map[\"float_input\"]: step 1 (model 'classifier') "
        "maps input 'float_input' 2 times (to 'RAW', 'features'); only the last one takes effect "
        "(Triton loads it) (fix: keep one input_map entry for 'float_input')")
    assert v.severity == WARNING


def test_ensemble_step_maps_unknown_input(configs):
    configs["pipeline"].ensemble_scheduling.step[1].input_map["nope"] = "features"
    only(check_configs(configs), "ensemble-step-input", "'nope'", "'float_input'")


def test_ensemble_step_maps_unknown_output(configs):
    configs["classifier"].output[0].name = "label_out"
    only(check_configs(configs), "ensemble-step-output", "'label'", "'label_out'")


def test_ensemble_unknown_model(configs):
    configs["pipeline"].ensemble_scheduling.step[1].model_name = "clasifier"
    only(check_configs(configs), "ensemble-unknown-model", "'clasifier'", "step 1")


def test_ensemble_tensor_produced_twice(configs):
    configs["preprocess"].output.add(name="GUESS", data_type=mc.TYPE_INT64, dims=[1])
    configs["pipeline"].ensemble_scheduling.step[0].output_map["GUESS"] = "LABEL"
    only(check_configs(configs), "ensemble-tensor-produced-once", "'LABEL'", "step 0", "step 1")


def test_ensemble_input_overwritten(configs):
    configs["preprocess"].output.add(name="ECHO", data_type=mc.TYPE_FP32, dims=[4])
    configs["pipeline"].ensemble_scheduling.step[0].output_map["ECHO"] = "RAW"
    v = only(check_configs(configs), "ensemble-input-overwritten", "'RAW'", "'ECHO'")
    assert v.severity == WARNING  # Triton loads it


def test_ensemble_unused_tensor(configs):
    configs["preprocess"].output.add(name="DEBUG", data_type=mc.TYPE_FP32, dims=[4])
    configs["pipeline"].ensemble_scheduling.step[0].output_map["DEBUG"] = "debug"
    only(check_configs(configs), "ensemble-unused-tensor", "'debug'")


def test_ensemble_unconnected_tensor(configs):
    configs["classifier"].input.add(name="mask", data_type=mc.TYPE_BOOL, dims=[4], optional=True)
    configs["pipeline"].ensemble_scheduling.step[1].input_map["mask"] = "mask_tensor"
    only(check_configs(configs), "ensemble-unconnected-tensor", "'mask_tensor'")


def test_ensemble_step_cycle(configs):
    # preprocess also reads the classifier's PROBS: preprocess -> classifier -> preprocess
    configs["preprocess"].input.add(name="HINT", data_type=mc.TYPE_FP32, dims=[3], optional=True)
    configs["pipeline"].ensemble_scheduling.step[0].input_map["HINT"] = "PROBS"
    v = only(check_configs(configs), "ensemble-cycle", "'preprocess'", "'classifier'")
    assert v.message == ("output 'LABEL' for ensemble 'pipeline' is not written: steps depend on "
                         "each other in a cycle: step 0 (model 'preprocess') -> step 1 (model "
                         "'classifier') -> step 0 (model 'preprocess')")


def test_ensemble_contains_itself(configs):
    inner = parse_pbtxt(PIPELINE)
    inner.name = "inner"
    configs["inner"] = inner
    configs["pipeline"].ensemble_scheduling.step[1].model_name = "inner"
    configs["pipeline"].ensemble_scheduling.step[1].ClearField("input_map")
    configs["pipeline"].ensemble_scheduling.step[1].input_map["RAW"] = "features"
    inner.ensemble_scheduling.step[1].model_name = "pipeline"
    inner.ensemble_scheduling.step[1].ClearField("input_map")
    inner.ensemble_scheduling.step[1].input_map["RAW"] = "features"
    for step in (configs["pipeline"].ensemble_scheduling.step[1], inner.ensemble_scheduling.step[1]):
        step.ClearField("output_map")
        step.output_map["LABEL"] = "LABEL"
        step.output_map["PROBS"] = "PROBS"
    v = only(check_configs(configs), "ensemble-cycle", "'inner'", "'pipeline'")
    assert v.model == "inner"


def test_ensemble_edge_dtype(configs):
    configs["classifier"].output[0].data_type = mc.TYPE_INT32
    v = only(check_configs(configs), "ensemble-edge-dtype", "'LABEL'", "INT32", "INT64")
    assert v.message == ("ensemble tensor 'LABEL': inconsistent data type: step 1 (model "
                         "'classifier') output 'label' is INT32 but ensemble output 'LABEL' is INT64")


def test_ensemble_edge_shape(configs):
    configs["classifier"].input[0].dims[:] = [5]
    v = only(check_configs(configs), "ensemble-edge-shape", "'features'", "[-1, 4]", "[-1, 5]")
    assert v.loc == ("ensemble_scheduling", "step", 1, "input_map", "float_input")


def test_ensemble_edge_shape_with_non_batching_step(configs):
    classifier = configs["classifier"]
    classifier.max_batch_size = 0
    # full shape [2, 4] against the ensemble's [-1, 4]: Triton accepts a fixed batch of 2
    classifier.input[0].dims[:] = [2, 4]
    for io in classifier.output:
        io.dims.insert(0, -1)
    assert check_configs(configs) == []
    classifier.input[0].dims[:] = [-1, 5]
    only(check_configs(configs), "ensemble-edge-shape", "[-1, 5]")


def test_ensemble_batch_size(configs):
    configs["classifier"].max_batch_size = 4
    only(check_configs(configs), "ensemble-batch-size", "8", "4", "'classifier'")


def test_ensemble_decoupled_sources():
    text = """
    name: "fanin" platform: "ensemble" max_batch_size: 0
    input [{ name: "IN" data_type: TYPE_FP32 dims: [1] }]
    output [{ name: "OUT" data_type: TYPE_FP32 dims: [1] }]
    ensemble_scheduling { step [
      { model_name: "a" input_map { key: "X" value: "IN" } output_map { key: "Y" value: "ya" } },
      { model_name: "b" input_map { key: "X" value: "IN" } output_map { key: "Y" value: "yb" } },
      { model_name: "join" input_map [{ key: "A" value: "ya" }, { key: "B" value: "yb" }]
        output_map { key: "Y" value: "OUT" } }
    ] }
    """

    def python_model(name: str, inputs: list[str], decoupled: bool) -> mc.ModelConfig:
        config = mc.ModelConfig(name=name, backend="python", max_batch_size=0)
        for tensor in inputs:
            config.input.add(name=tensor, data_type=mc.TYPE_FP32, dims=[1])
        config.output.add(name="Y", data_type=mc.TYPE_FP32, dims=[1])
        config.model_transaction_policy.decoupled = decoupled
        return config

    configs = {"fanin": parse_pbtxt(text), "a": python_model("a", ["X"], False),
               "b": python_model("b", ["X"], False), "join": python_model("join", ["A", "B"], False)}
    assert check_configs(configs) == []
    # a's responses now stream independently of b's: 'join' cannot pair them up
    configs["a"].model_transaction_policy.decoupled = True
    only(check_configs(configs), "ensemble-decoupled", "'join'")


# --- repository rules ---------------------------------------------------------------------------


def test_missing_version_directory(tmp_path, configs):
    repo = write_repo(tmp_path, configs)
    (repo / "pipeline" / "1").rmdir()  # ensembles need one too
    only(check_repository(repo), "version-dir", "'pipeline'", "pipeline/1/")


def test_version_directory_not_a_number(tmp_path, configs):
    repo = write_repo(tmp_path, configs)
    (repo / "classifier" / "v2").mkdir()
    v = only(check_repository(repo), "version-dir", "'v2'")
    assert v.severity == WARNING  # Triton ignores the directory and loads the model


def test_version_policy_names_missing_version(tmp_path, configs):
    configs["classifier"].version_policy.specific.versions[:] = [1, 2]
    repo = write_repo(tmp_path, configs)
    v = only(check_repository(repo), "version-policy", "version 2")
    assert v.severity == WARNING  # Triton logs it and loads version 1


def test_model_file_missing(tmp_path, configs):
    repo = write_repo(tmp_path, configs)
    (repo / "preprocess" / "1" / "model.py").unlink()
    v = only(check_repository(repo), "model-file", "model.py", "version 1")
    assert "preprocess/1/model.py" in v.fix


def test_default_model_filename(tmp_path, configs):
    configs["classifier"].default_model_filename = "classifier.onnx"
    repo = write_repo(tmp_path, configs)
    v = only(check_repository(repo), "model-file", "classifier.onnx")
    assert v.loc == ("default_model_filename",)
    (repo / "classifier" / "1" / "classifier.onnx").write_bytes(b"")
    assert check_repository(repo) == []


def test_tensorrtllm_needs_no_model_file(tmp_path, configs):
    engine = mc.ModelConfig(name="tensorrt_llm", backend="tensorrtllm", max_batch_size=4)
    engine.input.add(name="input_ids", data_type=mc.TYPE_INT32, dims=[-1])
    engine.output.add(name="output_ids", data_type=mc.TYPE_INT32, dims=[-1, -1])
    engine.parameters["gpt_model_path"].string_value = "/engines/llama"
    configs["tensorrt_llm"] = engine
    assert check_repository(write_repo(tmp_path, configs)) == []


def test_directory_name_differs(tmp_path, configs):
    repo = write_repo(tmp_path, configs)
    (repo / "preprocess").rename(repo / "prep")
    violations = check_repository(repo)
    assert [v.rule for v in violations] == ["ensemble-unknown-model", "dir-name"]
    assert violations[1].model == "prep"


def test_parse_error(tmp_path, configs):
    repo = write_repo(tmp_path, configs)
    (repo / "classifier" / "config.pbtxt").write_text('name: "classifier"\nmax_batch_sise: 8\n')
    v = only(check_repository(repo), "parse", "line 2", "max_batch_sise")
    assert v.model == "classifier"  # and the ensemble step using it is not reported as unknown


def test_config_missing(tmp_path, configs):
    repo = write_repo(tmp_path, configs)
    (repo / "classifier" / "config.pbtxt").unlink()
    v = only(check_repository(repo), "config-missing", "'classifier'", "onnxruntime")
    assert v.severity == WARNING  # auto-complete builds it from model.onnx
    (repo / "classifier" / "1" / "model.onnx").unlink()
    v = only(check_repository(repo), "config-missing", "'classifier'", "Could not determine backend")
    assert v.severity == ERROR


def test_repository_missing(tmp_path):
    v = only(check_repository(tmp_path / "nowhere"), "repository", "nowhere")
    assert v.model == ""


def test_step_version_against_versions_not_written_yet(configs):
    # The build checks configs before writing directories: `versions` tells what each will hold.
    configs["pipeline"].ensemble_scheduling.step[1].model_version = 2
    versions = {"preprocess": [1], "classifier": [1], "pipeline": [1]}
    only(check_configs(configs, versions=versions), "ensemble-step-version", "'classifier'", "version 2")
    configs["pipeline"].ensemble_scheduling.step[1].model_version = 1
    assert check_configs(configs, versions=versions) == []
