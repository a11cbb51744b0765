"""Source frameworks -> ONNX, one converter class per framework in a registry keyed by framework name.

    converted = convert(model_spec, spec)

Converter modules import their heavy packages (skl2onnx, onnxmltools, torch) only inside convert().
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConversionError
from . import onnx_file, pytorch, sklearn, trees  # noqa: F401  (importing registers the converters)
from .base import REGISTRY, ConvertedModel, Converter

if TYPE_CHECKING:
    from ..spec import ModelSpec, Spec

__all__ = ["ConvertedModel", "Converter", "convert", "registered_frameworks"]


def registered_frameworks() -> list[str]:
    return sorted(REGISTRY)


def convert(model: "ModelSpec", spec: "Spec") -> ConvertedModel:
    framework = model.source.framework
    converter = REGISTRY.get(framework)
    if converter is None:
        raise ConversionError(f"model '{model.name}': no ONNX converter for framework '{framework}'",
                              file=spec.path, field=f"models.{model.name}.source.framework",
                              fix=f"use one of: {', '.join(registered_frameworks())}")
    return converter().convert(model, spec)
