"""Reading and normalizing the tensor signature of an ONNX graph.

Converters produce graphs whose declared input/output shapes are what Triton's config must match.
This module turns a graph into Triton-style TensorSpecs (batch dim removed, rank-1 batched tensors as
dims [1] + reshape []), renames graph tensors, repairs output shapes that converters declare wrongly,
and strips the fields that would make the serialized bytes differ between two identical conversions.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import ConversionError, first_line
from .optional import optional
from .spec import TensorSpec

if TYPE_CHECKING:
    import onnx

onnxruntime = optional("onnxruntime", purpose="running ONNX graphs")

# onnx.TensorProto.DataType values -> Triton data types (without TYPE_).
ONNX_TO_TRITON = {
    1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "STRING",
    9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64", 16: "BF16",
}

# Name given to the symbolic batch dimension when this module writes one.
BATCH_DIM = "batch"


@dataclass
class Signature:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    batch_axis: bool


def _graph_inputs(model: onnx.ModelProto) -> list:
    """Graph inputs that are fed at run time (older exporters list initializers as inputs too)."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def _shape(value) -> list[int | str | None]:
    """Declared dims: int for a fixed size, str for a symbolic one, None when unknown."""
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return []
    dims: list[int | str | None] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(dim.dim_value)
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return dims


def _dtype(value, model_name: str) -> str:
    elem_type = value.type.tensor_type.elem_type
    if not value.type.HasField("tensor_type") or elem_type not in ONNX_TO_TRITON:
        raise ConversionError(f"model '{model_name}': graph tensor '{value.name}' is not a tensor of a type Triton "
                              "serves (sequences, maps and complex types are not supported)",
                              fix="disable ZipMap / export plain tensors")
    return ONNX_TO_TRITON[elem_type]


def signature(model: onnx.ModelProto, model_name: str, batching: bool = True) -> Signature:
    """The graph's inputs and outputs as TensorSpecs.

    With `batching` (the model's max_batch_size > 0), batch_axis is True when every input and output
    has a leading dim that is not a fixed size; the leading dim is then dropped from dims. A tensor
    that is only the batch dim (shape [N]) becomes dims [1] with reshape [] - Triton's convention for
    a per-row scalar. Without `batching`, dims are the full graph shapes. Unknown sizes become -1.
    """
    fed = _graph_inputs(model)
    values = [*fed, *model.graph.output]
    shapes = [_shape(v) for v in values]
    batch_axis = batching and bool(values) and all(shape and not isinstance(shape[0], int) for shape in shapes)

    def tensor(value, shape) -> TensorSpec:
        dims = [d if isinstance(d, int) else -1 for d in (shape[1:] if batch_axis else shape)]
        if not dims:
            return TensorSpec(name=value.name, dtype=_dtype(value, model_name), dims=[1], reshape=[])
        return TensorSpec(name=value.name, dtype=_dtype(value, model_name), dims=dims)

    inputs = [tensor(v, s) for v, s in zip(fed, shapes)]
    outputs = [tensor(v, s) for v, s in zip(model.graph.output, shapes[len(inputs):])]
    return Signature(inputs, outputs, batch_axis)


# onnxruntime's StringNormalizer (a text vectorizer's lowercasing) defaults to the en_US.UTF-8
# locale, which minimal images lack ("Failed to construct locale with name:en_US.UTF-8"); glibc
# always has C.UTF-8 (onnxruntime 1.x core/providers/cpu/text/string_normalizer.cc).
TEXT_LOCALE = "C.UTF-8"


def lowercase_in_c_locale(model: onnx.ModelProto) -> None:
    """Every StringNormalizer that names no locale gets TEXT_LOCALE (finish() runs it for every converter)."""
    from onnx import helper

    for graph in _graphs(model.graph):
        for node in graph.node:
            attributes = {a.name for a in node.attribute}
            if node.op_type == "StringNormalizer" and "locale" not in attributes:
                node.attribute.append(helper.make_attribute("locale", TEXT_LOCALE))


def unbatched_tensors(model: onnx.ModelProto) -> list[tuple[str, str, list[int | str | None]]]:
    """(inputs or outputs, name, declared shape) of each graph input and output without a leading
    dim of open size, which a batching model needs on all of them."""
    return [(kind, value.name, _shape(value))
            for kind, values in (("inputs", _graph_inputs(model)), ("outputs", model.graph.output))
            for value in values if not _shape(value) or isinstance(_shape(value)[0], int)]


