"""The TensorRT engine step: the `trtllm-build` command for a checkpoint, its cache key, and the
GPU memory plan that must fit before anything is built."""
from __future__ import annotations

import hashlib
import json
import math
import shlex
from dataclasses import asdict, dataclass

from ..errors import SpecError
from ..resources import render_template
from ..spec.llm import LlmSpec
from .targets import Release

GIB = 1024 ** 3
# CUDA context, cuBLAS/TensorRT workspaces and the runtime's own buffers: a fixed allowance.
RUNTIME_OVERHEAD_BYTES = 1 * GIB


def engine_flags(llm: LlmSpec, release: Release) -> list[str]:
    """trtllm-build flags (without paths) for the release's TensorRT-LLM, per quantization/GPU.

    Each choice follows an upstream recipe:
    - limits: always explicit (the defaults, 2048 tokens / batch 256, are not the spec's).
    - 0.14 (24.10): PluginConfig defaults paged context FMHA, FP8 context FMHA and fused MLP off,
      so they are switched on (NVIDIA/TensorRT-LLM v0.14.0 tensorrt_llm/plugin/plugin.py), except
      `--use_fp8_context_fmha` without an FP8 KV cache: that combination with paged context FMHA
      builds broken engines at 0.13/0.14 (NVIDIA/TensorRT-LLM#2447; #2112 fails the build).
    - 1.x (26.07): paged KV cache, removed input padding, the attention plugin (auto), paged
      context FMHA, FP8 context FMHA and fused MLP are PluginConfig defaults (NVIDIA/TensorRT-LLM
      1.x tensorrt_llm/plugin/plugin.py, tensorrt_llm/commands/build.py), so they are not
      repeated: an engine built from the flags below is the one upstream's own recipe builds.
    - `--gemm_plugin fp8` for FP8 checkpoints, auto (the checkpoint dtype) otherwise
      (examples/models/core/llama/README.md FP8 recipe); `--multiple_profiles` and, with tensor
      parallelism, `--reduce_fusion` are off by default in both and on here (more TensorRT
      profiles; fused all-reduce + norm: the flags' help in the same two files).
    """
    limits = llm.limits
    fp8 = llm.quantization.mode == "fp8"
    flags = [
        "--max_batch_size", str(limits.max_batch_size),
        "--max_input_len", str(limits.max_input_len),
        "--max_seq_len", str(limits.max_seq_len),
        "--max_num_tokens", str(limits.num_tokens),
        "--max_beam_width", str(limits.max_beam_width),
    ]
    if not release.trtllm_1x:
        flags += ["--kv_cache_type", "paged", "--remove_input_padding", "enable", "--gpt_attention_plugin", "auto"]
    flags += ["--gemm_plugin", "fp8" if fp8 else "auto"]
    if not release.trtllm_1x:
        flags += ["--use_fused_mlp", "enable", "--use_paged_context_fmha", "enable"]
        if fp8 and llm.gpu.hopper and llm.quantization.kv_cache_fp8:
            flags += ["--use_fp8_context_fmha", "enable"]
    flags += ["--multiple_profiles", "enable"]
    if llm.tensor_parallel > 1:
        flags += ["--reduce_fusion", "enable", "--workers", str(llm.tensor_parallel)]
    return flags


def engine_command(llm: LlmSpec, release: Release, checkpoint_dir: str, output_dir: str) -> list[str]:
    return ["trtllm-build", "--checkpoint_dir", checkpoint_dir, "--output_dir", output_dir,
            *engine_flags(llm, release)]


def engine_cache_key(checkpoint_hash: str, llm: LlmSpec, release: Release) -> str:
    payload = json.dumps({"checkpoint": checkpoint_hash, "trtllm": release.trtllm,
                          "flags": engine_flags(llm, release), "gpu": llm.target_gpu, "tp": llm.tensor_parallel},
                         sort_keys=True)
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def render_build_script(*, model: str, engine_model: str, version: int, llm: LlmSpec, release: Release,
                        repository_name: str, container_repository: str, checkpoint_dir: str, engine_dir: str,
                        cache_key: str) -> str:
    argv = engine_command(llm, release, checkpoint_dir, engine_dir)
    command = " \\\n    ".join(shlex.quote(a) if not a.startswith("--") else a for a in _pairs(argv))
    return render_template(
        "llm/build_engine.sh.j2", model=model, engine_model=engine_model, version=version, trtllm=release.trtllm,
        release=release.tag, gpu=llm.target_gpu, image=release.image, repository_name=repository_name,
        container_repository=container_repository, command=command, engine_dir=engine_dir, cache_key=cache_key)


