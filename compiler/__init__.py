"""tritonize: compile one declarative spec into a verified Triton Inference Server model repository.

The Python API mirrors the CLI: build, validate, check. Heavy modules load on first use.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "build", "load_spec", "validate"]


def __getattr__(name: str):
    if name == "build":
        from .pipeline import build

        return build
    if name == "load_spec":
        from .spec import load_spec

        return load_spec
    if name == "validate":
        from .triton.rules import check_repository

        return check_repository
    raise AttributeError(name)
