"""The TensorRT-LLM serving models as Triton configs (triton-inference-server/tensorrtllm_backend
v0.14.0, all_models/inflight_batcher_llm/): preprocessing ->
tensorrt_llm -> postprocessing and the ensemble that chains them, for one LLM in the spec.

Model names, for a spec model called NAME:
    NAME                  the ensemble clients call (text_input, max_tokens, ... -> text_output)
    NAME_preprocessing    tokenizer (python)
    NAME_tensorrt_llm     the engine: C++ `tensorrtllm` backend (container runtime) or the CPU
                          engine python backend with the same tensors (embedded runtime)
    NAME_postprocessing   detokenizer (python)
    NAME_bls              optional (llm.bls): the ensemble's interface as one python model that
                          calls the three itself (tensorrt_llm_bls)
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as mc

from ..spec.llm import DIRECTORY_SUFFIXES, LlmSpec
from ..triton.config import data_type
from .targets import RELEASES, Release

# Where the container runtime mounts the repository (docker/serve.sh); the engine path in
# the tensorrt_llm config is absolute because the C++ backend resolves it against its own cwd.
CONTAINER_REPOSITORY = "/models"
DEFAULT_RELEASE = RELEASES["24.10"]  # the spec's default container.release
TOKENIZER_DIR = "tokenizer"        # inside the pre/postprocessing version directories
CHECKPOINT_DIR = "checkpoint"      # TRT-LLM checkpoint, inside the engine's version directory
ENGINE_DIR = "engine"              # trtllm-build output, inside the engine's version directory


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    dims: tuple[int, ...]
    optional: bool = False
    scalar: bool = False        # dims [1] fed to the engine as a scalar: reshape { shape: [] }
    ragged: bool = False        # allow_ragged_batch (per-request lengths differ)


@dataclass(frozen=True)
class Names:
    ensemble: str
    preprocessing: str
    engine: str
    postprocessing: str
    bls: str

    @classmethod
    def of(cls, model_name: str) -> Names:
        return cls(model_name, **{role: model_name + suffix for role, suffix in DIRECTORY_SUFFIXES.items()})


ENSEMBLE_INPUTS = (
    Tensor("text_input", "STRING", (1,)),
    Tensor("max_tokens", "INT32", (1,)),
    Tensor("bad_words", "STRING", (-1,), optional=True),
    Tensor("stop_words", "STRING", (-1,), optional=True),
    Tensor("end_id", "INT32", (1,), optional=True),
    Tensor("pad_id", "INT32", (1,), optional=True),
    Tensor("top_k", "INT32", (1,), optional=True),
    Tensor("top_p", "FP32", (1,), optional=True),
    Tensor("temperature", "FP32", (1,), optional=True),
    Tensor("random_seed", "UINT64", (1,), optional=True),
    Tensor("stream", "BOOL", (1,), optional=True),
)
ENSEMBLE_OUTPUTS = (Tensor("text_output", "STRING", (-1,)),)

PREPROCESSING_INPUTS = (
    Tensor("QUERY", "STRING", (1,)),
    Tensor("REQUEST_OUTPUT_LEN", "INT32", (1,)),
    Tensor("BAD_WORDS_DICT", "STRING", (-1,), optional=True),
    Tensor("STOP_WORDS_DICT", "STRING", (-1,), optional=True),
    Tensor("END_ID", "INT32", (1,), optional=True),
    Tensor("PAD_ID", "INT32", (1,), optional=True),
    Tensor("TOP_K", "INT32", (1,), optional=True),
    Tensor("TOP_P", "FP32", (1,), optional=True),
    Tensor("TEMPERATURE", "FP32", (1,), optional=True),
    Tensor("RANDOM_SEED", "UINT64", (1,), optional=True),
)
PREPROCESSING_OUTPUTS = (
    Tensor("INPUT_ID", "INT32", (-1,)),
    Tensor("REQUEST_INPUT_LEN", "INT32", (1,)),
    Tensor("BAD_WORDS_IDS", "INT32", (2, -1)),
    Tensor("STOP_WORDS_IDS", "INT32", (2, -1)),
    Tensor("REQUEST_OUTPUT_LEN", "INT32", (-1,)),
    Tensor("OUT_END_ID", "INT32", (1,)),
    Tensor("OUT_PAD_ID", "INT32", (1,)),
    # Sampling parameters with the spec's defaults filled in where the request has none, so the
    # defaults hold on both runtimes (the tensorrtllm backend has no notion of them).
    Tensor("OUT_TOP_K", "INT32", (1,)),
    Tensor("OUT_TOP_P", "FP32", (1,)),
    Tensor("OUT_TEMPERATURE", "FP32", (1,)),
    Tensor("OUT_RANDOM_SEED", "UINT64", (1,)),
)
# The engine inputs the CPU engine implements; the same set goes into the container config so the
# ensemble is identical on both runtimes.
ENGINE_INPUTS = (
    Tensor("input_ids", "INT32", (-1,), ragged=True),
    Tensor("input_lengths", "INT32", (1,), scalar=True),
    Tensor("request_output_len", "INT32", (1,)),
    Tensor("end_id", "INT32", (1,), optional=True, scalar=True),
    Tensor("pad_id", "INT32", (1,), optional=True, scalar=True),
    Tensor("stop_words_list", "INT32", (2, -1), optional=True, ragged=True),
    Tensor("bad_words_list", "INT32", (2, -1), optional=True, ragged=True),
    Tensor("temperature", "FP32", (1,), optional=True, scalar=True),
    Tensor("runtime_top_k", "INT32", (1,), optional=True, scalar=True),
    Tensor("runtime_top_p", "FP32", (1,), optional=True, scalar=True),
    Tensor("random_seed", "UINT64", (1,), optional=True, scalar=True),
    Tensor("streaming", "BOOL", (1,), optional=True),
)
ENGINE_OUTPUTS = (
    Tensor("output_ids", "INT32", (-1, -1)),
    Tensor("sequence_length", "INT32", (-1,)),
)
POSTPROCESSING_INPUTS = (
    Tensor("TOKENS_BATCH", "INT32", (-1, -1)),
    Tensor("SEQUENCE_LENGTH", "INT32", (-1,)),
    # From the CPU engine only: -1 for a whole answer, else the number of tokens of TOKENS_BATCH
    # already sent in earlier responses of the stream (decoded incrementally, see postprocessing).
    Tensor("STREAM_OFFSET", "INT32", (1,), optional=True),
    # From the CPU engine only: the key to send back when this request turns out cancelled, which
    # tritonserver 2.51 does not pass on to the engine's request (python_backends/llm_cpu_engine/back_channel.py).
    Tensor("CANCEL_KEY", "STRING", (1,), optional=True),
)
POSTPROCESSING_OUTPUTS = (Tensor("OUTPUT", "STRING", (-1,)),)
# The CPU engine's streamed responses carry every token generated so far (TensorRT-LLM's
# returnAllGeneratedTokens) and say how many were sent before: a stateless postprocessing step can
# then detokenize incrementally. The ensemble may not feed postprocessing from its own `stream`
# input as well as from the decoupled engine (Triton's ensemble_utils.cc), hence an engine output.
CPU_ENGINE_OUTPUTS = (Tensor("stream_offset", "INT32", (1,)), Tensor("cancel_key", "STRING", (1,)))


def engine_inputs(release: Release | None) -> tuple[Tensor, ...]:
    """ENGINE_INPUTS as the release's tensorrt_llm model declares them: from TensorRT-LLM 1.x the
    seed input is `seed`, and request_output_len / streaming are scalars too (NVIDIA/TensorRT-LLM
    v1.2.1 triton_backend/all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt)."""
    if release is None or not release.trtllm_1x:
        return ENGINE_INPUTS
    renamed = {"random_seed": release.seed_input}
    return tuple(Tensor(renamed.get(t.name, t.name), t.dtype, t.dims, t.optional,
                        t.scalar or t.name in ("request_output_len", "streaming"), t.ragged) for t in ENGINE_INPUTS)


# -- the rest of upstream's client contract ---------------------------------------------------
# Upstream's ensemble (tensorrtllm_backend v0.14.0 and NVIDIA/TensorRT-LLM v1.2.1,
# triton_backend/all_models/inflight_batcher_llm/ensemble/config.pbtxt) declares more optional
# inputs and outputs than ENSEMBLE_INPUTS; clients (llama-index NvidiaTriton, genai-perf) send
# them. Each goes to the step that owns it; a step that cannot honour a value rejects it with a
# 400 naming the input. tests/test_llm_contract.py holds upstream's lists and checks ours.


@dataclass(frozen=True)
class Routed:
    """A client tensor of the ensemble and the step input it feeds ("engine" or "preprocessing")."""

    tensor: Tensor
    step: str
    step_input: str
    step_dtype: str = ""        # the step's dtype when it differs (none so far)


def _opt(name: str, dtype: str, dims: tuple[int, ...] = (1,)) -> Tensor:
    return Tensor(name, dtype, dims, optional=True)


def contract_inputs(release: Release) -> tuple[Routed, ...]:
    """The ensemble's client inputs beyond ENSEMBLE_INPUTS (seed is there, renamed per release)."""
    min_tokens = release.min_tokens_input
    routed = [
        Routed(_opt("decoder_text_input", "STRING"), "preprocessing", "DECODER_QUERY"),
        Routed(_opt("embedding_bias_words", "STRING", (-1,)), "preprocessing", "EMBEDDING_BIAS_WORDS"),
        Routed(_opt("embedding_bias_weights", "FP32", (-1,)), "preprocessing", "EMBEDDING_BIAS_WEIGHTS"),
        Routed(_opt("prompt_table_extra_id", "UINT64"), "preprocessing", "PROMPT_TABLE_EXTRA_ID"),
        Routed(_opt("num_return_sequences", "INT32"), "engine", "num_return_sequences"),
        # Not in v0.14.0's ensemble, but its engine has it and genai-perf always sends it.
        Routed(_opt("exclude_input_in_output", "BOOL"), "engine", "exclude_input_in_output"),
        Routed(_opt("length_penalty", "FP32"), "engine", "len_penalty"),
        Routed(_opt("repetition_penalty", "FP32"), "engine", "repetition_penalty"),
        Routed(_opt(min_tokens, "INT32"), "engine", min_tokens),
        Routed(_opt("presence_penalty", "FP32"), "engine", "presence_penalty"),
        Routed(_opt("frequency_penalty", "FP32"), "engine", "frequency_penalty"),
        Routed(_opt("return_log_probs", "BOOL"), "engine", "return_log_probs"),
        Routed(_opt("return_context_logits", "BOOL"), "engine", "return_context_logits"),
        Routed(_opt("return_generation_logits", "BOOL"), "engine", "return_generation_logits"),
        Routed(_opt("beam_width", "INT32"), "engine", "beam_width"),
        Routed(_opt("prompt_embedding_table", "FP16", (-1, -1)), "engine", "prompt_embedding_table"),
        Routed(_opt("prompt_vocab_size", "INT32"), "engine", "prompt_vocab_size"),
    ]
    if release.renamed_sampling_inputs:
        routed += [
            Routed(_opt("return_perf_metrics", "BOOL"), "engine", "return_perf_metrics"),
            Routed(_opt("return_num_input_tokens", "BOOL"), "engine", "return_num_input_tokens"),
            Routed(_opt("return_num_output_tokens", "BOOL"), "engine", "return_num_output_tokens"),
            Routed(_opt("lora_task_id", "UINT64"), "engine", "lora_task_id"),
            Routed(Tensor("lora_weights", "FP16", (-1, -1), optional=True, ragged=True), "engine", "lora_weights"),
            Routed(Tensor("lora_config", "INT32", (-1, 3), optional=True, ragged=True), "engine", "lora_config"),
            Routed(Tensor("guided_decoding_guide_type", "STRING", (1,), optional=True, ragged=True),
                   "engine", "guided_decoding_guide_type"),
            Routed(Tensor("guided_decoding_guide", "STRING", (1,), optional=True, ragged=True),
                   "engine", "guided_decoding_guide"),
        ]
    return tuple(routed)


