"""Triton python-backend model that serves <version>/model.onnx with onnxruntime (CPU).

The embedded tritonserver has no onnxruntime backend, so tritonize ships this runner next to each
model.onnx. It behaves like the real backend where clients can tell: tensor names, dtypes and
shapes come from the model config (`reshape` included), and with max_batch_size > 0 all requests of
one execute() call run as one session.run (concatenated along the batch axis, answers split back).
A request that fails gets its own error response; the others still get answers. A malformed
request (missing input, wrong dtype, a shape onnxruntime rejects) answers 400 / INVALID_ARGUMENT
(`TritonError.INVALID_ARG`, python_backend r24.10), anything else 500.

What a request costs here is what the python backend costs plus as little as it allows: inputs
are read as the `as_numpy()` views the stub hands out over its shared memory; a batch is
concatenated once per input and run once; each answer is converted to the config's dtype and
dims once per batch, and every request gets a slice of it (a view, no copy: the stub copies it
into shared memory once, as it does for any output). Profiled alone (execute() on 8 one-row
requests with stand-ins for the stub's objects and session.run's answer precomputed, thread CPU
time on a loaded 2-core host), the python work per batch fell from 124 µs (per-request feeds,
grouping keys, np.split, per-slice conversions) to 51 µs, against 14 µs for a model that
computes nothing but answers the same signature (perf/bench_serving_ceiling.py's ceiling).
onnxruntime's IO binding was slower at these sizes (binding and copying the outputs out: 33 vs 18
µs for one row of the iris forest), so answers come from plain session.run.

Config parameters (a value the spec sets always wins):
- intra_op_num_threads: default 1 for a model.onnx under SMALL_MODEL_BYTES (tabular models: a
  batch computes in tens of microseconds, less than waking a thread pool costs); above it, the
  cores this process may use divided by the model's instance count (instances share the
  cores), with spinning off so idle pool threads leave the cores to the server's own threads.
- inter_op_num_threads: default 1 (graphs run sequentially: ORT_SEQUENTIAL uses no inter-op pool).

The functions above the TritonPythonModel class do not touch Triton objects, so tests exercise the
batching with a real onnxruntime session and no server.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import triton_python_backend_utils as pb_utils

# dtype objects, not scalar types: comparing an array's dtype with one is an identity check, with a
# type it is a conversion on every call.
NUMPY_DTYPES = {name: np.dtype(scalar) for name, scalar in {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
    "FP32": np.float32, "FP64": np.float64, "STRING": np.object_,
}.items()}
# The model.onnx size from which a batch's compute is taken to outweigh waking an intra-op thread
# pool. The demo's tabular graphs (forests, boosted trees, a 4810-parameter MLP) are 20-80 KB, and
# their whole batch runs in 2-20 µs per row on one thread; the 4 MiB line itself is a judgement
# (an encoder is far above it), not a measured crossover.
SMALL_MODEL_BYTES = 4 << 20

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
    """A graph answer as clients see it: config dims, config dtype, STRING as bytes. No copy when
    the graph's dtype is the config's and no reshape is declared (the converted graphs' case)."""
    array = np.asarray(array)
    if layout.dtype == "STRING":
        array = np.vectorize(lambda v: v if isinstance(v, bytes) else str(v).encode("utf-8"), otypes=[object])(array)
    elif array.dtype != NUMPY_DTYPES[layout.dtype]:
        array = array.astype(NUMPY_DTYPES[layout.dtype])
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
        # Feeds are built in the config's input order, so the key needs no sorting.
        key = tuple((name, array.shape[1:], array.dtype) for name, array in feed.items())
        groups.setdefault(key, []).append(index)
    return list(groups.values())


def run_requests(run: Run, feeds: list[Feeds | None], batched: bool,
                 convert: Callable[[Feeds], Feeds] = lambda answers: answers) -> list[Feeds | Exception | None]:
    """Answer every request: one run per batchable group, split back by each request's row count.

    `convert` turns a run's answers into what clients get; it is applied once per run, before
    the split, so each request's answers are views into the batch's. If a combined run fails, the
    group's requests run one by one so that only the failing ones get an error. Results line up
    with `feeds` (None stays None).
    """
    results: list[Feeds | Exception | None] = [None] * len(feeds)
    for group in batch_groups(feeds):
        if batched and len(group) > 1:
            members = [feeds[i] for i in group]
            try:
                combined = convert(run({name: np.concatenate([feed[name] for feed in members])  # type: ignore[index]
                                        for name in members[0]}))  # type: ignore[union-attr]
            except Exception:  # retried per request below, where the error is attributed
                combined = None
            if combined is not None:
                start = 0
                for index, feed in zip(group, members):
                    stop = start + len(next(iter(feed.values())))  # type: ignore[union-attr]
                    results[index] = {name: answer[start:stop] for name, answer in combined.items()}
                    start = stop
                continue
        for index in group:
            try:
                results[index] = convert(run(feeds[index]))  # type: ignore[arg-type]
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
        if layout.dtype != "STRING" and array.dtype != NUMPY_DTYPES[layout.dtype]:
            raise ValueError(f"input '{layout.name}' has dtype {array.dtype}, expected {layout.dtype}")
        if layout.dtype == "STRING" or layout.reshape is not None:
            array = to_graph(array, layout, batched)
        feeds[layout.name] = array
    return feeds


def plain_inputs(inputs: list[Layout]) -> bool:
    """Inputs the graph takes as the client sends them: no STRING decoding, reshape or optional input."""
    return all(layout.dtype != "STRING" and layout.reshape is None and not layout.optional for layout in inputs)


def gather(request_inputs: list[list], names: list[str], dtypes: list[np.dtype]) -> tuple[Feeds, list[int]] | None:
    """The feeds of a whole batch of plain inputs (one concatenation per input) and each request's
    row count, from each request's tensors (objects with name() and as_numpy(), the stub's).
    None when some request is not exactly the expected inputs with the config's dtypes and the
    same per-row shape as the others: the request-by-request path then answers, errors included.
    (Triton checks names, dtypes and shapes against the config before execute(), so that is rare.)
    """
    columns: list[list[np.ndarray]] = [[] for _ in names]
    rows: list[int] = []
    for tensors in request_inputs:
        if len(tensors) != len(names):
            return None
        if len(names) > 1:
            by_name = {tensor.name(): tensor for tensor in tensors}
            tensors = [by_name.get(name) for name in names]
            if None in tensors:
                return None
        elif tensors[0].name() != names[0]:
            return None
        count = -1
        for column, tensor, dtype in zip(columns, tensors, dtypes):
            array = tensor.as_numpy()
            if array.dtype != dtype or not array.ndim or (count >= 0 and len(array) != count) \
                    or (column and array.shape[1:] != column[0].shape[1:]):
                return None
            count = len(array)
            column.append(array)
        rows.append(count)
    feeds = {name: column[0] if len(column) == 1 else np.concatenate(column) for name, column in zip(names, columns)}
    return feeds, rows


def split(answers: Feeds, rows: list[int]) -> list[Feeds]:
    """Each request's rows of a batch's answers, as views."""
    if len(rows) == 1:
        return [answers]
    parts = []
    start = 0
    for count in rows:
        stop = start + count
        parts.append({name: answer[start:stop] for name, answer in answers.items()})
        start = stop
    return parts


def is_client_error(error: Exception) -> bool:
    """onnxruntime raises InvalidArgument for inputs that do not fit the graph (shape, rank, type)."""
    return type(error).__name__ == "InvalidArgument"


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def instance_count(config: dict) -> int:
    """Instances of this model in this server (every group's count; Triton's default is 1)."""
    return max(1, sum(int(group.get("count", 1)) for group in config.get("instance_group", [])))


def thread_counts(parameters: dict, model_bytes: int, instances: int, cores: int) -> tuple[int, int]:
    """(intra_op, inter_op) threads: the config's parameters when given, else the defaults the
    module docstring gives reasons for (0 would be onnxruntime's own default: one per core)."""
    def given(key: str) -> int | None:
        value = parameters.get(key, {}).get("string_value")
        return None if value is None else int(value)

    intra = given("intra_op_num_threads")
    if intra is None:
        intra = 1 if model_bytes < SMALL_MODEL_BYTES else max(1, cores // instances)
    inter = given("inter_op_num_threads")
    return intra, 1 if inter is None else inter


def session_options(parameters: dict, model_bytes: int = 0, instances: int = 1, cores: int = 1):
    import onnxruntime as ort

    intra, inter = thread_counts(parameters, model_bytes, instances, cores)
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra
    options.inter_op_num_threads = inter
    if intra != 1:
        # A spinning pool keeps its threads busy between batches: on a host the server's HTTP/gRPC
        # threads share, that is CPU taken from them (onnxruntime's session.intra_op.allow_spinning).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the CPUs this process may run on (taskset, cpusets)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        self.inputs = layouts(config, "input")
        self.outputs = layouts(config, "output")
        self.batched = int(config.get("max_batch_size", 0)) > 0
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = session_options(config.get("parameters", {}), os.path.getsize(path), instance_count(config),
                                  available_cores())
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.output_names = [layout.name for layout in self.outputs]
        self.input_names = [layout.name for layout in self.inputs]
        self.input_dtypes = [NUMPY_DTYPES[layout.dtype] for layout in self.inputs]
        self.plain = plain_inputs(self.inputs)

    def _run(self, feeds: Feeds) -> Feeds:
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def _to_client(self, answers: Feeds) -> Feeds:
        return {layout.name: to_client(answers[layout.name], layout, self.batched) for layout in self.outputs}

    def execute(self, requests: list) -> list:
        if self.plain and (self.batched or len(requests) == 1):
            gathered = gather([request.inputs() for request in requests], self.input_names, self.input_dtypes)
            if gathered is not None:
                feeds, rows = gathered
                try:
                    answers = self._to_client(self._run(feeds))
                except Exception:  # noqa: BLE001 - answered below, request by request, each with its own error
                    answers = None
                if answers is not None:
                    return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, answer)
                                                                       for name, answer in part.items()])
                            for part in split(answers, rows)]
        return self._execute_each(requests)

    def _execute_each(self, requests: list) -> list:
        """Any batch: requests validated one by one, grouped by shape, errors answered per request."""
        feeds: list[Feeds | None] = []
        errors: dict[int, str] = {}
        for index, request in enumerate(requests):
            # One pass over the request's tensors (pb_utils.get_input_tensor_by_name walks them
            # once per name); as_numpy() is a view over the stub's shared memory.
            tensors = {tensor.name(): tensor for tensor in request.inputs()}

            def get_input(name: str, tensors=tensors) -> np.ndarray | None:
                tensor = tensors.get(name)
                return None if tensor is None else tensor.as_numpy()

            try:
                feeds.append(read_request(get_input, self.inputs, self.batched))
            except ValueError as exc:
                feeds.append(None)
                errors[index] = str(exc)
        responses = []
        for index, result in enumerate(run_requests(self._run, feeds, self.batched, self._to_client)):
            if isinstance(result, dict):
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(name, answer) for name, answer in result.items()]))
            else:
                if index in errors or is_client_error(result):
                    error = pb_utils.TritonError(errors.get(index) or f"inputs do not fit the model: {first_line(result)}",
                                                 pb_utils.TritonError.INVALID_ARG)
                else:
                    error = pb_utils.TritonError(f"onnxruntime failed: {first_line(result)}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        return responses

    def finalize(self) -> None:
        self.session = None
