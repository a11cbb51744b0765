"""The registry of source frameworks: the one list of what `source.framework` may be, how each
one's model directories are built, and which converter turns it into ONNX.

Data only (converters are named by "module:Class" and imported when used), so the spec can take
its list of valid frameworks from here without importing any converter.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

# How a framework's model directories are produced (see pipeline.BUILDERS).
BuilderKind = Literal["onnx", "python", "llm", "encoder"]


@dataclass(frozen=True)
class Framework:
    name: str
    builder: BuilderKind
    # Which `source` keys may say where the model comes from, with what each means for it.
    origins: dict[str, str]
    converter: str | None = None  # "module:Class" of its ONNX converter (builder "onnx")
    extra: str | None = None      # the pip extra that installs what it needs
    # A spec block that, when the model has it, picks another builder (huggingface: `llm`).
    blocks: tuple[tuple[str, BuilderKind], ...] = ()

    def builder_for(self, model: Any) -> BuilderKind:
        """The builder of one spec model: the first of `blocks` the model carries, else `builder`."""
        return next((kind for block, kind in self.blocks if getattr(model, block, None) is not None), self.builder)

    def load_converter(self) -> Any:
        assert self.converter is not None, f"{self.name} has no ONNX converter"
        module, _, attribute = self.converter.partition(":")
        return getattr(importlib.import_module(module), attribute)


_SAVED = "a saved model"
_FACTORY = "'module:function' returning the model"

FRAMEWORKS: dict[str, Framework] = {f.name: f for f in (
    Framework("sklearn", "onnx", {"path": _SAVED, "factory": _FACTORY},
              "tritonize.converters.sklearn:SklearnConverter", "sklearn"),
    Framework("xgboost", "onnx", {"path": _SAVED, "factory": _FACTORY},
              "tritonize.converters.trees:XGBoostConverter", "xgboost"),
    Framework("lightgbm", "onnx", {"path": _SAVED, "factory": _FACTORY},
              "tritonize.converters.trees:LightGBMConverter", "lightgbm"),
    Framework("pytorch", "onnx", {"path": _SAVED, "factory": _FACTORY},
              "tritonize.converters.pytorch:PyTorchConverter", "torch"),
    Framework("onnx", "onnx", {"path": "a .onnx file"}, "tritonize.converters.onnx_file:OnnxFileConverter"),
    Framework("python", "python", {"path": "a model.py", "builtin": "a model.py from python_backends/"}),
    # An `llm` block makes it a TensorRT-LLM model (tritonize.llm); without one it is an encoder
    # exported to ONNX behind a tokenizer (tritonize.encoder).
    Framework("huggingface", "encoder", {"path": "a model directory",
                                         "factory": "'module:function' returning that directory, e.g. after "
                                                    "creating it"},
              extra="llm", blocks=(("llm", "llm"),)),
)}

FRAMEWORK_NAMES = tuple(FRAMEWORKS)
