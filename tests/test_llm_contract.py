"""The ensemble's client contract: every input and output upstream's ensemble declares, per release.

No server: the configs tritonize writes are compared with upstream's lists, held here as data,
and checked against the load rules with both engines (CPU python backend and tensorrtllm).
tests/test_openai.py sends these inputs to the real server.
"""
from __future__ import annotations

import pytest

from tritonize.llm import repository as repo
from tritonize.llm.targets import RELEASES
from tritonize.spec.llm import LlmSpec
from tritonize.triton.config import data_type
from tritonize.triton.rules import check_configs

# (name, dtype, dims) of the ensemble's inputs (all optional but text_input and max_tokens) and
# outputs, as upstream declares them.
# triton-inference-server/tensorrtllm_backend, tag v0.14.0,
# all_models/inflight_batcher_llm/ensemble/config.pbtxt (TRT-LLM 0.14.0 = NGC 24.10).
UPSTREAM_0_14_0_INPUTS = (
    ("text_input", "STRING", (1,)), ("decoder_text_input", "STRING", (1,)), ("max_tokens", "INT32", (1,)),
    ("num_return_sequences", "INT32", (1,)), ("bad_words", "STRING", (-1,)), ("stop_words", "STRING", (-1,)),
    ("end_id", "INT32", (1,)), ("pad_id", "INT32", (1,)), ("top_k", "INT32", (1,)), ("top_p", "FP32", (1,)),
    ("temperature", "FP32", (1,)), ("length_penalty", "FP32", (1,)), ("repetition_penalty", "FP32", (1,)),
    ("min_length", "INT32", (1,)), ("presence_penalty", "FP32", (1,)), ("frequency_penalty", "FP32", (1,)),
    ("random_seed", "UINT64", (1,)), ("return_log_probs", "BOOL", (1,)), ("return_context_logits", "BOOL", (1,)),
    ("return_generation_logits", "BOOL", (1,)), ("beam_width", "INT32", (1,)), ("stream", "BOOL", (1,)),
    ("prompt_embedding_table", "FP16", (-1, -1)), ("prompt_table_extra_id", "UINT64", (1,)),
    ("prompt_vocab_size", "INT32", (1,)), ("embedding_bias_words", "STRING", (-1,)),
    ("embedding_bias_weights", "FP32", (-1,)),
)
UPSTREAM_0_14_0_OUTPUTS = (
    ("text_output", "STRING", (-1,)), ("cum_log_probs", "FP32", (-1,)), ("output_log_probs", "FP32", (-1, -1)),
    ("context_logits", "FP32", (-1, -1)), ("generation_logits", "FP32", (-1, -1, -1)),
    ("batch_index", "INT32", (1,)), ("sequence_index", "INT32", (1,)),
)
# NVIDIA/TensorRT-LLM, triton_backend/all_models/inflight_batcher_llm/ensemble/config.pbtxt
# (TRT-LLM 1.2.1 = NGC 26.07; read at the stored snapshot 2a9abd9536aa62ad3e4b9314be9286b1b1be523b;
# `${logits_datatype}` is filled with TYPE_FP32, fill_template's usual value).
UPSTREAM_1_2_1_INPUTS = (
    ("text_input", "STRING", (1,)), ("decoder_text_input", "STRING", (1,)), ("max_tokens", "INT32", (1,)),
    ("num_return_sequences", "INT32", (1,)), ("bad_words", "STRING", (-1,)), ("stop_words", "STRING", (-1,)),
    ("exclude_input_in_output", "BOOL", (1,)), ("end_id", "INT32", (1,)), ("pad_id", "INT32", (1,)),
    ("top_k", "INT32", (1,)), ("top_p", "FP32", (1,)), ("temperature", "FP32", (1,)),
    ("length_penalty", "FP32", (1,)), ("repetition_penalty", "FP32", (1,)), ("min_tokens", "INT32", (1,)),
    ("presence_penalty", "FP32", (1,)), ("frequency_penalty", "FP32", (1,)), ("seed", "UINT64", (1,)),
    ("return_log_probs", "BOOL", (1,)), ("return_context_logits", "BOOL", (1,)),
    ("return_generation_logits", "BOOL", (1,)), ("return_perf_metrics", "BOOL", (1,)),
    ("return_num_input_tokens", "BOOL", (1,)), ("return_num_output_tokens", "BOOL", (1,)),
    ("beam_width", "INT32", (1,)), ("stream", "BOOL", (1,)), ("prompt_embedding_table", "FP16", (-1, -1)),
    ("prompt_table_extra_id", "UINT64", (1,)), ("prompt_vocab_size", "INT32", (1,)),
    ("embedding_bias_words", "STRING", (-1,)), ("embedding_bias_weights", "FP32", (-1,)),
    ("lora_task_id", "UINT64", (1,)), ("lora_weights", "FP16", (-1, -1)), ("lora_config", "INT32", (-1, 3)),
    ("guided_decoding_guide_type", "STRING", (1,)), ("guided_decoding_guide", "STRING", (1,)),
)
UPSTREAM_1_2_1_OUTPUTS = UPSTREAM_0_14_0_OUTPUTS + (
    ("kv_cache_alloc_new_blocks", "INT32", (1,)), ("kv_cache_reused_blocks", "INT32", (1,)),
    ("kv_cache_alloc_total_blocks", "INT32", (1,)),  # declared twice upstream; once is what Triton keeps
    ("arrival_time_ns", "INT64", (1,)), ("first_scheduled_time_ns", "INT64", (1,)),
    ("first_token_time_ns", "INT64", (1,)), ("last_token_time_ns", "INT64", (1,)),
    ("acceptance_rate", "FP32", (1,)), ("total_accepted_draft_tokens", "INT32", (1,)),
    ("total_draft_tokens", "INT32", (1,)), ("num_input_tokens", "INT32", (1,)), ("num_output_tokens", "INT32", (1,)),
)
UPSTREAM = {"0.14.0": (UPSTREAM_0_14_0_INPUTS, UPSTREAM_0_14_0_OUTPUTS),
            "1.2.1": (UPSTREAM_1_2_1_INPUTS, UPSTREAM_1_2_1_OUTPUTS)}