def rename_tensors(model: onnx.ModelProto, renames: dict[str, str]) -> None:
    """Rename graph tensors everywhere they appear (graph I/O, node I/O, value_info, subgraphs)."""
    renames = {old: new for old, new in renames.items() if old != new}
    if not renames:
        return
    taken = {v.name for v in [*model.graph.input, *model.graph.output, *model.graph.value_info]}
    taken |= {name for node in model.graph.node for name in [*node.input, *node.output]}
    clashes = sorted(new for new in renames.values() if new in taken and new not in renames)
    if clashes:
        raise ConversionError(f"cannot rename graph tensors to {', '.join(clashes)}: the graph already has a "
                              "tensor of that name", fix="choose another tensor name in the spec")

    for graph in _graphs(model.graph):
        for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
            value.name = renames.get(value.name, value.name)
        for node in graph.node:
            node.input[:] = [renames.get(n, n) for n in node.input]
            node.output[:] = [renames.get(n, n) for n in node.output]


def _answered_through(model: onnx.ModelProto, name: str, step: str) -> str:
    """Rename the tensor graph output `name` is written as, so that a node added after it can
    answer under the name; the new name of what was written."""
    before = f"{name}_before_{step}"
    for node in model.graph.node:
        node.input[:] = [before if n == name else n for n in node.input]
        node.output[:] = [before if n == name else n for n in node.output]
    return before


def cast_output(model: onnx.ModelProto, name: str, to: int) -> None:
    """Graph output `name` answered as element type `to` (an onnx.TensorProto data type): the
    tensor its producer wrote goes through a Cast that answers under the output's name."""
    from onnx import helper

    before = _answered_through(model, name, "cast")
    model.graph.node.append(helper.make_node("Cast", [before], [name], to=to, name=f"{name}_cast"))
    for output in model.graph.output:
        if output.name == name:
            output.type.tensor_type.elem_type = to


def reshape_output(model: onnx.ModelProto, name: str, shape: list[int]) -> None:
    """Graph output `name` reshaped to `shape` (a Reshape on the tensor its producer wrote)."""
    from onnx import helper, numpy_helper

    before, target = _answered_through(model, name, "reshape"), f"{name}_shape"
    model.graph.initializer.append(numpy_helper.from_array(np.array(shape, dtype=np.int64), target))
    model.graph.node.append(helper.make_node("Reshape", [before, target], [name], name=f"{name}_reshape"))


def last_column_output(model: onnx.ModelProto, name: str) -> None:
    """Graph output `name` ([N, k]) answered as its last column, [N, 1] (a Slice)."""
    from onnx import helper, numpy_helper

    before = _answered_through(model, name, "slice")
    bounds = {"starts": -1, "ends": np.iinfo(np.int64).max, "axes": 1}
    for key, value in bounds.items():
        model.graph.initializer.append(numpy_helper.from_array(np.array([value], dtype=np.int64), f"{name}_{key}"))
    model.graph.node.append(helper.make_node("Slice", [before, *(f"{name}_{key}" for key in bounds)], [name],
                                             name=f"{name}_slice"))


# Size given to a variable (symbolic or unknown) non-batch input dim when probing a graph.
PROBE_VARIABLE_DIM = 3


def probe_inputs(model: onnx.ModelProto, rows: int = 2) -> dict[str, np.ndarray]:
    """Inputs to run a graph on: `rows` on a dynamic leading axis, PROBE_VARIABLE_DIM for other
    variable dims, zeros (empty strings for STRING): every converted graph answers those."""
    from .samples import NUMPY_DTYPES

    feeds = {}
    for value in _graph_inputs(model):
        shape = [rows if axis == 0 and not isinstance(d, int) else d if isinstance(d, int) else PROBE_VARIABLE_DIM
                 for axis, d in enumerate(_shape(value))]
        dtype = _dtype(value, model.graph.name)
        feeds[value.name] = (np.full(shape, "", dtype=object) if dtype == "STRING"
                             else np.zeros(shape, dtype=NUMPY_DTYPES[dtype]))
    return feeds


# Tree ensemble ops and the attributes that hold each node's feature and threshold (ai.onnx.ml
# opset 3: onnx/docs/Operators-ml.md, TreeEnsembleClassifier/TreeEnsembleRegressor).
TREE_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
# Ops a graph input may pass through on its way to a tree ensemble without its values changing
# which side of a threshold they fall on.
PASS_THROUGH_OPS = ("Cast", "Identity")
# How far past its outermost thresholds a feature is sampled (a fraction of their span): both
# sides of every split, and a little of what lies beyond them.
SPLIT_MARGIN = 0.1


