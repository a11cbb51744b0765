"""An ONNX file passed through: loaded, checked with onnx.checker, canonicalized. There is no source
framework to compare with, so `reference` is None and verification only runs it in onnxruntime."""
from __future__ import annotations

from typing import Any

from ..errors import ConversionError
from ..onnx_signature import set_shape
from ..spec import ModelSpec, Spec
from ..versions import installed_versions
from .base import MAX_ONNX_OPSET, ConvertedModel, Converter, finish, onnx, source_file


class OnnxFileConverter(Converter):

    def convert(self, model: ModelSpec, spec: Spec) -> ConvertedModel:
        path = source_file(model, spec, (".onnx",))
        try:
            onnx_model = onnx.load(str(path))
        except Exception as exc:  # protobuf's DecodeError and friends: the file is not an ONNX model
            raise ConversionError(f"model '{model.name}': cannot read {path.name} as ONNX: {exc}",
                                  loc=("source", "path"), fix="give a .onnx model file") from None
        producer = onnx_model.producer_name or "onnx"
        shape_declared_inputs(model, onnx_model, path.name)
        converted = finish(model, spec, onnx_model, tool=producer, reference=None, tools=installed_versions("onnx"),
                           producer_version=onnx_model.producer_version)
        opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in onnx_model.opset_import)
        converted.summary = f"onnx file {path.name} ({producer}, opset {opsets}): {converted.signature}"
        opset = max((o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx")), default=0)
        if spec.runtime == "container" and (opset > MAX_ONNX_OPSET or onnx_model.ir_version > MAX_IR_VERSION):
            converted.notes.append(f"{path.name} is ONNX opset {opset}, IR version {onnx_model.ir_version}: "
                                   f"tritonserver 24.10's onnxruntime 1.19 loads opsets up to {MAX_ONNX_OPSET} and "
                                   f"IR versions up to {MAX_IR_VERSION}; re-export it at opset {MAX_ONNX_OPSET} "
                                   "(onnx.version_converter) for that image")
        return converted


# onnxruntime 1.19 (tritonserver 24.10) is built with onnx 1.16: IR version 10 (onnx/onnx
# rel-1.16 onnx/onnx.in.proto, IR_VERSION_2024_3_25).
MAX_IR_VERSION = 10


def shape_declared_inputs(model: ModelSpec, onnx_model: Any, shown: str) -> None:
    """A graph input written without a shape (some exporters and hand-made graphs) takes the
    spec's dims for it, by name (the batch axis first when the model batches); without them the
    build cannot probe, verify or configure the input."""
    declared = {tensor.name: tensor for tensor in model.inputs or []}
    initialized = {init.name for init in onnx_model.graph.initializer}
    for value in onnx_model.graph.input:
        if value.name in initialized or value.type.tensor_type.HasField("shape"):
            continue
        tensor = declared.get(value.name)
        if tensor is None:
            raise ConversionError(f"model '{model.name}': {shown} gives graph input '{value.name}' no shape",
                                  loc=("inputs",),
                                  fix=f"declare it with its dims (inputs: [{{name: {value.name}, dtype: ..., "
                                      "dims: [...]}]), or export the graph with input shapes")
        batch: list[int | str] = ["batch"] if model.max_batch_size > 0 else []
        set_shape(value, batch + [d if d > 0 else f"{value.name}_dim{i}" for i, d in enumerate(tensor.dims)])