REQUIRED = {"text_input", "max_tokens"}


def llm() -> LlmSpec:
    return LlmSpec.model_validate({"streaming": True, "target_gpu": "H100-80GB",
                                   "limits": {"max_batch_size": 4, "max_input_len": 64, "max_output_len": 32}})


def test_every_release_has_upstream_lists():
    assert {release.trtllm for release in RELEASES.values()} <= set(UPSTREAM)


@pytest.mark.parametrize("tag", sorted(RELEASES))
def test_ensemble_declares_every_upstream_tensor_with_its_type_and_shape(tag):
    release = RELEASES[tag]
    config = repo.ensemble_config(repo.Names.of("m"), llm(), release)
    upstream_inputs, upstream_outputs = UPSTREAM[release.trtllm]
    ours = {t.name: (t.data_type, tuple(t.dims), t.optional) for t in config.input}
    for name, dtype, dims in upstream_inputs:
        assert name in ours, f"{tag}: ensemble lacks input {name}"
        assert ours[name] == (data_type(dtype), dims, name not in REQUIRED), name
    outputs = {t.name: (t.data_type, tuple(t.dims)) for t in config.output}
    for name, dtype, dims in upstream_outputs:
        assert outputs.get(name) == (data_type(dtype), dims), f"{tag}: output {name}"
    # text_output is flat per batch entry ([-1] with the batch dimension), as upstream.
    assert outputs["text_output"] == (data_type("STRING"), (-1,))


@pytest.mark.parametrize("tag", sorted(RELEASES))
@pytest.mark.parametrize("runtime", ["embedded", "container"])
def test_ensemble_with_each_engine_passes_the_load_rules(tag, runtime):
    """Every ensemble input reaches a step that declares it, with the same type and shape."""
    release, names, spec = RELEASES[tag], repo.Names.of("m"), llm()
    engine = (repo.cpu_engine_config(names, spec, release=release) if runtime == "embedded"
              else repo.trtllm_engine_config(names, spec, release))
    configs = {names.preprocessing: repo.preprocessing_config(names, spec), names.engine: engine,
               names.postprocessing: repo.postprocessing_config(names, spec),
               names.ensemble: repo.ensemble_config(names, spec, release)}
    assert check_configs(configs) == []
    routed = {key for step in configs[names.ensemble].ensemble_scheduling.step for key in step.input_map.values()}
    assert {t.name for t in configs[names.ensemble].input} <= routed


