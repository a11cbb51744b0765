"""The LLM path: a HuggingFace causal LM -> (FP8) TensorRT-LLM checkpoint -> engine -> the
preprocessing / tensorrt_llm / postprocessing ensemble (see build.py, repository.py)."""
from __future__ import annotations

from .build import build_engines, build_llm

__all__ = ["build_llm", "build_engines"]
