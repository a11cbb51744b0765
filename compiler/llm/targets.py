"""What the LLM path targets: NGC releases (Triton + TensorRT-LLM versions, engine tensors that
differ between them) and GPUs (memory, FP8 tensor cores, Hopper kernels). Data only: the spec's
`llm` block validates against these tables, and the build reads them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Release:
    """What differs between the NGC releases the LLM path targets.

    Versions: NGC framework support matrix (Triton/TRT-LLM per container tag); tensors:
    triton-inference-server/tensorrtllm_backend, all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt
    at the tag's version.
    """

    tag: str
    triton: str
    trtllm: str
    # Optional engine inputs/outputs that exist in this release's tensorrt_llm model beyond the
    # 24.10 set.
    extra_engine_inputs: tuple[tuple[str, str], ...] = ()
    extra_engine_outputs: tuple[tuple[str, str, tuple[int, ...]], ...] = ()
    # The image ships TensorRT-LLM's LLM API with its PyTorch backend, which the upstream
    # `llmapi` Triton model drives (NVIDIA/TensorRT-LLM triton_backend/all_models/llmapi/, since
    # tensorrtllm_backend v0.19.0 all_models/llmapi/).
    llmapi: bool = False

    @property
    def trtllm_1x(self) -> bool:
        """TensorRT-LLM 1.x: other trtllm-build defaults and engine input names (seed, min_tokens)."""
        return int(self.trtllm.split(".")[0]) >= 1

    @property
    def renamed_sampling_inputs(self) -> bool:
        """tensorrtllm_backend after v0.19.0 names the seed `seed` and the minimum length `min_tokens`
        (was `random_seed`, `min_length`), at the ensemble and at the engine (NVIDIA/TensorRT-LLM
        v1.2.1 triton_backend/all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt)."""
        major, minor = (int(x) for x in self.trtllm.split(".")[:2])
        return (major, minor) > (0, 19)

    @property
    def seed_input(self) -> str:
        return "seed" if self.renamed_sampling_inputs else "random_seed"

    @property
    def min_tokens_input(self) -> str:
        return "min_tokens" if self.renamed_sampling_inputs else "min_length"

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
        extra_engine_outputs=(("batch_index", "INT32", (1,)),), llmapi=True),
}
# The newest release: its default target is the LLM API (the engine path ends with it).
NEWEST_RELEASE = max(RELEASES, key=lambda tag: tuple(int(x) for x in tag.split(".")))
ENGINES = ("tensorrt_llm", "llmapi")


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
