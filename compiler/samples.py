"""Sample inputs for verification and for `tritonize check`: the spec's own, or seeded random ones."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import SpecError

if TYPE_CHECKING:
    from .onnx_signature import ColumnSampling
    from .spec import ModelSpec, TensorSpec

# Triton data type -> numpy dtype of the arrays clients send and backends receive. BF16 has no
# numpy type; Triton clients carry it as float32.
NUMPY_DTYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
    "FP32": np.float32, "FP64": np.float64, "BF16": np.float32, "STRING": np.object_,
}
FLOAT_DTYPES = ("FP16", "FP32", "FP64", "BF16")
_TRITON_BY_NUMPY = {np.dtype(v): k for k, v in NUMPY_DTYPES.items() if k != "BF16"}

# Size used for a variable (-1) non-batch dim when generating samples.
VARIABLE_DIM_SIZE = 4


def triton_dtype_of(array: np.ndarray) -> str:
    """Triton data type name of a numpy array (bytes/str/object arrays are STRING)."""
    if array.dtype.kind in "OSU":
        return "STRING"
    return _TRITON_BY_NUMPY[array.dtype]


def as_bytes(values) -> np.ndarray:
    """A STRING tensor as Triton carries it: an object array of bytes (str and numbers encoded)."""
    return np.vectorize(lambda v: v if isinstance(v, bytes) else str(v).encode(), otypes=[object])(
        np.asarray(values, dtype=object))


def as_str(values) -> np.ndarray:
    """A STRING tensor as onnxruntime (and JSON) take it: an object array of str."""
    return np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else str(v), otypes=[object])(
        np.asarray(values, dtype=object))


def make_samples(model: ModelSpec, inputs: list[TensorSpec], batch: int, seed: int,
                 choices: dict[str, list[str] | list[int]] | None = None,
                 ranges: dict[str, list[ColumnSampling]] | None = None) -> dict[str, np.ndarray]:
    """Sample inputs keyed by tensor name, shaped as clients send them: [batch] + dims.

    A model with max_batch_size 0 takes no batch dim: the shape is dims alone (-1 dims, a dynamic
    leading one included, are VARIABLE_DIM_SIZE) and `batch` is unused. The spec's
    `sample_inputs` win when given (batch and seed are then unused); otherwise each input is drawn
    uniformly from its `range` with a generator seeded by `seed`, in input order, so the same spec
    always yields the same samples. Without a `range`, a floating-point input whose columns a tree
    ensemble splits is drawn column by column from `ranges[name]` (the thresholds' span, or a
    categorical column's values, from the converter), any other from [0, 1]. An input whose values
    the converter knows (an encoder's fitted categories: strings or integers) is drawn from
    `choices[name]`. STRING samples are bytes, as Triton carries them.
    """
    if model.sample_inputs is not None:
        return _given_samples(model, inputs)
    rng = np.random.default_rng(seed)
    samples: dict[str, np.ndarray] = {}
    for tensor in inputs:
        shape = ([batch] if model.max_batch_size > 0 else []) + [d if d > 0 else VARIABLE_DIM_SIZE for d in tensor.dims]
        low, high = tensor.range if tensor.range is not None else (0.0, 1.0)
        if choices and choices.get(tensor.name) and tensor.range is None:
            values = rng.choice(np.asarray(choices[tensor.name], dtype=object), size=shape)
            samples[tensor.name] = as_bytes(values) if tensor.dtype == "STRING" else \
                values.astype(NUMPY_DTYPES[tensor.dtype])
            continue
        columns = (ranges or {}).get(tensor.name)
        if tensor.range is None and columns and tensor.dtype in FLOAT_DTYPES and shape and shape[-1] == len(columns):
            drawn = np.empty(shape)
            for index, column in enumerate(columns):  # a category's values, or a span
                drawn[..., index] = rng.choice(column, size=shape[:-1]) if isinstance(column, list) else \
                    rng.uniform(column[0], column[1], shape[:-1])
            samples[tensor.name] = drawn.astype(NUMPY_DTYPES[tensor.dtype])
            continue
        samples[tensor.name] = _draw(rng, tensor.dtype, shape, low, high)
    return samples


def _draw(rng: np.random.Generator, dtype: str, shape: list[int], low: float, high: float) -> np.ndarray:
    if dtype == "BOOL":
        return rng.random(shape) < 0.5
    if dtype == "STRING":
        return as_bytes(np.char.mod("%.4f", rng.uniform(low, high, shape)))
    numpy_type: np.dtype[Any] = np.dtype(NUMPY_DTYPES[dtype])
    if numpy_type.kind in "iu":
        info = np.iinfo(numpy_type)  # type: ignore[type-var]  # an integer dtype here
        lo, hi = max(math.ceil(low), info.min), min(math.floor(high), info.max)
        if lo > hi:
            raise SpecError(f"range [{low}, {high}] holds no {dtype} value", fix="widen the input's range")
        return rng.integers(lo, hi, size=shape, endpoint=True, dtype=numpy_type)  # type: ignore[call-overload,no-any-return]
    return rng.uniform(low, high, shape).astype(numpy_type)


def _given_samples(model: ModelSpec, inputs: list[TensorSpec]) -> dict[str, np.ndarray]:
    given = model.sample_inputs or {}  # the spec has checked the names of declared inputs; these are the graph's
    by_name = {t.name: t for t in inputs}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        raise SpecError(f"sample_inputs names unknown input(s) {', '.join(unknown)}; the converted model's inputs "
                        f"are: {', '.join(f'{t.name} {t.dtype}{list(t.dims)}' for t in inputs)}",
                        loc=("sample_inputs", unknown[0]), fix="name the samples after those inputs")
    missing = [t.name for t in inputs if t.name not in given and not t.optional]
    if missing:
        raise SpecError(f"sample_inputs lacks input(s) {', '.join(missing)}", loc=("sample_inputs",),
                        fix="give a value list for every required input")
    return {name: sample_array(name, values, by_name[name], model.max_batch_size) for name, values in given.items()}


# The YAML values an input's dtype takes (numpy array kinds): no words for numbers, no fractions
# for integers (numpy would truncate them silently), only true/false for BOOL.
_KINDS = {"b": "b", "i": "iub", "u": "iub", "f": "iufb"}


def sample_array(name: str, values: object, tensor: TensorSpec, max_batch_size: int) -> np.ndarray:
    """One input's `sample_inputs` as the array clients send: its values fit the dtype and its shape
    is [batch] + dims (dims alone with max_batch_size 0). SpecError at ("sample_inputs", name)."""
    loc = ("sample_inputs", name)
    try:
        plain = np.array(values)
    except ValueError:
        raise SpecError("ragged: its rows have different lengths", loc=loc,
                        fix="give one row per sample, each shaped like the input's dims") from None
    if tensor.dtype == "STRING":
        array = as_bytes(values)
    else:
        numpy_type = np.dtype(NUMPY_DTYPES[tensor.dtype])
        if plain.size and plain.dtype.kind not in _KINDS[numpy_type.kind]:
            found = {"U": "text", "S": "text", "f": "fractional numbers", "O": "mixed values"}.get(
                plain.dtype.kind, plain.dtype.name)
            raise SpecError(f"holds {found}, but input '{name}' is {tensor.dtype}", loc=loc,
                            fix=f"give {tensor.dtype} values, or declare the input with the dtype of the samples")
        if numpy_type.kind in "iu" and plain.size:
            info = np.iinfo(numpy_type.name)
            low, high = int(plain.min()), int(plain.max())
            if low < info.min or high > info.max:
                raise SpecError(f"holds {low if low < info.min else high}, outside "
                                f"{tensor.dtype}'s range [{info.min}, {info.max}]", loc=loc,
                                fix="give values the dtype can hold")
        array = plain.astype(numpy_type)
    expected = tensor.dims if max_batch_size == 0 else [-1, *tensor.dims]
    if array.ndim != len(expected) or any(e > 0 and e != s for e, s in zip(expected, array.shape)):
        shown = "[" + ", ".join("batch" if e == -1 and i == 0 and max_batch_size else str(e)
                                for i, e in enumerate(expected)) + "]"
        raise SpecError(f"has shape {list(array.shape)}, expected {shown}", loc=loc,
                        fix="give one row per sample, each shaped like the input's dims")
    if max_batch_size and not 1 <= array.shape[0] <= max_batch_size:
        raise SpecError(f"has {array.shape[0]} rows; a request holds 1 to max_batch_size "
                        f"{max_batch_size}", loc=loc, fix="give at most max_batch_size rows")
    return array