def test_renamed_inputs_follow_the_release():
    """random_seed/min_length up to tensorrtllm_backend v0.19.0, seed/min_tokens after."""
    old = {t.name for t in repo.ensemble_config(repo.Names.of("m"), llm(), RELEASES["24.10"]).input}
    new = {t.name for t in repo.ensemble_config(repo.Names.of("m"), llm(), RELEASES["26.07"]).input}
    assert {"random_seed", "min_length"} <= old and not {"seed", "min_tokens"} & old
    assert {"seed", "min_tokens"} <= new and not {"random_seed", "min_length"} & new


# Upstream's tensorrt_llm_bls declares the ensemble's tensors plus multimodal and draft-model
# inputs. triton-inference-server/tensorrtllm_backend, tag v0.14.0 (9958c21167e1a8e6bbddafc09b284904aaf22ab1),
# all_models/inflight_batcher_llm/tensorrt_llm_bls/config.pbtxt: the ensemble's inputs above and
UPSTREAM_BLS_0_14_0_ONLY = (("image_input", "FP16", (3, -1, -1)), ("num_draft_tokens", "INT32", (1,)),
                            ("use_draft_logits", "BOOL", (1,)))
# NVIDIA/TensorRT-LLM, triton_backend/all_models/inflight_batcher_llm/tensorrt_llm_bls/config.pbtxt
# (TRT-LLM 1.2.1; read at the stored snapshot bff88ea886779f832686acb3f165e2b919c95b77, whose
# inputs are the 1.2.1 ensemble's above and these; `${prompt_embedding_table_data_type}` filled
# with TYPE_FP16, the ensemble's; the older snapshot 0193dbd4189221d0fd5e9f20cdb384d3da8dbc24 lacks
# image_sizes_input, which is declared anyway: it is optional).
UPSTREAM_BLS_1_2_1_ONLY = (
    ("image_input", "FP16", (-1, 3, -1, -1)), ("image_bytes_input", "UINT8", (-1, -1, -1, -1)),
    ("image_url_input", "STRING", (1,)), ("image_sizes_input", "INT64", (-1, 2)),
    ("video_bytes_input", "UINT8", (-1, -1, -1, -1)), ("num_draft_tokens", "INT32", (1,)),
    ("use_draft_logits", "BOOL", (1,)),
)
# Both releases' BLS outputs are the ensemble's.
UPSTREAM_BLS = {"0.14.0": (UPSTREAM_0_14_0_INPUTS + UPSTREAM_BLS_0_14_0_ONLY, UPSTREAM_0_14_0_OUTPUTS),
                "1.2.1": (UPSTREAM_1_2_1_INPUTS + UPSTREAM_BLS_1_2_1_ONLY, UPSTREAM_1_2_1_OUTPUTS)}


@pytest.mark.parametrize("tag", sorted(RELEASES))
def test_bls_declares_every_upstream_tensor_with_its_type_and_shape(tag):
    release = RELEASES[tag]
    config = repo.bls_config(repo.Names.of("m"), llm(), release, cpu_engine=True)
    upstream_inputs, upstream_outputs = UPSTREAM_BLS[release.trtllm]
    ours = {t.name: (t.data_type, tuple(t.dims), t.optional) for t in config.input}
    # Beyond upstream's, only what our ensemble declares too (exclude_input_in_output at v0.14.0).
    ensemble = {t.name for t in repo.ensemble_config(repo.Names.of("m"), llm(), release).input}
    assert set(ours) - {name for name, _, _ in upstream_inputs} <= ensemble, tag
    for name, dtype, dims in upstream_inputs:
        assert ours[name] == (data_type(dtype), dims, name not in REQUIRED), name
    outputs = {t.name: (t.data_type, tuple(t.dims)) for t in config.output}
    assert outputs == {name: (data_type(dtype), dims) for name, dtype, dims in upstream_outputs}, tag


