"""Triton python-backend model that serves <version>/model.onnx with onnxruntime (CPU).

The embedded tritonserver has no onnxruntime backend, so tritonize ships this runner next to each
model.onnx. It behaves like the real backend where clients can tell: tensor names, dtypes and
shapes come from the model config (`reshape` included), and with max_batch_size > 0 all requests of
one execute() call run as one session.run (concatenated along the batch axis, answers split back).
A request that fails gets its own error response; the others still get answers.

Config parameters: intra_op_num_threads, inter_op_num_threads (default 1 each: instances, not
onnxruntime's thread pool, are the unit of parallelism).

The functions above the TritonPythonModel class do not touch Triton objects, so tests exercise the
batching with a real onnxruntime session and no server.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import triton_python_backend_utils as pb_utils

NUMPY_DTYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
    "FP32": np.float32, "FP64": np.float64, "STRING": np.object_,
}

Feeds = dict[str, np.ndarray]
Run = Callable[[Feeds], Feeds]


@dataclass(frozen=True)
class Layout:
    """One config tensor: client shape is [batch] + dims, the graph's is [batch] + reshape."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None
    optional: bool = False


def layouts(config: dict, key: str) -> list[Layout]:
    """Tensors of a config (the JSON Triton hands to initialize) under "input" or "output"."""
    tensors = []
    for tensor in config.get(key, []):
        dtype = tensor["data_type"].removeprefix("TYPE_")
        if dtype not in NUMPY_DTYPES:
            raise ValueError(f"tensor '{tensor['name']}': {dtype} is not supported by the onnx_runner")
        reshape = tensor.get("reshape")
        tensors.append(Layout(tensor["name"], dtype, tuple(int(d) for d in tensor["dims"]),
                              tuple(int(d) for d in reshape.get("shape", [])) if reshape is not None else None,
                              bool(tensor.get("optional", False))))
    return tensors


def to_graph(array: np.ndarray, layout: Layout, batched: bool) -> np.ndarray:
    """A client tensor as the graph takes it: its reshape applied, STRING as str (onnxruntime's)."""
    if layout.dtype == "STRING":
        array = np.vectorize(lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v), otypes=[object])(array)
    if layout.reshape is not None:
        array = array.reshape(((array.shape[0],) if batched else ()) + layout.reshape)
    return array


def to_client(array: np.ndarray, layout: Layout, batched: bool) -> np.ndarray:
    """A graph answer as clients see it: config dims, config dtype, STRING as bytes."""
    array = np.asarray(array)
    if layout.dtype == "STRING":
        array = np.vectorize(lambda v: v if isinstance(v, bytes) else str(v).encode("utf-8"), otypes=[object])(array)
    else:
        array = array.astype(NUMPY_DTYPES[layout.dtype], copy=False)
    if layout.reshape is not None:
        array = array.reshape(((array.shape[0],) if batched else ()) + layout.dims)
    return array


def batch_groups(feeds: list[Feeds | None]) -> list[list[int]]:
    """Indices of requests that can share one session.run: same inputs with the same per-row shapes
    and dtypes (variable dims may differ between requests). None entries (invalid requests) are skipped."""
    groups: dict[tuple, list[int]] = {}
    for index, feed in enumerate(feeds):
        if feed is None:
            continue
        key = tuple(sorted((name, array.shape[1:], array.dtype.str) for name, array in feed.items()))
        groups.setdefault(key, []).append(index)
    return list(groups.values())


def run_requests(run: Run, feeds: list[Feeds | None], batched: bool) -> list[Feeds | Exception | None]:
    """Answer every request: one run per batchable group, split back by each request's row count.

    If a combined run fails, the group's requests run one by one so that only the failing ones get
    an error. Results line up with `feeds` (None stays None).
    """
    results: list[Feeds | Exception | None] = [None] * len(feeds)
    for group in batch_groups(feeds):
        if batched and len(group) > 1:
            rows = [len(next(iter(feeds[i].values()))) for i in group]
            try:
                combined = run({name: np.concatenate([feeds[i][name] for i in group]) for name in feeds[group[0]]})
            except Exception:  # retried per request below, where the error is attributed
                combined = None
            if combined is not None:
                bounds = np.cumsum(rows)[:-1]
                parts = {name: np.split(answer, bounds) for name, answer in combined.items()}
                for position, index in enumerate(group):
                    results[index] = {name: split[position] for name, split in parts.items()}
                continue
        for index in group:
            try:
                results[index] = run(feeds[index])
            except Exception as exc:  # onnxruntime's own exception types; reported to that client only
                results[index] = exc
    return results


def read_request(get_input: Callable[[str], np.ndarray | None], inputs: list[Layout], batched: bool) -> Feeds:
    """Graph feeds for one request; ValueError names what is missing or malformed."""
    feeds: Feeds = {}
    for layout in inputs:
        array = get_input(layout.name)
        if array is None:
            if layout.optional:
                continue
            raise ValueError(f"input '{layout.name}' is missing")
        if layout.dtype != "STRING" and array.dtype != np.dtype(NUMPY_DTYPES[layout.dtype]):
            raise ValueError(f"input '{layout.name}' has dtype {array.dtype}, expected {layout.dtype}")
        feeds[layout.name] = to_graph(array, layout, batched)
    return feeds


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def session_options(parameters: dict):
    import onnxruntime as ort

    def integer(key: str) -> int:
        value = parameters.get(key, {}).get("string_value", "1")
        return int(value)

    options = ort.SessionOptions()
    options.intra_op_num_threads = integer("intra_op_num_threads")
    options.inter_op_num_threads = integer("inter_op_num_threads")
    return options


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        self.inputs = layouts(config, "input")
        self.outputs = layouts(config, "output")
        self.batched = int(config.get("max_batch_size", 0)) > 0
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, session_options(config.get("parameters", {})),
                                            providers=["CPUExecutionProvider"])
        self.output_names = [layout.name for layout in self.outputs]

    def _run(self, feeds: Feeds) -> Feeds:
        answers = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, answers))

    def execute(self, requests: list) -> list:
        feeds: list[Feeds | None] = []
        errors: dict[int, str] = {}
        for index, request in enumerate(requests):
            def get_input(name: str, request=request) -> np.ndarray | None:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                return None if tensor is None else tensor.as_numpy()

            try:
                feeds.append(read_request(get_input, self.inputs, self.batched))
            except ValueError as exc:
                feeds.append(None)
                errors[index] = str(exc)
        responses = []
        for index, result in enumerate(run_requests(self._run, feeds, self.batched)):
            if isinstance(result, dict):
                tensors = [pb_utils.Tensor(layout.name, to_client(result[layout.name], layout, self.batched))
                           for layout in self.outputs]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            else:
                message = errors.get(index) or f"onnxruntime failed: {first_line(result)}"
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message)))
        return responses

    def finalize(self) -> None:
        self.session = None
