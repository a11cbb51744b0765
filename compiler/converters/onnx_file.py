"""An ONNX file passed through: loaded, checked with onnx.checker, canonicalized. There is no source
framework to compare with, so `reference` is None and verification only runs it in onnxruntime."""
from __future__ import annotations

from ..errors import ConversionError
from ..spec import ModelSpec, Spec
from ..versions import installed_versions
from .base import ConvertedModel, Converter, finish, onnx, source_file


class OnnxFileConverter(Converter):

    def convert(self, model: ModelSpec, spec: Spec) -> ConvertedModel:
        path = source_file(model, spec, (".onnx",))
        try:
            onnx_model = onnx.load(str(path))
        except Exception as exc:  # protobuf's DecodeError and friends: the file is not an ONNX model
            raise ConversionError(f"model '{model.name}': cannot read {path.name} as ONNX: {exc}",
                                  loc=("source", "path"), fix="give a .onnx model file") from None
        producer = onnx_model.producer_name or "onnx"
        converted = finish(model, spec, onnx_model, tool=producer, reference=None, tools=installed_versions("onnx"),
                           producer_version=onnx_model.producer_version)
        opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in onnx_model.opset_import)
        converted.summary = f"onnx file {path.name} ({producer}, opset {opsets}): {converted.signature}"
        return converted