def _pairs(argv: list[str]) -> list[str]:
    """Group `--flag value` so the script shows one flag per line."""
    out, i = [argv[0]], 1
    while i < len(argv):
        if argv[i].startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out.append(f"{argv[i]} {shlex.quote(argv[i + 1])}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


@dataclass
class MemoryPlan:
    gpu: str
    gpu_bytes: int
    tensor_parallel: int
    parameters: int
    weight_bytes_per_gpu: int
    activation_bytes: int
    overhead_bytes: int
    kv_bytes_per_token: int          # per GPU, all layers, keys and values
    kv_tokens_needed: int            # max_batch_size x max_seq_len x beams
    kv_bytes_needed: int
    kv_bytes_available: int          # kv_cache_free_gpu_mem_fraction of what is left
    max_concurrent_sequences: int    # full-length sequences the KV cache holds
    fits: bool

    def as_manifest(self) -> dict:
        return asdict(self)

    def rows(self) -> list[list[str]]:
        return [["weights / GPU", _gib(self.weight_bytes_per_gpu)],
                ["activations (max_num_tokens)", _gib(self.activation_bytes)],
                ["runtime overhead", _gib(self.overhead_bytes)],
                ["KV cache needed", f"{_gib(self.kv_bytes_needed)} ({self.kv_tokens_needed} tokens x "
                                    f"{self.kv_bytes_per_token} B)"],
                ["KV cache available", _gib(self.kv_bytes_available)],
                ["full-length sequences that fit", str(self.max_concurrent_sequences)],
                [f"{self.gpu}", _gib(self.gpu_bytes)]]


def _gib(n: int) -> str:
    """A byte count in the largest unit that keeps it >= 1 (tiny test models have KiB of KV cache)."""
    for unit, size in (("GiB", GIB), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def memory_plan(llm: LlmSpec, hf_config: dict) -> MemoryPlan:
    """Weights + activations + KV cache per token x limits against the target GPU's memory."""
    hidden = hf_config["hidden_size"]
    layers = hf_config["num_hidden_layers"]
    heads = hf_config["num_attention_heads"]
    kv_heads = hf_config.get("num_key_value_heads") or heads
    head_dim = hf_config.get("head_dim") or hidden // heads
    inter = hf_config["intermediate_size"]
    vocab = hf_config["vocab_size"]
    tied = hf_config.get("tie_word_embeddings", False)
    tp = llm.tensor_parallel
    fp8 = llm.quantization.mode == "fp8"
    half = 2  # float16 / bfloat16

    linear_params = layers * (hidden * (heads + 2 * kv_heads) * head_dim + heads * head_dim * hidden
                              + 3 * hidden * inter)
    other_params = vocab * hidden * (1 if tied else 2) + layers * 2 * hidden + hidden
    weight_bytes = linear_params * (1 if fp8 else half) + other_params * half
    kv_element = 1 if llm.quantization.kv_cache_fp8 else half
    kv_per_token = 2 * layers * kv_heads * head_dim * kv_element // tp
    limits = llm.limits
    kv_tokens = limits.max_batch_size * limits.max_seq_len * limits.max_beam_width
    # Peak activations of one step: max_num_tokens rows through the widest layers, plus logits.
    activations = limits.num_tokens * (4 * hidden + 2 * inter // tp) * half + limits.max_batch_size * vocab * 4
    gpu_bytes = int(llm.gpu.memory_gib * GIB)
    free = gpu_bytes - weight_bytes // tp - activations - RUNTIME_OVERHEAD_BYTES
    kv_available = int(max(free, 0) * llm.kv_cache_free_gpu_mem_fraction)
    per_sequence = kv_per_token * limits.max_seq_len * limits.max_beam_width
    return MemoryPlan(
        gpu=llm.target_gpu, gpu_bytes=gpu_bytes, tensor_parallel=tp, parameters=linear_params + other_params,
        weight_bytes_per_gpu=math.ceil(weight_bytes / tp), activation_bytes=activations,
        overhead_bytes=RUNTIME_OVERHEAD_BYTES, kv_bytes_per_token=kv_per_token, kv_tokens_needed=kv_tokens,
        kv_bytes_needed=kv_per_token * kv_tokens, kv_bytes_available=kv_available,
        max_concurrent_sequences=kv_available // per_sequence if per_sequence else 0,
        fits=free > 0 and kv_per_token * kv_tokens <= kv_available)


def require_fit(plan: MemoryPlan, llm: LlmSpec) -> None:
    """Raise a SpecError located at the model's llm.limits when the plan does not fit."""
    if plan.fits:
        return
    if plan.kv_bytes_available <= 0:
        message = (f"weights ({_gib(plan.weight_bytes_per_gpu)}/GPU) and activations ({_gib(plan.activation_bytes)}) "
                   f"do not fit in {plan.gpu} ({_gib(plan.gpu_bytes)})")
        fix = "use quantization mode fp8, a larger target_gpu, or more tensor_parallel GPUs"
    else:
        message = (f"the KV cache for max_batch_size x max_seq_len needs {_gib(plan.kv_bytes_needed)} but "
                   f"{plan.gpu} leaves {_gib(plan.kv_bytes_available)} (room for {plan.max_concurrent_sequences} "
                   f"full-length sequences)")
        fix = (f"lower limits.max_batch_size to {max(plan.max_concurrent_sequences, 1)} or shorten "
               "max_input_len/max_output_len, or enable kv_cache_fp8, or a larger target_gpu")
    raise SpecError(f"GPU memory plan does not fit: {message}", loc=("llm", "limits"), fix=fix)