@pytest.mark.parametrize("tag", sorted(RELEASES))
@pytest.mark.parametrize("cpu_engine", [True, False])
def test_bls_routes_each_input_as_the_ensemble_does(tag, cpu_engine):
    """The BLS model's routing (read off the ensemble) sends every ensemble input to a step input
    the step declares, and leaves only the BLS-only inputs unrouted (refused when set)."""
    import json

    release, names, spec = RELEASES[tag], repo.Names.of("m"), llm()
    engine = (repo.cpu_engine_config(names, spec, release=release) if cpu_engine
              else repo.trtllm_engine_config(names, spec, release))
    steps = {"preprocessing": repo.preprocessing_config(names, spec), "engine": engine,
             "postprocessing": repo.postprocessing_config(names, spec)}
    routing = json.loads(repo.bls_config(names, spec, release, cpu_engine=cpu_engine).parameters["routing"].string_value)
    declared = {role: {t.name for t in config.input} for role, config in steps.items()}
    produced = {role: {t.name for t in config.output} for role, config in steps.items()}
    assert set(routing["preprocessing"]) <= declared["preprocessing"]
    assert set(routing["engine"]) | set(routing["preprocessed"].values()) <= declared["engine"]
    assert set(routing["preprocessed"]) <= produced["preprocessing"]
    assert set(routing["postprocessing"]) <= declared["postprocessing"]
    assert set(routing["postprocessing"].values()) | set(routing["engine_outputs"]) <= produced["engine"]
    routed = set(routing["preprocessing"].values()) | set(routing["engine"].values())
    ensemble_inputs = {t.name for t in repo.ensemble_config(names, spec, release).input}
    assert routed == ensemble_inputs
    assert set(routing["engine_outputs"].values()) == {t.name for t in repo.ensemble_config(names, spec, release).output} - {"text_output"}
    assert ("cancel_key" in routing["postprocessing"].values()) == cpu_engine


# -- the llmapi target ---------------------------------------------------------------------------
# (name, dtype, dims, optional) of upstream's llmapi model (config.pbtxt; max_batch_size 0 in
# model.yaml's triton_config, so dims are the full shape).
# triton-inference-server/tensorrtllm_backend, tag v0.19.0, all_models/llmapi/tensorrt_llm/config.pbtxt
UPSTREAM_LLMAPI_0_19_0_INPUTS = (
    ("text_input", "STRING", (-1,), False), ("streaming", "BOOL", (1,), True),
    ("sampling_param_beam_width", "INT32", (1,), True), ("sampling_param_temperature", "FP32", (1,), True),
    ("sampling_param_top_k", "INT32", (1,), True), ("sampling_param_top_p", "FP32", (1,), True),
    ("sampling_param_frequency_penalty", "FP32", (1,), True), ("sampling_param_presence_penalty", "FP32", (1,), True),
    ("sampling_param_max_tokens", "INT32", (1,), True), ("sampling_param_stop", "STRING", (-1,), True),
    ("sampling_param_seed", "UINT64", (1,), True), ("sampling_param_exclude_input_from_output", "BOOL", (1,), True),
    ("return_finish_reason", "BOOL", (1,), True), ("return_stop_reason", "BOOL", (1,), True),
    ("return_cumulative_logprob", "BOOL", (1,), True),
)
UPSTREAM_LLMAPI_0_19_0_OUTPUTS = (
    ("text_output", "STRING", (-1,)), ("finish_reason", "STRING", (-1,)), ("stop_reason", "STRING", (-1,)),
    ("cumulative_logprob", "FP32", (-1,)),
)
# NVIDIA/TensorRT-LLM, triton_backend/all_models/llmapi/tensorrt_llm/config.pbtxt, read at the
# stored snapshot 0a71057313ec0626527e164a8fc0205c5822e2f5 (main after v1.2.1; the v1.2.1 tag
# itself could not be read here, so the target emits only what both versions declare).
UPSTREAM_LLMAPI_MAIN_INPUTS = (
    ("text_input", "STRING", (-1,), False), ("image_url", "STRING", (-1,), True), ("streaming", "BOOL", (1,), True),
    ("sampling_param_best_of", "INT32", (1,), True), ("sampling_param_temperature", "FP32", (1,), True),
    ("sampling_param_top_k", "INT32", (1,), True), ("sampling_param_top_p", "FP32", (1,), True),
    ("sampling_param_frequency_penalty", "FP32", (1,), True), ("sampling_param_presence_penalty", "FP32", (1,), True),
    ("sampling_param_max_tokens", "INT32", (1,), True), ("sampling_param_stop", "STRING", (-1,), True),
    ("sampling_param_seed", "UINT64", (1,), True), ("sampling_param_exclude_input_from_output", "BOOL", (1,), True),
    ("sampling_param_return_perf_metrics", "BOOL", (1,), True), ("return_finish_reason", "BOOL", (1,), True),
    ("return_stop_reason", "BOOL", (1,), True), ("return_cumulative_logprob", "BOOL", (1,), True),
    ("stop", "BOOL", (1,), True), ("lora_id", "UINT64", (1,), True), ("lora_name", "STRING", (1,), True),
    ("lora_path", "STRING", (1,), True), ("lora_ckpt_source", "STRING", (1,), True),
)
UPSTREAM_LLMAPI_MAIN_OUTPUTS = UPSTREAM_LLMAPI_0_19_0_OUTPUTS + (
    ("kv_cache_reused_block", "INT32", (-1,)), ("kv_cache_missed_block", "INT32", (-1,)),
    ("kv_cache_alloc_new_blocks", "INT32", (-1,)), ("kv_cache_alloc_total_blocks", "INT32", (-1,)),
    ("kv_cache_hit_rate", "FP32", (-1,)), ("arrival_time_ns", "INT64", (1,)), ("first_scheduled_time_ns", "INT64", (1,)),
    ("first_token_time_ns", "INT64", (1,)), ("last_token_time_ns", "INT64", (1,)), ("acceptance_rate", "FP32", (1,)),
    ("total_accepted_draft_tokens", "INT32", (1,)), ("total_draft_tokens", "INT32", (1,)),
)
UPSTREAM_LLMAPI = {"tensorrtllm_backend v0.19.0": (UPSTREAM_LLMAPI_0_19_0_INPUTS, UPSTREAM_LLMAPI_0_19_0_OUTPUTS),
                   "TensorRT-LLM main 0a71057": (UPSTREAM_LLMAPI_MAIN_INPUTS, UPSTREAM_LLMAPI_MAIN_OUTPUTS)}
