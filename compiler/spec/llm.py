"""The `llm` block of a huggingface model in model.yaml, validated with the same one-line errors as
the rest of the spec (file:line, field path, message, fix). Release and GPU tables: llm/targets.py.

    llm:
      engine: null                # tensorrt_llm | llmapi; default: llmapi for the newest release
      release: "24.10"            # NGC release the engine and configs target (see RELEASES)
      target_gpu: H100-80GB       # for the memory plan and the per-GPU engine flags
      dtype: float16
      tensor_parallel: 1
      streaming: true
      bls: false
      add_bos_token: null         # default: as the tokenizer's own config says
      quantization: {mode: fp8, kv_cache_fp8: false,
                     calibration: {text_file: calib.txt, samples: 64, max_length: 64},
                     max_logit_error: 2.0, min_token_agreement: 0.9}
      limits: {max_batch_size: 8, max_input_len: 256, max_output_len: 128, max_num_tokens: 2048,
               max_beam_width: 1}
      sampling: {temperature: 1.0, top_k: 1, top_p: 0.0, seed: 0}
      # engine: llmapi only (1/model.yaml, TensorRT-LLM's PyTorch backend)
      cuda_graphs: true
      torch_compile: false
      attn_backend: TRTLLM
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import Loc
from ..llm.targets import GPUS, NEWEST_RELEASE, RELEASES, Gpu, Release

if TYPE_CHECKING:
    from .models import ModelSpec, Spec
    from .source import SpecSource


# The model directories an LLM becomes besides its own name (the ensemble): llm/repository.Names.
DIRECTORY_SUFFIXES = {"preprocessing": "_preprocessing", "engine": "_tensorrt_llm",
                      "postprocessing": "_postprocessing", "bls": "_bls"}

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


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
    def _kv(self) -> QuantizationSpec:
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
    # tensorrt_llm: TensorRT engine + the C++ tensorrtllm backend's ensemble (releases up to
    # 26.07); llmapi: the upstream `llmapi` python model on TensorRT-LLM's PyTorch backend.
    # Default (null): llmapi for the newest release, tensorrt_llm before it (engine_of).
    engine: Literal["tensorrt_llm", "llmapi"] | None = None
    release: str | None = None  # default: the spec's container.release
    target_gpu: str = "H100-80GB"
    dtype: Literal["float16", "bfloat16"] = "float16"
    tensor_parallel: int = Field(default=1, ge=1, le=64)
    streaming: bool = True
    bls: bool = False  # also write NAME_bls: the ensemble's interface as one python (BLS) model
    kv_cache_free_gpu_mem_fraction: float = Field(default=0.9, gt=0, le=1)
    batch_scheduler_policy: Literal["guaranteed_no_evict", "max_utilization"] = "guaranteed_no_evict"
    enable_kv_cache_reuse: bool = False
    # Prepend the tokenizer's BOS to prompts; default (null): as the tokenizer's own config does
    # (add_bos_token / its post-processor), what transformers and upstream preprocessing do.
    add_bos_token: bool | None = None
    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    # engine: llmapi only, written into model.yaml as LLM(**args) keys (NVIDIA/TensorRT-LLM
    # tensorrt_llm/llmapi/llm_args.py: cuda_graph_config, torch_compile_config, attn_backend).
    cuda_graphs: bool = True   # CUDA graphs for decoding batches up to limits.max_batch_size
    torch_compile: bool = False
    attn_backend: Literal["TRTLLM", "FLASHINFER", "VANILLA"] = "TRTLLM"

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


def release_of(llm: LlmSpec, spec: Spec) -> Release:
    return RELEASES[llm.release or spec.container.release]


def engine_of(llm: LlmSpec, spec: Spec) -> str:
    """The target: what llm.engine says, else llmapi for the newest release (the engine path
    ends there: NVIDIA/TensorRT-LLM docs/source/legacy/tensorrt-backend-removal.md)."""
    if llm.engine is not None:
        return llm.engine
    return "llmapi" if release_of(llm, spec).tag == NEWEST_RELEASE else "tensorrt_llm"


def validate_llm_blocks(spec: Spec, source: SpecSource) -> None:
    """Cross-field checks of every llm block (against the runtime, the release, files); raise a
    one-line SpecError naming the field."""
    for i, model in enumerate(spec.models):
        if model.llm is None:
            continue
        base = ("models", i, "llm")
        llm = model.llm

        def fail(loc: Loc, message: str, fix: str | None = None, base: Loc = base) -> Exception:
            return source.error(base + loc, message, fix)

        if llm.release is None and spec.container.release not in RELEASES:
            raise source.error(("container", "release"),
                               f"release '{spec.container.release}' has no TensorRT-LLM engine path "
                               f"for model '{model.name}'",
                               f"set models[{i}].llm.release to one of: {', '.join(RELEASES)}")
        if engine_of(llm, spec) == "llmapi" and not release_of(llm, spec).llmapi:
            with_llmapi = [tag for tag, r in RELEASES.items() if r.llmapi]
            raise fail(("engine",), f"release {release_of(llm, spec).tag} has no TensorRT-LLM LLM API target",
                       f"set llm.release to one of: {', '.join(with_llmapi)}, or engine: tensorrt_llm")
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
        _check_family(spec, source, model, i)
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


def _check_family(spec: Spec, source: SpecSource, model: ModelSpec, index: int) -> None:
    """A local model directory's family against the release, at spec time (a factory's directory
    only exists at build time, where build_llm makes the same check)."""
    import json

    from ..errors import ConversionError
    from ..llm.checkpoint_config import family_of

    if model.llm is None or model.source.path is None or model.source.factory is not None:
        return
    config_file = spec.resolve(model.source.path) / "config.json"
    if not config_file.is_file():
        return
    try:
        family_of(json.loads(config_file.read_text()), release_of(model.llm, spec).tag, engine_of(model.llm, spec))
    except ConversionError as error:
        raise source.error(("models", index) + error.loc, error.message, error.fix) from None
