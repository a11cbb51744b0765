"""The LLM path: a HuggingFace causal LM -> (FP8) TensorRT-LLM checkpoint -> engine -> the
preprocessing / tensorrt_llm / postprocessing ensemble (see build.py, repository.py).

build_llm/build_engines load lazily: the spec imports llm.spec (pydantic only) on every run.
"""
from __future__ import annotations

__all__ = ["build_llm", "build_engines"]


def __getattr__(name: str):
    if name in __all__:
        from . import build

        return getattr(build, name)
    raise AttributeError(name)
