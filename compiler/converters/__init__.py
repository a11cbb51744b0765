"""Source frameworks -> ONNX, one converter class per framework; which class converts which
framework is the framework registry's (frameworks.py) to say.

    converted = convert(model_spec, spec)

Converter modules import their heavy packages (skl2onnx, onnxmltools, torch) only when used.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConversionError
from ..frameworks import FRAMEWORKS
from .base import ConvertedModel, Converter

if TYPE_CHECKING:
    from ..spec import ModelSpec, Spec

__all__ = ["ConvertedModel", "Converter", "convert", "converted_frameworks"]


def converted_frameworks() -> list[str]:
    return sorted(name for name, framework in FRAMEWORKS.items() if framework.converter is not None)


def convert(model: ModelSpec, spec: Spec) -> ConvertedModel:
    framework = FRAMEWORKS.get(model.source.framework)
    if framework is None or framework.converter is None:
        raise ConversionError(f"model '{model.name}': no ONNX converter for framework '{model.source.framework}'",
                              loc=("source", "framework"), fix=f"use one of: {', '.join(converted_frameworks())}")
    converter: type[Converter] = framework.load_converter()
    return converter().convert(model, spec)
