"""What every converter shares: the result type, the base class, source loading and spec overrides."""
from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConversionError
from ..onnx_signature import (
    ColumnSampling,
    canonicalize,
    fix_batch_output_shapes,
    lowercase_in_c_locale,
    probe_inputs,
    rename_tensors,
    signature,
    split_ranges,
    unbatched_tensors,
)
from ..optional import optional
from ..samples import NUMPY_DTYPES, as_bytes
from ..spec import ModelSpec, Spec, TensorSpec
from ..versions import installed_versions

if TYPE_CHECKING:
    import onnx as onnx_types

onnx = optional("onnx", purpose="checking ONNX graphs")


# ONNX opsets written by the converters. 17 is served by every onnxruntime in NGC tritonserver
# releases from 23.xx on (24.10 ships onnxruntime 1.19) and by TensorRT 8.6+; onnxmltools 1.16 writes
# at most opset 15. ai.onnx.ml 3 is the newest TreeEnsemble version onnxruntime 1.19 runs.
ONNX_OPSET = 17
# The newest opset a converter may be given when it refuses ONNX_OPSET (skl2onnx's KNNImputer asks
# for 18): onnxruntime 1.19, the oldest the container targets ship, runs opsets up to 21.
MAX_ONNX_OPSET = 21
ONNXMLTOOLS_OPSET = 15
ONNX_ML_OPSET = 3

Reference = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class ConvertedModel:
    """A model converted to ONNX, with its Triton-facing signature and its source framework's answer.

    inputs/outputs are in Triton terms. batch_axis is True when the model batches (max_batch_size > 0)
    and every graph input/output has a leading dynamic dim: dims then exclude it, and a per-row scalar
    is dims [1] with reshape [] (the graph sees [N]). With max_batch_size 0, dims are the full graph
    shapes (a dynamic leading dim is -1) and batch_axis is False. `reference` takes and returns
    arrays shaped as Triton clients see them ([batch] + dims), keyed by graph tensor names; it is None
    for a plain ONNX file (there is no source framework to compare with).
    """

    name: str
    framework: str
    onnx_model: onnx_types.ModelProto
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    batch_axis: bool
    reference: Reference | None
    tools: dict[str, str] = field(default_factory=dict)
    summary: str = ""  # one line for the build log and the manifest: source, then `signature`
    # STRING input -> the values it takes (an encoder's fitted categories): verification samples them.
    choices: dict[str, list[str] | list[int]] = field(default_factory=dict)
    # Numeric input -> how to sample each column: (low, high) across the model's split thresholds,
    # or a categorical column's values (onnx_signature.split_ranges); where the spec gives no range.
    ranges: dict[str, list[ColumnSampling]] = field(default_factory=dict)
    # Warnings for the build log (a module that came in training mode).
    notes: list[str] = field(default_factory=list)
    # The fix a failed verification gives when the values are far off, where the converter knows
    # more than verify's generic one (a trace that froze data-dependent Python).
    wrong_conversion_fix: str = ""

    @property
    def signature(self) -> str:
        """E.g. 'input FP32[4] -> label INT64, probabilities FP32[3]' (a per-row scalar shows no dims)."""
        def text(tensor: TensorSpec) -> str:
            dims = "" if tensor.reshape == [] else "[" + ",".join(str(d) for d in tensor.dims) + "]"
            return f"{tensor.name} {tensor.dtype}{dims}"

        return f"{', '.join(map(text, self.inputs))} -> {', '.join(map(text, self.outputs))}"


class Converter(abc.ABC):
    """One source framework -> ONNX (frameworks.FRAMEWORKS names the class for each framework)."""

    @abc.abstractmethod
    def convert(self, model: ModelSpec, spec: Spec) -> ConvertedModel:
        """Load the source, export ONNX, and finish() it."""


