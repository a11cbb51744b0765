"""The TensorRT-LLM serving models as Triton configs (facts section 6): preprocessing ->
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

from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as mc

from ..model_config import data_type
from .spec import LlmSpec, Release

# Where the container runtime mounts the repository (docker/run_trtllm.sh); the engine path in
# the tensorrt_llm config is absolute because the C++ backend resolves it against its own cwd.
CONTAINER_REPOSITORY = "/models"
TOKENIZER_DIR = "tokenizer"        # inside the pre/postprocessing version directories
HF_MODEL_DIR = "hf_model"          # inside the CPU engine's version directory
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
    def of(cls, model_name: str) -> "Names":
        return cls(model_name, f"{model_name}_preprocessing", f"{model_name}_tensorrt_llm",
                   f"{model_name}_postprocessing", f"{model_name}_bls")


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
)
POSTPROCESSING_OUTPUTS = (Tensor("OUTPUT", "STRING", (-1,)),)


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


def _parameters(config: mc.ModelConfig, values: dict[str, str]) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = str(value)


def preprocessing_config(names: Names, llm: LlmSpec) -> mc.ModelConfig:
    config = mc.ModelConfig(name=names.preprocessing, backend="python", max_batch_size=llm.limits.max_batch_size)
    _add_tensors(config, PREPROCESSING_INPUTS, PREPROCESSING_OUTPUTS)
    _cpu_instances(config)
    sampling = llm.sampling
    _parameters(config, {"tokenizer_dir": TOKENIZER_DIR, "add_special_tokens": "false",
                         "default_top_k": sampling.top_k, "default_top_p": sampling.top_p,
                         "default_temperature": sampling.temperature, "default_seed": sampling.seed})
    return config


def postprocessing_config(names: Names, llm: LlmSpec) -> mc.ModelConfig:
    config = mc.ModelConfig(name=names.postprocessing, backend="python", max_batch_size=llm.limits.max_batch_size)
    _add_tensors(config, POSTPROCESSING_INPUTS, POSTPROCESSING_OUTPUTS)
    _cpu_instances(config)
    _parameters(config, {"tokenizer_dir": TOKENIZER_DIR, "skip_special_tokens": "true"})
    return config


def cpu_engine_config(names: Names, llm: LlmSpec, *, checkpoint: bool, cpu_threads: int = 0) -> mc.ModelConfig:
    """The embedded runtime's engine: python backend, decoupled when streaming."""
    config = mc.ModelConfig(name=names.engine, backend="python", max_batch_size=llm.limits.max_batch_size)
    config.model_transaction_policy.decoupled = llm.streaming
    if not llm.streaming:
        # Not decoupled: Triton's batcher gathers concurrent requests into one execute().
        config.dynamic_batching.max_queue_delay_microseconds = 1000
    _add_tensors(config, ENGINE_INPUTS, ENGINE_OUTPUTS)
    _cpu_instances(config)
    limits, sampling = llm.limits, llm.sampling
    _parameters(config, {
        "hf_model_dir": HF_MODEL_DIR,
        "checkpoint_dir": CHECKPOINT_DIR if checkpoint else "",
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


def trtllm_engine_config(names: Names, llm: LlmSpec, release: Release, *, version: int = 1) -> mc.ModelConfig:
    """The container runtime's engine: the C++ tensorrtllm backend, every parameter filled."""
    limits = llm.limits
    config = mc.ModelConfig(name=names.engine, backend="tensorrtllm", max_batch_size=limits.max_batch_size)
    config.model_transaction_policy.decoupled = llm.streaming
    config.dynamic_batching.preferred_batch_size.append(limits.max_batch_size)
    config.dynamic_batching.max_queue_delay_microseconds = 0
    extra_inputs = tuple(Tensor(n, d, (1,), optional=True, scalar=True) for n, d in release.extra_engine_inputs)
    extra_outputs = tuple(Tensor(n, d, dims) for n, d, dims in release.extra_engine_outputs)
    _add_tensors(config, ENGINE_INPUTS + extra_inputs, ENGINE_OUTPUTS + extra_outputs)
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
    return config


def ensemble_config(names: Names, llm: LlmSpec) -> mc.ModelConfig:
    config = mc.ModelConfig(name=names.ensemble, platform="ensemble", max_batch_size=llm.limits.max_batch_size)
    _add_tensors(config, ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS)
    steps = config.ensemble_scheduling.step
    pre = steps.add(model_name=names.preprocessing, model_version=-1)
    pre.input_map.update({"QUERY": "text_input", "REQUEST_OUTPUT_LEN": "max_tokens", "BAD_WORDS_DICT": "bad_words",
                          "STOP_WORDS_DICT": "stop_words", "END_ID": "end_id", "PAD_ID": "pad_id",
                          "TOP_K": "top_k", "TOP_P": "top_p", "TEMPERATURE": "temperature",
                          "RANDOM_SEED": "random_seed"})
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
    engine.output_map.update({"output_ids": "_TOKENS_BATCH", "sequence_length": "_SEQUENCE_LENGTH"})
    post = steps.add(model_name=names.postprocessing, model_version=-1)
    post.input_map.update({"TOKENS_BATCH": "_TOKENS_BATCH", "SEQUENCE_LENGTH": "_SEQUENCE_LENGTH"})
    post.output_map.update({"OUTPUT": "text_output"})
    return config


def bls_config(names: Names, llm: LlmSpec) -> mc.ModelConfig:
    """The BLS model: the ensemble's tensors, decoupled like the engine."""
    config = mc.ModelConfig(name=names.bls, backend="python", max_batch_size=llm.limits.max_batch_size)
    config.model_transaction_policy.decoupled = llm.streaming
    _add_tensors(config, ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS)
    _cpu_instances(config)
    _parameters(config, {"preprocessing_model": names.preprocessing, "engine_model": names.engine,
                         "postprocessing_model": names.postprocessing})
    return config
