"""The LLM path without a server: spec errors, the memory plan, the engine command, and the
container-runtime configs of both supported releases against committed golden files.

Regenerate the golden files after an intended change with TRITONIZE_UPDATE_GOLDEN=1.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tritonize.errors import SpecError
from tritonize.llm import engine as engine_step
from tritonize.llm import repository as repo
from tritonize.llm.targets import RELEASES
from tritonize.spec import LlmSpec
from tritonize.terminal import Terminal
from tritonize.triton.config import to_pbtxt
from tritonize.triton.rules import check_configs, check_repository

GOLDEN = Path(__file__).parent / "golden" / "llm"
# Llama-2-70B's shape, for memory plans (no weights needed).
LLAMA_70B = {"hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
             "intermediate_size": 28672, "vocab_size": 32000}
LLAMA_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "intermediate_size": 14336, "vocab_size": 128256}


def golden_llm() -> LlmSpec:
    return LlmSpec.model_validate({
        "streaming": True, "target_gpu": "H100-80GB",
        "quantization": {"mode": "fp8", "kv_cache_fp8": True},
        "limits": {"max_batch_size": 8, "max_input_len": 1024, "max_output_len": 512},
    })


def container_configs(release: str):
    llm = golden_llm()
    names = repo.Names.of("llama")
    return {
        names.preprocessing: repo.preprocessing_config(names, llm),
        names.engine: repo.trtllm_engine_config(names, llm, RELEASES[release]),
        names.postprocessing: repo.postprocessing_config(names, llm),
        names.ensemble: repo.ensemble_config(names, llm, RELEASES[release]),
        names.bls: repo.bls_config(names, llm, RELEASES[release]),
    }


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_container_configs_match_golden_files_and_pass_the_load_rules(release):
    configs = container_configs(release)
    assert check_configs(configs) == []
    for name, config in configs.items():
        text = to_pbtxt(config)
        assert "${" not in text  # no unfilled template value, the most reported failure
        golden = GOLDEN / release / name / "config.pbtxt"
        if os.environ.get("TRITONIZE_UPDATE_GOLDEN"):
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
        assert text == golden.read_text(), f"{golden} differs (TRITONIZE_UPDATE_GOLDEN=1 regenerates it)"


def test_releases_differ_where_the_backend_does():
    old = {t.name for t in container_configs("24.10")["llama_tensorrt_llm"].input}
    new = {t.name for t in container_configs("26.07")["llama_tensorrt_llm"].input}
    # 26.07 (TRT-LLM 1.2.1) reads `seed` (random_seed would be ignored) and `min_tokens`, and adds
    # perf metrics, token counts, LoRA and guided decoding (repository.contract_inputs).
    assert new - old == {"return_perf_metrics", "return_num_input_tokens", "return_num_output_tokens", "lora_task_id",
                         "lora_weights", "lora_config", "guided_decoding_guide_type", "guided_decoding_guide",
                         "min_tokens", "seed"}
    assert old - new == {"min_length", "random_seed"}
    outputs = [t.name for t in container_configs("26.07")["llama_tensorrt_llm"].output]
    assert {"batch_index", "num_output_tokens"} <= set(outputs)
    engine = container_configs("24.10")["llama_tensorrt_llm"]
    assert engine.backend == "tensorrtllm" and engine.model_transaction_policy.decoupled
    assert engine.parameters["gpt_model_path"].string_value == "/models/llama_tensorrt_llm/1/engine"


def flags_of(llm: LlmSpec, release: str = "24.10") -> dict[str, str]:
    argv = engine_step.engine_command(llm, RELEASES[release], "ckpt", "out")
    return {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1, 2)}


def test_engine_command_at_0_14_switches_on_the_fused_kernels_but_not_fp8_fmha_without_fp8_kv():
    flags = flags_of(golden_llm())  # FP8 with an FP8 KV cache, Hopper
    assert flags["--checkpoint_dir"] == "ckpt" and flags["--output_dir"] == "out"
    assert flags["--gemm_plugin"] == "fp8"
    assert flags["--use_fp8_context_fmha"] == "enable"
    for flag, value in {"--kv_cache_type": "paged", "--remove_input_padding": "enable",
                        "--gpt_attention_plugin": "auto", "--use_fused_mlp": "enable",
                        "--use_paged_context_fmha": "enable", "--multiple_profiles": "enable",
                        "--max_batch_size": "8", "--max_input_len": "1024", "--max_seq_len": "1536",
                        "--max_num_tokens": "8192", "--max_beam_width": "1"}.items():
        assert flags[flag] == value, flag
    # FP8 weights with a half-precision KV cache: paged + FP8 context FMHA is the broken 0.14
    # recipe (NVIDIA/TensorRT-LLM#2447).
    no_fp8_kv = golden_llm().model_copy(update={"quantization": golden_llm().quantization.model_copy(
        update={"kv_cache_fp8": False})})
    assert "--use_fp8_context_fmha" not in flags_of(no_fp8_kv)
    ada = flags_of(golden_llm().model_copy(update={"target_gpu": "L40S-48GB"}))
    assert ada["--gemm_plugin"] == "fp8" and "--use_fp8_context_fmha" not in ada
    fp16 = flags_of(LlmSpec.model_validate({"target_gpu": "A100-80GB", "tensor_parallel": 2}))
    assert fp16["--gemm_plugin"] == "auto" and "--use_fp8_context_fmha" not in fp16
    assert fp16["--reduce_fusion"] == "enable" and fp16["--workers"] == "2"


def test_engine_command_at_1_x_does_not_repeat_its_defaults():
    flags = flags_of(golden_llm(), "26.07")
    # PluginConfig defaults at TensorRT-LLM 1.x (tensorrt_llm/plugin/plugin.py): not repeated.
    for default in ("--kv_cache_type", "--remove_input_padding", "--gpt_attention_plugin", "--use_fused_mlp",
                    "--use_paged_context_fmha", "--use_fp8_context_fmha"):
        assert default not in flags, default
    assert flags["--gemm_plugin"] == "fp8" and flags["--multiple_profiles"] == "enable"
    assert flags["--max_seq_len"] == "1536"


# The engine model's contract as the upstream templates declare it: tensor -> (dtype, dims,
# scalar reshape), and the parameter keys. Only what this project emits is held; the templates
# declare more optional tensors.
UPSTREAM_ENGINE_CONTRACT = {
    "24.10": {
        # triton-inference-server/tensorrtllm_backend v0.14.0,
        # all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt (random_seed, min_length;
        # request_output_len and streaming without reshape)
        "inputs": {"input_ids": ("INT32", [-1], False), "input_lengths": ("INT32", [1], True),
                   "request_output_len": ("INT32", [1], False), "end_id": ("INT32", [1], True),
                   "pad_id": ("INT32", [1], True), "stop_words_list": ("INT32", [2, -1], False),
                   "bad_words_list": ("INT32", [2, -1], False), "temperature": ("FP32", [1], True),
                   "runtime_top_k": ("INT32", [1], True), "runtime_top_p": ("FP32", [1], True),
                   "random_seed": ("UINT64", [1], True), "min_length": ("INT32", [1], True),
                   "streaming": ("BOOL", [1], False)},
        "outputs": {"output_ids": ("INT32", [-1, -1]), "sequence_length": ("INT32", [-1])},
    },
    "26.07": {
        # NVIDIA/TensorRT-LLM v1.2.1,
        # triton_backend/all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt (seed,
        # min_tokens; every scalar reshaped)
        "inputs": {"input_ids": ("INT32", [-1], False), "input_lengths": ("INT32", [1], True),
                   "request_output_len": ("INT32", [1], True), "end_id": ("INT32", [1], True),
                   "pad_id": ("INT32", [1], True), "stop_words_list": ("INT32", [2, -1], False),
                   "bad_words_list": ("INT32", [2, -1], False), "temperature": ("FP32", [1], True),
                   "runtime_top_k": ("INT32", [1], True), "runtime_top_p": ("FP32", [1], True),
                   "seed": ("UINT64", [1], True), "min_tokens": ("INT32", [1], True),
                   "num_return_sequences": ("INT32", [1], True), "return_perf_metrics": ("BOOL", [1], True),
                   "streaming": ("BOOL", [1], True)},
        "outputs": {"output_ids": ("INT32", [-1, -1]), "sequence_length": ("INT32", [-1]),
                    "batch_index": ("INT32", [1])},
    },
}
# The engine tensors the ensemble's full client contract routes to the engine
# (repository.contract_inputs / contract_outputs), as the same two templates declare them
# (`${prompt_embedding_table_data_type}` and `${logits_datatype}` filled with TYPE_FP16 / TYPE_FP32).
_CONTRACT_ENGINE_INPUTS = {
    "num_return_sequences": ("INT32", [1], True), "exclude_input_in_output": ("BOOL", [1], True),
    "len_penalty": ("FP32", [1], True), "repetition_penalty": ("FP32", [1], True),
    "presence_penalty": ("FP32", [1], True), "frequency_penalty": ("FP32", [1], True),
    "return_log_probs": ("BOOL", [1], True), "return_context_logits": ("BOOL", [1], True),
    "return_generation_logits": ("BOOL", [1], True), "beam_width": ("INT32", [1], True),
    "prompt_embedding_table": ("FP16", [-1, -1], False), "prompt_vocab_size": ("INT32", [1], True)}
_CONTRACT_ENGINE_OUTPUTS = {
    "cum_log_probs": ("FP32", [-1]), "output_log_probs": ("FP32", [-1, -1]), "context_logits": ("FP32", [-1, -1]),
    "generation_logits": ("FP32", [-1, -1, -1]), "batch_index": ("INT32", [1]), "sequence_index": ("INT32", [1])}
UPSTREAM_ENGINE_CONTRACT["24.10"]["inputs"].update(_CONTRACT_ENGINE_INPUTS)
UPSTREAM_ENGINE_CONTRACT["24.10"]["outputs"].update(_CONTRACT_ENGINE_OUTPUTS)
UPSTREAM_ENGINE_CONTRACT["26.07"]["inputs"].update({
    **_CONTRACT_ENGINE_INPUTS, "return_num_input_tokens": ("BOOL", [1], True),
    "return_num_output_tokens": ("BOOL", [1], True), "lora_task_id": ("UINT64", [1], True),
    "lora_weights": ("FP16", [-1, -1], False), "lora_config": ("INT32", [-1, 3], False),
    "guided_decoding_guide_type": ("STRING", [1], False), "guided_decoding_guide": ("STRING", [1], False)})
UPSTREAM_ENGINE_CONTRACT["26.07"]["outputs"].update({
    **_CONTRACT_ENGINE_OUTPUTS, **{name: ("INT32", [1]) for name in (
        "kv_cache_alloc_new_blocks", "kv_cache_reused_blocks", "kv_cache_alloc_total_blocks",
        "total_accepted_draft_tokens", "total_draft_tokens", "num_input_tokens", "num_output_tokens")},
    **{name: ("INT64", [1]) for name in (
        "arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns")},
    "acceptance_rate": ("FP32", [1])})
UPSTREAM_ENGINE_PARAMETERS = {  # declared in both templates above
    "max_beam_width", "FORCE_CPU_ONLY_INPUT_TENSORS", "gpt_model_type", "gpt_model_path", "batch_scheduler_policy",
    "kv_cache_free_gpu_mem_fraction", "enable_kv_cache_reuse", "exclude_input_in_output", "enable_chunked_context",
    "decoding_mode", "executor_worker_path", "max_attention_window_size"}


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_engine_config_declares_only_what_the_upstream_template_of_the_release_declares(release):
    from tritonclient.grpc import model_config_pb2 as mc

    contract = UPSTREAM_ENGINE_CONTRACT[release]
    names = repo.Names.of("llama")
    config = repo.trtllm_engine_config(names, golden_llm(), RELEASES[release])
    for tensor in config.input:
        dtype, dims, scalar = contract["inputs"][tensor.name]
        assert (mc.DataType.Name(tensor.data_type), list(tensor.dims), tensor.HasField("reshape")) == \
            (f"TYPE_{dtype}", dims, scalar), tensor.name
    for tensor in config.output:
        assert (mc.DataType.Name(tensor.data_type), list(tensor.dims)) == \
            tuple([f"TYPE_{contract['outputs'][tensor.name][0]}", contract["outputs"][tensor.name][1]]), tensor.name
    assert set(config.parameters) <= UPSTREAM_ENGINE_PARAMETERS
    # The ensemble feeds the engine under the same names.
    ensemble = repo.ensemble_config(names, golden_llm(), RELEASES[release])
    engine_step_inputs = set(ensemble.ensemble_scheduling.step[1].input_map)
    assert engine_step_inputs <= set(contract["inputs"])


def test_memory_plan_counts_weights_and_kv_cache():
    llm = LlmSpec.model_validate({"target_gpu": "H100-80GB", "quantization": {"mode": "fp8"},
                                  "limits": {"max_batch_size": 16, "max_input_len": 2048, "max_output_len": 512}})
    plan = engine_step.memory_plan(llm, LLAMA_8B)
    assert 7.9e9 < plan.parameters < 8.1e9  # Llama-3-8B has 8.03 B parameters
    # 32 layers x 8 KV heads x 128 dims x (K and V) x 2 bytes
    assert plan.kv_bytes_per_token == 32 * 8 * 128 * 2 * 2
    assert plan.kv_tokens_needed == 16 * 2560
    assert plan.fits


def test_memory_plan_refuses_a_model_that_cannot_fit():
    llm = LlmSpec.model_validate({"target_gpu": "L4-24GB", "quantization": {"mode": "fp8"}})
    plan = engine_step.memory_plan(llm, LLAMA_70B)
    assert not plan.fits
    with pytest.raises(SpecError, match="weights .* do not fit in L4-24GB"):
        engine_step.require_fit(plan, llm)


def test_memory_plan_refuses_a_kv_cache_larger_than_what_is_left():
    llm = LlmSpec.model_validate({"target_gpu": "H100-80GB", "quantization": {"mode": "fp8"},
                                  "limits": {"max_batch_size": 256, "max_input_len": 4096, "max_output_len": 4096}})
    plan = engine_step.memory_plan(llm, LLAMA_8B)
    with pytest.raises(SpecError, match=r"KV cache .*room for \d+ full-length sequences.*lower limits.max_batch_size"):
        engine_step.require_fit(plan, llm)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, repo_root):
    from test_llm import shared_tiny_llm

    return shared_tiny_llm(tmp_path_factory, repo_root)


def write_spec(tiny_dir: Path, llm_block: str, name: str = "model.yaml", runtime: str = "embedded") -> Path:
    spec = tiny_dir.parent / name
    spec.write_text(f"repository: repo_{name.split('.')[0]}\nruntime: {runtime}\nmodels:\n"
                    f"  - name: tiny_llm\n    source: {{framework: huggingface, path: tiny}}\n"
                    f"    llm:\n{llm_block}")
    return spec


@pytest.mark.parametrize("block, line, field, message", [
    ("      streaming: true\n      beams: 2\n", 8, "models[0].llm.beams", "unknown key 'beams'"),
    ("      target_gpu: A100-80GB\n      quantization: {mode: fp8}\n", 8, "models[0].llm.quantization.mode",
     "A100-80GB has no FP8 tensor cores"),
    ("      limits: {max_input_len: 400, max_output_len: 200}\n", 7, "models[0].llm.limits.max_output_len",
     "exceeds the model's max_position_embeddings 512"),
    ("      release: '25.01'\n", 7, "models[0].llm.release", "release '25.01' is not supported"),
    ("      quantization: {kv_cache_fp8: true}\n", 7, "models[0].llm.quantization", "kv_cache_fp8 needs mode: fp8"),
    ("      limits: {max_beam_width: 4}\n", 7, "models[0].llm.limits.max_beam_width", "CPU engine decodes one beam"),
    ("      release: '24.10'\n      engine: llmapi\n", 8, "models[0].llm.engine",
     "release 24.10 has no TensorRT-LLM LLM API target (fix: set llm.release to one of: 26.07, or engine: tensorrt_llm)"),
])
def test_llm_block_errors_name_the_line_and_field(tiny_dir, tmp_path, block, line, field, message):
    """Through build: some checks need the model directory, which a factory creates at build time."""
    from tritonize import build
    from tritonize.terminal import Terminal

    spec = write_spec(tiny_dir, block, name="bad.yaml")
    with pytest.raises(SpecError) as error:
        build(spec, tmp_path / "repo", terminal=Terminal(quiet=True))
    text = error.value.one_line()
    assert "\n" not in text
    assert f"bad.yaml:{line}: {field}: " in text and message in text, text


# No trtllm-build on this PATH, even if one were installed: the engine step stays pending.
PATH_WITHOUT_TRTLLM = "/usr/bin:/bin"


@pytest.fixture(scope="module")
def container_build(tiny_dir):
    """(spec, BuildResult) of a container-runtime build of the tiny model for release 26.07."""
    from tritonize import build

    spec = write_spec(tiny_dir, "      streaming: true\n      release: '26.07'\n      engine: tensorrt_llm\n"
                                "      limits: {max_batch_size: 4, max_input_len: 64, max_output_len: 48}\n",
                      name="container.yaml", runtime="container")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", PATH_WITHOUT_TRTLLM)
        return spec, build(spec, terminal=Terminal(quiet=True, stderr=True))


def test_container_build_writes_checkpoint_and_pending_engine_step(container_build):
    _, result = container_build
    out = result.repository
    assert check_repository(out) == []
    engine = result.manifest.models["tiny_llm_tensorrt_llm"].engine
    assert engine.status == "pending"
    assert engine.image == "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3"
    assert engine.command.startswith("trtllm-build --checkpoint_dir checkpoint --output_dir engine ")
    version_dir = out / "tiny_llm_tensorrt_llm" / "1"
    assert (version_dir / "checkpoint" / "config.json").is_file()
    assert (version_dir / "checkpoint" / "rank0.safetensors").is_file()
    script = (version_dir / "build_engine.sh").read_text()
    assert "--gemm_plugin auto" in script and engine.cache_key in script
    for path in out.rglob("*"):
        if path.suffix in (".pbtxt", ".sh", ".json"):
            assert "${" not in path.read_text(), path
    samples = result.manifest.models["tiny_llm"].samples
    assert samples is not None and samples.outputs is None  # TRT fp16 may differ from CPU fp32


def test_build_engines_says_plainly_where_to_run_it(container_build, monkeypatch, capsys):
    """The engine stage's error: the spec's file, line and the llm block of the model, then the fix."""
    from tritonize.cli import main

    spec_path, result = container_build
    before = sorted(p.relative_to(result.repository) for p in result.repository.rglob("*"))
    monkeypatch.setenv("PATH", PATH_WITHOUT_TRTLLM)
    monkeypatch.chdir(spec_path.parent)
    assert main(["build", spec_path.name, "--stage", "engines"]) == 2
    line = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()][-1]
    script = result.repository / "tiny_llm_tensorrt_llm" / "1" / "build_engine.sh"
    assert line == (f"error: container.yaml:6: models[0].llm: tiny_llm_tensorrt_llm: TensorRT-LLM is not installed "
                    f"here, so the engine cannot be built (fix: run bash {script} inside "
                    "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3 on a H100-80GB)")
    assert sorted(p.relative_to(result.repository) for p in result.repository.rglob("*")) == before


def test_too_short_calibration_text_names_the_file_and_field(tmp_path):
    from tritonize.errors import ConversionError
    from tritonize.llm.quantize import calibration_texts
    from tritonize.spec.llm import CalibrationSpec

    text = tmp_path / "calib.txt"
    text.write_text("one line\n\nanother line\n")  # 2 samples: none left over to measure the error on
    with pytest.raises(ConversionError) as error:
        calibration_texts(CalibrationSpec(), text)
    # The calibration file is the file; the location is the model's field, placed by the build.
    error.value.within("models", 0)
    assert error.value.one_line().startswith(
        f"{text}: models[0].llm.quantization.calibration.text_file: calibration text has 2 non-empty lines")


def test_fp8_above_the_error_budget_fails_the_build_naming_the_field(tiny_dir):
    from tritonize import build
    from tritonize.errors import ConversionError

    spec = write_spec(tiny_dir, "      quantization: {mode: fp8, max_logit_error: 0.01}\n"
                                "      limits: {max_batch_size: 2, max_input_len: 32, max_output_len: 16}\n",
                      name="strict.yaml")
    with pytest.raises(ConversionError) as error:
        build(spec, terminal=Terminal(quiet=True, stderr=True))
    text = error.value.one_line()
    assert "models[0].llm.quantization.max_logit_error" in text and "exceeds the budget 0.01" in text, text


@pytest.mark.parametrize("config, llm, field, message", [
    ({"model_type": "gpt2"}, "{release: '24.10'}", "models[0].source", "model_type 'gpt2' is not supported by the "
     "LLM path (supported: llama (tensorrt_llm at 24.10/26.07; llmapi at 26.07), mistral (tensorrt_llm at "
     "24.10/26.07; llmapi at 26.07), qwen2 (tensorrt_llm at 24.10/26.07; llmapi at 26.07), qwen3 (tensorrt_llm at "
     "26.07; llmapi at 26.07), gemma (tensorrt_llm at 24.10/26.07), phi3 (llmapi at 26.07))"),
    ({"model_type": "qwen3"}, "{release: '24.10'}", "models[0].llm.release",
     "model_type 'qwen3' is not served by TensorRT-LLM of release 24.10 (fix: set llm.release to one of: 26.07)"),
    ({"model_type": "phi3"}, "{release: '26.07', engine: tensorrt_llm}", "models[0].llm.engine",
     "model_type 'phi3' is not served by the tensorrt_llm engine target (fix: use a target that serves it: "
     "llmapi at 26.07)"),
    ({"model_type": "gemma"}, "{release: '26.07'}", "models[0].llm.engine",  # llmapi: 26.07's default
     "model_type 'gemma' is not served by TensorRT-LLM's LLM API (PyTorch backend) (fix: use a target that serves "
     "it: tensorrt_llm at 24.10/26.07)"),
])
def test_a_family_the_target_cannot_serve_is_refused_at_spec_time(tmp_path, config, llm, field, message):
    import json

    from tritonize.spec import load_spec

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    spec = tmp_path / "model.yaml"
    spec.write_text(f"models:\n  - name: m\n    source: {{framework: huggingface, path: m}}\n"
                    f"    llm: {llm}\n")
    with pytest.raises(SpecError) as error:
        load_spec(spec)
    assert "model.yaml:" in error.value.one_line() and f"{field}: {message}" in error.value.one_line()


def test_a_sliding_window_reaches_the_engine_as_max_attention_window_size():
    names = repo.Names.of("mistral")
    config = repo.trtllm_engine_config(names, golden_llm(), RELEASES["24.10"], attention_window=4096)
    assert config.parameters["max_attention_window_size"].string_value == "4096"
    assert "max_attention_window_size" not in repo.trtllm_engine_config(names, golden_llm(), RELEASES["24.10"]).parameters


@pytest.fixture(scope="module")
def llmapi_container_build(tiny_dir):
    """A container-runtime build of the tiny model for 26.07's default target, the LLM API."""
    from tritonize import build

    spec = write_spec(tiny_dir, "      streaming: true\n      release: '26.07'\n      quantization: {mode: fp8}\n"
                                "      torch_compile: true\n      cuda_graphs: false\n"
                                "      limits: {max_batch_size: 4, max_input_len: 64, max_output_len: 48}\n",
                      name="llmapi_container.yaml", runtime="container")
    return spec, build(spec, terminal=Terminal(quiet=True, stderr=True))