# The LLM(**args) keys upstream's model.yaml sets (both versions: model, backend,
# tensor_parallel_size, pipeline_parallel_size, triton_config) and the TorchLlmArgs fields
# tritonize adds (NVIDIA/TensorRT-LLM tensorrt_llm/llmapi/llm_args.py).
LLM_ARGS = {"model", "backend", "tensor_parallel_size", "pipeline_parallel_size", "dtype", "max_batch_size",
            "max_input_len", "max_seq_len", "max_num_tokens", "max_beam_width", "kv_cache_config",
            "cuda_graph_config", "torch_compile_config", "attn_backend", "triton_config"}


@pytest.mark.parametrize("upstream", sorted(UPSTREAM_LLMAPI))
def test_llmapi_config_declares_only_upstream_tensors_with_their_types_and_shapes(upstream):
    from tritonize.llm import llmapi

    config = llmapi.model_config("m", llm())
    upstream_inputs, upstream_outputs = UPSTREAM_LLMAPI[upstream]
    theirs_in = {name: (data_type(dtype), dims, optional) for name, dtype, dims, optional in upstream_inputs}
    theirs_out = {name: (data_type(dtype), dims) for name, dtype, dims in upstream_outputs}
    for t in config.input:
        assert theirs_in.get(t.name) == (t.data_type, tuple(t.dims), t.optional), f"{upstream}: input {t.name}"
    for t in config.output:
        assert theirs_out.get(t.name) == (t.data_type, tuple(t.dims)), f"{upstream}: output {t.name}"
    # What clients of both versions send and read is all there.
    both = {n for n, *_ in UPSTREAM_LLMAPI_0_19_0_INPUTS} & {n for n, *_ in UPSTREAM_LLMAPI_MAIN_INPUTS}
    assert {t.name for t in config.input} == both
    assert {t.name for t in config.output} == {n for n, *_ in UPSTREAM_LLMAPI_0_19_0_OUTPUTS}
    assert config.backend == "python" and config.max_batch_size == 0 and not config.parameters
    assert check_configs({"m": config}) == []


def test_llmapi_model_yaml_sets_only_llm_args_and_agrees_with_the_config():
    import yaml

    from tritonize.llm import llmapi

    for streaming in (True, False):
        spec = llm().model_copy(update={"streaming": streaming, "torch_compile": True})
        args = yaml.safe_load(llmapi.model_yaml(spec, RELEASES["26.07"], model="/models/m/1/checkpoint", name="m"))
        assert set(args) <= LLM_ARGS
        config = llmapi.model_config("m", spec)
        assert args["triton_config"] == {"max_batch_size": config.max_batch_size,
                                         "decoupled": config.model_transaction_policy.decoupled}
        assert (args["max_input_len"], args["max_seq_len"], args["max_batch_size"]) == (64, 96, 4)
        assert args["backend"] == "pytorch" and args["tensor_parallel_size"] == 1
