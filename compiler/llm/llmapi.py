"""The llmapi target (`llm.engine: llmapi`): TensorRT-LLM's own Triton model for its LLM API,
one python-backend model that takes text and answers text, as upstream lays it out
(NVIDIA/TensorRT-LLM triton_backend/all_models/llmapi/tensorrt_llm/, earlier
triton-inference-server/tensorrtllm_backend v0.19.0 all_models/llmapi/tensorrt_llm/):

    NAME/config.pbtxt     python backend, the tensors below, one CPU instance (the LLM API drives
                          the GPUs itself); max_batch_size 0 and decoupled also in model.yaml's
                          triton_config, which upstream's model.py applies in auto_complete_config
    NAME/1/model.yaml     LLM(**args): model, backend: pytorch, parallelism, limits, KV cache,
                          CUDA graphs, torch.compile, attention backend; triton_config
    NAME/1/checkpoint/    the HF checkpoint `model` names (ModelOpt's unified HF export for FP8)
    NAME/1/model.py       container runtime: upstream's (with helpers.py), copied in by
                          install_model_py.sh from TensorRT-LLM at the release's tag (not
                          vendored here) over a placeholder that fails the load saying so;
                          embedded runtime: the CPU engine serving the same tensors

Upstream's model.py reads model.yaml from its own directory (pb_utils.get_model_dir(), or
LLM_CONFIG_PATH) and passes every key but triton_config to LLM(**args).
"""
from __future__ import annotations

from typing import Any

import yaml
from tritonclient.grpc import model_config_pb2 as mc

from ..spec.llm import LlmSpec
from .repository import CONTAINER_REPOSITORY, Tensor, _add_tensors, _cpu_instances, _parameters
from .targets import Release

MODEL_YAML = "model.yaml"
CHECKPOINT_DIR = "checkpoint"
INSTALL_SCRIPT = "install_model_py.sh"
UPSTREAM_FILES = ("model.py", "helpers.py")  # upstream's llmapi/tensorrt_llm/1/, copied by INSTALL_SCRIPT


def _opt(name: str, dtype: str, dims: tuple[int, ...] = (1,)) -> Tensor:
    return Tensor(name, dtype, dims, optional=True)


# The tensors both upstream versions declare (tests/test_llm_contract.py holds their lists): the
# tensorrtllm_backend v0.19.0 template and TensorRT-LLM's current one. Inputs one of them lacks
# (v0.19.0's sampling_param_beam_width; the later best_of, image_url, LoRA, stop) are left out,
# so the config fits the model.py of either.
INPUTS = (
    Tensor("text_input", "STRING", (-1,)),
    _opt("streaming", "BOOL"),
    _opt("sampling_param_temperature", "FP32"),
    _opt("sampling_param_top_k", "INT32"),
    _opt("sampling_param_top_p", "FP32"),
    _opt("sampling_param_frequency_penalty", "FP32"),
    _opt("sampling_param_presence_penalty", "FP32"),
    _opt("sampling_param_max_tokens", "INT32"),
    _opt("sampling_param_stop", "STRING", (-1,)),
    _opt("sampling_param_seed", "UINT64"),
    _opt("sampling_param_exclude_input_from_output", "BOOL"),
    _opt("return_finish_reason", "BOOL"),
    _opt("return_stop_reason", "BOOL"),
    _opt("return_cumulative_logprob", "BOOL"),
)
OUTPUTS = (
    Tensor("text_output", "STRING", (-1,)),
    Tensor("finish_reason", "STRING", (-1,)),
    Tensor("stop_reason", "STRING", (-1,)),
    Tensor("cumulative_logprob", "FP32", (-1,)),
)


def model_config(name: str, llm: LlmSpec) -> mc.ModelConfig:
    """The model's config.pbtxt: upstream's tensors; no batching (upstream's triton_config
    max_batch_size 0: 'The current implementation does not support batching'); decoupled when
    streaming."""
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=0)
    config.model_transaction_policy.decoupled = llm.streaming
    _add_tensors(config, INPUTS, OUTPUTS)
    _cpu_instances(config)
    return config


def set_cpu_parameters(config: mc.ModelConfig, llm: LlmSpec, *, end_id: int, pad_id: int, add_bos: bool,
                       bos_id: int | None) -> None:
    """What the embedded CPU engine needs beyond model.yaml: the tokenizer's ids (the LLM API
    reads them from the checkpoint's tokenizer) and the spec's sampling defaults."""
    sampling = llm.sampling
    _parameters(config, {"default_end_id": end_id, "default_pad_id": pad_id, "add_bos_token": str(add_bos).lower(),
                         "bos_id": -1 if bos_id is None else bos_id, "max_output_len": llm.limits.max_output_len,
                         "default_temperature": sampling.temperature, "default_top_k": sampling.top_k,
                         "default_top_p": sampling.top_p, "default_seed": sampling.seed})