def source_file(model: ModelSpec, spec: Spec, suffixes: tuple[str, ...]) -> Path:
    """The model's `path`, resolved and checked, with a suffix the converter understands."""
    assert model.source.path is not None
    path = spec.resolve(model.source.path)
    where = ("source", "path")
    if not path.is_file():
        raise ConversionError(f"model file not found: {model.source.path}", loc=where,
                              fix="give a path relative to the spec file")
    if path.suffix.lower() not in suffixes:
        pickled = path.suffix.lower() in (".joblib", ".pkl", ".pickle") and model.source.framework in ("xgboost", "lightgbm")
        # A pickled XGBClassifier/LGBMRegressor... is a scikit-learn estimator, which the sklearn
        # converter takes (converters/sklearn.py register_booster_converters).
        endings = " or ".join(suffixes)
        raise ConversionError(f"'{path.name}' is not a model file of framework {model.source.framework} "
                              f"(it reads {endings})", loc=where,
                              fix="write framework: sklearn for a pickled scikit-learn-API estimator such as "
                                  "XGBClassifier or LGBMRegressor, or save the booster itself with save_model as "
                                  f"{endings}" if pickled else f"use a file ending in {endings}")
    return path


def finish(model: ModelSpec, spec: Spec, onnx_model: onnx_types.ModelProto, *, tool: str, reference: Reference | None,
           tools: dict[str, str], rename_outputs: dict[str, str] | None = None,
           producer_version: str | None = None, choices: dict[str, list[str] | list[int]] | None = None
           ) -> ConvertedModel:
    """Common tail of every converter: converter-chosen output names, output shapes from a real run
    (converters' declared ones are not trusted), spec name/dtype/dims overrides checked against
    them, deterministic bytes, and the ONNX checker. The converter then writes `summary`.
    Verification then cross-checks each output's shape with the source framework's answer."""
    rename_tensors(onnx_model, rename_outputs or {})
    lowercase_in_c_locale(onnx_model)  # before the first onnxruntime session: a text vectorizer's lowercasing
    probe = probe_inputs(onnx_model)
    for name, values in (choices or {}).items():  # an encoder that refuses unknown categories
        if name in probe and values:
            probe[name] = np.full(probe[name].shape, values[0], dtype=probe[name].dtype)
    fix_batch_output_shapes(onnx_model, probe, model_name=model.name)
    batching = model.max_batch_size > 0
    graph = signature(onnx_model, model.name, batching)
    if batching and not graph.batch_axis:
        raise _no_batch_axis(model, onnx_model)
    scalars = [tensor.name for tensor in graph.outputs if not batching and tensor.reshape == []]
    if scalars:  # Triton's dims take one axis at least, and a model without batching has no reshape to []
        raise ConversionError(f"model '{model.name}' output '{scalars[0]}' is a 0-d tensor (one number), which a "
                              "model without batching cannot serve: Triton's dims need an axis",
                              loc=("outputs",), fix="return it with shape [1], or batch the model (max_batch_size > 0) "
                                                    "and answer a value a row")
    declared_inputs, declared_outputs = _by_name(graph.inputs, model.inputs), _by_name(graph.outputs, model.outputs)
    renames = {**_spec_renames(model, spec, graph.inputs, declared_inputs, "inputs", model.inputs),
               **_spec_renames(model, spec, graph.outputs, declared_outputs, "outputs", model.outputs)}
    rename_tensors(onnx_model, renames)
    canonicalize(onnx_model, graph_name=model.name, producer=tool,
                 producer_version=producer_version if producer_version is not None else tools.get(tool, ""))
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConversionError(f"model '{model.name}': the ONNX graph fails onnx.checker: {first}", loc=("source",),
                              fix="re-export the model with a supported opset") from None
    final = signature(onnx_model, model.name, batching)
    inputs, outputs = _merged(final.inputs, declared_inputs), _merged(final.outputs, declared_outputs)
    if reference is not None:
        reference = _client_reference(reference, renames, inputs, outputs, final.batch_axis)
    return ConvertedModel(
        name=model.name, framework=model.source.framework, onnx_model=onnx_model,
        inputs=inputs, outputs=outputs, batch_axis=final.batch_axis, reference=reference,
        tools={**installed_versions("onnx", "onnxruntime"), **tools},
        choices={renames.get(name, name): values for name, values in (choices or {}).items()},
        ranges=split_ranges(onnx_model))