def contract_outputs(release: Release) -> tuple[Tensor, ...]:
    """The ensemble's outputs beyond text_output; the engine produces each under the same name
    (only when the request asks for it, as the tensorrtllm backend does)."""
    outputs = [Tensor("cum_log_probs", "FP32", (-1,)), Tensor("output_log_probs", "FP32", (-1, -1)),
               Tensor("context_logits", "FP32", (-1, -1)), Tensor("generation_logits", "FP32", (-1, -1, -1)),
               Tensor("batch_index", "INT32", (1,)), Tensor("sequence_index", "INT32", (1,))]
    if release.renamed_sampling_inputs:
        outputs += [Tensor(name, "INT32", (1,)) for name in (
            "kv_cache_alloc_new_blocks", "kv_cache_reused_blocks", "kv_cache_alloc_total_blocks")]
        outputs += [Tensor(name, "INT64", (1,)) for name in (
            "arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns")]
        outputs += [Tensor("acceptance_rate", "FP32", (1,))]
        outputs += [Tensor(name, "INT32", (1,)) for name in (
            "total_accepted_draft_tokens", "total_draft_tokens", "num_input_tokens", "num_output_tokens")]
    return tuple(outputs)


def _engine_contract_tensors(release: Release) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """The engine inputs/outputs the contract routes to it: scalars reshaped as the backend wants."""
    inputs = tuple(Tensor(r.step_input, r.tensor.dtype, r.tensor.dims, optional=True,
                          scalar=r.tensor.dims == (1,) and r.tensor.dtype != "STRING", ragged=r.tensor.ragged)
                   for r in contract_inputs(release) if r.step == "engine")
    return inputs, contract_outputs(release)