def llm_args(llm: LlmSpec, model: str) -> dict[str, Any]:
    """model.yaml: the LLM(**args) keys (NVIDIA/TensorRT-LLM tensorrt_llm/llmapi/llm_args.py,
    TorchLlmArgs) filled from the spec, then triton_config."""
    limits = llm.limits
    args: dict[str, Any] = {
        "model": model,
        "backend": "pytorch",
        "tensor_parallel_size": llm.tensor_parallel,
        "pipeline_parallel_size": 1,
        "dtype": llm.dtype,
        "max_batch_size": limits.max_batch_size,   # the LLM API's in-flight batch
        "max_input_len": limits.max_input_len,
        "max_seq_len": limits.max_seq_len,
        "max_num_tokens": limits.num_tokens,
        "max_beam_width": limits.max_beam_width,
        "kv_cache_config": {
            "free_gpu_memory_fraction": llm.kv_cache_free_gpu_mem_fraction,
            "enable_block_reuse": llm.enable_kv_cache_reuse,
            # FP8 KV cache: the export's hf_quant_config.json says kv_cache_quant_algo FP8 too.
            "dtype": "fp8" if llm.quantization.kv_cache_fp8 else "auto",
        },
        # CudaGraphConfig: graphs for decode batches up to max_batch_size, padded to the nearest
        # captured size; null turns them off (the default is on).
        "cuda_graph_config": ({"max_batch_size": limits.max_batch_size, "enable_padding": True}
                              if llm.cuda_graphs else None),
        "attn_backend": llm.attn_backend,
    }
    if llm.torch_compile:
        args["torch_compile_config"] = {}  # TorchCompileConfig's defaults: torch.compile on
    # Upstream's model.py applies these to the Triton config (auto_complete_config) and reads
    # `decoupled` to allow streaming: they must equal config.pbtxt's.
    args["triton_config"] = {"max_batch_size": 0, "decoupled": llm.streaming}
    return args


def model_yaml(llm: LlmSpec, release: Release, *, model: str, name: str) -> str:
    header = (f"# Generated by tritonize for model '{name}': TensorRT-LLM {release.trtllm} LLM API arguments\n"
              "# (tensorrt_llm.LLM(**args); triton_config goes to Triton), read by the llmapi model.py\n"
              "# next to this file (NVIDIA/TensorRT-LLM triton_backend/all_models/llmapi/tensorrt_llm/1/).\n")
    return header + yaml.safe_dump(llm_args(llm, model), sort_keys=False)


def container_model_path(name: str, version: int) -> str:
    """The checkpoint as the LLM API opens it inside the serving container (absolute: model.py's
    cwd is the server's)."""
    return f"{CONTAINER_REPOSITORY}/{name}/{version}/{CHECKPOINT_DIR}"


def install_script(*, name: str, version: int, release: Release, repository_name: str) -> str:
    tag = f"v{release.trtllm}"
    source = "triton_backend/all_models/llmapi/tensorrt_llm/1"
    files = " ".join(UPSTREAM_FILES)
    return f"""#!/usr/bin/env bash
# Generated by tritonize for model '{name}': puts upstream's llmapi model.py (and helpers.py)
# next to model.yaml, from NVIDIA/TensorRT-LLM at {tag} (the TensorRT-LLM of NGC {release.tag}),
# path {source}/. tritonize does not ship them; the server cannot load '{name}' without them.
#
#   TRTLLM_SOURCE=/path/to/TensorRT-LLM bash {repository_name}/{name}/{version}/{INSTALL_SCRIPT}
#
# copies them from a checkout at {tag}; without TRTLLM_SOURCE the script clones that tag (network).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="${{TRTLLM_SOURCE:-}}"
if [ -z "$src" ]; then
    src="$(mktemp -d)"
    trap 'rm -rf "$src"' EXIT
    git clone --quiet --depth 1 --branch {tag} --filter=blob:none --sparse \\
        https://github.com/NVIDIA/TensorRT-LLM.git "$src"
    git -C "$src" sparse-checkout set {source}
fi
for f in {files}; do
    cp "$src/{source}/$f" "$here/$f"
done
echo "installed {files} from TensorRT-LLM {tag} into $here"
"""