def _no_batch_axis(model: ModelSpec, onnx_model: onnx_types.ModelProto) -> ConversionError:
    """A batching model's graph has a tensor without an open leading dim: an output that answers
    the whole batch at once (a 0-d sum), or a graph exported for one fixed batch size."""
    missing = unbatched_tensors(onnx_model)
    kind, name, shape = next((t for t in missing if t[0] == "inputs"), missing[0])
    shown = [d if isinstance(d, int) else -1 for d in shape]
    if kind == "outputs":
        return ConversionError(f"model '{model.name}' output '{name}' has no batch axis (shape {shown} for a batch "
                               "of inputs): the model answers the whole batch at once, not a value a row",
                               loc=("max_batch_size",),
                               fix="answer one value a row (shape [N] or [N, k]: reduce over the other axes, not the "
                                   "batch), or set max_batch_size: 0")
    return ConversionError(f"the converted ONNX graph of '{model.name}' has no dynamic batch dimension (input "
                           f"'{name}' has shape {shown})", loc=("max_batch_size",),
                           fix="set max_batch_size: 0, or export the model with a dynamic first axis")


def _by_name(graph: list[TensorSpec], declared: list[TensorSpec] | None) -> list[TensorSpec] | None:
    """The spec's tensors in the graph's order when each names a graph tensor (the graph's own
    tensor stands in for those left out: a spec may declare just `probabilities`), else as given
    (matched by position: the graph's tensors are renamed to the spec's names)."""
    if not declared:
        return declared
    graph_names = [tensor.name for tensor in graph]
    names = [tensor.name for tensor in declared]
    if not set(names) <= set(graph_names) or names == graph_names[:len(names)]:
        return declared
    by_name = {tensor.name: tensor for tensor in declared}
    return [by_name.get(tensor.name, tensor) for tensor in graph]


def _spec_renames(model: ModelSpec, spec: Spec, graph: list[TensorSpec], declared: list[TensorSpec] | None,
                  kind: str, written: list[TensorSpec] | None) -> dict[str, str]:
    """Spec tensors match graph tensors by position (after _by_name); names may differ (the graph is
    renamed), data types must agree and dims must fit the graph's."""
    if not declared:
        return {}
    if len(declared) > len(graph):
        raise ConversionError(f"model '{model.name}' declares {len(declared)} {kind} but the ONNX graph has "
                              f"{len(graph)} ({', '.join(f'{t.name} {t.dtype}{list(t.dims)}' for t in graph)})", loc=(kind,),
                              fix=f"declare at most {len(graph)} {kind if len(graph) != 1 else kind[:-1]}")
    for index, (wanted, actual) in enumerate(zip(declared, graph)):
        # Errors point at the tensor as the spec wrote it (written: before _by_name's reordering).
        where = (kind, next((i for i, tensor in enumerate(written or []) if tensor is wanted), index))
        if wanted.dtype != actual.dtype:
            by_position = "" if wanted.name == actual.name else (
                f" (an {kind[:-1]} named otherwise than the graph's is matched by position; the graph's {kind}: "
                f"{', '.join(t.name for t in graph)})")
            raise ConversionError(f"dtype {wanted.dtype} does not match the graph's {actual.dtype} for "
                                  f"'{actual.name}'{by_position}", loc=(*where, "dtype"),
                                  fix=f"write dtype: {actual.dtype}" if not by_position else
                                  f"name the {kind[:-1]} after the graph's, or declare them in the graph's order")
        # Compare what the graph sees: a spec without reshape is taken as client dims.
        if wanted.reshape is None and wanted.dims == actual.dims:
            continue
        wanted_dims = wanted.reshape if wanted.reshape is not None else wanted.dims
        actual_dims = actual.reshape if actual.reshape is not None else actual.dims
        if len(wanted_dims) != len(actual_dims) or any(
                a != -1 and w != -1 and a != w for w, a in zip(wanted_dims, actual_dims)):
            raise ConversionError(f"dims {wanted.dims} do not fit the graph's {actual.dims} for '{actual.name}'"
                                  " (batch dim excluded)", loc=(*where, "dims"),
                                  fix=f"write dims: {actual.dims}")
    return {actual.name: wanted.name for wanted, actual in zip(declared, graph)}


