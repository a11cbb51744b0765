"""The `llm` block of a huggingface model in model.yaml, validated with the same one-line errors as
the rest of the spec (file:line, field path, message, fix).

    llm:
      engine: tensorrt_llm
      release: "24.10"            # NGC release the engine and configs target (see RELEASES)
      target_gpu: H100-80GB       # for the memory plan and the per-GPU engine flags
      dtype: float16
      tensor_parallel: 1
      streaming: true
      bls: false
      quantization: {mode: fp8, kv_cache_fp8: false,
                     calibration: {text_file: calib.txt, samples: 64, max_length: 64},
                     max_logit_error: 2.0, min_token_agreement: 0.9}
      limits: {max_batch_size: 8, max_input_len: 256, max_output_len: 128, max_num_tokens: 2048,
               max_beam_width: 1}
      sampling: {temperature: 1.0, top_k: 1, top_p: 0.0, seed: 0}
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from ..spec import ModelSpec, Spec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


@dataclass(frozen=True)
class Release:
    """What differs between the NGC releases the LLM path targets (facts sections 4, 6, 7)."""

    tag: str
    triton: str
    trtllm: str
    # Optional engine inputs/outputs that exist in this release's tensorrt_llm model beyond the
    # 24.10 set (tensorrtllm_backend all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt).
    extra_engine_inputs: tuple[tuple[str, str], ...] = ()
    extra_engine_outputs: tuple[tuple[str, str, tuple[int, ...]], ...] = ()

    @property
    def image(self) -> str:
        return f"nvcr.io/nvidia/tritonserver:{self.tag}-trtllm-python-py3"


RELEASES: dict[str, Release] = {
    "24.10": Release("24.10", triton="2.51.0", trtllm="0.14.0"),
    # TRT-LLM 1.2.1: the last line with the TensorRT engine path (trtllm-build, C++ tensorrtllm
    # backend). Its tensorrt_llm model takes num_return_sequences and return_perf_metrics and
    # answers which batch entry a response belongs to (tensorrtllm_backend docs/model_config.md).
    "26.07": Release(
        "26.07", triton="2.71.0", trtllm="1.2.1",
        extra_engine_inputs=(("num_return_sequences", "INT32"), ("return_perf_metrics", "BOOL")),
        extra_engine_outputs=(("batch_index", "INT32", (1,)),)),
}


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    fp8: bool       # Ada/Hopper tensor cores: FP8 GEMMs
    hopper: bool    # paged/FP8 context FMHA kernels


GPUS: dict[str, Gpu] = {g.name: g for g in (
    Gpu("H100-80GB", 80, fp8=True, hopper=True),
    Gpu("H200-141GB", 141, fp8=True, hopper=True),
    Gpu("L40S-48GB", 48, fp8=True, hopper=False),
    Gpu("L4-24GB", 24, fp8=True, hopper=False),
    Gpu("A100-80GB", 80, fp8=False, hopper=False),
    Gpu("A100-40GB", 40, fp8=False, hopper=False),
    Gpu("A10G-24GB", 24, fp8=False, hopper=False),
)}


class CalibrationSpec(_Strict):
    text_file: str | None = None  # one sample per non-empty line; built-in corpus when absent
    samples: int = Field(default=32, ge=1, le=4096)
    max_length: int = Field(default=64, ge=8, le=8192)


class QuantizationSpec(_Strict):
    mode: Literal["fp8", "none"] = "none"
    kv_cache_fp8: bool = False
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    # Budget for what FP8 costs, measured on held-out prompts against the original model: the
    # largest absolute logit difference over all positions, and the fraction of positions whose
    # greedy next token is unchanged. The build fails outside the budget.
    max_logit_error: float = Field(default=2.0, gt=0)
    min_token_agreement: float = Field(default=0.9, ge=0, le=1)

    @model_validator(mode="after")
    def _kv(self) -> "QuantizationSpec":
        if self.kv_cache_fp8 and self.mode != "fp8":
            raise ValueError("kv_cache_fp8 needs mode: fp8")
        return self


class LimitsSpec(_Strict):
    max_batch_size: int = Field(default=8, ge=1, le=4096)
    max_input_len: int = Field(default=256, ge=1)
    max_output_len: int = Field(default=128, ge=1)
    max_num_tokens: int | None = Field(default=None, ge=1)  # default: batch x input, capped at 8192
    max_beam_width: int = Field(default=1, ge=1, le=64)

    @property
    def max_seq_len(self) -> int:
        return self.max_input_len + self.max_output_len

    @property
    def num_tokens(self) -> int:
        if self.max_num_tokens is not None:
            return self.max_num_tokens
        return min(8192, self.max_batch_size * self.max_input_len)


class SamplingSpec(_Strict):
    """Used when a request does not say; top_k 1 is greedy (TRT-LLM semantics)."""

    temperature: float = Field(default=1.0, ge=0)
    top_k: int = Field(default=1, ge=0)
    top_p: float = Field(default=0.0, ge=0, le=1)
    seed: int = Field(default=0, ge=0)


class LlmSpec(_Strict):
    engine: Literal["tensorrt_llm"] = "tensorrt_llm"
    release: str | None = None  # default: the spec's container.release
    target_gpu: str = "H100-80GB"
    dtype: Literal["float16", "bfloat16"] = "float16"
    tensor_parallel: int = Field(default=1, ge=1, le=64)
    streaming: bool = True
    bls: bool = False  # also write NAME_bls: the ensemble's interface as one python (BLS) model
    kv_cache_free_gpu_mem_fraction: float = Field(default=0.9, gt=0, le=1)
    batch_scheduler_policy: Literal["guaranteed_no_evict", "max_utilization"] = "guaranteed_no_evict"
    enable_kv_cache_reuse: bool = False
    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)

    @field_validator("release")
    @classmethod
    def _release(cls, value: str | None) -> str | None:
        if value is not None and str(value) not in RELEASES:
            raise ValueError(f"release '{value}' is not supported for TensorRT-LLM (engine-capable "
                             f"releases: {', '.join(RELEASES)})")
        return None if value is None else str(value)

    @field_validator("target_gpu")
    @classmethod
    def _gpu(cls, value: str) -> str:
        if value not in GPUS:
            raise ValueError(f"unknown target_gpu '{value}' (known: {', '.join(GPUS)})")
        return value

    @property
    def gpu(self) -> Gpu:
        return GPUS[self.target_gpu]


def release_of(llm: LlmSpec, spec) -> Release:
    return RELEASES[llm.release or spec.container.release]


def validate_llm_blocks(spec, lines: dict) -> None:
    """Cross-field checks of every llm block (against the runtime, the release, files); raise a
    one-line SpecError naming the field."""
    from ..spec import spec_error_at

    for i, model in enumerate(spec.models):
        if model.llm is None:
            continue
        base = ("models", i, "llm")
        llm = model.llm

        def fail(loc: tuple, message: str, fix: str | None = None):
            return spec_error_at(spec.path, lines, base + loc, message, fix)

        if llm.release is None and spec.container.release not in RELEASES:
            raise spec_error_at(spec.path, lines, ("container", "release"),
                                f"release '{spec.container.release}' has no TensorRT-LLM engine path "
                                f"for model '{model.name}'",
                                f"set models[{i}].llm.release to one of: {', '.join(RELEASES)}")
        if llm.quantization.mode == "fp8" and not llm.gpu.fp8:
            raise fail(("quantization", "mode"), f"{llm.target_gpu} has no FP8 tensor cores",
                       "use mode: none, or an FP8-capable target_gpu (H100-80GB, H200-141GB, L40S-48GB, L4-24GB)")
        if spec.runtime == "embedded":
            if llm.limits.max_beam_width > 1:
                raise fail(("limits", "max_beam_width"), "the embedded CPU engine decodes one beam",
                           "set max_beam_width: 1, or runtime: container")
            if llm.tensor_parallel > 1:
                raise fail(("tensor_parallel",), "the embedded CPU engine runs on one process",
                           "set tensor_parallel: 1, or runtime: container")
        calib = llm.quantization.calibration.text_file
        if calib is not None and not spec.resolve(calib).is_file():
            raise fail(("quantization", "calibration", "text_file"), f"file not found: {calib}",
                       "give a text file relative to the spec, one sample per line")
        if llm.limits.num_tokens < llm.limits.max_input_len and llm.limits.max_num_tokens is not None:
            raise fail(("limits", "max_num_tokens"),
                       f"max_num_tokens {llm.limits.num_tokens} is below max_input_len {llm.limits.max_input_len}",
                       "raise max_num_tokens (one full prompt must fit in a step)")
        if llm.tensor_parallel > 1 and llm.quantization.mode == "fp8":
            raise fail(("tensor_parallel",), "FP8 export here writes one rank",
                       "use tensor_parallel: 1 with fp8")


def check_model_dir(spec: Spec, model: ModelSpec, hf_dir: Path) -> dict:
    """Checks that need the HuggingFace directory (which a factory may only create at build
    time); returns its config.json."""
    from ..spec import spec_error_at

    i = spec.models.index(model)
    llm = model.llm
    hf_config = hf_dir / "config.json"
    if not hf_config.is_file():
        raise spec_error_at(spec.path, spec.lines, ("models", i, "source"),
                            f"{hf_dir} is not a HuggingFace model directory (no config.json)",
                            "point source.path at a directory written by save_pretrained")
    config = json.loads(hf_config.read_text())
    positions = config.get("max_position_embeddings")
    if positions is not None and llm.limits.max_seq_len > positions:
        raise spec_error_at(spec.path, spec.lines, ("models", i, "llm", "limits", "max_output_len"),
                            f"max_input_len + max_output_len = {llm.limits.max_seq_len} exceeds the model's "
                            f"max_position_embeddings {positions}", "lower max_input_len or max_output_len")
    return config
