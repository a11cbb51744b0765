"""PyTorch nn.Module (factory, full-module torch.save, or TorchScript) -> ONNX with torch.onnx.export.

The TorchScript-based exporter (dynamo=False) is used: it runs offline without onnxscript, writes the
same bytes for the same module, and takes dynamic axes by name. The spec's inputs give names,
dtypes and dims; the leading batch axis (max_batch_size > 0) and every -1 dim are exported dynamic.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import ConversionError, first_line
from ..factory import call_factory, spec_dir_on_path
from ..optional import optional
from ..samples import NUMPY_DTYPES
from ..spec import ModelSpec, Spec
from ..spec.models import TENSOR_NAME_RE
from ..versions import installed_versions
from .base import ONNX_OPSET, ConvertedModel, Converter, finish, source_file

torch = optional("torch", purpose="converting a PyTorch model", extra="torch")
onnx = optional("onnx", purpose="converting a PyTorch model", package="onnx")

# Size of -1 dims in the example input traced for export (the axis is exported dynamic anyway).
# Batch 2 keeps the exporter from specializing the batch axis to a constant 1.
TRACE_BATCH = 2
TRACE_VARIABLE_DIM = 3
# Inputs up to this rank (24 orders) are tried in other dim orders when forward() fails on them.
MAX_PERMUTED_RANK = 4


@contextlib.contextmanager
def single_thread(torch: Any) -> Iterator[None]:
    """Reference answers from one thread are the same on every run (reductions do not reorder)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class PyTorchConverter(Converter):
    suffixes = (".pt", ".pth")

    def convert(self, model: ModelSpec, spec: Spec) -> ConvertedModel:
        module = call_factory(model, spec) if model.source.factory else self._load(torch, model, spec)
        if not isinstance(module, (torch.nn.Module, torch.jit.ScriptModule)):
            raise ConversionError(f"model '{model.name}': the pytorch source is a {type(module).__name__}, not an "
                                  "nn.Module", loc=("source",),
                                  fix="return the module itself (a state_dict has no architecture)")
        assert model.inputs is not None  # the spec requires inputs for pytorch models
        bf16 = [index for index, tensor in enumerate(model.inputs) if tensor.dtype == "BF16"]
        if bf16:  # numpy has no bfloat16, and onnxruntime's CPU kernels (which verify the graph) lack most of it
            raise ConversionError(f"model '{model.name}': input '{model.inputs[bf16[0]].name}' is BF16, which "
                                  "tritonize cannot verify: onnxruntime has no CPU kernels for bfloat16 MatMul/Gemm",
                                  loc=("inputs", bf16[0], "dtype"),
                                  fix="convert the module with .half() and declare FP16, or .float() and FP32")
        note = training_note(module)
        module.eval()
        batched = model.max_batch_size > 0
        input_names = [t.name for t in model.inputs]
        example = tuple(torch.from_numpy(np.zeros(
            ([TRACE_BATCH] if batched else []) + [d if d > 0 else TRACE_VARIABLE_DIM for d in t.dims],
            dtype=NUMPY_DTYPES[t.dtype])) for t in model.inputs)
        first = self._first_forward(module, example, model)
        keys: list[str] = []
        if isinstance(first, dict) and first and all(isinstance(key, str) for key in first):
            # A dict of tensors (as many modules return): its values in key order, named after the keys.
            keys = list(first)
            module, first = _values_in_order(module, keys), tuple(first.values())
        count = 1 if isinstance(first, torch.Tensor) else len(first) if isinstance(first, (tuple, list)) else 0
        if count == 0:
            raise ConversionError(f"model '{model.name}': forward() returned {type(first).__name__}",
                                  loc=("source",),
                                  fix="return a tensor, a tuple of tensors, or a dict of them by name")
        nested = [i for i, value in enumerate(first if isinstance(first, (tuple, list)) else ())
                  if not isinstance(value, torch.Tensor)]
        if nested:  # the exporter would flatten them into more outputs than the names given
            raise ConversionError(f"model '{model.name}': forward() returns a {type(first).__name__} whose item "
                                  f"{nested[0]} is a {type(first[nested[0]]).__name__}, not a tensor",
                                  loc=("source",), fix="return a flat tuple of tensors (one per output)")
        output_names = self._output_names(model, count, spec, keys)
        dynamic_axes: dict[str, dict[int, str]] = {}
        for tensor in model.inputs:
            offset = 1 if batched else 0
            axes = {offset + i: f"{tensor.name}_dim{i}" for i, d in enumerate(tensor.dims) if d == -1}
            dynamic_axes[tensor.name] = ({0: "batch"} if batched else {}) | axes
        if batched:
            dynamic_axes.update({name: {0: "batch"} for name in output_names})
        buffer = io.BytesIO()
        with warnings.catch_warnings(record=True) as caught, torch.no_grad(), without_mha_fastpath(torch), \
                native_output_dropped():
            # The exporter warns that it is the legacy one (the choice made above): only the
            # tracer's warnings are kept, for a verification that fails.
            warnings.simplefilter("ignore")
            warnings.simplefilter("always", torch.jit.TracerWarning)
            try:
                torch.onnx.export(module, example, buffer, dynamo=False, input_names=input_names,
                                  output_names=output_names, dynamic_axes=dynamic_axes, opset_version=ONNX_OPSET,
                                  do_constant_folding=True)
            except Exception as exc:  # the exporter raises many types; all mean "this module does not export"
                raise export_error(model, exc) from None
        onnx_model = onnx.load_from_string(buffer.getvalue())
        exported = {value.name for value in onnx_model.graph.input}
        dropped = [index for index, name in enumerate(input_names) if name not in exported]
        if dropped:  # else the spec's input count disagrees with the graph's, a riddle for the user
            raise ConversionError(f"model '{model.name}': forward() does not use input '{input_names[dropped[0]]}', "
                                  "and torch.onnx leaves an unused input out of the graph", loc=("inputs", dropped[0]),
                                  fix="remove it from the spec's inputs and forward()'s arguments, or use it in forward()")
        traced = [str(w.message).strip().split(". ")[0] for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
        _runs_at_other_sizes(onnx_model, model)

        def reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            tensors = [torch.from_numpy(np.ascontiguousarray(inputs[name])) for name in input_names]
            with torch.no_grad(), single_thread(torch), without_mha_fastpath(torch):
                answer = module(*tensors)
            answers = [answer] if isinstance(answer, torch.Tensor) else list(answer)
            return {name: value.numpy() for name, value in zip(output_names, answers)}

        converted = finish(model, spec, onnx_model, tool="torch", reference=reference, tools=installed_versions("torch"))
        converted.notes = [note] if note else []
        if traced:  # what a verification that fails then points at
            converted.wrong_conversion_fix = (
                f"the trace froze Python in forward() that depends on the input values (torch warned: {traced[0]}): "
                "write it with tensor operations (torch.where, masks), or torch.jit.script the module")
        parameters = sum(p.numel() for p in module.parameters())
        named = module.module if keys else module  # the user's module, not the dict adapter
        converted.summary = (f"pytorch {type(named).__name__} ({parameters} parameters): "
                             f"{converted.signature}")
        return converted

    @staticmethod
    def _first_forward(module: Any, example: tuple, model: ModelSpec) -> Any:
        """forward() on the traced example; when it fails, the declared dims are wrong: find the
        order of each input's dims that forward() takes (a CNN declared [H, W, C] wants [C, H, W])."""
        assert model.inputs is not None
        try:
            with torch.no_grad():
                return module(*example)
        except Exception as exc:  # forward() raises whatever the module's code raises
            error = forward_error(exc)
            batch = 1 if model.max_batch_size > 0 else 0
            for index, tensor in enumerate(model.inputs):
                shape = list(example[index].shape[batch:])
                if len(shape) > MAX_PERMUTED_RANK:
                    continue
                for order in sorted(set(itertools.permutations(range(len(shape))))):
                    if list(order) == list(range(len(shape))):
                        continue
                    trial = list(example)
                    trial[index] = example[index].permute(*range(batch), *(batch + axis for axis in order))
                    try:
                        with torch.no_grad():
                            module(*trial)
                    except Exception:  # this order does not fit either
                        continue
                    dims = [tensor.dims[axis] for axis in order]
                    raise ConversionError(f"model '{model.name}': forward() fails on input '{tensor.name}' with "
                                          f"dims {tensor.dims} ({error}); it runs with dims {dims}",
                                          loc=("inputs", index, "dims"), fix=f"write dims: {dims}") from None
            raise ConversionError(f"model '{model.name}': forward() fails on inputs of the declared dims: {error}",
                                  loc=("inputs",), fix="declare the dims and dtypes forward() takes") from None

    def _load(self, torch: Any, model: ModelSpec, spec: Spec) -> Any:
        path = source_file(model, spec, self.suffixes)
        try:
            with warnings.catch_warnings():
                # torch 2.9+ marks TorchScript deprecated; saved TorchScript files are still a source.
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(str(path), map_location="cpu")
        except RuntimeError:
            pass  # not TorchScript: a module pickled with torch.save
        with spec_dir_on_path(spec):
            try:
                # weights_only=False unpickles arbitrary classes: load only files you trust.
                loaded = torch.load(str(path), map_location="cpu", weights_only=False)
            except (AttributeError, ModuleNotFoundError) as exc:
                raise ConversionError(f"model '{model.name}': cannot unpickle {path.name}: {exc}", loc=("source", "path"),
                                      fix="put the module's class where the spec directory can import it, or "
                                          "save with torch.jit.script(model).save(path)") from None
        if isinstance(loaded, dict):
            inside = [key for key, value in loaded.items() if isinstance(value, torch.nn.Module)]
            if inside:  # a training checkpoint: {"epoch": 3, "model": module, ...}
                raise ConversionError(f"model '{model.name}': {path.name} holds a dict (a checkpoint) whose "
                                      f"'{inside[0]}' is the {type(loaded[inside[0]]).__name__}", loc=("source",),
                                      fix=f"torch.save the module itself, or give a factory that returns "
                                          f"torch.load(...)['{inside[0]}']")
            raise ConversionError(f"model '{model.name}': {path.name} holds a state_dict, which has no architecture",
                                  loc=("source",),
                                  fix="use a factory that builds the module and loads the state_dict")
        return loaded

    @staticmethod
    def _output_names(model: ModelSpec, count: int, spec: Spec, keys: list[str]) -> list[str]:
        """The graph's output names: a returned dict's keys (which spec outputs of those names then
        match by name), else the spec's names in order, else output / output_0, output_1, ..."""
        if model.outputs:
            if len(model.outputs) != count:
                raise ConversionError(f"model '{model.name}' declares {len(model.outputs)} outputs but forward() "
                                      f"returns {count}" + (f" ({', '.join(keys)})" if keys else ""),
                                      loc=("outputs",), fix=f"declare {count} outputs")
            named = {t.name for t in model.outputs}
            if keys and named == set(keys):
                return keys
            if keys and named & set(keys):  # by position, a key's value could go out under another key's name
                raise ConversionError(f"model '{model.name}' names some of forward()'s dict keys as outputs but not "
                                      f"all ({', '.join(keys)})", loc=("outputs",),
                                      fix="name every output after a key (any order), or none of them (by position)")
            return [t.name for t in model.outputs]
        if keys:
            invalid = [key for key in keys if not TENSOR_NAME_RE.match(key)]
            if invalid:
                raise ConversionError(f"model '{model.name}': forward()'s dict key {invalid[0]!r} is not a valid "
                                      "tensor name", loc=("source",),
                                      fix=f"declare the {count} outputs to name them, in the dict's order")
            return keys
        return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _values_in_order(module: Any, keys: list[str]) -> Any:
    """A module around one whose forward() returns a dict, answering its values as a tuple in key
    order (the exporter and the reference take tuples); defined here so that torch loads lazily."""

    base: Any = torch.nn.Module  # torch is an optional import here: no static type

    class ValuesInOrder(base):
        def __init__(self) -> None:
            super().__init__()
            self.module = module

        def forward(self, *inputs: Any) -> tuple:
            answer = self.module(*inputs)
            return tuple(answer[key] for key in keys)

    return ValuesInOrder().eval()


def _runs_at_other_sizes(onnx_model: Any, model: ModelSpec) -> None:
    """The exported graph also runs with the -1 dims at another size than the traced one: the
    trace can turn a size into a Python number somewhere in forward() (torch 2.13's
    nn.MultiheadAttention does, with a key_padding_mask), and the graph then runs at the traced
    size only, while the config promises any."""
    from ..onnx_signature import quiet_run, session

    assert model.inputs is not None
    if not any(-1 in tensor.dims for tensor in model.inputs):
        return
    size = TRACE_VARIABLE_DIM + 2
    feeds = {tensor.name: np.zeros(([TRACE_BATCH + 1] if model.max_batch_size > 0 else []) +
                                   [d if d > 0 else size for d in tensor.dims], dtype=NUMPY_DTYPES[tensor.dtype])
             for tensor in model.inputs}
    graph_inputs = {value.name for value in onnx_model.graph.input}
    runner = session(onnx_model, model.name)
    try:
        runner.run(None, {k: v for k, v in feeds.items() if k in graph_inputs}, quiet_run())
    except Exception as exc:  # onnxruntime's own exception types derive from Exception only
        variable = [tensor.name for tensor in model.inputs if -1 in tensor.dims]
        raise ConversionError(f"model '{model.name}': the exported graph runs only at the traced size "
                              f"{TRACE_VARIABLE_DIM} of the -1 dims of {', '.join(variable)}; at {size} onnxruntime "
                              f"fails: {first_line(exc)}", loc=("inputs",),
                              fix="the trace fixed that size somewhere in forward(): give those dims a fixed size "
                                  "(pad to a maximum length), or export the ONNX yourself and give it as "
                                  "framework: onnx") from None


# torch.onnx's message for an operator it has no ONNX form of; its fix is not about tracing.
UNSUPPORTED_OPERATOR_RE = re.compile(r"Exporting the operator '([^']+)' to ONNX opset version (\d+) is not supported")


def export_error(model: ModelSpec, exc: Exception) -> ConversionError:
    """torch.onnx.export's failure, one line, with the fix its cause calls for."""
    first = first_line(exc)
    operator = UNSUPPORTED_OPERATOR_RE.search(first)
    fix = (f"torch.onnx has no ONNX form of {operator.group(1)} at opset {operator.group(2)}: compute it with other "
           "operations in forward(), or export the ONNX yourself and give it as framework: onnx" if operator else
           "make forward() traceable (no data-dependent Python control flow, no packed sequences)")
    return ConversionError(f"model '{model.name}': torch.onnx.export failed: {first}", loc=("source",), fix=fix)


def training_note(module: Any) -> str:
    """A warning when the module comes in training mode with layers that behave otherwise in eval
    mode (dropout, batch norm): it is exported and verified in eval mode, as inference runs it."""
    if isinstance(module, torch.jit.ScriptModule):
        return ""
    kinds = (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._BatchNorm,
             torch.nn.modules.instancenorm._InstanceNorm)
    layers = sorted({type(layer).__name__ for layer in module.modules() if layer.training and isinstance(layer, kinds)})
    if not layers:
        return ""
    return (f"the module came in training mode ({', '.join(layers)}): it is exported and verified in eval mode, "
            "as inference runs it (call .eval() before saving or returning it to silence this)")


@contextlib.contextmanager
def native_output_dropped() -> Iterator[None]:
    """File descriptors 1 and 2 go to /dev/null for the block: native code prints there, past
    sys.stdout/stderr (torch.onnx's C++ side prints the whole TorchScript graph of a module that
    fails to export). The Python-level warnings and errors are caught apart."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with open(os.devnull, "w") as devnull:
        for fd in saved:
            os.dup2(devnull.fileno(), fd)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, original in saved.items():
                os.dup2(original, fd)
                os.close(original)


@contextlib.contextmanager
def without_mha_fastpath(torch: Any) -> Iterator[None]:
    """nn.TransformerEncoderLayer and nn.MultiheadAttention take a fused kernel in eval mode
    (aten::_transformer_encoder_layer_fwd, _native_multi_head_attention) that torch.onnx cannot
    export; with the fast path off they run, and export, as their ONNX-able Python code. The
    reference answers with it off too: the fast path also zeroes the padded positions of a
    key_padding_mask (nested tensors), which the exported code computes like the others."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    enabled = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(enabled)


def forward_error(exc: Exception) -> str:
    """The line of a forward() error that says what failed. TorchScript's starts with "The
    following operation failed in the TorchScript interpreter." and a traceback of the scripted
    code, and ends with the cause ("RuntimeError: mat1 and mat2 shapes cannot be multiplied")."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith("The following operation failed in the TorchScript interpreter"):
        return lines[-1]
    return lines[0]