def _merged(graph: list[TensorSpec], declared: list[TensorSpec] | None) -> list[TensorSpec]:
    """Spec tensors where declared (they may be more specific, and carry range/optional), the
    graph's for the rest."""
    declared = declared or []
    merged = []
    for index, tensor in enumerate(graph):
        if index >= len(declared):
            merged.append(tensor)
            continue
        wanted = declared[index].model_copy()
        if wanted.reshape is None and tensor.reshape is not None and wanted.dims == tensor.dims:
            wanted.reshape = tensor.reshape
        merged.append(wanted)
    return merged


def _filled(client_shape: list[int], shape: tuple[int, ...]) -> list[int] | None:
    """client_shape with its -1s taken from `shape`, when the two differ only in axes of size 1
    (the same data), else None."""
    if client_shape.count(-1) == 1 and len(shape) == 1 and all(d in (-1, 1) for d in client_shape):
        return [shape[0] if d == -1 else 1 for d in client_shape]  # [N] for [-1, 1], one sample too
    known, given = [d for d in client_shape if d != 1], [d for d in shape if d != 1]
    if len(known) != len(given) or any(k != -1 and k != g for k, g in zip(known, given)):
        return None
    sizes = iter(g for k, g in zip(known, given) if k == -1)
    return [next(sizes) if d == -1 else d for d in client_shape]


def _client_reference(reference: Reference, renames: dict[str, str], inputs: list[TensorSpec],
                      outputs: list[TensorSpec], batch_axis: bool) -> Reference:
    """Wrap a converter's reference (graph names and shapes, source dtypes) so that it takes and
    returns what Triton clients see: final tensor names, Triton dtypes, [batch] + dims shapes."""
    original = {new: old for old, new in renames.items()}
    model_shapes = {t.name: t.reshape for t in inputs if t.reshape is not None}

    def client_reference(samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {}
        for name, array in samples.items():
            if name in model_shapes:
                array = array.reshape(([len(array)] if batch_axis else []) + model_shapes[name])
            feeds[original.get(name, name)] = array
        answer = reference(feeds)
        rows = len(next(iter(samples.values()))) if batch_axis else 0
        result = {}
        for tensor in outputs:
            source_name = original.get(tensor.name, tensor.name)
            if source_name not in answer:
                raise RuntimeError(f"tritonize bug: the reference of this converter gives no answer for output "
                                   f"'{source_name}' (it answers {', '.join(answer)})")
            array = np.asarray(answer[source_name])
            if tensor.dtype == "STRING":
                array = as_bytes(array)
            else:
                array = array.astype(NUMPY_DTYPES[tensor.dtype], copy=False)
            client_shape = ([rows] if batch_axis else []) + tensor.dims
            # The source's [N] answer for a per-row [1] output (and the like) is the same data.
            if tensor.reshape is not None or (min(client_shape, default=1) > 0 and
                                              array.size == int(np.prod(client_shape))):
                array = array.reshape(client_shape)
            elif (filled := _filled(client_shape, array.shape)) is not None:
                array = array.reshape(filled)  # unbatched: [N] for dims [-1, 1] (a regressor's)
            result[tensor.name] = array
        return result

    return client_reference