# How split_ranges says to sample a column: a span (low, high), or the values a categorical
# column's splits test for equality (LightGBM's categorical_feature, BRANCH_EQ nodes).
ColumnSampling = tuple[float, float] | list[float]


def split_ranges(model: onnx.ModelProto) -> dict[str, list[ColumnSampling]]:
    """For each graph input read column by column by a tree ensemble (directly or through a
    Cast), the span of each column's split thresholds widened by SPLIT_MARGIN: where samples
    reach both sides of the model's splits; for a column split by equality (a category), the
    values tested. A column no tree splits on spans [0, 1]. Graph inputs that reach a tree only
    through other ops (scalers, encoders, concatenations) get nothing."""
    from onnx import helper, numpy_helper

    produced_by = {output: node for node in model.graph.node for output in node.output}
    fed = {value.name for value in _graph_inputs(model)}
    thresholds: dict[str, dict[int, list[float]]] = {}
    categorical: dict[str, set[int]] = {}
    for node in model.graph.node:
        if node.op_type not in TREE_OPS or not node.input:
            continue
        source = node.input[0]
        while source not in fed and source in produced_by and produced_by[source].op_type in PASS_THROUGH_OPS:
            source = produced_by[source].input[0]
        if source not in fed:
            continue
        attributes = {a.name: a for a in node.attribute}
        if "nodes_featureids" not in attributes or "nodes_modes" not in attributes:
            continue
        features = list(attributes["nodes_featureids"].ints)
        modes = [m.decode() if isinstance(m, bytes) else m for m in attributes["nodes_modes"].strings]
        if "nodes_values_as_tensor" in attributes:
            values = numpy_helper.to_array(attributes["nodes_values_as_tensor"].t).astype(float).tolist()
        elif "nodes_values" in attributes:
            values = list(helper.get_attribute_value(attributes["nodes_values"]))
        else:
            continue
        columns = thresholds.setdefault(source, {})
        for feature, mode, value in zip(features, modes, values):
            if mode == "BRANCH_EQ" and np.isfinite(value):
                categorical.setdefault(source, set()).add(feature)
            if mode != "LEAF" and np.isfinite(value):
                columns.setdefault(feature, []).append(float(value))
    ranges = {}
    for value in _graph_inputs(model):
        split = thresholds.get(value.name)
        shape = _shape(value)
        if not split or not shape or not isinstance(shape[-1], int) or max(split) >= shape[-1]:
            continue
        ranges[value.name] = [_column_sampling(split.get(column), column in categorical.get(value.name, ()))
                              for column in range(shape[-1])]
    return ranges


def _column_sampling(thresholds: list[float] | None, categorical: bool) -> ColumnSampling:
    if not thresholds:
        return (0.0, 1.0)
    if categorical:
        return sorted(set(thresholds))
    low, high = min(thresholds), max(thresholds)
    margin = SPLIT_MARGIN * (high - low) or max(abs(low) * SPLIT_MARGIN, 1.0)
    return (low - margin, high + margin)


def fix_batch_output_shapes(model: onnx.ModelProto, probe: dict[str, np.ndarray] | None = None,
                            model_name: str = "") -> list[str]:
    """Rewrite declared output shapes from two real runs (batch 2 and batch 3); return the names of
    the outputs whose declared shape was wrong.

    Converters declare wrong output shapes (onnxmltools' LightGBM label is declared [1] though it
    is [N]; skl2onnx declares a 3-target regressor [N, 1] though it answers [N, 3]); Triton's config
    must match the real ones. A dim that follows the batch size becomes the symbolic batch dim, a
    declared symbolic non-batch dim stays symbolic (variable-length axes), every other dim takes its
    observed size (without a batch axis, the leading dim too). `probe` holds inputs at batch 2
    (default: probe_inputs).
    """
    probe = probe if probe is not None else probe_inputs(model)
    batched = all(shape and not isinstance(shape[0], int) for shape in map(_shape, _graph_inputs(model)))
    runner = session(model, model_name or model.graph.name)
    names = [o.name for o in model.graph.output]
    try:
        at_two = runner.run(names, probe, quiet_run())
        at_three = runner.run(names, {k: np.concatenate([v, v[:1]]) for k, v in probe.items()}, quiet_run()) if batched else at_two
    except Exception as exc:  # onnxruntime's own exception types derive from Exception only
        raise ConversionError(f"model '{model_name or model.graph.name}': onnxruntime cannot run the converted graph on "
                              f"{', '.join(f'{k} {list(v.shape)}' for k, v in probe.items())}: "
                              f"{first_line(exc)}", loc=("inputs",),
                              fix="declare the input dims the model takes") from None
    corrected = []
    for output, two, three in zip(model.graph.output, at_two, at_three):
        declared = _shape(output)
        dims: list[int | str] = []
        for axis, (size_two, size_three) in enumerate(zip(np.shape(two), np.shape(three))):
            symbolic = declared[axis] if len(declared) == np.ndim(two) else None
            if axis == 0 and size_two == 2 and size_three == 3:
                dims.append(symbolic if isinstance(symbolic, str) else BATCH_DIM)
            elif (axis > 0 or not batched) and isinstance(symbolic, str):
                dims.append(symbolic)  # e.g. a size that follows the values (torch.unique), not the shapes
            else:
                dims.append(int(size_two))
        matches = len(declared) == len(dims) and all(
            d is None or isinstance(d, str) and isinstance(o, str) or d == o for d, o in zip(declared, dims))
        if not matches:
            corrected.append(output.name)
        set_shape(output, dims)
    return corrected