def _without_duplicates(tensors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    seen: dict[str, Tensor] = {}
    for t in tensors:
        seen.setdefault(t.name, t)
    return tuple(seen.values())


def ensemble_tensors(release: Release) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """The client-facing tensors of the ensemble at a release (the seed renamed where upstream did)."""
    seed = release.seed_input
    inputs = tuple(Tensor(seed, t.dtype, t.dims, optional=True) if t.name == "random_seed" else t
                   for t in ENSEMBLE_INPUTS)
    return inputs + tuple(r.tensor for r in contract_inputs(release)), ENSEMBLE_OUTPUTS + contract_outputs(release)


# Preprocessing inputs of the contract: declared so the ensemble can route them; the
# preprocessing rejects a request that sets one (encoder-decoder, p-tuning and embedding bias are
# not built by tritonize).
PREPROCESSING_CONTRACT_INPUTS = (
    _opt("DECODER_QUERY", "STRING"),
    _opt("EMBEDDING_BIAS_WORDS", "STRING", (-1,)),
    _opt("EMBEDDING_BIAS_WEIGHTS", "FP32", (-1,)),
    _opt("PROMPT_TABLE_EXTRA_ID", "UINT64"),
)


def _add_tensors(config: mc.ModelConfig, inputs, outputs) -> None:
    for t in inputs:
        message = config.input.add(name=t.name, data_type=data_type(t.dtype), dims=t.dims,
                                   optional=t.optional, allow_ragged_batch=t.ragged)
        if t.scalar:
            message.reshape.SetInParent()  # reshape { shape: [] }: dims [1] seen as a scalar
    for t in outputs:
        config.output.add(name=t.name, data_type=data_type(t.dtype), dims=t.dims)


def _cpu_instances(config: mc.ModelConfig, count: int = 1) -> None:
    config.instance_group.add(count=count, kind=mc.ModelInstanceGroup.KIND_CPU)


def _parameters(config: mc.ModelConfig, values: dict[str, str | int | float]) -> None:
    """Triton parameters are strings; numbers are written with str()."""
    for key, value in values.items():
        config.parameters[key].string_value = str(value)


def preprocessing_config(names: Names, llm: LlmSpec, *, add_bos: bool = False) -> mc.ModelConfig:
    """add_bos: prompts start with the tokenizer's BOS (build.special_tokens decides)."""
    config = mc.ModelConfig(name=names.preprocessing, backend="python", max_batch_size=llm.limits.max_batch_size)
    _add_tensors(config, PREPROCESSING_INPUTS + PREPROCESSING_CONTRACT_INPUTS, PREPROCESSING_OUTPUTS)
    _cpu_instances(config)
    sampling = llm.sampling
    _parameters(config, {"tokenizer_dir": TOKENIZER_DIR, "add_bos_token": str(add_bos).lower(),
                         "default_top_k": sampling.top_k, "default_top_p": sampling.top_p,
                         "default_temperature": sampling.temperature, "default_seed": sampling.seed})
    return config


def postprocessing_config(names: Names, llm: LlmSpec) -> mc.ModelConfig:
    config = mc.ModelConfig(name=names.postprocessing, backend="python", max_batch_size=llm.limits.max_batch_size)
    _add_tensors(config, POSTPROCESSING_INPUTS, POSTPROCESSING_OUTPUTS)
    _cpu_instances(config)
    _parameters(config, {"tokenizer_dir": TOKENIZER_DIR, "skip_special_tokens": "true"})
    return config


def cpu_engine_config(names: Names, llm: LlmSpec, *, cpu_threads: int = 0,
                      release: Release | None = None) -> mc.ModelConfig:
    """The embedded runtime's engine: python backend, decoupled when streaming; its inputs under
    the release's names."""
    release = release or DEFAULT_RELEASE
    contract_in, contract_out = _engine_contract_tensors(release)
    config = mc.ModelConfig(name=names.engine, backend="python", max_batch_size=llm.limits.max_batch_size)
    config.model_transaction_policy.decoupled = llm.streaming
    if not llm.streaming:
        # Not decoupled: Triton's batcher gathers concurrent requests into one execute().
        config.dynamic_batching.max_queue_delay_microseconds = 1000
    _add_tensors(config, _without_duplicates(engine_inputs(release) + contract_in),
                 _without_duplicates(ENGINE_OUTPUTS + CPU_ENGINE_OUTPUTS + contract_out))
    _cpu_instances(config)
    limits, sampling = llm.limits, llm.sampling
    _parameters(config, {
        "checkpoint_dir": CHECKPOINT_DIR,
        "max_input_len": limits.max_input_len,
        "max_output_len": limits.max_output_len,
        "exclude_input_in_output": "true",
        "default_temperature": sampling.temperature,
        "default_top_k": sampling.top_k,
        "default_top_p": sampling.top_p,
        "default_seed": sampling.seed,
        "cpu_threads": cpu_threads,
    })
    return config


def set_engine_token_defaults(config: mc.ModelConfig, *, end_id: int, pad_id: int) -> None:
    """The CPU engine's end/pad ids for requests without them (from the tokenizer: the engine
    reads the checkpoint alone, which has no token ids)."""
    _parameters(config, {"default_end_id": end_id, "default_pad_id": pad_id})


def trtllm_engine_config(names: Names, llm: LlmSpec, release: Release, *, version: int = 1,
                         attention_window: int | None = None) -> mc.ModelConfig:
    """The container runtime's engine: the C++ tensorrtllm backend, every parameter filled.

    attention_window: the model's sliding window (Mistral), which TensorRT-LLM applies at run time
    through max_attention_window_size, not from the engine."""
    limits = llm.limits
    config = mc.ModelConfig(name=names.engine, backend="tensorrtllm", max_batch_size=limits.max_batch_size)
    config.model_transaction_policy.decoupled = llm.streaming
    config.dynamic_batching.preferred_batch_size.append(limits.max_batch_size)
    config.dynamic_batching.max_queue_delay_microseconds = 0
    extra_inputs = tuple(Tensor(n, d, (1,), optional=True, scalar=True) for n, d in release.extra_engine_inputs)
    extra_outputs = tuple(Tensor(n, d, dims) for n, d, dims in release.extra_engine_outputs)
    contract_in, contract_out = _engine_contract_tensors(release)
    _add_tensors(config, _without_duplicates(engine_inputs(release) + extra_inputs + contract_in),
                 _without_duplicates(ENGINE_OUTPUTS + extra_outputs + contract_out))
    # The backend drives the GPUs itself; Triton sees one CPU instance (upstream's setting).
    _cpu_instances(config)
    _parameters(config, {
        "max_beam_width": limits.max_beam_width,
        "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
        "gpt_model_type": "inflight_fused_batching",
        "gpt_model_path": f"{CONTAINER_REPOSITORY}/{names.engine}/{version}/{ENGINE_DIR}",
        "batch_scheduler_policy": llm.batch_scheduler_policy,
        "kv_cache_free_gpu_mem_fraction": llm.kv_cache_free_gpu_mem_fraction,
        "enable_kv_cache_reuse": str(llm.enable_kv_cache_reuse).lower(),
        "exclude_input_in_output": "true",
        "enable_chunked_context": "false",
        "decoding_mode": "top_k_top_p",
        "executor_worker_path": "/opt/tritonserver/backends/tensorrtllm/trtllmExecutorWorker",
    })
    if attention_window is not None:
        _parameters(config, {"max_attention_window_size": attention_window})
    return config


def ensemble_config(names: Names, llm: LlmSpec, release: Release | None = None, *,
                    cpu_engine: bool = False) -> mc.ModelConfig:
    """cpu_engine: the engine is the CPU engine, whose stream_offset drives incremental
    detokenization and whose cancel_key lets the postprocessing stop a cancelled generation."""
    release = release or DEFAULT_RELEASE
    config = mc.ModelConfig(name=names.ensemble, platform="ensemble", max_batch_size=llm.limits.max_batch_size)
    _add_tensors(config, *ensemble_tensors(release))
    # Read by the OpenAI frontend (tritonize.openai.models): the limits a client is held to.
    _parameters(config, {"max_input_len": llm.limits.max_input_len, "max_output_len": llm.limits.max_output_len})
    steps = config.ensemble_scheduling.step
    pre = steps.add(model_name=names.preprocessing, model_version=-1)
    pre.input_map.update({"QUERY": "text_input", "REQUEST_OUTPUT_LEN": "max_tokens", "BAD_WORDS_DICT": "bad_words",
                          "STOP_WORDS_DICT": "stop_words", "END_ID": "end_id", "PAD_ID": "pad_id",
                          "TOP_K": "top_k", "TOP_P": "top_p", "TEMPERATURE": "temperature",
                          "RANDOM_SEED": release.seed_input})
    pre.output_map.update({"INPUT_ID": "_INPUT_ID", "REQUEST_INPUT_LEN": "_REQUEST_INPUT_LEN",
                           "BAD_WORDS_IDS": "_BAD_WORDS_IDS", "STOP_WORDS_IDS": "_STOP_WORDS_IDS",
                           "REQUEST_OUTPUT_LEN": "_REQUEST_OUTPUT_LEN", "OUT_END_ID": "_END_ID",
                           "OUT_PAD_ID": "_PAD_ID", "OUT_TOP_K": "_TOP_K", "OUT_TOP_P": "_TOP_P",
                           "OUT_TEMPERATURE": "_TEMPERATURE", "OUT_RANDOM_SEED": "_RANDOM_SEED"})
    engine = steps.add(model_name=names.engine, model_version=-1)
    engine.input_map.update({"input_ids": "_INPUT_ID", "input_lengths": "_REQUEST_INPUT_LEN",
                             "request_output_len": "_REQUEST_OUTPUT_LEN", "end_id": "_END_ID", "pad_id": "_PAD_ID",
                             "stop_words_list": "_STOP_WORDS_IDS", "bad_words_list": "_BAD_WORDS_IDS",
                             "runtime_top_k": "_TOP_K", "runtime_top_p": "_TOP_P", "temperature": "_TEMPERATURE",
                             "random_seed": "_RANDOM_SEED", "streaming": "stream"})
    if release is not None and release.seed_input != "random_seed":
        engine.input_map[release.seed_input] = engine.input_map.pop("random_seed")
    engine.output_map.update({"output_ids": "_TOKENS_BATCH", "sequence_length": "_SEQUENCE_LENGTH"})
    for routed in contract_inputs(release):
        (pre if routed.step == "preprocessing" else engine).input_map[routed.step_input] = routed.tensor.name
    engine.output_map.update({t.name: t.name for t in contract_outputs(release)})
    post = steps.add(model_name=names.postprocessing, model_version=-1)
    post.input_map.update({"TOKENS_BATCH": "_TOKENS_BATCH", "SEQUENCE_LENGTH": "_SEQUENCE_LENGTH"})
    if cpu_engine:
        engine.output_map.update({"stream_offset": "_STREAM_OFFSET", "cancel_key": "_CANCEL_KEY"})
        post.input_map.update({"STREAM_OFFSET": "_STREAM_OFFSET", "CANCEL_KEY": "_CANCEL_KEY"})
    post.output_map.update({"OUTPUT": "text_output"})
    return config


# Inputs only upstream's tensorrt_llm_bls declares: multimodal encoders' inputs and speculative
# decoding with a draft model, neither of which tritonize builds. Declared so a client sending one
# gets a 400 naming it (python_backends/llm_bls/model.py refuses inputs it does not route).
# triton-inference-server/tensorrtllm_backend v0.14.0 and NVIDIA/TensorRT-LLM (1.2.1)
# triton_backend/all_models/inflight_batcher_llm/tensorrt_llm_bls/config.pbtxt.
def bls_only_inputs(release: Release) -> tuple[Tensor, ...]:
    draft = (_opt("num_draft_tokens", "INT32"), _opt("use_draft_logits", "BOOL"))
    if not release.trtllm_1x:
        return (_opt("image_input", "FP16", (3, -1, -1)),) + draft
    return (_opt("image_input", "FP16", (-1, 3, -1, -1)), _opt("image_bytes_input", "UINT8", (-1, -1, -1, -1)),
            _opt("image_url_input", "STRING"), _opt("image_sizes_input", "INT64", (-1, 2)),
            _opt("video_bytes_input", "UINT8", (-1, -1, -1, -1))) + draft


def bls_routing(ensemble: mc.ModelConfig) -> dict[str, dict[str, str]]:
    """What the BLS model does by hand, read off the ensemble's steps (one owner of the wiring):
    preprocessing/engine: step input -> client input; preprocessed: preprocessing output ->
    engine input; postprocessing: postprocessing input -> engine output; engine_outputs: engine
    output -> client output."""
    pre, engine, post = ensemble.ensemble_scheduling.step

    def internal(name: str) -> bool:
        return name.startswith("_")

    engine_input_of = {tensor: step_input for step_input, tensor in engine.input_map.items() if internal(tensor)}
    engine_output_of = {tensor: output for output, tensor in engine.output_map.items() if internal(tensor)}
    return {
        "preprocessing": {k: v for k, v in pre.input_map.items() if not internal(v)},
        "engine": {k: v for k, v in engine.input_map.items() if not internal(v)},
        "preprocessed": {k: engine_input_of[v] for k, v in pre.output_map.items() if v in engine_input_of},
        "postprocessing": {k: engine_output_of[v] for k, v in post.input_map.items()},
        "engine_outputs": {k: v for k, v in engine.output_map.items() if not internal(v)},
    }


def bls_config(names: Names, llm: LlmSpec, release: Release | None = None, *, cpu_engine: bool = False) -> mc.ModelConfig:
    """The BLS model: every tensor upstream's tensorrt_llm_bls declares at the release (the
    ensemble's, plus bls_only_inputs), decoupled like the engine, routed as the ensemble routes."""
    release = release or DEFAULT_RELEASE
    config = mc.ModelConfig(name=names.bls, backend="python", max_batch_size=llm.limits.max_batch_size)
    config.model_transaction_policy.decoupled = llm.streaming
    inputs, outputs = ensemble_tensors(release)
    _add_tensors(config, inputs + bls_only_inputs(release), outputs)
    _cpu_instances(config)
    routing = bls_routing(ensemble_config(names, llm, release, cpu_engine=cpu_engine))
    _parameters(config, {"preprocessing_model": names.preprocessing, "engine_model": names.engine,
                         "postprocessing_model": names.postprocessing,
                         "routing": json.dumps(routing, sort_keys=True, separators=(",", ":"))})
    return config