def test_llmapi_container_build_writes_upstreams_layout_without_vendoring_its_model_py(llmapi_container_build):
    import yaml

    _, result = llmapi_container_build
    out = result.repository
    assert check_repository(out) == []
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["tiny_llm"]  # one model, no ensemble
    version_dir = out / "tiny_llm" / "1"
    # Not upstream's: a placeholder whose load fails naming the script that installs upstream's.
    assert "install_model_py.sh" in (version_dir / "model.py").read_text()
    assert not (version_dir / "helpers.py").exists()
    entry = result.manifest.models["tiny_llm"]
    assert entry.kind == "llm-llmapi" and entry.engine.status == "pending"
    assert entry.engine.script == "1/install_model_py.sh"
    script = (version_dir / "install_model_py.sh").read_text()
    assert "--branch v1.2.1" in script and "triton_backend/all_models/llmapi/tensorrt_llm/1" in script
    args = yaml.safe_load((version_dir / "model.yaml").read_text())
    # Absolute: the LLM API opens it from the server's cwd inside the container.
    assert args["model"] == "/models/tiny_llm/1/checkpoint"
    assert args["torch_compile_config"] == {} and args["cuda_graph_config"] is None
    assert args["kv_cache_config"] == {"free_gpu_memory_fraction": 0.9, "enable_block_reuse": False, "dtype": "auto"}
    assert (version_dir / "checkpoint" / "hf_quant_config.json").is_file()
    assert result.manifest.serving_image() == "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3"