def set_shape(value: onnx.ValueInfoProto, dims: list[int | str]) -> None:
    """Write a graph value's declared shape: an int is a fixed size, a str a symbolic one."""
    shape = value.type.tensor_type.shape
    shape.ClearField("dim")
    for size in dims:
        dim = shape.dim.add()
        if isinstance(size, str):
            dim.dim_param = size
        else:
            dim.dim_value = size


def canonicalize(model: onnx.ModelProto, graph_name: str, producer: str, producer_version: str) -> None:
    """Make the serialized bytes depend on the model only: fixed producer and graph name (converters
    name graphs by random UUID), no doc strings or metadata (exporters put timestamps, source paths
    and stack traces there)."""
    model.graph.name = graph_name
    model.producer_name = producer
    model.producer_version = producer_version
    model.doc_string = ""
    model.domain = ""
    model.model_version = 0
    del model.metadata_props[:]
    for graph in _graphs(model.graph):
        graph.doc_string = ""
        for value in [*graph.input, *graph.output, *graph.value_info]:
            value.doc_string = ""
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
            for attribute in node.attribute:
                attribute.doc_string = ""
    for function in model.functions:
        function.doc_string = ""
        for node in function.node:
            node.doc_string = ""
    # Converters sometimes list the same opset twice (skl2onnx does), and the order they list
    # domains in changes between builds of the same model: one entry per domain, sorted.
    seen: dict[str, int] = {}
    for opset in model.opset_import:
        seen[opset.domain] = max(seen.get(opset.domain, 0), opset.version)
    del model.opset_import[:]
    for domain, version in sorted(seen.items()):
        entry = model.opset_import.add()
        entry.domain, entry.version = domain, version


def _graphs(graph) -> Iterator:
    """A graph and every subgraph below it (the bodies of If, Loop and Scan nodes)."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _graphs(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graphs(subgraph)


def _session_options():
    """CPU, one thread, sequential: the same answer on every run and every machine core count."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return options


def quiet_run():
    """RunOptions that keep onnxruntime's own log line (coloured, multi-line) of a failing run off the
    terminal: the caller reports the failure in one line."""
    options = onnxruntime.RunOptions()
    options.log_severity_level = 4
    return options


def session(model: onnx.ModelProto, model_name: str):
    """A deterministic onnxruntime CPU session for verification and probing; ConversionError when
    onnxruntime cannot load the graph (no CPU kernel for an operator in its dtype: a bfloat16 Gemm)."""
    try:
        return onnxruntime.InferenceSession(model.SerializeToString(), _session_options(),
                                            providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types derive from Exception only
        raise ConversionError(f"model '{model_name}': onnxruntime cannot load the converted graph, so it cannot be "
                              f"verified: {first_line(exc)}", loc=("source",), fix=_load_fix(str(exc))) from None


def _load_fix(message: str) -> str:
    """The fix for a graph onnxruntime's CPU provider refuses, by what it says."""
    if "is not a registered function/op" in message:
        return ("the graph uses an operator stock onnxruntime does not have (a custom op library's): tritonize "
                "verifies and serves graphs of standard ONNX operators; export without it")
    if "bfloat16" in message.lower() or "Could not find an implementation" in message:
        return ("convert the model to float32 or float16 (onnxruntime's CPU kernels lack most bfloat16 "
                "operators), or use operators onnxruntime runs in that type")
    return "re-export the model with standard ONNX operators and types"
